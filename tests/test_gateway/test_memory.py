"""What a running agent holds in memory (docs/performance.md#memory).

A typical box (Modbus devices, JSON telemetry, nobody asking its status API) never imports
aiohttp, prometheus-client or zstandard. The real agent runs as a process with Python's own
import log (``PYTHONPROFILEIMPORTTIME``: one line on stderr per module, as it is imported), and
its /proc maps show which extension modules are loaded. The first requests, several at once and
on both sockets, load the HTTP side and are all answered; the first scrape loads
prometheus-client and is answered too.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
from pathlib import Path

import pytest
from helpers import AgentProc, Broker, Subscriber, agent_config
from prometheus_client.parser import text_string_to_metric_families
from rig import SIM, agent_devices

from tepi.gateway.health import MAX_ERROR_REASONS, bounded_counts
from tepi.gateway.localbroker import free_port
from tepi.gateway.status import fetch
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(90)

LAZY = ("aiohttp", "prometheus_client", "zstandard")
# tepi's own modules a box without rules or cameras does not import
LAZY_TEPI = (
    "tepi.gateway.alarms",
    "tepi.gateway.rules_engine",
    "tepi.buffer.alarms",
    "tepi.buffer.images",
    # the web console's, with dashboard.listen unset (the default)
    "tepi.gateway.dashboard",
    "tepi.gateway.dashhttp",
    "tepi.gateway.dashauth",
    "tepi.gateway.dashpages",
    "tepi.gateway.dashhistory",
)


def imported_modules(log: str) -> set[str]:
    """Every module in the agent's import log."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def imported(log: str) -> set[str]:
    """The top-level packages in the agent's import log."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"package"}  # (the log's header line)


def extension_modules(pid: int) -> str:
    return "\n".join(
        line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line
    )


def get_tcp(port: int, route: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", route)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def test_a_typical_agent_loads_no_http_metrics_or_zstd_until_asked(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    tcp = free_port()
    async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        cfg = agent_config(
            tmp_path, broker.port, agent_devices(sim.endpoints()), status__tcp_port=tcp
        )
        agent = AgentProc(cfg, tmp_path / "agent.log", env={"PYTHONPROFILEIMPORTTIME": "1"})
        agent.start()
        assert agent.proc is not None
        sock = tmp_path / "data" / "status.sock"
        try:
            # Running: every Modbus device's readings reach the broker, health is published.
            await sub.wait_for(
                lambda s: (
                    len(s.max_counter) == 3
                    and min(s.max_counter.values()) >= 2
                    and bool(s.on("/health"))
                ),
                40,
            )
            assert sock.exists()
            before = imported(agent.log_text())
            assert {"pymodbus", "aiomqtt", "pydantic"} <= before  # the import log works
            assert not set(LAZY) & before, set(LAZY) & before
            modules = imported_modules(agent.log_text())
            assert "tepi.gateway.poller" in modules  # the module names are read right
            assert not set(LAZY_TEPI) & modules, set(LAZY_TEPI) & modules
            maps = extension_modules(agent.proc.pid)
            assert "pydantic_core" in maps  # the maps are readable
            assert "/aiohttp/" not in maps
            assert "/zstandard/" not in maps

            # The first requests, together: on the unix socket and on TCP; all answered.
            asked = [asyncio.to_thread(fetch, sock, "/health") for _ in range(6)]
            asked += [asyncio.to_thread(get_tcp, tcp, "/devices") for _ in range(2)]
            answers = await asyncio.gather(*asked)
            for health in answers[:6]:
                assert isinstance(health, dict)
                assert health["gateway"] == "gw-test"
            for status, body in answers[6:]:
                assert status == 200
                assert b"river-level-3" in body
            after = imported(agent.log_text())
            assert "aiohttp" in after
            assert "prometheus_client" not in after  # not before the first scrape
            assert "zstandard" not in after

            # The first scrape: prometheus-client now, and the metrics are there.
            status, text = await asyncio.to_thread(get_tcp, tcp, "/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text.decode())}
            assert families["tepi_up"].samples[0].value == 1
            polled = {s.labels["device"] for s in families["tepi_device_polls"].samples}
            assert polled == {"aq-station-1", "noise-2", "river-level-3"}
            assert "prometheus_client" in imported(agent.log_text())
            assert (await asyncio.to_thread(fetch, sock, "/health"))["gateway"] == "gw-test"
        finally:
            await agent.stop()
            await broker.stop()
    assert not sock.exists()


async def test_a_connection_closed_before_the_http_side_is_loaded_harms_nothing(
    tmp_path: Path,
) -> None:
    """A client that connects and goes at once (a port scan, a health probe that gives up) is
    handed to the HTTP side like any other; the next request is answered."""
    from tepi.gateway.statusapi import StatusServer

    class Snapshot:
        def payload(self) -> dict[str, str]:
            return {"gateway": "gw-lazy"}

    path = tmp_path / "status.sock"
    server = StatusServer(Snapshot, dict, path)  # type: ignore[arg-type]
    task = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(10):
            await server.listening.wait()
        assert server.app is None  # nothing loaded while nobody asked
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.close()
        assert (await asyncio.to_thread(fetch, path, "/health")) == {"gateway": "gw-lazy"}
        assert server.app is not None
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not path.exists()


def test_error_reasons_in_health_are_bounded() -> None:
    """Variable text in a device's error reasons (say, a driver that put the device's own
    message there) does not grow health and /metrics without bound: the most frequent
    reasons stay, the rest are summed under "other", and the total is kept."""
    few = {"timeout": 3, "crc error": 1}
    assert bounded_counts(few) == few
    many = {f"device says {i}": 1 for i in range(1000)} | {"timeout": 50, "other": 2}
    out = bounded_counts(many)
    assert len(out) == MAX_ERROR_REASONS
    assert out["timeout"] == 50
    assert sum(out.values()) == sum(many.values())
