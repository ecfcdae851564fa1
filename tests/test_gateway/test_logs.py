"""Logs that fit journald: under systemd (JOURNAL_STREAM set) no timestamp of tepi's own, and
a device that keeps failing logs once, is counted, then logs its recovery with the count."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from helpers import AgentProc, Broker, Subscriber, agent_config

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(60)

SIM = {
    "devices": [
        {
            "id": "gauge",
            "transport": "tcp",
            "unit": 1,
            "fault": "no_reply",
            "registers": [{"address": 0, "table": "input", "kind": "counter"}],
        }
    ]
}


async def test_repeated_failures_log_once_then_the_recovery_with_a_count(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    try:
        async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
            host, port = sim.endpoint("gauge").split(":")
            dev = {
                "id": "gauge",
                "driver": "modbus-tcp",
                "host": host,
                "port": int(port),
                "timeout": "100ms",
                "poll_interval": "100ms",
                "quarantine_after": 1000,
                "registers": [{"name": "counter", "address": 0, "table": "input"}],
            }
            cfg = agent_config(tmp_path, broker.port, [dev])
            agent = AgentProc(cfg, tmp_path / "agent.log", {"JOURNAL_STREAM": "8:12345"})
            agent.start()
            await sim.device("gauge").wait_requests(20, timeout=30)  # twenty failed polls
            sim.device("gauge").set_fault("none")
            await sub.wait_for(
                lambda s: any(r["quality"] == "good" for r in s.readings()), timeout=20
            )
            async with asyncio.timeout(10):
                while "recovered after" not in agent.log_text():
                    await asyncio.sleep(0.05)
            assert await agent.stop() == 0
    finally:
        await broker.stop()
    lines = agent.log_text().splitlines()
    assert lines
    # journald stamps each line itself: tepi's lines start with the level
    assert all(re.match(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), lines[
        :3
    ]
    errors = [line for line in lines if line.startswith("ERROR") and "gauge" in line]
    assert len(errors) == 1, errors
    assert "further failures are counted, not logged" in errors[0]
    recovered = next(line for line in lines if "recovered after" in line)
    failed = int(re.search(r"recovered after (\d+) failed polls", recovered).group(1))  # type: ignore[union-attr]
    assert failed >= 19
