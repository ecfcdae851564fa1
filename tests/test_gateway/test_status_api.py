"""The local status API and ``tepi status`` against a running agent and a real broker: the
unix socket (0660), /health (valid against the IOC's schema), /metrics (Prometheus text that
prometheus-client parses back), /devices (latest readings), loopback TCP only when asked,
and ``tepi status``'s screen and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import AgentProc, Broker, agent_config, run_tepi
from prometheus_client.parser import text_string_to_metric_families
from rig import metrics_table, validator

from tepi.gateway.localbroker import free_port
from tepi.gateway.status import EXIT_DEGRADED, EXIT_UNREACHABLE, fetch

pytestmark = pytest.mark.timeout(90)


async def wait_socket(path: Path, agent: AgentProc) -> None:
    async with asyncio.timeout(20):
        while not path.exists():
            assert agent.proc is not None
            assert agent.proc.poll() is None, agent.log_text()
            await asyncio.sleep(0.05)


async def fetch_async(path: Path, route: str) -> Any:
    return await asyncio.to_thread(fetch, path, route)


async def test_health_metrics_devices_and_tepi_status(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    tcp = free_port()
    devices = [
        {"id": "aq-1", "driver": "synthetic", "metrics": 3, "poll_interval": "100ms"},
        {  # nothing listens there: a device that fails
            "id": "dead-2",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout": "200ms",
            "poll_interval": "500ms",
            "registers": [{"name": "level", "address": 0}],
        },
    ]
    cfg = agent_config(tmp_path, broker.port, devices, status__tcp_port=tcp)
    sock = tmp_path / "data" / "status.sock"
    agent = AgentProc(cfg, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_socket(sock, agent)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660  # the service's user and group

        async with asyncio.timeout(20):
            while (await fetch_async(sock, "/devices"))["dead-2"]["state"] == "starting" or not (
                await fetch_async(sock, "/health")
            )["uplink"]["connected"]:
                await asyncio.sleep(0.1)
        health = await fetch_async(sock, "/health")
        validator("health").validate(health)
        assert health["devices"]["aq-1"]["state"] == "ok"

        devs = await fetch_async(sock, "/devices")
        last = devs["aq-1"]["last"]
        assert set(last) == {"m0", "m1", "m2"}
        assert last["m0"]["quality"] == "good"
        assert last["m0"]["value"] >= 1
        assert devs["dead-2"]["last"]["level"]["quality"] == "bad"

        # Prometheus text, over loopback TCP (asked for in the config)
        url = f"http://127.0.0.1:{tcp}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        assert families["tepi_uplink_connected"].samples[0].value == 1
        states = {
            (s.labels["device"], s.labels["state"]): s.value
            for s in families["tepi_device_state"].samples
        }
        assert states[("aq-1", "ok")] == 1
        assert states[("dead-2", "ok")] == 0
        assert families["tepi_device_readings"].samples  # counters carry _total
        assert any(
            s.name == "tepi_device_readings_total" for s in families["tepi_device_readings"].samples
        )
        # every metric the agent exposes is in docs/operations.md's table, with its type
        table = metrics_table()
        for f in families.values():
            for s in f.samples:
                assert table[s.name][0] == f.type, s.name
        polled = families["tepi_device_polls"].samples
        assert {s.labels["device"] for s in polled} == {"aq-1", "dead-2"}

        # tepi status: one screen, and it says what is wrong
        out = await asyncio.to_thread(run_tepi, "status", "--config", str(cfg))
        assert out.returncode == EXIT_DEGRADED, out.stderr
        assert "link    online" in out.stdout
        assert "aq-1" in out.stdout
        assert "device dead-2 is" in out.stdout
        assert "\033[" not in out.stdout  # no colour when not on a terminal
        raw = await asyncio.to_thread(run_tepi, "status", "--socket", str(sock), "--json")
        assert '"health"' in raw.stdout
    finally:
        await agent.stop()
        await broker.stop()
    assert not sock.exists()  # removed at a clean stop
    out = run_tepi("status", "--socket", str(sock))
    assert out.returncode == EXIT_UNREACHABLE
    assert "cannot reach the agent" in out.stderr


def _listeners() -> dict[int, int]:
    """Socket inode -> port of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A":  # LISTEN
                    found[int(f[9])] = int(f[1].rsplit(":", 1)[1], 16)
    return found


def listening_tcp_ports() -> set[int]:
    return set(_listeners().values())


def agent_listening_sockets(pid: int) -> list[int]:
    """The ports of the TCP listening sockets among the process's open files."""
    listeners = _listeners()
    ports = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listeners:
                    ports.append(listeners[inode])
    return ports


async def health_on(port: int) -> str:
    """What 127.0.0.1:port answers to GET /health ("" when it does not, or not in time)."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                await writer.drain()
                return (await reader.read(65536)).decode(errors="replace")
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return ""


# alone: it asks every TCP port on the machine for /health, so under pytest-xdist it would
# also send that to the brokers, simulators and agents of the test on the other worker.
@pytest.mark.alone
async def test_no_tcp_unless_asked_and_all_is_well(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    devices = [{"id": "aq-1", "driver": "synthetic", "metrics": 1, "poll_interval": "200ms"}]
    cfg = agent_config(tmp_path, broker.port, devices, gateway_id="gw-no-tcp-7c2e")
    sock = tmp_path / "data" / "status.sock"
    agent = AgentProc(cfg, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_socket(sock, agent)
        async with asyncio.timeout(20):
            while not (await fetch_async(sock, "/health"))["uplink"]["connected"]:
                await asyncio.sleep(0.1)
        out = await asyncio.to_thread(run_tepi, "status", "--config", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all is well" in out.stdout
        # Not only what it says: ask every TCP port listening on this machine for /health.
        # None may answer with this agent's (its gateway id is unique to this test).
        assert agent.proc is not None
        ports = listening_tcp_ports() - {broker.port}
        assert ports, "no listener found at all: /proc/net/tcp unreadable?"
        answered = await asyncio.gather(*(health_on(port) for port in sorted(ports)))
        assert not [b for b in answered if "gw-no-tcp-7c2e" in b], "status API on TCP"
        assert not agent_listening_sockets(agent.proc.pid), "the agent listens on TCP"
        assert "status API on" in agent.log_text()
        assert "127.0.0.1" not in agent.log_text().split("status API on", 1)[1].splitlines()[0]
    finally:
        await agent.stop()
        await broker.stop()
