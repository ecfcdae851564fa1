"""The completeness checker finds every kind of fault it is meant to find, and no false ones."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from completeness import Completeness, format_table
from hypothesis import given
from hypothesis import strategies as st

from tepi.buffer.records import Batch, StoredReading
from tepi.core.records import Reading
from tepi.gateway.compact import encode_compact

pytestmark = pytest.mark.timeout(60)

T0 = 1_795_000_000.0


def reading(seq: int, value: int | None, device: str = "d1", **kw: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "device": device,
        "metric": "counter",
        "value": value,
        "unit": None,
        "ts": T0 + seq,
        "mono": float(seq),
        "quality": "good",
        **kw,
    }


def msg(*readings: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "readings": list(readings)}).encode()


def fed(*messages: bytes, received_at: float = T0 + 1000) -> Completeness:
    c = Completeness()
    for m in messages:
        c.feed("ioc/v1/gw/telemetry", m, received_at)
    return c


def test_a_complete_stream_is_reported_complete() -> None:
    c = fed(msg(*(reading(s, s) for s in range(1, 11))))
    [row] = c.table({"d1": 10})
    assert (row.expected, row.received, row.lost, row.duplicated, row.out_of_order) == (
        10,
        10,
        0,
        0,
        0,
    )
    assert row.max_delay_s == pytest.approx(999.0)
    assert c.seq_gaps() == []
    assert c.seq_repeats() == 0


def test_a_lost_reading_shows_in_both_signals() -> None:
    c = fed(msg(*(reading(s, s) for s in range(1, 11) if s != 5)))
    [row] = c.table({"d1": 12})  # the simulator handed out two more that never came
    assert row.lost == 3
    assert row.lost_values == (5, 11, 12)
    assert c.seq_gaps() == [(5, 5)]


def test_a_resent_message_is_a_duplicate_by_seq() -> None:
    first = msg(reading(1, 1), reading(2, 2))
    c = fed(first, first, msg(reading(3, 3)))
    [row] = c.table()
    assert row.duplicated == 2
    assert row.lost == 0
    assert c.seq_repeats() == 2


def test_one_read_stored_twice_is_a_duplicate_by_value() -> None:
    c = fed(msg(reading(1, 1), reading(2, 2), reading(3, 2), reading(4, 3)))
    [row] = c.table()
    assert row.duplicated == 1
    assert c.seq_repeats() == 0


def test_seq_order_that_disagrees_with_read_order_is_out_of_order() -> None:
    # arrival order does not matter (the backlog and live lanes interleave); seq order does
    c = fed(msg(reading(3, 3), reading(4, 4)), msg(reading(1, 1), reading(2, 2)))
    assert c.table()[0].out_of_order == 0
    c = fed(msg(reading(1, 1), reading(2, 3), reading(3, 2)))
    assert c.table()[0].out_of_order == 1


def test_a_new_run_announced_by_first_seq_is_no_gap() -> None:
    c = fed(msg(reading(1, 1), reading(2, 2)), msg(reading(100, 3), reading(101, 4)))
    assert c.seq_gaps() == [(3, 99)]
    c.feed("ioc/v1/gw/status", json.dumps({"state": "online", "first_seq": 100}).encode())
    assert c.seq_gaps() == []
    assert c.table()[0].lost == 0


def test_bad_and_other_metrics_count_for_seq_but_not_for_the_counter() -> None:
    c = fed(
        msg(
            reading(1, 1),
            reading(2, 0, metric="pm25"),
            reading(3, None, quality="bad"),
            reading(4, 2),
        )
    )
    [row] = c.table()
    assert (row.received, row.lost) == (2, 0)
    assert c.seq_gaps() == []


def test_a_value_the_gateway_said_it_failed_to_read_is_unread_not_lost() -> None:
    """A device's answer that came after the timeout: the simulator handed out 3 (and 4, a
    streak of two failed polls), the gateway sent one bad reading for the streak's first."""
    bad = {"quality": "bad", "reason": "timeout"}
    c = fed(msg(reading(1, 1), reading(2, 2), reading(3, None, **bad), reading(4, 5)))
    [row] = c.table({"d1": 5})
    assert (row.received, row.lost, row.unread) == (3, 0, 2)
    assert c.seq_gaps() == []
    assert "unread" in format_table([row])


def test_a_failed_read_elsewhere_explains_no_missing_value() -> None:
    bad = {"quality": "bad", "reason": "timeout"}
    good = [reading(seq, value) for seq, value in ((1, 1), (3, 2), (5, 3), (7, 5), (9, 6))]
    # The failure is before the gap, after it, or another device's: 4 is lost.
    for failed in (
        reading(2, None, **bad),
        reading(8, None, **bad),
        reading(6, None, device="d2", **bad),
    ):
        c = fed(msg(*good, failed))
        row = next(r for r in c.table({"d1": 6}) if r.device == "d1")
        assert (row.lost, row.lost_values, row.unread) == (1, (4,), 0), failed
    c = fed(msg(*good, reading(6, None, **bad)))
    assert (c.table({"d1": 6})[0].lost, c.table({"d1": 6})[0].unread) == (0, 1)


def test_compact_messages_are_read_too() -> None:
    items = [
        StoredReading(s, Reading("d1", "counter", s, None, T0 + s, float(s))) for s in range(1, 6)
    ]
    payload, n = encode_compact(
        "gw", Batch.of("boot", items), max_bytes=65536, current_boot="boot", clock_synced=True
    )
    assert n == 5
    c = Completeness()
    c.feed("ioc/v1/gw/telemetry", payload, time.time())
    [row] = c.table({"d1": 5})
    assert (row.received, row.lost) == (5, 0)


def test_the_table_names_every_column() -> None:
    c = fed(msg(reading(1, 1), reading(2, 2)))
    text = format_table(c.table({"d1": 3, "d2": 4}))
    assert text.splitlines()[0].split() == [
        "device",
        "expected",
        "received",
        "lost",
        "unread",
        "duplicated",
        "out",
        "of",
        "order",
        "max",
        "delay",
    ]
    d2 = next(line for line in text.splitlines() if line.startswith("d2"))
    assert d2.split()[:6] == ["d2", "4", "0", "4", "0", "0"]


@given(st.binary(max_size=200), st.sampled_from(["/telemetry", "/status", "/health"]))
def test_any_payload_is_counted_or_ignored_never_a_crash(payload: bytes, suffix: str) -> None:
    c = Completeness()
    c.feed("ioc/v1/gw" + suffix, payload, T0)
    assert c.undecodable in (0, 1)
    c.table()
