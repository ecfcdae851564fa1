"""A poll tick's readings go in one message (``uplink.batch.round_wait``, ``pacing.Rounds``).

The rig's three devices (two on one RTU line, one on Modbus TCP) are polled at the same
instants. With nothing in flight the uplink used to send the first answer of a tick alone,
and the others in a second message once the first was acknowledged; now it waits while the
tick's other polls are under way, never longer than ``round_wait``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from rig import DEVICES, running_rig

from tepi.gateway.pacing import Rounds

pytestmark = pytest.mark.timeout(120)


def _whole_ticks(messages: list[dict[str, Any]]) -> float:
    """The share of telemetry messages that hold a reading of each of the rig's devices."""
    sets = [{r["device"] for r in m["readings"]} for m in messages]
    return sum(1 for s in sets if s == set(DEVICES)) / len(sets)


@pytest.mark.parametrize("round_wait", [None, "0s"], ids=["default", "off"])
async def test_a_ticks_readings_go_in_one_message(tmp_path: Path, round_wait: str | None) -> None:
    over: dict[str, Any] = {}
    if round_wait is not None:
        over["uplink__batch"] = {"round_wait": round_wait}
    async with running_rig(tmp_path, **over) as rig:
        await rig.wait_counters(5)
        skip = len(rig.sub.on("/telemetry"))  # the first polls were not on one grid yet
        await rig.wait_counters(40)
        messages = rig.sub.on("/telemetry")[skip:]
    whole = _whole_ticks(messages)
    print(f"round_wait {round_wait}: {len(messages)} messages, {whole:.0%} with every device")
    if round_wait is None:
        # One message a tick: a tick missed (a poll late on a loaded machine) splits one.
        assert whole >= 0.8, whole
    else:
        # The first answer alone, the rest after its PUBACK: this test can tell them apart.
        assert whole <= 0.5, whole


@pytest.mark.parametrize("round_wait", ["50ms", "500ms"])
async def test_a_slow_device_does_not_hold_the_others(tmp_path: Path, round_wait: str) -> None:
    """The TCP device answers after 400 ms (its timeout is 500 ms), so a poll of it is always
    under way. Its first slow poll holds the RTU devices' readings at most ``round_wait``;
    from then on it is not waited for (its last poll took longer than ``round_wait``), and
    their readings go as soon as their own tick's polls are over. With a ``round_wait`` of
    500 ms, longer than it takes, it is waited for."""
    async with running_rig(tmp_path, uplink__batch={"round_wait": round_wait}) as rig:
        await rig.wait_counters(5)
        rig.sim.device("river-level-3").set_fault("slow", delay_s=0.4)
        start = len(rig.sub.messages)
        base = {d: len(rig.counters(d)) for d in DEVICES}
        await rig.sub.wait_for(
            lambda _: (
                all(len(rig.counters(d)) >= base[d] + 20 for d in DEVICES[:2])
                and len(rig.counters("river-level-3")) >= base["river-level-3"] + 5
            ),
            60,
        )
        waits = [
            at - r["ts"]
            for (topic, payload, _), at in zip(
                rig.sub.messages[start:], rig.sub.received_at[start:], strict=True
            )
            if topic.endswith("/telemetry")
            for r in json.loads(payload)["readings"]
            if r["device"] != "river-level-3" and r["metric"] == "counter"
        ]
    waited = statistics.median(waits)
    print(f"RTU readings, read to broker: median {waited * 1000:.0f} ms over {len(waits)}")
    if round_wait == "50ms":
        assert waited < 0.04, waited  # about 50 ms if it were waited for up to round_wait
    else:
        assert waited > 0.1, waited  # waited for: about 200 ms


async def test_rounds_count_only_the_polls_of_a_tick_that_has_come() -> None:
    rounds = Rounds(0.05)
    now = asyncio.get_running_loop().time()
    rounds.begin(now + 10)  # a request held until its tick: not under way yet
    assert not rounds.busy(now)
    rounds.begin(now)
    rounds.begin(now)
    assert rounds.busy(now)
    done = asyncio.Event()
    rounds.wait(done)
    rounds.end(now)
    assert not done.is_set()  # one poll of the tick is still under way
    rounds.end(now)
    assert done.is_set()
    assert not rounds.busy(now)
    assert rounds.busy(now + 10)
