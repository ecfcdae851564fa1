"""The device and diagnostic commands end to end: ``tepi remote`` -> a real Mosquitto ->
``tepi run`` -> the Modbus simulator, and back on ``cmd_result``.

Checked: ``read`` polls now (a value the simulator just took is in the result and on the
broker), ``write`` writes and reads back (and is refused out of range, on a read-only metric,
and unsigned where the policy says signed), ``poll_rate`` polls faster and stops on its own,
and a rate still running survives a restart, ``restart`` reopens a device, ``read`` of a dead
device fails with the device's error, ``reload`` re-reads the file, and ``logs.tail`` returns
the agent's own lines with the password redacted."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    AgentProc,
    Broker,
    FaultProxy,
    Subscriber,
    agent_config,
    agent_running,
    remote,
    remote_keygen,
    secret_file,
)
from rig import validator

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(150)

RESULT = validator("command_result")

SIM: dict[str, Any] = {
    "seed": 5,
    "devices": [
        {
            "id": "gauge",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {"address": 100, "table": "input", "kind": "constant", "value": 1.0,
                 "type": "int16", "scale": 0.01},
                {"address": 10, "table": "holding", "kind": "constant", "value": 5,
                 "type": "uint16"},
            ],
        },
    ],
}  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def devices(sim: Simulator) -> list[dict[str, Any]]:
    host, port = sim.endpoint("gauge").rsplit(":", 1)
    return [
        {
            "id": "gauge",
            "driver": "modbus-tcp",
            "host": host,
            "port": int(port),
            "unit": 1,
            "poll_interval": "2s",
            "registers": [
                {"name": "level", "address": 100, "table": "input", "type": "int16",
                 "scale": 0.01},
                {"name": "setpoint", "address": 10, "table": "holding", "type": "uint16",
                 "writable": True, "min": 0, "max": 100},
            ],
        },
        {  # nothing listens there
            "id": "dead",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": _closed_port(),
            "unit": 1,
            "timeout": "500ms",
            "poll_interval": "5s",
            "registers": [{"name": "x", "address": 0, "table": "holding", "type": "uint16"}],
        },
    ]  # fmt: skip


@dataclass
class Box:
    tmp: Path
    broker: Broker
    sim: Simulator
    sub: Subscriber
    agent: AgentProc
    key: Path

    def remote(self, *args: str, key: bool = False) -> tuple[int, dict[str, Any]]:
        code, result, err = remote(self.broker.port, *args, key=self.key if key else None)
        assert result is not None, err
        RESULT.validate(result)
        return code, result

    async def run(self, *args: str, key: bool = False) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(self.remote, *args, key=key)

    def gaps(self, since: float) -> list[float]:
        ts = sorted(
            r["ts"]
            for r in self.sub.readings()
            if r["device"] == "gauge" and r["metric"] == "level" and r["ts"] >= since
        )
        return [b - a for a, b in itertools.pairwise(ts)]


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, key)
    broker = Broker(tmp_path)
    await broker.start()
    async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        cfg = agent_config(tmp_path, broker.port, devices(sim))
        cfg.write_text(
            cfg.read_text()
            + "commands:\n"
            + "  allow_unsigned_changes: true\n"
            + "  policy: {write: signed, poll_rate: unsigned, restart: unsigned,"
            + " reload: unsigned, logs.tail: unsigned}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
        )
        async with agent_running(
            cfg, sub, broker, lambda s: any(r["device"] == "gauge" for r in s.readings())
        ) as agent:
            yield Box(tmp_path, broker, sim, sub, agent, key)


async def test_read_write_restart_reload_and_logs(box: Box) -> None:
    gauge = box.sim.device("gauge")
    # read: a poll now, whose value the simulator took a moment ago (the next scheduled
    # poll is up to 2 s away).
    gauge.set_value(100, 1.37, "input")
    asked = time.time()
    code, res = await box.run("read", "device=gauge")
    assert code == 0, str(res)
    level = res["output"]["readings"]["level"]
    assert (level["value"], level["fresh"], level["quality"]) == (pytest.approx(1.37), True, "good")
    assert level["ts"] >= asked - 0.05
    # ... and went to the broker like any poll's.
    await box.sub.wait_for(
        lambda s: any(
            r["device"] == "gauge" and r["metric"] == "level" and r["value"] == pytest.approx(1.37)
            for r in s.readings()
        )
    )
    code, res = await box.run("read", "device=nowhere")
    assert (code, res["status"]) == (6, "failed")
    assert "nowhere" in res["detail"]

    # write: signed by the policy; read back; refused out of range and on a read-only metric.
    code, res = await box.run("write", "device=gauge", "metric=setpoint", "value=42")
    assert (code, res["reason"]) == (6, "unsigned")
    assert not gauge.writes
    code, res = await box.run("write", "device=gauge", "metric=setpoint", "value=42", key=True)
    assert code == 0, str(res)
    assert res["output"]["read_back"] == 42
    assert gauge.value(10, "holding") == 42
    assert [list(w.values) for w in gauge.writes] == [[42]]
    code, res = await box.run("write", "device=gauge", "metric=setpoint", "value=500", key=True)
    assert (code, res["reason"]) == (6, "write_refused"), res
    code, res = await box.run("write", "device=gauge", "metric=level", "value=1", key=True)
    assert (code, res["reason"], res["output"]["refused"]) == (6, "write_refused", "not writable")
    assert len(gauge.writes) == 1

    # read of a device that does not answer: its error, within its poll guard.
    code, res = await box.run("read", "device=dead")
    assert (code, res["reason"]) == (6, "device_error"), res
    assert res["output"]["state"] in ("failing", "quarantined")

    # restart: the driver reopened, the first poll awaited.
    code, res = await box.run("restart", "device=gauge")
    assert code == 0, str(res)
    assert res["output"]["state"] == "ok"
    assert "restarted" in box.agent.log_text()

    # reload: the file again, nothing changed.
    code, res = await box.run("reload")
    assert code == 0, str(res)
    assert res["output"]["applied"] is True
    box.agent.config.write_text(box.agent.config.read_text() + "bogus_section: 1\n")
    code, res = await box.run("reload")
    assert (code, res["reason"]) == (6, "config_refused")
    assert any("bogus_section" in e for e in res["output"]["errors"]), res

    # logs.tail: the agent's own lines, the redacted password never among them.
    code, res = await box.run("logs.tail", "n=200")
    assert code == 0, str(res)
    messages = [line["message"] for line in res["output"]["lines"]]
    assert any("running: gateway gw-test" in m for m in messages), messages
    assert any("reload refused" in m for m in messages), messages
    password = secret_file(box.tmp).read_text().strip()
    assert all(password not in m for m in messages)
    code, res = await box.run("logs.tail", "n=5", "level=error")
    assert code == 0
    assert 1 <= len(res["output"]["lines"]) <= 5
    assert {line["level"] for line in res["output"]["lines"]} <= {"ERROR", "CRITICAL"}
    code, res = await box.run("logs.tail", "n=100000")
    assert (code, res["status"]) == (6, "failed")


async def test_poll_rate_speeds_up_ends_on_its_own_and_survives_a_restart(box: Box) -> None:
    code, res = await box.run("poll_rate", "device=gauge", "interval=0.25", "for=3")
    assert code == 0, str(res)
    fast_from = time.time()
    until = res["output"]["until"]
    assert until == pytest.approx(fast_from + 3, abs=1.5)
    await box.sub.wait_for(lambda s: len(box.gaps(fast_from)) >= 6)
    assert sorted(box.gaps(fast_from))[3] < 0.6, box.gaps(fast_from)
    # It ends on its own: back at 2 s.
    await box.sub.wait_for(lambda s: len(box.gaps(until + 0.5)) >= 2, timeout=20)
    assert min(box.gaps(until + 0.5)) > 1.5, box.gaps(until + 0.5)
    assert "the IOC's poll_rate (" in box.agent.log_text()

    # Refused: too fast, too long, not a duration.
    for args in (("interval=0.01", "for=60"), ("interval=1", "for=30d"), ("interval=x", "for=1")):
        code, res = await box.run("poll_rate", "device=gauge", *args)
        assert (code, res["status"]) == (6, "failed"), (args, res)

    # A rate still running when the agent restarts goes on after it.
    code, res = await box.run("poll_rate", "device=gauge", "interval=0.25", "for=10m")
    assert code == 0, str(res)
    assert (box.tmp / "data" / "poll_rates.json").exists()
    await box.agent.restart(box.sub)
    again = time.time()
    await box.sub.wait_for(lambda s: len(box.gaps(again)) >= 6)
    assert sorted(box.gaps(again))[3] < 0.6, box.gaps(again)
    # And ends when asked.
    code, res = await box.run("poll_rate", "device=gauge", "interval=null")
    assert (code, res["output"]["ended"]) == (0, True), res
    assert not (box.tmp / "data" / "poll_rates.json").exists()


async def test_a_command_redelivered_after_a_dropped_connection_runs_once(tmp_path: Path) -> None:
    """QoS 1 at work: the agent gets a write and runs it, but the link drops before its
    PUBACK reaches the broker (a slow link: the proxy delays it), so the broker delivers the
    request again on the next connection (the session is kept). It is answered from the
    command log, and the device is written once."""
    key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, key)
    broker = Broker(tmp_path)
    await broker.start()
    async with (
        Simulator(SIM) as sim,
        FaultProxy(broker.port) as proxy,
        Subscriber(broker.port, "ioc/v1/#") as sub,
    ):
        cfg = agent_config(tmp_path, proxy.port, devices(sim))
        cfg.write_text(
            cfg.read_text()
            + "commands:\n  policy: {write: signed}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
        )
        ready = lambda s: any(r["device"] == "gauge" for r in s.readings())  # noqa: E731
        async with agent_running(cfg, sub, broker, ready) as agent:
            gauge = sim.device("gauge")
            proxy.latency_s = 1.5  # from now on: the agent's PUBACK takes 1.5 s to arrive
            sending = asyncio.create_task(
                asyncio.to_thread(
                    remote, broker.port, "write", "device=gauge", "metric=setpoint", "value=7",
                    "--id", "write-once", timeout=40, key=key,
                )
            )  # fmt: skip
            async with asyncio.timeout(20):
                while not gauge.writes:  # the simulator's own record: no event to wait on
                    await asyncio.sleep(0.005)
            proxy.latency_s = 0.0
            proxy.drop()  # the PUBACK (and the result) still on their way: lost
            code, result, err = await sending
            assert code == 0, err
            assert result is not None
            assert result["output"]["read_back"] == 7
            # One answer at least (the first was still unsent when the request came again:
            # the log sends the answer once, marked replayed), every one the same write.
            answers = [r for r in sub.on("/cmd_result") if r["id"] == "write-once"]
            assert answers
            assert {r["output"]["read_back"] for r in answers} == {7}, answers
            assert [list(w.values) for w in gauge.writes] == [[7]]
            assert "command write id=write-once again: answered from the log" in agent.log_text()
