"""SIGHUP re-reads the config (``systemctl reload tepi``), against a real broker and a real
``tepi run``: a change to one device restarts only that device and keeps the broker
connection; an invalid file changes nothing and says why, with file:line, in the log and in
health; an uplink change reconnects. Nothing buffered is lost across any of it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import AgentProc, Broker, Subscriber, agent_config
from rig import validator

pytestmark = pytest.mark.timeout(90)


def device(dev_id: str, metrics: int) -> dict[str, Any]:
    return {"id": dev_id, "driver": "synthetic", "metrics": metrics, "poll_interval": "100ms"}


def counters(sub: Subscriber, dev: str) -> list[int]:
    """The poll numbers (the synthetic counter) of one device's m0, in seq order."""
    rows = sorted(
        (r["seq"], r["value"])
        for r in sub.readings()
        if r["device"] == dev and r["metric"] == "m0" and r["quality"] == "good"
    )
    return [v for _, v in rows]


def last_health(sub: Subscriber) -> dict[str, Any]:
    return sub.on("/health")[-1]


async def test_reload_restarts_only_what_changed_and_refuses_a_bad_file(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    try:
        async with Subscriber(broker.port, "ioc/v1/#") as sub:
            path = agent_config(
                tmp_path, broker.port, [device("a", 2), device("b", 2)], health_interval="1s"
            )
            agent = AgentProc(path, tmp_path / "agent.log")
            agent.start()
            assert agent.proc is not None
            await sub.wait_for(lambda s: len(counters(s, "a")) >= 5 and len(counters(s, "b")) >= 5)

            # 1. b gets a third metric, c is added: a and the connection are left alone
            cfg = yaml.safe_load(path.read_text())
            cfg["devices"] = [device("a", 2), device("b", 3), device("c", 1)]
            path.write_text(yaml.safe_dump(cfg))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(
                lambda s: (
                    last_health(s)["config"]["last_reload_ok"] is True
                    and len(counters(s, "c")) >= 3
                    and any(r["metric"] == "m2" for r in s.readings() if r["device"] == "b")
                )
            )
            h = last_health(sub)
            assert h["config"]["reloads"] == 1
            assert h["uplink"]["connects"] == 1  # the broker connection was kept
            a = counters(sub, "a")
            assert a == list(range(1, len(a) + 1))  # a's poller ran on: no restart, no gap
            b = counters(sub, "b")
            assert b.count(1) == 2  # b restarted: its poll count began again
            assert "reload: config applied (2 devices restarted: b, c)" in agent.log_text()

            # 2. an invalid file: nothing changes, the errors are logged and in health
            path.write_text(path.read_text().replace("metrics: 1", "metrics: many"))
            seen = len(counters(sub, "c"))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(lambda s: last_health(s)["config"]["last_reload_ok"] is False)
            errors = last_health(sub)["config"]["errors"]
            assert any(f"{path}:" in e and "devices[2].metrics" in e for e in errors), errors
            assert "reload refused: 1 problem in the config" in agent.log_text()
            await sub.wait_for(lambda s: len(counters(s, "c")) > seen + 3)  # c runs on

            # 3. an uplink setting changes: the uplink reconnects, the devices run on
            cfg["uplink"]["health_interval"] = "2s"
            path.write_text(yaml.safe_dump(cfg))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(
                lambda s: (
                    last_health(s)["config"]["reloads"] == 3
                    and last_health(s)["uplink"]["connects"] == 2
                )
            )
            assert last_health(sub)["config"]["last_reload_ok"] is True
            assert await agent.stop() == 0

            # nothing lost: every poll of a, from first to last, arrived
            a = counters(sub, "a")
            assert a == list(range(1, len(a) + 1))
            seqs = sorted({r["seq"] for r in sub.readings()})
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            for msg in sub.on("/health"):
                validator("health").validate(msg)
    finally:
        await broker.stop()
    assert "Traceback" not in agent.log_text()
