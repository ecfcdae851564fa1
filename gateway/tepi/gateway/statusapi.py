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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tepi.gateway.health import Health, prometheus

log = logging.getLogger(__name__)


class _HealthCollector(Collector):
    """Prometheus metrics made from one health snapshot per scrape (tepi.gateway.health)."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        yield from prometheus(self._health())


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


class StatusServer:
    """Serves the routes above for one agent; run() until cancelled."""

    def __init__(
        self,
        health: Callable[[], Health],
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
        self._failing: set[str] = set()  # routes whose last request failed (logged once)
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/devices", self._get_devices)
        self._app = app
        self.listening = asyncio.Event()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A handler's bug fails that request (500), never the agent; its traceback is
        logged the first time in a row the route fails, its recovery as info."""
        route = request.path
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException:
            raise
        except Exception as err:  # one request's failure: a 500, logged
            if route not in self._failing:
                self._failing.add(route)
                log.error("status API %s failed: %s", route, err, exc_info=err)
            return web.Response(status=500, text="internal error\n")
        if route in self._failing:
            self._failing.discard(route)
            log.info("status API %s answers again", route)
        return resp

    async def _get_health(self, _req: web.Request) -> web.Response:
        return _json(self._health().payload())

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
