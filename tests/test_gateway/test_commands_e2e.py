"""Commands end to end: ``tepi remote`` -> a real Mosquitto -> ``tepi run`` -> cmd_result.

Checked: a harmless command runs and answers (schema-valid), a disabled one is refused, a
signed policy refuses an unsigned request and takes a signed one, a bad signature and an
expired request are refused, a replayed id is answered from the log without running again,
and the log survives a restart (the replay is still recognised)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    AgentProc,
    Broker,
    Subscriber,
    agent_config,
    agent_running,
    remote,
    remote_keygen,
    run_tepi,
)
from rig import validator

pytestmark = pytest.mark.timeout(120)

RESULT = validator("command_result")


@dataclass
class Box:
    tmp: Path
    broker: Broker
    sub: Subscriber
    agent: AgentProc
    key: Path

    def remote(self, *args: str, key: bool = False) -> tuple[int, dict[str, Any] | None, str]:
        return remote(self.broker.port, *args, timeout=20, key=self.key if key else None)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, key)
    broker = Broker(tmp_path, extra="log_type debug")  # what the broker received, in order
    await broker.start()
    async with Subscriber(broker.port, "ioc/v1/#") as sub:
        devices = [{"id": "s1", "driver": "synthetic", "metrics": 2, "poll_interval": "1s"}]
        cfg = agent_config(tmp_path, broker.port, devices)
        cfg.write_text(
            cfg.read_text()
            + "commands:\n"
            + "  policy: {health: signed, buffer.stats: disabled}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
        )
        async with agent_running(
            cfg, sub, broker, lambda s: any(m["state"] == "online" for m in s.on("/status"))
        ) as agent:
            yield Box(tmp_path, broker, sub, agent, key)


async def test_commands_run_refuse_and_answer_a_replay_from_the_log(box: Box) -> None:
    code, ping, err = await asyncio.to_thread(box.remote, "ping", "--id", "req-ping-1")
    assert code == 0, err
    assert ping is not None
    RESULT.validate(ping)
    assert (ping["status"], ping["id"], ping["replayed"]) == ("done", "req-ping-1", False)
    assert ping["output"]["pong"] is True

    # Disabled by the config; signed by the config and sent unsigned; signed with the key.
    code, refused, _ = await asyncio.to_thread(box.remote, "buffer.stats")
    assert code == 6
    assert refused is not None
    RESULT.validate(refused)
    assert refused["reason"] == "disabled"
    code, unsigned, _ = await asyncio.to_thread(box.remote, "health")
    assert unsigned is not None
    assert (code, unsigned["reason"]) == (6, "unsigned")
    code, health, err = await asyncio.to_thread(box.remote, "health", key=True)
    assert code == 0, err
    assert health is not None
    validator("health").validate(health["output"])
    # The audit's counters, as they were when health ran: ping accepted and done, the
    # disabled and the unsigned request refused.
    audited = health["output"]["commands"]
    assert audited["requests"]["accepted"] == 2  # ping, and this health
    assert audited["requests"]["done"] == 1
    assert audited["refused"] == {"disabled": 1, "unsigned": 1}
    # A disabled command that does not exist at all; an expired request.
    code, unknown, _ = await asyncio.to_thread(box.remote, "reboot")
    assert unknown is not None
    assert (code, unknown["reason"]) == (6, "unknown_command")
    code, late, _ = await asyncio.to_thread(box.remote, "ping", "--lifetime", "0.001")
    assert late is not None
    assert (code, late["reason"]) == (6, "expired")

    # The same id again: answered from the log, not run again (the same uptime as before).
    code, again, _ = await asyncio.to_thread(box.remote, "ping", "--id", "req-ping-1")
    assert again is not None
    assert code == 0
    assert again["replayed"] is True
    assert again["output"] == ping["output"]
    # And after a restart too.
    await box.agent.restart(box.sub)
    code, after, _ = await asyncio.to_thread(box.remote, "ping", "--id", "req-ping-1")
    assert after is not None
    assert code == 0
    assert (after["output"], after["replayed"]) == (ping["output"], True)
    code, fresh, _ = await asyncio.to_thread(box.remote, "ping", "--id", "req-ping-2")
    assert fresh is not None
    assert (code, fresh["replayed"]) == (0, False)  # a new id runs
    audit = box.agent.log_text()
    assert "command ping id=req-ping-1 accepted (unsigned)" in audit
    assert "command health id=" in audit
    assert "refused: unsigned" in audit
    assert "command ping id=req-ping-1 again: answered from the log" in audit


async def test_a_bad_signature_is_refused(box: Box) -> None:
    other = box.tmp / "stranger.key"
    made = await asyncio.to_thread(run_tepi, "remote", "--keygen", str(other))
    assert made.returncode == 0
    out = await asyncio.to_thread(
        run_tepi,
        "remote", "--url", f"mqtt://127.0.0.1:{box.broker.port}", "--gateway", "gw-test",
        "--key", str(other), "--key-id", "ioc-1", "--timeout", "20", "health",
    )  # fmt: skip
    assert out.returncode == 6
    assert json.loads(out.stdout)["reason"] == "bad_signature"


async def test_commands_sent_while_the_gateway_is_offline_run_when_it_is_back(box: Box) -> None:
    """The broker keeps the gateway's session (uplink.session_expiry): a command sent while
    the agent is stopped waits there, and runs at the next connect; one that expired
    meanwhile is refused as expired, not run."""

    def send(*args: str) -> tuple[int, dict[str, Any] | None, str]:
        return remote(box.broker.port, *args, timeout=40)

    assert await box.agent.stop() == 0
    onlines = sum(m["state"] == "online" for m in box.sub.on("/status"))
    waiting = asyncio.create_task(asyncio.to_thread(send, "ping", "--id", "while-away"))
    stale = asyncio.create_task(asyncio.to_thread(send, "ping", "--id", "stale", "--lifetime", "1"))
    # Both requests are at the broker (the IOC's subscriber sees them), then "stale" expires.
    await box.sub.wait_for(lambda s: len(s.on("/cmd/ping")) >= 2)
    expires = next(m["expires_at"] for m in box.sub.on("/cmd/ping") if m["id"] == "stale")
    while time.time() <= expires:  # a deadline on the wall clock, not a sync
        await asyncio.sleep(expires - time.time() + 0.05)
    box.agent.start()
    await box.sub.wait_for(lambda s: sum(m["state"] == "online" for m in s.on("/status")) > onlines)
    (code, ran, err), (late_code, late, _) = await waiting, await stale
    assert code == 0, err
    assert ran is not None
    assert ran["output"]["pong"] is True
    assert late is not None
    assert (late_code, late["reason"]) == (6, "expired")
    # Each of the two sessions subscribed to cmd/+ before it said "online" (its first
    # status): a stop right after "online" still leaves the subscription at the broker.
    # The broker's own log (log_type debug), in the order it received them.
    sessions = subscribed_before_online(box.broker.log.read_text(), "tepi-gw-test")
    assert sessions == [True, True], sessions


def subscribed_before_online(broker_log: str, client: str) -> list[bool]:
    """Per session of ``client`` (from each CONNACK): whether its SUBSCRIBE to cmd/+ came
    before its first PUBLISH on status."""
    out: list[bool] = []
    subscribed = said = pending_subscribe = False
    for line in broker_log.splitlines():
        if f"Sending CONNACK to {client} " in line:
            subscribed = said = False
            out.append(False)
        elif f"Received SUBSCRIBE from {client}" in line:
            pending_subscribe = True
            continue
        elif line.strip().endswith("/cmd/+ (QoS 1)") and pending_subscribe and not said:
            subscribed = True
        elif f"Received PUBLISH from {client} " in line and "/status'" in line and not said:
            said = True
            out[-1] = subscribed
        pending_subscribe = False
    return out
