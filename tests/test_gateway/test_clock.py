"""Clock jumps, as on a Pi without a real-time clock: it boots with a stale wall clock, NTP
steps it years forward, and a bad time source may step it back. The agent runs under the
fakeclock shim (tests/shims/fakeclock.c), which moves only that process's wall clock and
kernel sync flag; the monotonic and boot clocks run on, as with a real step.

What must hold: nothing is lost or reordered (seq and mono), readings taken before the sync
but sent after it carry a corrected ``ts`` (docs/payload.md), those sent while unsynced are
flagged, no age limit expires readings because the clock jumped, and uptime does not jump.
A step while the kernel says "synced" is believed: those readings carry the clock's time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from completeness import format_table
from helpers import FaultProxy, compile_shim
from rig import DEVICES, Rig, running_rig, validator

pytestmark = pytest.mark.timeout(150)

STALE_S = -3 * 365 * 86400.0  # booted with the clock three years behind (fake-hwclock)


def set_clock(path: Path, offset_s: float, *, synced: bool) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{offset_s} {int(synced)}\n")
    tmp.replace(path)


def true_ts(reading: dict[str, Any]) -> float:
    """When a reading was really taken: its ``mono`` on this (unfaked) process's clocks."""
    return float(reading["mono"]) + time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


async def polls(rig: Rig, n: int) -> None:
    """Wait until every simulated device has answered ``n`` more reads."""
    start = {d: rig.sim_counter(d) for d in DEVICES}
    async with asyncio.timeout(30):
        while any(rig.sim_counter(d) < start[d] + n for d in DEVICES):
            await asyncio.sleep(0.05)


async def test_clock_jumps_lose_nothing_and_timestamps_are_corrected_or_flagged(
    tmp_path: Path,
) -> None:
    clock = tmp_path / "clock"
    set_clock(clock, STALE_S, synced=False)
    env = {"LD_PRELOAD": str(compile_shim("fakeclock", tmp_path)), "FAKECLOCK_FILE": str(clock)}
    async with (
        FaultProxy(0) as proxy,
        running_rig(tmp_path, proxy=proxy, env=env, buffer__max_age="1h") as rig,
    ):
        # 1. Unsynced, link up: readings go out at once, flagged "unsynced".
        await rig.wait_counters(5)
        # 2. Link down, still unsynced: readings wait in the buffer with stale timestamps.
        proxy.refuse = True
        proxy.drop()
        await polls(rig, 10)
        # 3. NTP steps the clock three years forward. The link stays down for longer than the
        #    buffer's expiry period (10 s), so a 1 h age limit judged by the wall clock would
        #    throw the stale readings away.
        set_clock(clock, 0.0, synced=True)
        synced_at = rig.sim_counter(DEVICES[0])
        await asyncio.sleep(11)  # the fault's duration: one expiry pass must run
        proxy.refuse = False
        await rig.wait_caught_up(timeout=40)
        # 4. A bad source steps the clock back an hour, then forward again, while "synced".
        back = rig.sim_counter(DEVICES[0])
        set_clock(clock, -3600.0, synced=True)
        await polls(rig, 5)
        forth = rig.sim_counter(DEVICES[0])
        set_clock(clock, 0.0, synced=True)
        await polls(rig, 5)
        target = await rig.wait_caught_up(timeout=40)
        rows = rig.assert_complete(target)
    print(format_table(rows))
    tele = rig.sub.on("/telemetry")
    v = validator("telemetry")
    for msg in tele:
        v.validate(msg)

    readings = sorted(rig.sub.readings(), key=lambda r: r["seq"])
    monos = [r["mono"] for r in readings]
    assert monos == sorted(monos), "seq order and read order (mono) disagree"

    by_status: dict[str | None, list[dict[str, Any]]] = {}
    for r in readings:
        by_status.setdefault(r.get("ts_status"), []).append(r)
    unsynced, corrected = by_status.get("unsynced", []), by_status.get("corrected", [])
    assert unsynced, "readings sent before the sync must be flagged"
    assert corrected, "readings read before the sync and sent after it must be corrected"
    for r in unsynced:  # as the stale clock said: three years off
        assert r["ts"] - true_ts(r) == pytest.approx(STALE_S, abs=2), r
    for r in corrected:  # dated from mono and the synced clock
        assert r["ts"] == pytest.approx(true_ts(r), abs=0.1), r
    for r in by_status.get(None, []):  # read with a synced clock: ts as that clock said
        if r["device"] != DEVICES[0] or r["metric"] != "counter":
            continue
        off = r["ts"] - true_ts(r)
        if back + 2 < r["value"] <= forth:
            assert off == pytest.approx(-3600, abs=2), r
        elif not back <= r["value"] <= forth + 2:
            assert off == pytest.approx(0, abs=0.5), r
    first = rig.counters(DEVICES[0])
    assert len(corrected) >= 3 * 10, "the outage's backlog (10 polls of each device) is corrected"
    assert all(  # read before the sync (give or take the poll that saw it happen)
        r["value"] <= synced_at + 2
        for r in corrected
        if r["device"] == DEVICES[0] and r["metric"] == "counter"
    )
    assert first == list(range(1, len(first) + 1))

    health = rig.sub.on("/health")
    assert health[0]["clock_synced"] is False
    assert health[-1]["clock_synced"] is True
    assert max(h["uptime_s"] for h in health) < 300, "uptime followed the wall clock"
    assert all(not h["buffer"]["dropped"] for h in health), "a clock jump dropped readings"
