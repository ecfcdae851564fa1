"""A poll's readings put at once (``put_many``): one run in RAM, handed out and acknowledged
seq by seq as before, whatever the batch boundaries, commits and restarts in between."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.buffer import Buffer, BufferSettings
from tepi.buffer.records import Run
from tepi.core.records import Reading


def run(device: str, n: int, base: int) -> Run:
    """A poll of ``n`` metrics; each value says which put and which metric it is."""
    return Run(
        device,
        tuple(f"m{i}" for i in range(n)),
        tuple("u" if i % 2 else None for i in range(n)),
        [base * 1000 + i for i in range(n)],
        1_700_000_000.0 + base,
        10.0 + base,
        reasons=[None if i % 3 else "timeout" for i in range(n)] if base % 2 else None,
    )


def expected(device: str, n: int, base: int) -> list[Reading]:
    r = run(device, n, base)
    return [r.reading(i) for i in range(n)]


def buffer(tmp: Path, **kw: int) -> Buffer:
    s = BufferSettings(path=tmp / "b.db", commit_interval_s=60.0, **kw)  # type: ignore[arg-type]
    return Buffer(s, "boot-a")


async def test_a_run_gets_consecutive_seqs_and_its_readings_come_back(tmp_path: Path) -> None:
    async with buffer(tmp_path) as buf:
        assert buf.put_many(run("d1", 5, 1)) == 1
        assert buf.put_many(run("d2", 3, 2)) == 6
        batch = await buf.fetch(0, 100)
        assert batch is not None
        assert len(batch.spans) == 2  # one object a poll, not one a value
        assert [i.seq for i in batch.items] == list(range(1, 9))
        assert [i.reading for i in batch.items] == expected("d1", 5, 1) + expected("d2", 3, 2)
        assert batch.items[3].reading.quality == "bad"


async def test_a_batch_limit_cuts_a_run_and_the_rest_follows(tmp_path: Path) -> None:
    async with buffer(tmp_path) as buf:
        buf.put_many(run("d1", 10, 1))
        first = await buf.fetch(0, 4)
        assert first is not None
        assert (first.first_seq, first.last_seq, len(first)) == (1, 4, 4)
        buf.ack(first)
        rest = await buf.fetch(first.last_seq, 100)
        assert rest is not None
        assert [i.seq for i in rest.items] == list(range(5, 11))
        assert [i.reading for i in rest.items] == expected("d1", 10, 1)[4:]
        buf.ack(rest)
        assert buf.stats().pending == 0
        assert buf.stats().acked_in_memory == 10


async def test_a_partly_acknowledged_run_commits_only_the_rest(tmp_path: Path) -> None:
    async with buffer(tmp_path) as buf:
        buf.put_many(run("d1", 10, 1))
        head = await buf.fetch(0, 6)
        assert head is not None
        buf.ack(head)
        assert await buf.flush()
        assert buf.stats().written == 4
    async with buffer(tmp_path) as buf:  # a restart reads them from the file, as readings
        batch = await buf.fetch(0, 100)
        assert batch is not None
        assert [i.seq for i in batch.items] == [7, 8, 9, 10]
        assert [i.reading for i in batch.items] == expected("d1", 10, 1)[6:]
        assert len(batch.spans) == 1  # the poll's rows are one run again


async def test_rows_read_back_from_the_file_are_grouped_by_poll(tmp_path: Path) -> None:
    """Rows of one poll (device, instant, consecutive seqs) come back as one run; a gap (an
    acknowledged row), another device or another instant starts the next."""
    async with buffer(tmp_path) as buf:
        buf.put_many(run("d1", 4, 1))  # 1-4
        buf.put_many(run("d1", 3, 2))  # 5-7: another instant
        buf.put_many(run("d2", 2, 2))  # 8-9: the same instant, another device
        buf.put_many(run("d2", 5, 3))  # 10-14
        assert await buf.flush()
        head = await buf.fetch(10, 2)  # 11 and 12 acknowledged: rows 10 and 13-14 remain
        assert head is not None
        buf.ack(head)
        assert await buf.flush()
    async with buffer(tmp_path) as buf:
        batch = await buf.fetch(0, 100)
        assert batch is not None
        got = [(r.device, r.first + a, stop - a) for r, a, stop in batch.spans]
        assert got == [("d1", 1, 4), ("d1", 5, 3), ("d2", 8, 2), ("d2", 10, 1), ("d2", 13, 2)]
        want = (
            expected("d1", 4, 1)
            + expected("d1", 3, 2)
            + expected("d2", 2, 2)
            + [r for k, r in enumerate(expected("d2", 5, 3)) if k not in (1, 2)]
        )
        assert [i.reading for i in batch.items] == want


async def test_max_pending_drops_the_oldest_readings_of_runs(tmp_path: Path) -> None:
    async with buffer(tmp_path, max_pending=8) as buf:
        buf.put_many(run("d1", 5, 1))
        buf.put_many(run("d1", 5, 2))  # 10 > 8: the two oldest go
        assert buf.stats().dropped == {"overflow": 2}
        batch = await buf.fetch(0, 100)
        assert batch is not None
        assert [i.seq for i in batch.items] == list(range(3, 11))
        buf.put_many(run("d1", 12, 3))  # larger than the bound alone: its newest 8 stay
        assert buf.stats().dropped == {"overflow": 14}
        batch = await buf.fetch(0, 100)
        assert batch is not None
        assert [i.seq for i in batch.items] == list(range(15, 23))
        assert [i.reading for i in batch.items] == expected("d1", 12, 3)[4:]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
)
async def test_every_reading_is_delivered_once_in_order_through_cuts_acks_and_commits(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], seed: int
) -> None:
    """Random runs, batch limits, lost acks (a resend from the last acknowledged seq) and
    commits in between: the readings acknowledged are exactly those put, once each."""
    rnd = random.Random(seed)
    tmp = tmp_path_factory.mktemp("runs")  # a fresh folder for each example
    want: dict[int, Reading] = {}
    got: dict[int, Reading] = {}
    async with buffer(tmp) as buf:
        cursor = 0
        acked_to = 0
        for k, n in enumerate(sizes):
            first = buf.put_many(run(f"d{k % 3}", n, k))
            want.update(zip(range(first, first + n), expected(f"d{k % 3}", n, k), strict=True))
            if rnd.random() < 0.3:
                assert await buf.flush()
            while rnd.random() < 0.7:
                batch = await buf.fetch(cursor, rnd.randint(1, 40))
                if batch is None:
                    break
                if rnd.random() < 0.2:  # the ack is lost: the sender goes back
                    cursor = acked_to
                    continue
                for item in batch.items:
                    assert item.seq not in got, f"seq {item.seq} acknowledged twice"
                    got[item.seq] = item.reading
                buf.ack(batch)
                cursor = acked_to = batch.last_seq
        while (batch := await buf.fetch(cursor, 50)) is not None:
            got.update((i.seq, i.reading) for i in batch.items)
            buf.ack(batch)
            cursor = batch.last_seq
        assert got == want
        assert buf.stats().pending == 0


async def test_watch_sets_its_event_once_the_seq_is_put(tmp_path: Path) -> None:
    async with buffer(tmp_path) as buf:
        event = asyncio.Event()
        buf.watch(12, event)
        buf.put_many(run("d1", 10, 1))
        assert not event.is_set()
        buf.put_many(run("d1", 2, 2))  # seqs 11 and 12
        assert event.is_set()
        event.clear()
        buf.put_many(run("d1", 2, 3))
        assert not event.is_set()  # fired once, then forgotten
        buf.watch(5, event)  # already put: at once
        assert event.is_set()


@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    holes=st.sets(st.integers(1, 150), max_size=40),
    lo=st.integers(1, 150),
    span=st.integers(0, 150),
    limit=st.integers(1, 200),
)
def test_spans_in_groups_as_the_per_value_walk_does(
    sizes: list[int], holes: set[int], lo: int, span: int, limit: int
) -> None:
    """The buffer's walk a run at a time (``_spans_in``: lookups and grouping in C) gives
    the spans the walk a value at a time gives, with seqs missing anywhere (acknowledged or
    dropped), runs cut by the range's ends, and any limit."""
    from tepi.buffer.store import _spans, _spans_in

    held: dict[int, Run] = {}
    seq = 1
    for k, n in enumerate(sizes):
        r = run(f"d{k % 2}", n, k)
        r.first = seq
        held.update((s, r) for s in range(seq, seq + n) if s not in holes)
        seq += n
    hi = lo + span
    want = _spans(((s, held.get(s)) for s in range(lo, hi + 1)), limit)
    got = _spans_in(held.get, lo, hi, limit)
    assert [(id(r), a, b) for r, a, b in got] == [(id(r), a, b) for r, a, b in want]
    assert sum(b - a for _, a, b in got) == min(
        limit, sum(1 for s in range(lo, hi + 1) if s in held)
    )
