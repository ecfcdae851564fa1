"""Faults between the agent and the broker, each with the completeness checker's verdict.

The agent talks to the broker through a fault proxy (tests/helpers.py) that can refuse,
reset, delay, throttle and black-hole the link. Every test ends with the checker's table:
every counter value the simulator handed out must arrive, in ``seq`` order, with no gap in
``seq`` inside a run.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from completeness import format_table
from helpers import FaultProxy
from rig import DEVICES, running_rig

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("persistence", [True, False], ids=["persistent", "forgetful"])
async def test_broker_outage_loses_nothing(tmp_path: Path, persistence: bool) -> None:
    """The broker stops for 8 s and comes back, with its persistence on or off. A broker
    without persistence forgets the agent's session and every message in flight: the agent
    must send again what was not acknowledged. (The proxy keeps the agent out until the test's
    subscriber is back, so that the subscriber, not the agent, misses nothing.)"""
    async with (
        FaultProxy(0) as proxy,
        running_rig(tmp_path, persistence=persistence, proxy=proxy) as rig,
    ):
        await rig.wait_counters(5)
        proxy.refuse = True
        proxy.drop()
        await rig.broker.stop()
        before = {d: rig.sim_counter(d) for d in DEVICES}
        await asyncio.sleep(8)  # the outage itself (the fault's duration)
        # Polled all along: 80 polls each at 100 ms; half of that on a loaded machine (under
        # two busy loops, a device of the shared serial line made 79 in the whole test),
        # none if polling waited for the broker.
        polled = {d: rig.sim_counter(d) - before[d] for d in DEVICES}
        connects = rig.sub.connects
        await rig.broker.start()
        await rig.sub.wait_for(lambda s: s.connects > connects, 20)
        proxy.refuse = False
        target = await rig.wait_caught_up(timeout=40)
        rows = rig.assert_complete(target)
    print(format_table(rows))
    assert all(n >= 40 for n in polled.values()), f"polls during the 8 s outage: {polled}"


async def test_link_resets_over_a_slow_4g_link_lose_nothing(tmp_path: Path) -> None:
    """150 ms each way and 32 kB/s each way (a poor 4G link), and the connection reset six
    times, at random moments soon after each reconnect (often while the agent is still
    saying hello). Every reading arrives, and the agent notices each reset at once: it is
    back within the reconnect backoff (at most 1 s here) and a handshake, never after a
    timeout (5 s) spent on a link that is gone."""
    rng = random.Random(4)
    async with (
        FaultProxy(0, latency_s=0.15, bytes_per_s=32_000) as proxy,
        running_rig(tmp_path, proxy=proxy) as rig,
    ):
        await rig.wait_counters(5, timeout=40)
        back_after = []
        for i in range(6):
            await asyncio.sleep(rng.uniform(0.0, 0.8))  # a random moment: the fault
            proxy.drop()
            dropped = time.monotonic()
            await proxy.wait_connections(i + 2)
            back_after.append(time.monotonic() - dropped)
        target = await rig.wait_caught_up(timeout=60)
        rows = rig.assert_complete(target)
    print(format_table(rows))
    print("back after", [f"{t:.1f}" for t in back_after])
    assert max(back_after) < 3.0, back_after


async def test_a_half_open_link_is_noticed_within_the_keepalive(tmp_path: Path) -> None:
    """The link swallows everything with no reset, the hardest case. With a 5 s keepalive
    (the least the config allows) the agent must give the connection up and dial again
    within 2 x 5 s + 2 s (MQTT's 1.5 x keepalive, a ping's round trip, scheduling), and lose
    nothing."""
    async with (
        FaultProxy(0) as proxy,
        running_rig(tmp_path, proxy=proxy, uplink__keepalive="5s") as rig,
    ):
        await rig.wait_counters(5)
        attempts = proxy.attempts
        proxy.blackhole()
        started = time.monotonic()
        await proxy.wait_attempts(attempts + 1, timeout=30)
        noticed = time.monotonic() - started
        proxy.heal()
        target = await rig.wait_caught_up(timeout=40)
        rig.assert_complete(target)
    print(f"half-open link noticed after {noticed:.1f} s")
    assert noticed <= 12.0, noticed
