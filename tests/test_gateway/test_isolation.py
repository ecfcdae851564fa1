"""Fault isolation: a driver's bug stays with its device, a failing status request or health
message stays with itself, and a fatal error leaves its traceback in the log.

The buggy driver is a test-only one, run beside real simulated Modbus devices (the fault rig's
simulator, on a real pty and TCP) by an in-process agent whose driver factory adds it: the
registry is an explicit table, and a test driver has no place in it (docs/development.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from helpers import Broker, Subscriber, agent_config
from rig import DEVICES, SIM, agent_devices, validator

from tepi.core.clock import boottime
from tepi.core.records import MetricInfo, Sample
from tepi.drivers.base import Driver, DriverConfig, SharedResources
from tepi.drivers.registry import make_driver
from tepi.gateway.configload import load_config
from tepi.gateway.runtime import Agent
from tepi.gateway.status import fetch
from tepi.gateway.statusapi import StatusServer
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(120)


class DriverOwnError(Exception):
    """An exception class tepi has never heard of, as a third-party library may raise."""


KINDS: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    ZeroDivisionError,
    RuntimeError,
    AttributeError,
    DriverOwnError,
)


class BuggyDriver:
    """Raises the exception types above, in turn, at random points: open, read, close and
    its protocol counters; between them it reads a counter like a healthy device."""

    def __init__(self, seed: int, *, p_open: float, p_read: float, p_stats: float) -> None:
        self._rng = random.Random(seed)
        self._kinds = itertools.cycle(KINDS)
        self._p = {"open": p_open, "read": p_read, "close": 1.0, "stats": p_stats}
        self.raised: Counter[str] = Counter()
        self.kinds: set[str] = set()
        self._n = 0

    def _maybe(self, point: str) -> None:
        if self._rng.random() < self._p[point]:
            kind = next(self._kinds)
            self.raised[point] += 1
            self.kinds.add(kind.__name__)
            raise kind(f"injected at {point}")

    async def __aenter__(self) -> Self:
        # The poller opens once (again only after a close): with ``p_open`` set, the first
        # open fails for sure; the retry, after the open backoff, succeeds.
        if self._p["open"] and not self.raised["open"]:
            self._p["open"] = 1.0
            try:
                self._maybe("open")
            finally:
                self._p["open"] = 0.0
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._maybe("close")

    async def read(self) -> list[Sample]:
        self._maybe("read")
        self._n += 1
        return [Sample("counter", self._n, None, time.time(), boottime())]

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo("counter", None)]

    def protocol_stats(self) -> dict[str, object]:
        self._maybe("stats")
        return {"reads": self._n}


def buggy_device(dev_id: str) -> dict[str, Any]:
    return {
        "id": dev_id,
        "driver": "synthetic",
        "metrics": 1,
        "poll_interval": "100ms",
        "timeout": "20ms",
        "quarantine_max": "1s",
    }


async def test_a_buggy_driver_stays_with_its_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two buggy devices raise every exception type at open, read and close (and from their
    counters); the three simulated devices beside them lose nothing, the agent stops cleanly
    (exit 0 path: run() returns), the buggy ones show bad readings ``internal error`` and the
    health counter, and each logged one traceback, once."""
    caplog.set_level(logging.INFO)
    broker = Broker(tmp_path)
    await broker.start()
    buggy: dict[str, BuggyDriver] = {
        "buggy-1": BuggyDriver(1, p_open=0.3, p_read=0.3, p_stats=0.0),
        "buggy-2": BuggyDriver(2, p_open=0.0, p_read=0.5, p_stats=0.5),
    }

    def drivers(cfg: DriverConfig, res: SharedResources) -> Driver:
        return buggy[cfg.id] if cfg.id in buggy else make_driver(cfg, res)

    try:
        async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
            devices = [*agent_devices(sim.endpoints()), *(buggy_device(d) for d in buggy)]
            path = agent_config(tmp_path, broker.port, devices, health_interval="1s")
            agent = Agent(load_config(path), config_path=path, drivers=drivers)
            stop = asyncio.Event()
            run = asyncio.create_task(agent.run(stop))
            try:
                async with asyncio.timeout(60):
                    while not (
                        buggy["buggy-1"].raised["open"] == 1
                        and buggy["buggy-1"].raised["read"] >= 6
                        and buggy["buggy-2"].raised["stats"] >= 2
                        and {k.__name__ for k in KINDS} <= buggy["buggy-1"].kinds
                        and sub.on("/health")
                        and sub.on("/health")[-1]["devices"]["buggy-2"]["internal_errors"] >= 2
                    ):
                        assert not run.done(), run
                        await asyncio.sleep(0.05)
                target = {d: sim.device(d).counter_value(**_counter(d)) for d in DEVICES}
                await sub.wait_for(
                    lambda s: all(s.max_counter.get(d, 0) >= target[d] for d in DEVICES), 30
                )
                assert not run.done()
            finally:
                stop.set()
                async with asyncio.timeout(20):
                    await run  # a clean stop, though every buggy close raises
    finally:
        await broker.stop()
    assert all(b.raised["close"] >= 1 for b in buggy.values())
    # The healthy devices: nothing lost, nothing out of order, no seq gap.
    check = sub.completeness()
    for row in check.table(target):
        assert (row.lost, row.out_of_order) == (0, 0), row
    assert check.seq_gaps() == []
    # The buggy devices: bad readings with the reason, and health's counter.
    bad = {r["device"] for r in sub.readings() if r.get("reason") == "internal error"}
    assert bad >= set(buggy)
    health = sub.on("/health")[-1]
    # The test driver's own counters are not a schema's (Modbus, serial): left out.
    validator("health").validate(
        {**health, "devices": {d: {**h, "protocol": None} for d, h in health["devices"].items()}}
    )
    for dev in buggy:
        h = health["devices"][dev]
        assert h["internal_errors"] >= 2
        assert h["errors"].get("internal error", 0) >= 1
    for dev in DEVICES:
        assert health["devices"][dev]["internal_errors"] == 0
    # One traceback per buggy device, the first time; not one per failure.
    for dev in buggy:
        tracebacks = [r for r in caplog.records if r.exc_info and f"device {dev}" in r.getMessage()]
        assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]


def _counter(device: str) -> dict[str, Any]:
    spec = next(d for d in SIM["devices"] if d["id"] == device)
    reg = next(r for r in spec["registers"] if r["kind"] == "counter")
    return {"address": reg["address"], "table": reg["table"]}


async def test_a_failing_status_request_is_a_500_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises: that request gets a 500 and the traceback is logged once (not
    per request); the other routes answer, and the route answers again once it can."""
    failing = True

    def health() -> Any:
        if failing:
            raise ZeroDivisionError("a bug building the health snapshot")
        return HealthStub()

    sock = tmp_path / "status.sock"
    server = StatusServer(health, lambda: {"dev-1": {"state": "ok"}}, sock)
    task = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(10):
            await server.listening.wait()
        for _ in range(3):
            with pytest.raises(OSError, match="HTTP 500"):
                await asyncio.to_thread(fetch, sock, "/health")
        assert await asyncio.to_thread(fetch, sock, "/devices") == {"dev-1": {"state": "ok"}}
        failing = False
        assert await asyncio.to_thread(fetch, sock, "/health") == {"ok": True}
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert tracebacks[0].name == "tepi.gateway.statusapi"
    assert "/health" in tracebacks[0].getMessage()


class HealthStub:
    def payload(self) -> dict[str, Any]:
        return {"ok": True}


FATAL = """
import sys
import tepi.buffer.store as store

async def broken(self):
    raise RuntimeError("the buffer writer met something it cannot recover from")

store.Buffer.run = broken
from tepi.gateway.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


async def test_a_fatal_error_leaves_its_traceback_without_debug(tmp_path: Path) -> None:
    """The unit runs ``tepi run`` without --debug: a fatal error must still leave its cause
    (the traceback) in the log, and exit 3 for systemd to restart."""
    path = agent_config(tmp_path, 1, [])
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", FATAL, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "RuntimeError: the buffer writer met something" in proc.stderr
    assert "in broken" in proc.stderr  # the frame where it happened
