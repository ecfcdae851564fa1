"""The local status API: what ``tepi status`` and a local Prometheus read, on the box itself.

It listens on a unix socket (mode 0660: the service's user and group), and, only if the
config asks, on 127.0.0.1. Nothing on the network can reach it by default. Three routes:

- ``GET /health``: the health message, as published over MQTT (docs/payload.md#health);
- ``GET /metrics``: the same figures in the Prometheus text format (prometheus-client);
- ``GET /devices``: per device its state, counters and the latest reading of each metric.

Every answer is built from the agent's counters at request time; a request reads, never
changes, anything (the health message's rates are not reset by it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

STATES = ("starting", "ok", "failing", "quarantined")


class _HealthCollector(Collector):
    """Prometheus metrics made from one health snapshot per scrape."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        h = self._health()
        b, up, proc = h["buffer"], h["uplink"], h["process"]

        def gauge(name: str, doc: str, value: float | None) -> Metric:
            g = GaugeMetricFamily(name, doc)
            if value is not None:
                g.add_metric([], float(value))
            return g

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            return c

        yield gauge("tepi_up", "The agent answers (1).", 1)
        yield gauge("tepi_uptime_seconds", "Seconds since the agent started.", h["uptime_s"])
        yield gauge(
            "tepi_clock_synced", "The system clock is synchronised (1/0).", h["clock_synced"]
        )
        yield gauge(
            "tepi_buffer_readings", "Readings not yet acknowledged by the broker.", b["readings"]
        )
        yield gauge("tepi_buffer_bytes", "Bytes used by the buffer file.", b["bytes"])
        yield gauge("tepi_buffer_max_bytes", "The buffer file's limit.", b["max_bytes"])
        yield gauge(
            "tepi_buffer_oldest_age_seconds", "Age of the oldest unsent reading.", b["oldest_age_s"]
        )
        yield gauge("tepi_buffer_pending", "Readings in RAM, not yet committed.", b["pending"])
        yield gauge(
            "tepi_buffer_file_ok", "The buffer file can be written (1/0).", b["file_error"] is None
        )
        dropped = CounterMetricFamily(
            "tepi_buffer_dropped", "Readings dropped, by reason.", labels=["reason"]
        )
        for reason in ("buffer_full", "expired", "overflow"):
            dropped.add_metric([reason], float(b["dropped"].get(reason, 0)))
        yield dropped
        yield counter("tepi_buffer_written", "Readings written to the file.", b["written"])
        yield counter("tepi_buffer_commits", "Write transactions.", b["commits"])
        yield counter("tepi_buffer_write_errors", "Commits that failed.", b["write_errors"])
        yield gauge("tepi_uplink_connected", "Connected to the broker (1/0).", up["connected"])
        yield counter("tepi_uplink_connects", "Connections made.", up["connects"])
        yield counter("tepi_uplink_messages", "Telemetry messages acknowledged.", up["messages"])
        yield counter(
            "tepi_uplink_readings_acked",
            "Readings acknowledged by the broker.",
            up["readings_acked"],
        )
        yield gauge(
            "tepi_uplink_last_ack_timestamp_seconds",
            "When the broker last acknowledged.",
            up["last_ack_ts"],
        )
        errs = CounterMetricFamily("tepi_uplink_errors", "Link failures, by kind.", labels=["kind"])
        for kind, n in sorted(up["errors"].items()):
            errs.add_metric([kind], float(n))
        yield errs
        state = GaugeMetricFamily(
            "tepi_device_state", "1 for the state each device is in.", labels=["device", "state"]
        )
        readings = CounterMetricFamily("tepi_device_readings", "Readings taken.", labels=["device"])
        bad = CounterMetricFamily("tepi_device_bad_readings", "Bad readings.", labels=["device"])
        polls = CounterMetricFamily("tepi_device_polls", "Polls.", labels=["device"])
        missed = CounterMetricFamily(
            "tepi_device_missed_polls", "Poll ticks skipped.", labels=["device"]
        )
        errors = CounterMetricFamily(
            "tepi_device_errors", "Failed polls, by reason.", labels=["device", "reason"]
        )
        for dev, d in sorted(h["devices"].items()):
            for s in STATES:
                state.add_metric([dev, s], 1.0 if d["state"] == s else 0.0)
            readings.add_metric([dev], float(d["readings"]))
            bad.add_metric([dev], float(d["bad_readings"]))
            polls.add_metric([dev], float(d["polls"]))
            missed.add_metric([dev], float(d["missed_polls"]))
            for reason, n in sorted(d["errors"].items()):
                errors.add_metric([dev, reason], float(n))
        yield from (state, readings, bad, polls, missed, errors)
        yield counter("tepi_process_cpu_seconds", "CPU time used.", proc["cpu_seconds"])
        yield gauge("tepi_process_resident_memory_bytes", "Resident memory.", proc["rss_bytes"])
        yield gauge(
            "tepi_disk_free_bytes", "Free space under the data dir.", proc["disk_free_bytes"]
        )
        yield gauge(
            "tepi_config_last_reload_ok",
            "The last reload was applied (1/0); absent before the first.",
            h["config"]["last_reload_ok"],
        )


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


class StatusServer:
    """Serves the routes above for one agent; run() until cancelled."""

    def __init__(
        self,
        health: Callable[[], dict[str, Any]],
        devices: Callable[[], dict[str, Any]],
        socket_path: Path,
        tcp_port: int | None = None,
    ) -> None:
        self._health = health
        self._devices = devices
        self.socket_path = socket_path
        self.tcp_port = tcp_port
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_HealthCollector(health))
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/devices", self._get_devices)
        self._app = app
        self.listening = asyncio.Event()

    async def _get_health(self, _req: web.Request) -> web.Response:
        return _json(self._health())

    async def _get_devices(self, _req: web.Request) -> web.Response:
        return _json(self._devices())

    async def _get_metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def run(self) -> None:
        """Listen until cancelled. A socket that cannot be made is logged, not fatal: the
        agent's work does not depend on it."""
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            try:
                await self._listen(runner)
            except OSError as err:
                log.warning("status API not served: %s", err)
                await asyncio.Event().wait()  # keep the task: the agent runs on without it
            self.listening.set()
            log.info("status API on %s", self.where())
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    async def _listen(self, runner: web.AppRunner) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of an earlier run
        old = os.umask(0o117)  # created 0660: the service's user and group only
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old)
        if self.tcp_port is not None:
            await web.TCPSite(runner, "127.0.0.1", self.tcp_port).start()

    def where(self) -> str:
        tcp = f" and http://127.0.0.1:{self.tcp_port}" if self.tcp_port else ""
        return f"{self.socket_path}{tcp}"
