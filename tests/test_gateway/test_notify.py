"""The notify protocol against a real datagram socket set as ``NOTIFY_SOCKET``, as systemd
sets it for ``Type=notify``: READY=1 once running, STATUS= lines, WATCHDOG=1 at a quarter of
``WATCHDOG_USEC``, no pings while the pipeline is stuck (the buffer's writer hung in fsync,
through the stall shim), pings again once it moves, and STOPPING=1 at a stop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from helpers import AgentProc, Broker, agent_config, compile_shim

from tepi.gateway.localbroker import free_port
from tepi.gateway.notify import Notifier

pytestmark = pytest.mark.timeout(90)


class NotifySocket:
    """A bound unix datagram socket that records each message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096).decode()
                fields = dict(line.split("=", 1) for line in data.splitlines())
                self.messages.append((time.monotonic(), fields))
                self._changed.set()

    async def wait_for(
        self, key: str, value: str | None = None, timeout: float = 20, since: int | None = None
    ) -> float:
        """When the first message with ``key`` (= ``value``) after now (or after the first
        ``since`` messages: take ``len(messages)`` before the action it follows) arrives."""
        start = len(self.messages) if since is None else since
        async with asyncio.timeout(timeout):
            while True:
                for at, m in self.messages[start:]:
                    if key in m and (value is None or m[key].startswith(value)):
                        return at
                start = len(self.messages)
                self._changed.clear()
                await self._changed.wait()

    async def first(self, key: str, part: str, timeout: float = 20) -> float:
        """When the first message (so far or to come) whose ``key`` holds ``part`` arrived."""
        async with asyncio.timeout(timeout):
            while True:
                for at, m in self.messages:
                    if part in m.get(key, ""):
                        return at
                self._changed.clear()
                await self._changed.wait()

    def pings(self, since: float, until: float = float("inf")) -> list[float]:
        return [at for at, m in self.messages if "WATCHDOG" in m and since <= at <= until]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def test_ready_status_watchdog_that_stops_when_stuck_and_stopping(tmp_path: Path) -> None:
    ns = NotifySocket(tmp_path / "notify.sock")
    stall = tmp_path / "stall"
    # No broker: the readings are committed to the file, so the writer thread calls fsync.
    cfg = agent_config(
        tmp_path,
        free_port(),
        [{"id": "s", "driver": "synthetic", "metrics": 5, "poll_interval": "100ms"}],
    )
    env = {
        "NOTIFY_SOCKET": str(ns.path),
        "WATCHDOG_USEC": "2000000",  # WatchdogSec=2s: a ping every 0.5 s
        "LD_PRELOAD": str(compile_shim("stall", tmp_path)),
        "STALL_FILE": str(stall),
    }
    agent = AgentProc(cfg, tmp_path / "agent.log", env)
    try:
        agent.start()
        await ns.wait_for("READY", "1")
        ready = next(m for _, m in ns.messages if "READY" in m)
        assert agent.proc is not None
        assert ready["MAINPID"] == str(agent.proc.pid)
        assert ready["STATUS"].startswith("offline")
        assert "readings/min" in ready["STATUS"]

        # alive: pings at a quarter of the watchdog time
        t0 = await ns.wait_for("WATCHDOG")
        for _ in range(4):
            await ns.wait_for("WATCHDOG")
        gaps = [b - a for a, b in zip(ns.pings(t0), ns.pings(t0)[1:], strict=False)]
        assert max(gaps) < 1.0, gaps

        # the disk hangs: the writer sits in fsync, and the pings stop
        stall.touch()
        stuck_at = await ns.wait_for("STATUS", "stuck: the buffer's writer")
        await asyncio.sleep(2.5)  # more than WatchdogSec: systemd would kill it now
        assert ns.pings(stuck_at) == []
        assert "pipeline stuck" in agent.log_text()

        # the disk comes back: pings resume without a restart
        stall.unlink()
        await ns.wait_for("WATCHDOG")
        assert agent.proc.poll() is None

        # a stop says so first
        stopping = asyncio.create_task(ns.wait_for("STOPPING", "1"))
        assert await agent.stop() == 0
        await stopping
    finally:
        stall.unlink(missing_ok=True)
        await agent.stop()
        ns.close()


async def test_a_status_line_follows_the_link_at_once(tmp_path: Path) -> None:
    """``systemctl status`` once showed "offline (connecting)" for a minute after the agent
    had connected: STATUS= follows a change of the link within a second or two, not at the
    next periodic refresh (10 s; no watchdog here, so nothing else wakes the loop sooner)."""
    ns = NotifySocket(tmp_path / "notify.sock")
    broker = Broker(tmp_path)
    cfg = agent_config(
        tmp_path,
        broker.port,
        [
            {"id": "s", "driver": "synthetic", "metrics": 2, "poll_interval": "200ms"},
            {  # nobody listens there: the device fails at its first poll
                "id": "gone",
                "driver": "modbus-tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "timeout": "100ms",
                "poll_interval": "200ms",
                "registers": [{"name": "v", "address": 0}],
            },
        ],
    )
    agent = AgentProc(cfg, tmp_path / "agent.log", {"NOTIFY_SOCKET": str(ns.path)})
    try:
        agent.start()
        ready_at = await ns.wait_for("READY", "1")
        ready = next(m for _, m in ns.messages if "READY" in m)
        assert ready["STATUS"].startswith("offline"), ready
        # A device that starts failing is said at once too (the poller wakes the loop).
        failing = await ns.first("STATUS", "1 of 2 devices failing", timeout=30)
        assert failing - ready_at < 3.0, failing - ready_at
        # The agent retries every 200 ms..1 s (agent_config): it connects within a second.
        await asyncio.sleep(1.0)
        started = time.monotonic()
        mark = len(ns.messages)  # the agent may say it before broker.start() returns
        await broker.start()
        online = await ns.wait_for("STATUS", "online", timeout=30, since=mark)
        assert online - started < 3.0, online - started
        # and back: the broker goes away, the line says offline as soon
        await asyncio.sleep(0.5)
        gone = time.monotonic()
        mark = len(ns.messages)  # ... or while broker.stop() waits for Mosquitto to exit
        await broker.stop()
        offline = await ns.wait_for("STATUS", "offline", timeout=30, since=mark)
        assert offline - gone < 3.0, offline - gone
    finally:
        await agent.stop()
        await broker.stop()
        ns.close()


def test_without_a_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_s is None
    assert not n.send("READY=1")


def test_the_watchdog_is_only_ours_when_its_pid_is_ours(tmp_path: Path) -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_s is None


def test_an_abstract_socket_address_is_understood() -> None:
    name = f"tepi-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.send("READY=1", "STATUS=ok")
        assert server.recv(100) == b"READY=1\nSTATUS=ok"
        n.close()
