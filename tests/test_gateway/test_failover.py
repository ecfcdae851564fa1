"""A failover list of brokers (``uplink.url`` as a list), end to end: the simulator ->
``tepi run`` -> two Mosquittos, each with its own subscriber.

The first broker stops: readings go on through the second. It comes back: after
``uplink.failover.hold`` the agent returns to it. The completeness checker, fed what both
subscribers received, must find every counter value and no gap in ``seq``; each broker's
stream on its own must keep the devices' order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from completeness import Completeness, format_table
from helpers import AgentProc, Broker, Subscriber, agent_config
from rig import DEVICES, SIM, Rig, agent_devices, validator

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(120)

HOLD = 2.0  # uplink.failover.hold, short for the test


def merged(*subs: Subscriber) -> Completeness:
    """The checker fed every message both brokers delivered (the IOC's view of both)."""
    check = Completeness()
    for sub in subs:
        for (topic, payload, _), at in zip(sub.messages, sub.received_at, strict=True):
            check.feed(topic, payload, at)
    return check


def reached(target: dict[str, int]) -> Callable[[Subscriber], bool]:
    def pred(sub: Subscriber) -> bool:
        return all(sub.max_counter.get(d, 0) >= target[d] for d in DEVICES)

    return pred


def broker_of(sub: Subscriber) -> str | None:
    health = sub.on("/health")
    return health[-1]["uplink"]["broker"] if health else None


async def test_the_agent_fails_over_and_returns_losing_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    await first.start()
    await second.start()
    urls = [f"mqtt://127.0.0.1:{first.port}", f"mqtt://127.0.0.1:{second.port}"]
    try:
        async with (
            Simulator(SIM) as sim,
            Subscriber(first.port, "ioc/v1/#") as sub_a,
            Subscriber(second.port, "ioc/v1/#") as sub_b,
        ):
            cfg = agent_config(
                tmp_path,
                first.port,
                agent_devices(sim.endpoints()),
                health_interval="1s",
                uplink__url=urls,
                uplink__failover={"hold": f"{HOLD}s", "probe_interval": "200ms"},
            )
            agent = AgentProc(cfg, tmp_path / "agent.log")
            rig = Rig(tmp_path, first, sim, sub_a, agent)  # for the simulator's counters
            agent.start()
            try:
                await sub_a.wait_for(reached(dict.fromkeys(DEVICES, 5)), 30)
                await sub_a.wait_for(lambda s: broker_of(s) == urls[0], 10)
                assert not sub_b.on("/telemetry"), (
                    "the second broker is not used while the first is"
                )

                # The first broker goes: the readings go on through the second.
                await first.stop()
                target = {d: rig.sim_counter(d) + 10 for d in DEVICES}
                await sub_b.wait_for(reached(target), 30)
                await sub_b.wait_for(lambda s: broker_of(s) == urls[1], 10)
                validator("health").validate(sub_b.on("/health")[-1])

                # It comes back (its subscriber first): the agent returns after the hold.
                connects, onlines = sub_a.connects, len(sub_a.on("/status"))
                await first.start()
                back = time.monotonic()
                await sub_a.wait_for(lambda s: s.connects > connects, 10)
                await sub_a.wait_for(
                    lambda s: any(m["state"] == "online" for m in s.on("/status")[onlines:]), 20
                )
                returned_after = time.monotonic() - back
                await sub_b.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", 10)
                assert sub_b.on("/status")[-1]["reason"] == "failover"
                target = {d: rig.sim_counter(d) + 10 for d in DEVICES}
                await sub_a.wait_for(reached(target), 30)
                await sub_a.wait_for(lambda s: broker_of(s) == urls[0], 10)
            finally:
                await agent.stop()
    finally:
        await first.stop()
        await second.stop()

    print(f"returned {returned_after:.1f} s after the first broker came back (hold {HOLD} s)")
    assert returned_after >= HOLD, "the hold was not kept"
    check = merged(sub_a, sub_b)
    rows = check.table(target)
    print(format_table(rows))
    for row in rows:
        assert row.lost == 0, row
        assert row.out_of_order == 0, row
    assert check.seq_gaps() == [], check.seq_gaps()[:10]
    assert check.undecodable == 0
    for sub in (sub_a, sub_b):  # each broker's stream on its own keeps the order
        assert all(row.out_of_order == 0 for row in sub.completeness().table()), sub.port
    assert sub_b.on("/telemetry"), "nothing went through the second broker"
    log = agent.log_text()
    assert "a later one of the list" in log
    assert "moving back to it" in log
    assert "Traceback" not in log
