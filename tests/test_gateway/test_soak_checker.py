"""The soak's loss check (tests/rig.py ``lost_outside_windows``), on made-up counters: a value
missing right before a cut (a kill -9, a line cut) is explained; any other is a loss."""

from __future__ import annotations

import pytest
from rig import lost_outside_windows

pytestmark = pytest.mark.timeout(30)

WINDOW = 0.7


def read(values: range, t0: float = 100.0) -> dict[int, float]:
    """Values read every 100 ms from ``t0``."""
    return {v: t0 + 0.1 * i for i, v in enumerate(values)}


def test_nothing_missing_is_nothing_lost() -> None:
    assert lost_outside_windows({"a": read(range(1, 50))}, {"a": 49}, [], WINDOW) == []


def test_a_value_missing_with_no_cut_near_is_lost() -> None:
    taken = read(range(1, 50))
    del taken[20]
    bad = lost_outside_windows({"a": taken}, {"a": 49}, [200.0], WINDOW)
    assert bad == ["a: counter 20 lost (read after 101.80; cut 200.0)"]
    assert lost_outside_windows({"a": taken}, {"a": 49}, [], WINDOW) == [
        "a: counter 20 lost (read after 101.80; cut None)"
    ]


def test_a_value_answered_just_before_a_cut_is_explained_and_only_then() -> None:
    taken = read(range(1, 50))
    del taken[20]  # value 19 was read at 101.8
    assert lost_outside_windows({"a": taken}, {"a": 49}, [102.0], WINDOW) == []
    assert lost_outside_windows({"a": taken}, {"a": 49}, [101.8 + WINDOW + 0.01], WINDOW)
    # A cut before the value's predecessor was read explains nothing.
    assert lost_outside_windows({"a": taken}, {"a": 49}, [101.5], WINDOW)


def test_values_handed_out_but_not_yet_arrived_at_the_end_are_lost() -> None:
    """``upto`` is what the simulator had handed out when the subscriber caught up: a value
    up to it that never came is lost, one after it is not judged."""
    taken = read(range(1, 50))
    assert lost_outside_windows({"a": taken}, {"a": 51}, [], WINDOW) == [
        "a: counter 50 lost (read after 104.80; cut None)",
        "a: counter 51 lost (read after 104.80; cut None)",
    ]
    assert lost_outside_windows({"a": taken}, {"a": 49}, [], WINDOW) == []
