"""A register the device refuses every poll is sent as a bad reading once, then as a
heartbeat every ``bad_heartbeat``, and the polls in between are counted in health
(``bad_suppressed``); a good reading, or another reason, is sent at once."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from helpers import AgentProc, Broker, Subscriber, agent_config

from tepi.gateway.poller import BadHeartbeat
from tepi_sim import Simulator

SIM: dict[str, Any] = {
    "devices": [
        {
            "id": "meter",
            "transport": "tcp",
            "unit": 1,
            "fill_gaps": False,  # an unmapped address is refused: exception 2
            "registers": [{"address": 0, "table": "holding", "kind": "counter"}],
        }
    ]
}


async def test_a_register_refused_every_poll_is_sent_once_then_as_a_heartbeat(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        host, port = sim.endpoint("meter").split(":")
        device = {
            "id": "meter",
            "driver": "modbus-tcp",
            "host": host,
            "port": int(port),
            "unit": 1,
            "poll_interval": "100ms",
            "timeout": "500ms",
            "bad_heartbeat": "1s",
            "registers": [{"name": "counter", "address": 0}, {"name": "ghost", "address": 500}],
        }
        cfg = agent_config(tmp_path, broker.port, [device], health_interval="1s")
        agent = AgentProc(cfg, tmp_path / "agent.log")
        agent.start()

        def of(metric: str) -> list[dict[str, Any]]:
            return [r for r in sub.readings() if r["metric"] == metric]

        def suppressed(s: Subscriber) -> int:
            health = s.on("/health")
            return int(health[-1]["devices"]["meter"].get("bad_suppressed", 0)) if health else 0

        try:
            # 3.5 s of polls at 10 a second: the ghost register refused about 35 times.
            await sub.wait_for(lambda s: len(of("counter")) >= 35, 30)
            await sub.wait_for(lambda s: suppressed(s) >= 20, 10)
        finally:
            await agent.stop()
            await broker.stop()
    ghosts = of("ghost")
    polls = len(of("counter"))
    assert all(r["quality"] == "bad" for r in ghosts)
    assert {r["reason"] for r in ghosts} == {"modbus exception 2 (illegal data address)"}
    # Once, then one a second: not one per poll.
    assert 2 <= len(ghosts) <= polls / 10 + 2, (len(ghosts), polls)
    gaps = [b["mono"] - a["mono"] for a, b in itertools.pairwise(ghosts)]
    assert all(g >= 0.95 for g in gaps), gaps
    health = json.loads([p for t, p, _ in sub.messages if t.endswith("/health")][-1])
    assert health["devices"]["meter"]["bad_suppressed"] >= 20
    assert health["devices"]["meter"]["bad_readings"] >= len(ghosts)


def test_a_new_reason_or_a_good_reading_between_is_sent_at_once() -> None:
    beat = BadHeartbeat()
    busy, refused = "modbus exception 6 (device busy)", "modbus exception 2 (illegal data address)"
    assert beat.send("v", busy, 0.0, 10.0)  # the first
    assert not beat.send("v", busy, 1.0, 10.0)  # the same again: counted, not sent
    assert beat.send("v", refused, 2.0, 10.0)  # another reason: at once
    assert not beat.send("v", refused, 3.0, 10.0)
    assert beat.send("v", None, 4.0, 10.0)  # good
    assert beat.send("v", refused, 5.0, 10.0)  # bad again after a good one: at once
    assert beat.send("w", refused, 5.5, 10.0)  # each metric on its own
    assert not beat.send("v", refused, 14.9, 10.0)
    assert beat.send("v", refused, 15.0, 10.0)  # the heartbeat
