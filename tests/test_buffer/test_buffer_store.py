"""The buffer against real SQLite files: ordering, acks, limits, restarts and bad files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import read_db
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.buffer import Batch, Buffer, BufferSettings
from tepi.buffer.db import Database
from tepi.core.records import Reading


def reading(i: int, device: str = "d1") -> Reading:
    return Reading(device, "m", float(i), "u", 1_700_000_000.0 + i, 10.0 + i)


def settings_for(tmp: Path, **kw: object) -> BufferSettings:
    return BufferSettings(path=tmp / "buffer.db", commit_interval_s=0.05, **kw)  # type: ignore[arg-type]


async def drain(buf: Buffer, limit: int = 10_000) -> list[int]:
    out: list[int] = []
    cursor = 0
    while (batch := await buf.fetch(cursor, limit)) is not None:
        out += [i.seq for i in batch.items]
        cursor = batch.last_seq
    return out


async def test_commit_within_interval_and_oldest_first(tmp_path: Path) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        task = asyncio.create_task(buf.run())
        seqs = [buf.put(reading(i)) for i in range(10)]
        assert seqs == list(range(1, 11))
        async with asyncio.timeout(2):
            await buf.wait_for_data(9)
        batch = await buf.fetch(0, 4)
        assert batch is not None
        assert [i.seq for i in batch.items] == [1, 2, 3, 4]
        assert batch.items[0].reading == reading(0)
        buf.ack(batch)
        await buf.flush()
        assert await drain(buf) == list(range(5, 11))
        assert buf.stats().depth == 6
        task.cancel()


async def test_only_acked_batches_are_deleted(tmp_path: Path) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        for i in range(6):
            buf.put(reading(i))
        await buf.flush()
        first = await buf.fetch(0, 3)
        second = await buf.fetch(3, 3)
        assert first is not None
        assert second is not None
        buf.ack(second)  # acks may come out of order
        await buf.flush()
        assert await drain(buf) == [1, 2, 3]


async def test_seq_continues_across_restart_even_when_empty(tmp_path: Path) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        for i in range(5):
            buf.put(reading(i))
        await buf.flush()
        batch = await buf.fetch(0, 100)
        assert batch is not None
        buf.ack(batch)
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        assert buf.stats().depth == 0
        assert buf.put(reading(99)) == 6


async def test_pending_readings_are_committed_on_close(tmp_path: Path) -> None:
    s = BufferSettings(path=tmp_path / "buffer.db", commit_interval_s=3600)
    async with Buffer(s, "boot-a") as buf:
        for i in range(3):
            buf.put(reading(i))
    async with Buffer(s, "boot-a") as buf:
        assert await drain(buf) == [1, 2, 3]


async def test_batches_never_mix_boots(tmp_path: Path) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        buf.put(reading(1))
        buf.put(reading(2))
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        buf.put(reading(3))
        await buf.flush()
        a = await buf.fetch(0, 100)
        assert a is not None
        assert (a.boot_id, [i.seq for i in a.items]) == ("boot-a", [1, 2])
        b = await buf.fetch(a.last_seq, 100)
        assert b is not None
        assert (b.boot_id, [i.seq for i in b.items]) == ("boot-b", [3])


async def test_full_buffer_drops_oldest_and_counts(tmp_path: Path) -> None:
    s = settings_for(tmp_path, max_bytes=1024 * 1024)
    async with Buffer(s, "boot-a") as buf:
        long = "x" * 200
        for i in range(20_000):
            buf.put(Reading("d1", "m", long, None, float(i), float(i)))
            if i % 2000 == 0:
                await buf.flush()
        await buf.flush()
        st_ = buf.stats()
        assert st_.dropped.get("buffer_full", 0) > 0
        assert st_.bytes_used <= s.max_bytes
        seqs = await drain(buf, 50_000)
        # The newest are kept, the oldest went, and what is left is contiguous.
        assert seqs[-1] == 20_000
        assert seqs == list(range(seqs[0], 20_001))
        assert st_.dropped["buffer_full"] + len(seqs) == 20_000
        assert st_.depth == len(seqs)
    assert (tmp_path / "buffer.db").stat().st_size <= s.max_bytes * 1.1


async def test_max_age_expires_by_clocks_that_can_be_trusted(tmp_path: Path) -> None:
    """This boot's readings age by ``mono``, earlier boots' by ``ts`` only where it was synced:
    a clock that jumps (1970 to today) expires nothing that is not old."""
    s = settings_for(tmp_path, max_age_s=60.0)
    mono, now = time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
    # Fresh by boot-a's own mono (it is this boot while boot-a runs), old by ts.
    old_synced = Reading("d1", "m", 1.0, None, now - 120, mono - 1)
    old_unsynced = Reading("d1", "m", 2.0, None, now - 120, mono - 1, synced=False)
    fresh_earlier_boot = Reading("d1", "m", 3.0, None, now - 1, mono - 1)
    async with Buffer(s, "boot-a") as buf:
        for r in (old_synced, old_unsynced, fresh_earlier_boot):
            buf.put(r)
    async with Buffer(s, "boot-b", clock_synced=lambda: True) as buf:
        stale_clock = Reading("d1", "m", 4.0, None, 1000.0, mono - 1, synced=False)
        old_by_mono = Reading("d1", "m", 5.0, None, now - 1, mono - 120)
        buf.put(stale_clock)
        buf.put(old_by_mono)
        await buf.flush()
        assert buf.stats().dropped.get("expired") == 2
        kept = []
        after = 0
        while (batch := await buf.fetch(after, 10)) is not None:
            kept += [i.reading for i in batch.items]
            after = batch.last_seq
        assert kept == [old_unsynced, fresh_earlier_boot, stale_clock]
    async with Buffer(s, "boot-c") as buf:  # clock not synced: no wall-clock ages at all
        await buf.flush()
        assert buf.stats().depth == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign-schema", "future-version"])
async def test_unusable_file_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.db"
    if damage in ("garbage", "truncated"):
        async with Buffer(settings_for(tmp_path), "boot-a") as buf:
            for i in range(2000):
                buf.put(reading(i))
        data = path.read_bytes()
        path.write_bytes(os.urandom(4096) + data[4096:] if damage == "garbage" else data[:3000])
    else:
        conn = sqlite3.connect(path)
        if damage == "foreign-schema":
            conn.execute("CREATE TABLE something_else (x)")
        else:
            conn.execute("PRAGMA user_version = 99")
            conn.execute("CREATE TABLE readings (x)")
        conn.commit()
        conn.close()
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        assert buf.stats().quarantined_files == 1
        assert buf.put(reading(1)) >= 1
        await buf.flush()
        assert len(await drain(buf)) == 1
    moved = list(tmp_path.glob("buffer.db.corrupt-*"))
    assert moved, "the bad file must be kept aside for inspection"
    assert any("moved aside" in r.getMessage() for r in caplog.records)


async def test_database_is_private_to_the_service_user(tmp_path: Path) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        buf.put(reading(1))
    mode = stat.S_IMODE((tmp_path / "buffer.db").stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)


async def test_committed_readings_survive_kill_9(tmp_path: Path) -> None:
    """A writer process is SIGKILLed right after it reports a commit: nothing committed is lost."""
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        from tepi.buffer import Buffer, BufferSettings
        from tepi.core.records import Reading
        async def main():
            path = __import__('pathlib').Path({str(tmp_path / "buffer.db")!r})
            buf = Buffer(BufferSettings(path=path, commit_interval_s=0.01), "boot-k")
            await buf.__aenter__()
            t = asyncio.create_task(buf.run())
            for i in range(500):
                buf.put(Reading("d1", "m", float(i), None, 1.0, 1.0))
            await buf.wait_committed(500)
            print(buf.committed_seq, flush=True)
            for i in range(5):  # acked from memory: never written, but their seqs were used
                buf.put(Reading("d1", "m", float(i), None, 1.0, 1.0))
            buf.ack(await buf.fetch(500, 100))
            print(buf.last_seq, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == -9, out.stderr
    committed, used = map(int, out.stdout.split())
    assert (committed, used) == (500, 505)
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        assert await drain(buf) == list(range(1, 501))
        assert buf.put(reading(0)) > used, "a seq the IOC may have seen must not come back"
        assert buf.first_seq > used


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(vals=st.lists(values, min_size=1, max_size=20))
def test_values_round_trip_with_their_types(
    tmp_path_factory: pytest.TempPathFactory, vals: list[object]
) -> None:
    tmp = tmp_path_factory.mktemp("rt")

    async def go() -> list[object]:
        async with Buffer(settings_for(tmp), "boot-a") as buf:
            for v in vals:
                buf.put(Reading("d", "m", v, None, 1.0, 1.0))  # type: ignore[arg-type]
            await buf.flush()
            batch = await buf.fetch(0, 100)
            assert batch is not None
            return [i.reading.value for i in batch.items]

    got = asyncio.run(go())
    assert got == vals
    assert [type(g) for g in got] == [type(v) for v in vals]


async def test_quality_and_time_source_flags_survive_the_file(tmp_path: Path) -> None:
    rows = [
        Reading("d", "pm25", 12.5, "ug/m3", 1.0, 1.0, "warming up", True, uncertain=True),
        Reading("d", "pm25", 13.0, "ug/m3", 2.0, 2.0, None, True, gps_time=True),
        Reading("d", "pm25", None, "ug/m3", 3.0, 3.0, "no data", False),
        Reading("d", "ok", True, None, 4.0, 4.0),
    ]
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        for r in rows:
            buf.put(r)
        assert await buf.flush()
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:  # read back from the file
        batch = await buf.fetch(0, 100)
        assert batch is not None
        assert [i.reading for i in batch.items] == rows
        assert [i.reading.quality for i in batch.items] == ["uncertain", "good", "bad", "good"]


async def test_put_before_open_is_refused(tmp_path: Path) -> None:
    buf = Buffer(settings_for(tmp_path), "boot-a")
    with pytest.raises(RuntimeError, match="before the buffer is open"):
        buf.put(reading(1))
    async with buf:
        assert buf.put(reading(1)) == 1


def lose_database(tmp: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp / 'buffer.db'}{suffix}").unlink(missing_ok=True)
    if how == "corrupt":
        (tmp / "buffer.db").write_bytes(os.urandom(8192))
    else:
        (tmp / "buffer.db").unlink()


@pytest.mark.parametrize("how", ["corrupt", "deleted"])
async def test_seq_never_goes_back_when_the_file_is_lost(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IOC deduplicates on seq: a reused seq would make it drop a new reading."""
    monkeypatch.setattr("tepi.buffer.store.SEQ_BLOCK", 5)
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        issued = [buf.put(reading(i)) for i in range(12)]  # crosses the ceiling twice
    assert issued == list(range(1, 13))
    lose_database(tmp_path, how)
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        assert buf.put(reading(0)) > max(issued)
    # an ordinary restart stays contiguous: no jump to the ceiling
    async with Buffer(settings_for(tmp_path), "boot-b") as buf:
        first = (await drain(buf))[0]
        assert buf.put(reading(1)) == first + 1


def slow_commits(monkeypatch: pytest.MonkeyPatch, seconds: float) -> threading.Event:
    """Make every commit take ``seconds`` in the writer thread; the event says one began."""
    writing = threading.Event()
    real_commit = Database.commit

    def slow_commit(self: Database, *args: object) -> tuple[int, int]:
        writing.set()
        time.sleep(seconds)
        return real_commit(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Database, "commit", slow_commit)
    return writing


async def test_cancel_during_a_commit_neither_loses_nor_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the commit loop while its thread is writing: the write still lands,
    so it must be counted, not queued again (a second INSERT of the same seq would fail and
    take the readings that came after it down with it)."""
    writing = slow_commits(monkeypatch, 0.3)
    buf = Buffer(settings_for(tmp_path), "boot-a")
    async with buf:
        for i in range(10):
            buf.put(reading(i))
        task = asyncio.create_task(buf.flush())
        await asyncio.to_thread(writing.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        buf.put(reading(10))  # taken after the cancelled commit
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        assert await drain(buf) == list(range(1, 12))


def rows_in_file(tmp: Path) -> int:
    with read_db(tmp / "buffer.db") as db:
        return db["readings"].count


async def test_readings_acked_in_time_never_touch_the_file(tmp_path: Path) -> None:
    """The SD-card saver: a batch the broker acks before its commit is due is not written."""
    s = BufferSettings(path=tmp_path / "buffer.db", commit_interval_s=30)
    async with Buffer(s, "boot-a") as buf:
        task = asyncio.create_task(buf.run())
        for i in range(100):
            buf.put(reading(i))
        batch = await buf.fetch(0, 1000)
        assert batch is not None
        assert [i.seq for i in batch.items] == list(range(1, 101))
        buf.ack(batch)
        await buf.flush()
        st_ = buf.stats()
        assert (st_.acked_in_memory, st_.written, st_.commits, st_.depth) == (100, 0, 0, 0)
        assert buf.committed_seq == 100
        task.cancel()
    assert rows_in_file(tmp_path) == 0
    async with Buffer(s, "boot-a") as buf:  # and the seq still goes on
        assert buf.put(reading(0)) == 101


async def test_unacked_readings_are_committed_when_due_and_deleted_after_the_ack(
    tmp_path: Path,
) -> None:
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        task = asyncio.create_task(buf.run())
        for i in range(10):
            buf.put(reading(i))
        batch = await buf.fetch(0, 1000)  # in flight, the broker is slow
        assert batch is not None
        async with asyncio.timeout(5):
            await buf.wait_committed(10)  # by the deadline, without any flush
        assert rows_in_file(tmp_path) == 10
        assert buf.stats().written == 10
        buf.ack(batch)
        async with asyncio.timeout(5):
            while buf.stats().depth:
                await asyncio.sleep(0.01)
        assert rows_in_file(tmp_path) == 0
        task.cancel()


async def test_fetch_takes_the_file_first_then_memory_and_honours_upto(tmp_path: Path) -> None:
    s = BufferSettings(path=tmp_path / "buffer.db", commit_interval_s=30)
    async with Buffer(s, "boot-a") as buf:
        for i in range(5):
            buf.put(reading(i))
        await buf.flush()
        for i in range(5, 10):
            buf.put(reading(i))
        assert buf.committed_seq == 5
        a = await buf.fetch(0, 100)
        assert a is not None
        assert [i.seq for i in a.items] == [1, 2, 3, 4, 5]  # the file part
        b = await buf.fetch(a.last_seq, 100)
        assert b is not None
        assert [i.seq for i in b.items] == [6, 7, 8, 9, 10]  # from memory
        c = await buf.fetch(0, 100, upto=3)
        assert c is not None
        assert [i.seq for i in c.items] == [1, 2, 3]
        assert await buf.fetch(3, 100, upto=3) is None
        assert await buf.fetch(10, 100) is None


async def test_ack_that_lands_during_a_write_deletes_the_rows_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = BufferSettings(path=tmp_path / "buffer.db", commit_interval_s=30)
    async with Buffer(s, "boot-a") as buf:
        for i in range(6):
            buf.put(reading(i))
        batch = await buf.fetch(0, 100)
        assert batch is not None
        writing = slow_commits(monkeypatch, 0.2)
        flush = asyncio.create_task(buf.flush())
        await asyncio.to_thread(writing.wait, 5)
        assert [i.seq for i in (await buf.fetch(0, 100) or batch).items] == [1, 2, 3, 4, 5, 6]
        buf.ack(batch)  # the rows are on their way into the file
        await flush
        await buf.flush()
        assert await drain(buf) == []
    assert rows_in_file(tmp_path) == 0


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(1, 30)),
            st.tuples(st.just("send"), st.integers(1, 25)),
            st.tuples(st.just("ack"), st.integers(0, 5)),
            st.tuples(st.just("flush"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_any_mix_of_puts_sends_acks_and_commits_loses_and_repeats_nothing(
    ops: list[tuple[str, int]],
) -> None:
    """Whatever the order of events, each reading ends up acked or in the file, once."""
    import tempfile

    async def go(tmp: Path) -> None:
        s = BufferSettings(path=tmp / "buffer.db", commit_interval_s=30, max_pending=10_000)
        put: list[int] = []
        acked: list[int] = []
        inflight: list[Batch] = []
        cursor = 0
        async with Buffer(s, "boot-a") as buf:
            for op, n in ops:
                if op == "put":
                    put += [buf.put(reading(i)) for i in range(n)]
                elif op == "send":
                    batch = await buf.fetch(cursor, n)
                    if batch is not None:
                        cursor = batch.last_seq
                        inflight.append(batch)
                elif op == "ack" and inflight:
                    batch = inflight.pop(n % len(inflight))
                    acked += [i.seq for i in batch.items]
                    buf.ack(batch)
                else:
                    await buf.flush()
            await buf.flush()
            left = await drain(buf)
        assert sorted(acked + left) == put
        assert not set(acked) & set(left)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp)))


async def test_a_sender_that_fell_behind_is_served_from_ram_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings committed before they were sent (a slow broker, a busy CPU) still come from
    RAM: reading them back from SQLite while the loop is busy is what collapsed under load."""
    async with Buffer(settings_for(tmp_path), "boot-a") as buf:
        for i in range(50):
            buf.put(reading(i))
        await buf.flush()  # committed, never sent

        def no_reads(*_: object) -> None:
            raise AssertionError("read from the file")

        monkeypatch.setattr(Database, "fetch", no_reads)
        a = await buf.fetch(0, 30)
        assert a is not None
        assert [i.seq for i in a.items] == list(range(1, 31))
        buf.ack(a)
        b = await buf.fetch(a.last_seq, 100)
        assert b is not None
        assert [i.seq for i in b.items] == list(range(31, 51))
        monkeypatch.undo()
        await buf.flush()
        assert await drain(buf) == list(range(31, 51)), "acked rows are deleted, the rest kept"


async def test_a_file_that_cannot_be_opened_means_memory_only_until_it_can(
    tmp_path: Path,
) -> None:
    """No crash when the file cannot be opened (here its "dir" is a file): readings are served
    from memory, ``file_error`` says why, and once the file can be opened the commit loop's
    retry commits what is held, with the seqs it had."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    s = settings_for(blocker)
    async with Buffer(s, "boot-a") as buf:
        runner = asyncio.create_task(buf.run())
        seqs = [buf.put(reading(i)) for i in range(5)]
        assert buf.stats().file_error is not None
        batch = await buf.fetch(0, 10)
        assert batch is not None
        assert [i.seq for i in batch.items] == seqs
        blocker.unlink()
        blocker.mkdir()
        async with asyncio.timeout(10):
            await buf.wait_committed(seqs[-1])
        assert buf.stats().file_error is None
        assert buf.stats().depth == 5
        runner.cancel()
    async with Buffer(s, "boot-b") as buf:
        assert await drain(buf) == seqs
        assert buf.put(reading(9)) > seqs[-1]


async def test_while_unlinked_each_tick_is_committed_at_once_in_one_transaction(
    tmp_path: Path,
) -> None:
    """With the uplink down no ack can come, so waiting commit_interval only puts readings at
    risk: the readings put in one turn of the loop (one poll tick, across devices) go into
    the file at once, in one commit; linked again, the commit_interval rule is back."""
    s = BufferSettings(path=tmp_path / "buffer.db", commit_interval_s=60)
    async with Buffer(s, "boot-a") as buf:
        task = asyncio.create_task(buf.run())
        buf.linked = False
        for tick in range(3):
            last = [buf.put(reading(tick * 10 + i, f"d{i}")) for i in range(4)][-1]
            async with asyncio.timeout(5):  # far below commit_interval
                await buf.wait_committed(last)
            assert rows_in_file(tmp_path) == 4 * (tick + 1)
            assert buf.stats().commits == tick + 1, "one transaction per tick"
        buf.put(reading(99))  # readings held when the link drops are committed at once too
        buf.linked = True
        seq = buf.put(reading(100))
        buf.linked = False
        async with asyncio.timeout(5):
            await buf.wait_committed(seq)
        assert rows_in_file(tmp_path) == 14
        buf.linked = True
        buf.put(reading(101))  # linked: it waits for an ack, up to commit_interval
        for _ in range(5):
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        assert buf.stats().commits == 4
        assert rows_in_file(tmp_path) == 14
        task.cancel()
