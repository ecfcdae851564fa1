"""The agent's time sources: the kernel clock when synced, else a fresh GPS time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tepi.buffer import Buffer, BufferSettings
from tepi.core.clock import WINDOW, Stamp, WallClock, boottime
from tepi.core.records import Sample, Value, Values
from tepi.gateway.poller import DeviceStats, put_values, reading


def test_the_least_delayed_of_the_recent_gps_times_is_the_offset() -> None:
    synced = [False]
    clock = WallClock(lambda: synced[0], max_age_s=100)
    assert clock.stamp() == Stamp(False, None)  # no GPS yet: nothing trustworthy
    # true offset utc - mono = 1000; each sentence arrives 0.1 .. 0.5 s late
    for i, late in enumerate([0.3, 0.1, 0.5, 0.2]):
        clock.gps_update(1000.0 + 10 * i, 10 * i + late, "gps-1")
    assert clock.gps_fix(40) == pytest.approx(1000 - 0.1)
    # older ones leave the window: a worse recent set gives its own best
    for i in range(WINDOW):
        clock.gps_update(2000.0 + i, 1000.0 + i + 0.4, "gps-1")
    assert clock.gps_fix(1100) == pytest.approx(1000 - 0.4)
    assert clock.gps_fix(1016 + 100.5) is None  # the last fix is too old
    now = boottime()
    clock.gps_update(now + 7.0, now, "gps-1")
    assert clock.stamp().gps_fix is not None
    assert clock.health()["source"] == "gps"
    synced[0] = True
    assert clock.stamp() == Stamp(True, None)  # the kernel's own clock wins once synced
    health = clock.health()
    assert health["source"] == "system"
    assert health["gps_device"] == "gps-1"


def test_a_poll_is_dated_by_its_stamp() -> None:
    s = Sample("pm25", 12.0, "ug/m3", ts=5.0, mono=100.0, reason="warming up", uncertain=True)
    r = reading("d", s, Stamp(False, 1_800_000_000.0))
    assert r.ts == 1_800_000_100.0
    assert r.synced
    assert r.gps_time
    assert r.uncertain
    assert r.quality == "uncertain"
    r = reading("d", s, Stamp(False, None))
    assert r.ts == 5.0
    assert not r.synced
    assert not r.gps_time
    r = reading("d", Sample("x", None, None, 5.0, 100.0, "timeout"), Stamp(True, None))
    assert r.ts == 5.0
    assert r.synced
    assert r.quality == "bad"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (2**63, "value out of range"),
        (-(2**63) - 1, "value out of range"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
    ],
)
def test_a_value_the_buffer_cannot_keep_becomes_a_bad_reading(value: float, why: str) -> None:
    r = reading("d", Sample("energy", value, "Wh", 1.0, 1.0), Stamp(True, None))
    assert r.value is None
    assert r.reason == why
    assert r.quality == "bad"
    ok = reading("d", Sample("energy", 2**63 - 1, "Wh", 1.0, 1.0), Stamp(True, None))
    assert ok.value == 2**63 - 1


async def test_a_polls_values_get_the_same_rules_as_samples(tmp_path: Path) -> None:
    """``put_values``: values the buffer cannot keep become bad, the stamp dates the run, a
    bad value the heartbeat holds back is left out and counted, the rest goes as one run."""
    settings = BufferSettings(path=tmp_path / "b.db", commit_interval_s=60.0)
    stats = DeviceStats()
    values: list[Value] = [2**63, float("inf"), 7, 2**63 - 1, None, True, "ok"]
    reasons: list[str | None] = [None, None, None, None, "timeout", None, None]
    names = tuple(f"m{i}" for i in range(len(values)))
    async with Buffer(settings, "boot") as buf:
        for _ in range(2):
            polled = Values(names, (None,) * len(names), list(values), 5.0, 100.0, reasons)
            put_values("d", polled, Stamp(False, 1_800_000_000.0), buf, stats, now=1.0, every=60)
        batch = await buf.fetch(0, 100)
    assert batch is not None
    got = [(i.reading.metric, i.reading.value, i.reading.reason) for i in batch.items]
    first = [
        ("m0", None, "value out of range"),
        ("m1", None, "not a finite number"),
        ("m2", 7, None),
        ("m3", 2**63 - 1, None),
        ("m4", None, "timeout"),
        ("m5", True, None),
        ("m6", "ok", None),
    ]
    assert got == first + [g for g in first if g[2] is None]  # the bad ones held back once
    assert stats.bad_suppressed == 3
    assert stats.readings == 14
    assert {i.reading.ts for i in batch.items} == {1_800_000_100.0}
    assert all(i.reading.gps_time and i.reading.synced for i in batch.items)
    assert stats.latest()["m4"].reason == "timeout"


def test_the_polls_of_one_tick_share_a_stamp_and_the_next_tick_asks_again() -> None:
    asked: list[bool] = []
    synced = False

    def kernel() -> bool:
        asked.append(synced)
        return synced

    clock = WallClock(kernel)
    assert clock.stamp_for(10.0) == Stamp(False, None)
    synced = True
    assert clock.stamp_for(10.0) == Stamp(False, None)  # the same tick: not asked again
    assert len(asked) == 1
    assert clock.stamp_for(10.1) == Stamp(True, None)  # the next tick: asked
    assert len(asked) == 2
    assert clock.stamp() == Stamp(True, None)  # stamp() always asks
    assert len(asked) == 3
