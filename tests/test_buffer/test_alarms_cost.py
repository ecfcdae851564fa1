"""What a transition costs: microseconds per fire() (and per resolve()), with fsyncs on and off,
on the disk tmp_path is on. Printed (``pytest -s``) for docs/performance.md; the bounds asserted
are loose, only to catch a transition that stopped being one small transaction."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tepi.buffer.alarms import AlarmStore

pytestmark = pytest.mark.timeout(30)
RULES = 200


def per_call_us(store: AlarmStore) -> tuple[float, float]:
    """(µs per fire, µs per resolve) over RULES rules, with the store already holding some."""
    t0 = time.perf_counter()
    for i in range(RULES):
        store.fire(
            f"rule-{i}", severity="critical", since_ts=1.0, since_mono=1.0, value=2.6,
            device="river-level-3", metric="level", labels={"site": "hue"}, ts=2.0, mono=2.0,
        )  # fmt: skip
    t1 = time.perf_counter()
    for i in range(RULES):
        store.resolve(f"rule-{i}", ts=3.0, mono=3.0, value=2.2)
    t2 = time.perf_counter()
    return (t1 - t0) / RULES * 1e6, (t2 - t1) / RULES * 1e6


@pytest.mark.parametrize("sync", [False, True], ids=["sync-off", "sync-on"])
def test_cost_of_a_transition(tmp_path: Path, sync: bool) -> None:
    with AlarmStore(tmp_path, sync=sync, max_alarms=500) as store:
        per_call_us(store)  # warm up, and fill past max_alarms: the later rounds evict
        fire_us, resolve_us = per_call_us(store)
        again = per_call_us(store)
        fire_us, resolve_us = min(fire_us, again[0]), min(resolve_us, again[1])
        assert (
            store.stats().dropped["resolved_state"] + store.stats().dropped["resolved_message"] > 0
        ), "measured with evictions"
    print(
        f"\nalarm store, sync {'on' if sync else 'off'}: {fire_us:.0f} µs per fire(), "
        f"{resolve_us:.0f} µs per resolve()"
    )
    assert fire_us < (100_000 if sync else 5_000)
    assert resolve_us < (100_000 if sync else 5_000)


@pytest.mark.parametrize("firing", [False, True], ids=["full-of-resolved", "all-firing"])
def test_cost_on_a_full_store(tmp_path: Path, firing: bool) -> None:
    """At the default bound (10,000 rows), full: of resolved alarms (each transition drops
    one or two rows), or of firing ones (nothing may be dropped: the store goes over, and
    each transition looks for something to drop, through an index)."""
    with AlarmStore(tmp_path, sync=False) as store:
        n = 5000 if firing else 3400
        for i in range(n):
            store.fire(
                f"r{i}", severity="warning", since_ts=1.0, since_mono=1.0, value=1.0,
                device="d", metric="m",
            )  # fmt: skip
            if not firing:
                store.resolve(f"r{i}", ts=2.0, value=0.0)
        assert store.stats().rows == 10_000
        t0 = time.perf_counter()
        for i in range(n, n + 200):
            store.fire(
                f"r{i}", severity="warning", since_ts=1.0, since_mono=1.0, value=1.0,
                device="d", metric="m",
            )  # fmt: skip
        us = (time.perf_counter() - t0) / 200 * 1e6
        stats = store.stats()
        assert (stats.over_bound > 0) == firing
        assert len(store.firing()) == (n + 200 if firing else 200)
    print(
        f"\nalarm store full ({'all firing' if firing else 'of resolved'}): {us:.0f} µs per fire()"
    )
    assert us < 5_000
