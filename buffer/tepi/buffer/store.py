"""The asyncio half of the buffer: sequence numbers, acks from memory, group commits.

Readings arrive with :meth:`Buffer.put` (no await, no I/O) and get their sequence number
there. The uplink can take them straight from memory (:meth:`Buffer.fetch`) and publish them
at once. The rule that makes this safe, and the durability boundary of the whole agent:

    every reading is acknowledged by the broker, or committed to the file,
    within ``commit_interval`` of being put.

A reading the broker acknowledges in time is dropped from memory and never touches the SD
card: with the broker up, that is nearly every reading. While the uplink is not connected
(:attr:`Buffer.linked` False) no acknowledgement can come, and waiting for one would only put
readings at risk: every put then schedules a commit on the next turn of the event loop, so
the readings of one poll tick (across devices) go into the file at once, in one transaction,
and a ``kill -9`` or a power cut during an outage loses nothing that was put.

With the link up, a reading not acknowledged in time is committed by :meth:`Buffer.run` in
a group commit, together with everything else waiting, and its row is deleted in a later
commit once the ack comes. Nothing wakes up while nothing
waits: the commit loop sleeps on an event, and a single timer is armed for the oldest
unacknowledged reading's deadline (and moved when that reading is acknowledged).

All SQLite work runs in one dedicated thread (``tepi-buffer``), so statements never block
the event loop and there is only ever one writer. Deletes of acknowledged rows are batched
into the next group commit, not one transaction per ack, which saves SD-card writes.

Limits: the file is bounded by ``max_bytes`` (the oldest rows are evicted and counted as
``buffer_full``), optionally by ``max_age`` (counted as ``expired``), and the readings held in
memory are bounded by ``max_pending`` (counted as ``overflow``) for the case where the disk
stops taking writes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby, repeat
from operator import is_not
from pathlib import Path
from typing import TypeVar

from tepi.buffer.db import Database, SeqCeiling, is_corrupt
from tepi.buffer.records import Batch, BufferStats, Run, Span
from tepi.core.records import Reading
from tepi.core.retry import BUFFER_COMMIT, Outage

log = logging.getLogger(__name__)
T = TypeVar("T")
_EXPIRE_EVERY_S = 10.0
SEQ_BLOCK = 100_000
RECENT_MAX = 20_000  # committed readings also kept in RAM, so a lagging sender needs no reads


def _diagnose(data_dir: Path) -> str:
    """Why a data dir may refuse the buffer, in words a technician can act on, or ''."""
    try:
        st = os.statvfs(data_dir)
    except OSError as err:
        return f"data dir {data_dir}: {err.strerror}: "
    if st.f_flag & os.ST_RDONLY:
        return f"data dir {data_dir} is on a read-only file system: "
    if not os.access(data_dir, os.W_OK):
        return f"data dir {data_dir} is not writable by uid {os.geteuid()}: "
    if st.f_bavail * st.f_frsize < 1024 * 1024:
        return f"data dir {data_dir}: the disk is full: "
    return ""


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """How the buffer is sized and how often it commits (from the ``buffer:`` config)."""

    path: Path
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = None
    commit_interval_s: float = 0.2
    commit_max_readings: int = 10_000
    sync_full: bool = True
    max_pending: int = 100_000


@dataclass(slots=True)
class _WriteResult:
    removed: int
    evicted: int
    expired: int
    bytes_used: int
    oldest_ts: float | None
    quarantined: bool
    reopened: int | None = None  # the file could be opened again, with this many rows


class Buffer:
    """Durable, bounded store-and-forward queue of readings; see the module docstring."""

    def __init__(
        self,
        settings: BufferSettings,
        boot_id: str,
        *,
        clock_synced: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self._clock_synced = clock_synced  # for max_age: may wall-clock ages be trusted?
        self.boot_id = boot_id
        self._db = Database(
            settings.path, sync_full=settings.sync_full, max_bytes=settings.max_bytes
        )
        self._ceiling = SeqCeiling(settings.path.with_name(settings.path.name + ".seq"))
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tepi-buffer")
        # Neither acknowledged nor committed: seq -> the run (a poll's readings, put at once)
        # that holds it, in seq order. Every seq of a run maps to the one run object, so a
        # poll costs one object however many values it has, and an ack or a fetch still
        # works seq by seq. An OrderedDict, not a dict: finding or dropping the oldest stays
        # O(1) however many were dropped before it (a plain dict rescans its deleted slots).
        self._mem: OrderedDict[int, Run] = OrderedDict()
        # Committed, not yet acknowledged, the newest RECENT_MAX: a sender that fell a little
        # behind (a slow broker, a busy CPU) is served from here, not from the file.
        self._recent: OrderedDict[int, Run] = OrderedDict()
        self._writing: list[tuple[int, Run]] = []  # handed to the writer thread
        self._write_started: float | None = None  # monotonic, while a write is in the thread
        self._acked_writing: set[int] = set()
        self._writing_seqs: list[int] = []
        self._deletes: list[tuple[int, int]] = []
        self._deletes_since = 0.0
        self._next_seq = 1
        self._first_seq = 1
        self._depth = 0
        self._bytes_used = 0
        self._oldest_ts: float | None = None
        self._dropped: Counter[str] = Counter()
        self._quarantined = 0
        self._write_errors = 0
        # A failing disk is logged as it changes: the first failed commit, then the recovery.
        self._outage = Outage(
            log,
            "buffer commit",
            level=logging.ERROR,
            then=f"readings held in memory (at most {settings.max_pending}), retrying",
        )
        self._acked_in_memory = 0
        self._written = 0
        self._commits = 0
        self._last_expire = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wake = asyncio.Event()
        self._data = asyncio.Event()
        self._watch: tuple[int, asyncio.Event] | None = None  # see watch()
        # Called with each run the buffer takes, after it took it (the agent's rules: they
        # see every reading as it is buffered). It must not raise, and must be quick.
        self.tap: Callable[[Run], None] | None = None
        self._progress = asyncio.Event()
        self._lock = asyncio.Lock()
        self._opened = False
        self._file_error: str | None = None  # the file cannot be used: memory only
        self._linked = True  # the uplink can deliver acks; False: commit every put at once
        self._soon: asyncio.Handle | None = None  # the commit scheduled for the next turn

    # ---- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Buffer:
        try:
            opened = await self._call(self._db.open, self.boot_id)
        except (sqlite3.Error, OSError) as err:
            return await self._enter_memory_only(err)
        ceiling = await self._call(self._ceiling.load)
        self._next_seq = opened.last_seq + 1
        if (opened.created or opened.quarantined or not opened.clean) and ceiling > self._next_seq:
            # A new file after a lost one, or a run that ended without closing the file (its
            # last readings may have been acked from memory, never written): start above
            # every seq that may have been sent.
            log.warning(
                "buffer %s %s: sequence numbers continue from %d",
                self.settings.path,
                "was not closed cleanly" if opened.clean is False else "is new",
                ceiling,
            )
            self._next_seq = ceiling
        await self._call(self._ceiling.raise_to, self._next_seq + SEQ_BLOCK)
        self._depth = opened.depth
        if opened.quarantined is not None:
            self._quarantined += 1
        self._bytes_used = await self._call(self._db.bytes_used)
        self._oldest_ts = await self._call(self._db.oldest_ts)
        self._first_seq = self._next_seq
        self._opened = True
        log.info(
            "buffer %s open: %d readings waiting, next seq %d",
            self.settings.path,
            self._depth,
            self._next_seq,
        )
        return self

    async def _enter_memory_only(self, err: BaseException) -> Buffer:
        """The file cannot be opened (a read-only or full disk, wrong owner, I/O errors): run
        on, with readings in memory only (bounded by ``max_pending``), and try the file again
        with every commit's retry. Seqs start from the wall clock in milliseconds, above the
        ceiling when it can be read: the ceiling cannot be raised, and the IOC must not see
        seqs go back after a restart."""
        self._file_error = f"{_diagnose(self.settings.path.parent)}{err}"
        ceiling = await self._call(self._ceiling.load)
        self._next_seq = self._first_seq = max(ceiling, int(time.time() * 1000), 1)
        self._ceiling.value = self._next_seq + SEQ_BLOCK
        self._opened = True
        log.error(
            "buffer %s cannot be opened (%s): readings are kept in memory only (at most %d) "
            "until it can. Check that the data dir exists, is writable by this user and its "
            "disk is not full or mounted read-only",
            self.settings.path,
            self._file_error,
            self.settings.max_pending,
        )
        return self

    def _reopen(self) -> int:
        """In the writer thread: try the file again; return the rows already in it."""
        self._db.close()  # in case an earlier try opened it and its commit failed
        opened = self._db.open(self.boot_id)
        if opened.last_seq >= self._first_seq:  # cannot happen with clock seqs; never collide
            self._db.close()
            raise sqlite3.OperationalError(
                f"the file's seqs ({opened.last_seq}) overlap this run's ({self._first_seq}+)"
            )
        self._ceiling.raise_to(self._next_seq + SEQ_BLOCK)
        return opened.depth

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit what is waiting, close the file and stop the writer thread."""
        if not self._opened:
            return
        self._opened = False
        self._disarm()
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        try:
            await self._commit_once()
            await self._call(self._db.close_clean, self._next_seq - 1)
        except (sqlite3.Error, OSError) as err:
            # A full or failing disk at the last moment: say what is lost, then stop cleanly
            # (a crash here would only make systemd restart into the same full disk).
            log.error(
                "buffer %s: could not commit before stopping (%s): %d readings held in "
                "memory are lost, and the next run starts its seqs at the reserved ceiling",
                self.settings.path,
                err,
                len(self._mem),
            )
        finally:
            await self._call(self._db.close)
            self._exec.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    # ---- the event-loop side API -----------------------------------------------------------

    @property
    def linked(self) -> bool:
        """Whether the uplink is connected and acks can come (set by the uplink). While it
        is False, readings are committed on the next turn of the loop after their put."""
        return self._linked

    @linked.setter
    def linked(self, value: bool) -> None:
        self._linked = value
        if not value and self._mem:
            self._commit_soon()  # what waited for an ack that will not come: commit it now

    def _commit_soon(self) -> None:
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._wake_now)

    def _wake_now(self) -> None:
        self._soon = None
        self._wake.set()

    def put(self, reading: Reading) -> int:
        """Take one reading and return its sequence number (see :meth:`put_many`)."""
        return self.put_many(Run.of(reading))

    def put_many(self, run: Run) -> int:
        """Take a poll's readings and return the first one's sequence number (no await).

        The run's values get consecutive seqs, ``run.first`` onwards; the run is kept as it
        is (the buffer sets ``first`` and ``put_at``). No I/O, except once every
        ``SEQ_BLOCK`` readings: the seq ceiling's tiny fsynced write, on the loop."""
        if not self._opened:
            raise RuntimeError("Buffer.put() before the buffer is open: seq would be reused")
        n = len(run.values)
        first = self._next_seq
        self._next_seq = first + n
        if self._next_seq >= self._ceiling.value:
            # Once per SEQ_BLOCK readings: a tiny fsynced write, so it is done right here.
            try:
                self._ceiling.raise_to(self._next_seq + SEQ_BLOCK)
            except OSError:
                if self._file_error is None:
                    raise
                self._ceiling.value = self._next_seq + SEQ_BLOCK  # memory only: best effort
        run.first = first
        run.put_at = time.monotonic()
        mem = self._mem
        over = len(mem) + n - self.settings.max_pending
        if over > 0:
            for _ in range(min(over, len(mem))):
                mem.popitem(last=False)
            self._dropped["overflow"] += over
            if n > self.settings.max_pending:  # a run larger than the bound: keep its newest
                keep = self.settings.max_pending
                first += n - keep
                n = keep
        was_empty = not mem
        mem.update(zip(range(first, first + n), repeat(run)))
        if was_empty:
            self._arm()
        if len(mem) >= self.settings.commit_max_readings:
            self._wake.set()
        elif not self._linked:
            self._commit_soon()
        self._data.set()
        watch = self._watch
        if watch is not None and self._next_seq > watch[0]:
            self._watch = None
            watch[1].set()
        if self.tap is not None:
            self.tap(run)
        return run.first

    def ack(self, batch: Batch) -> None:
        """The broker has this batch: forget it, or delete its rows in the next commit."""
        mem = self._mem
        head = next(iter(mem), None)
        in_memory = 0
        recent = self._recent
        w = self._writing_seqs
        pop = mem.pop
        total = 0
        for run, start, stop in batch.spans:
            seqs = range(run.first + start, run.first + stop)
            total += stop - start
            # The pops run in C (map): one Python step a span, not a value.
            got = list(map(pop, seqs, repeat(None)))
            # Not got.count(None): that calls the Runs' (dataclass) __eq__ once a reading.
            held = sum(map(is_not, got, repeat(None)))
            in_memory += held
            if held == len(got):
                continue
            for seq, r in zip(seqs, got, strict=True):
                if r is None:
                    if recent:
                        recent.pop(seq, None)
                    if w and w[0] <= seq <= w[-1]:
                        self._acked_writing.add(seq)  # keep it out of the recent cache
        self._acked_in_memory += in_memory
        if in_memory < total:
            # Some rows are in the file, or on their way into it.
            if not self._deletes:
                self._deletes_since = time.monotonic()
            self._deletes.append((batch.first_seq, batch.last_seq))
            self._arm()
        elif head is not None and head not in mem:
            self._arm()  # the oldest waiting reading went: its deadline goes with it
        self._progress.set()

    async def flush(self) -> bool:
        """Commit everything waiting now (before a resend). False if the disk refused: the
        readings then stay in memory, and the commit loop retries as after any failure."""
        try:
            await self._commit_once()
        except (sqlite3.Error, OSError) as err:
            self._failed(err)
            self._outage.failed(err)
            self._wake.set()
            return False
        self._outage.recovered()
        return True

    @property
    def committed_seq(self) -> int:
        """Every seq up to this one is in the file, or was acknowledged, or was dropped.

        Every row in the file has a seq at or below it; everything above it is in memory.
        """
        if self._writing_seqs:
            return self._writing_seqs[0] - 1
        return next(iter(self._mem), self._next_seq) - 1

    @property
    def first_seq(self) -> int:
        """The first sequence number of this run (the IOC sees no seq between the last run's
        and this one after a crash: they were reserved, not used)."""
        return self._first_seq

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far."""
        return self._next_seq - 1

    async def wait_for_data(self, after_seq: int) -> None:
        """Return once a reading with a seq above ``after_seq`` has been put."""
        while self._next_seq - 1 <= after_seq:
            self._data.clear()
            await self._data.wait()

    def watch(self, seq: int, event: asyncio.Event) -> None:
        """Set ``event`` once a reading with seq ``seq`` or above has been put (at once if
        one has). One watcher at a time (the uplink's live lane): a new call replaces it.
        Cheaper than a task waiting in :meth:`wait_for_data`, which wakes at every put."""
        if self._next_seq > seq:
            self._watch = None
            event.set()
        else:
            self._watch = (seq, event)

    async def wait_committed(self, seq: int) -> None:
        """Return once every reading up to ``seq`` is committed (or acked, or dropped)."""
        while self.committed_seq < seq:
            self._progress.clear()
            await self._progress.wait()

    async def fetch(
        self, after_seq: int, max_readings: int, upto: int | None = None
    ) -> Batch | None:
        """The oldest readings after ``after_seq`` (and up to ``upto``), all from one boot.

        Readings still in memory come from memory, with no I/O; older ones from the file.
        """
        floor = self.committed_seq
        if self._file_error is not None:
            after_seq = max(after_seq, floor)  # no file: nothing below the floor to read
        if after_seq < floor and (upto is None or after_seq < upto):
            hi = floor if upto is None else min(upto, floor)
            recent = self._from_recent(after_seq, max_readings, hi)
            if recent is not None:
                if recent:
                    return Batch(self.boot_id, recent)
            else:
                boot_id, runs = await self._call(self._db.fetch, after_seq, max_readings, hi)
                if runs:
                    return Batch(boot_id, [(run, 0, len(run)) for run in runs])
            after_seq = max(after_seq, hi)
        spans = self._from_memory(after_seq, max_readings, upto)
        return Batch(self.boot_id, spans) if spans else None

    def _from_recent(self, after: int, limit: int, hi: int) -> list[Span] | None:
        """Rows (after, hi] from the recent cache, or None when older rows are needed: a
        seq missing from the cache at or above its oldest was acknowledged (or never put)."""
        recent = self._recent
        if not recent or after + 1 < next(iter(recent)):
            return None
        return _spans_in(recent.get, after + 1, hi, limit)

    def _from_memory(self, after: int, limit: int, upto: int | None) -> list[Span]:
        top = self._next_seq - 1 if upto is None else min(upto, self._next_seq - 1)
        out: list[Span] = []
        if self._writing:
            i = bisect.bisect_right(self._writing_seqs, after)
            out = _spans(((seq, r) for seq, r in self._writing[i : i + limit] if seq <= top), limit)
        mem = self._mem
        got = sum(stop - start for _, start, stop in out)
        if not mem or got >= limit or (out and _last(out) >= top):
            return out
        more = _spans_in(mem.get, max(after + 1, next(iter(mem))), top, limit - got)
        if out and more and more[0][0] is out[-1][0] and more[0][1] == out[-1][2]:
            run, start, _ = out.pop()
            more[0] = (run, start, more[0][2])
        return out + more

    def _write_done(self, _fut: object) -> None:
        self._write_started = None

    def writing_for(self) -> float | None:
        """Seconds the writer thread has been in its current write, or None when idle:
        the watchdog's sign of a disk that hangs (a dying SD card blocks in fsync)."""
        started = self._write_started
        return None if started is None else time.monotonic() - started

    def stats(self) -> BufferStats:
        waiting = len(self._mem) + len(self._writing)
        oldest = self._oldest_ts
        if oldest is None and self._mem:
            oldest = next(iter(self._mem.values())).ts
        return BufferStats(
            depth=self._depth + waiting,
            bytes_used=self._bytes_used,
            max_bytes=self.settings.max_bytes,
            oldest_ts=oldest,
            next_seq=self._next_seq,
            pending=waiting,
            dropped=dict(self._dropped),
            quarantined_files=self._quarantined,
            write_errors=self._write_errors,
            acked_in_memory=self._acked_in_memory,
            written=self._written,
            file_error=self._file_error,
            commits=self._commits,
        )

    # ---- the deadline timer ----------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When the next commit is due: the oldest waiting reading's, or the oldest delete's."""
        interval = self.settings.commit_interval_s
        due: float | None = None
        if self._mem:
            due = next(iter(self._mem.values())).put_at + interval
        if self._deletes:
            d = self._deletes_since + interval
            due = d if due is None else min(due, d)
        return due

    def _arm(self) -> None:
        due = self._deadline()
        if due is None:
            self._disarm()
            return
        if self._timer is not None:
            if self._timer_at == due:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # time.monotonic and loop.time are the same clock on Linux; convert to be safe.
        at = loop.time() + (due - time.monotonic())
        self._timer = loop.call_at(at, self._wake.set)
        self._timer_at = due

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> bool:
        if len(self._mem) >= self.settings.commit_max_readings:
            return True
        if not self._linked and self._mem:
            return True
        due = self._deadline()
        return due is not None and due <= time.monotonic() + 0.001

    # ---- the commit loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Commit when a deadline comes, forever. Run it as a task; cancel it to stop."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._due():
                self._arm()
                continue
            # A failed commit put its readings back in front, in seq order (``_requeue``);
            # each retry commits them with whatever came since, so nothing is lost or reordered.
            await BUFFER_COMMIT.call(
                self._commit_once, (sqlite3.Error, OSError), self._outage, on_failure=self._failed
            )

    def _failed(self, err: BaseException) -> None:
        self._write_errors += 1

    async def _commit_once(self) -> None:
        async with self._lock:
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        if not self._mem and not self._deletes:
            self._disarm()
            return
        mem, self._mem = self._mem, OrderedDict()
        rows = list(mem.items())
        self._writing = rows
        self._writing_seqs = [seq for seq, _ in rows]
        deletes, self._deletes = self._deletes, []
        self._disarm()
        write = asyncio.get_running_loop().run_in_executor(self._exec, self._write, rows, deletes)
        self._write_started = time.monotonic()
        write.add_done_callback(self._write_done)
        try:
            res = await asyncio.shield(write)
        except asyncio.CancelledError:
            # Cancelling the await does not stop the thread: the write lands all the same.
            # Count it, or the rows would be queued again and inserted twice.
            try:
                res = await write
            except Exception:  # noqa: BLE001 - requeued, and the cancel goes on
                self._requeue(mem, deletes)
                raise asyncio.CancelledError from None
            self._applied(rows, res)
            raise
        except Exception:
            self._requeue(mem, deletes)  # then raise: the commit loop retries with backoff
            raise
        self._applied(rows, res)

    def _requeue(self, mem: OrderedDict[int, Run], deletes: list[tuple[int, int]]) -> None:
        """The write failed, nothing was committed: put it all back in front, in order."""
        self._writing, self._writing_seqs = [], []
        self._acked_writing = set()
        # Acks that came during the failed write removed nothing from ``mem``: apply them.
        acked = {s for lo, hi in self._deletes for s in range(lo, hi + 1) if s in mem}
        for s in acked:
            del mem[s]
        self._acked_in_memory += len(acked)
        mem.update(self._mem)
        while len(mem) > self.settings.max_pending:
            mem.popitem(last=False)
            self._dropped["overflow"] += 1
        self._mem = mem
        self._deletes = deletes + self._deletes
        self._arm()

    def _applied(self, rows: list[tuple[int, Run]], res: _WriteResult) -> None:
        self._writing, self._writing_seqs = [], []
        recent = self._recent
        acked, self._acked_writing = self._acked_writing, set()
        if res.quarantined or res.evicted or res.expired:
            recent.clear()  # rare: rather than track which rows went, read them from the file
        else:
            for seq, r in rows[-RECENT_MAX:]:
                if seq not in acked:
                    recent[seq] = r
        while len(recent) > RECENT_MAX:
            recent.popitem(last=False)
        if res.reopened is not None:
            self._depth = res.reopened
            self._file_error = None
        self._commits += 1
        self._written += len(rows)
        if res.quarantined:
            self._quarantined += 1
            self._depth = len(rows)
        else:
            self._depth += len(rows) - res.removed - res.evicted - res.expired
        for reason, n in (("buffer_full", res.evicted), ("expired", res.expired)):
            if n:
                self._dropped[reason] += n
        self._bytes_used = res.bytes_used
        self._oldest_ts = res.oldest_ts
        self._progress.set()
        self._arm()

    def _write(self, rows: list[tuple[int, Run]], deletes: list[tuple[int, int]]) -> _WriteResult:
        """In the writer thread: one transaction, then the limits."""
        db = self._db
        quarantined = False
        depth = self._depth
        reopened = None
        if self._file_error is not None:
            depth = reopened = self._reopen()
            log.warning(
                "buffer %s can be used again (it was: %s): committing %d readings",
                self.settings.path,
                self._file_error,
                len(rows),
            )
        try:
            removed, evicted = db.commit(rows, deletes, depth)
        except sqlite3.DatabaseError as err:
            if is_corrupt(err):
                db.quarantine(str(err))
                db.open(self.boot_id)
                quarantined = True
                removed, evicted = db.commit(rows, [], 0)
            elif getattr(err, "sqlite_errorname", "") == "SQLITE_FULL":
                # The disk is fuller than max_bytes assumed: give back a tenth, retry once. If
                # that frees nothing (another file filled the disk, or even a delete needs
                # room), the commit fails: the readings wait in memory (max_pending) and the
                # commit loop retries with backoff until the disk has room again.
                freed = db.evict_oldest(depth, db.bytes_used() * 9 // 10)
                if not freed:
                    raise
                log.warning("disk full: evicted the %d oldest readings to make room", freed)
                removed, evicted = db.commit(rows, deletes, depth - freed)
                evicted += freed
            else:
                raise
        used = db.bytes_used()
        expired = 0
        now = time.monotonic()
        if self.settings.max_age_s is not None and now - self._last_expire >= _EXPIRE_EVERY_S:
            self._last_expire = now
            synced = self._clock_synced()
            expired = db.expire(
                self.settings.max_age_s,
                time.clock_gettime(time.CLOCK_BOOTTIME),
                time.time() if synced else None,
            )
        return _WriteResult(removed, evicted, expired, used, db.oldest_ts(), quarantined, reopened)


def _last(spans: list[Span]) -> int:
    run, _, stop = spans[-1]
    return run.first + stop - 1


def _spans_in(get: Callable[[int], Run | None], lo: int, hi: int, limit: int) -> list[Span]:
    """The runs that seqs ``lo`` to ``hi`` map to through ``get`` (None: not there), as
    spans in seq order, at most ``limit`` readings: as :func:`_spans` gives for those
    pairs. The lookups and the grouping run in C (``map``, ``groupby``), so the Python
    work is a step a run, not a value (10,000 values a second is a poll's 20 times 500)."""
    out: list[Span] = []
    n = 0
    seq = lo
    while seq <= hi and n < limit:
        # No more than the readings still wanted, were none of them missing.
        end = min(hi + 1, seq + limit - n)
        for _, group in groupby(map(get, range(seq, end)), key=id):
            refs = list(group)
            r = refs[0]
            k = len(refs)
            if r is not None:
                i = seq - r.first
                if out and out[-1][0] is r and out[-1][2] == i:
                    out[-1] = (r, out[-1][1], i + k)
                else:
                    out.append((r, i, i + k))
                n += k
            seq += k
    return out


def _spans(pairs: Iterator[tuple[int, Run | None]], limit: int) -> list[Span]:
    """``(seq, run)`` pairs in seq order (None: not there) as spans of runs, at most
    ``limit`` readings: consecutive seqs of one run make one span."""
    out: list[Span] = []
    run: Run | None = None
    start = stop = 0
    n = 0
    for seq, r in pairs:
        if r is None:
            continue
        i = seq - r.first
        if r is run and i == stop:
            stop += 1
        else:
            if run is not None:
                out.append((run, start, stop))
            run, start, stop = r, i, i + 1
        n += 1
        if n >= limit:
            break
    if run is not None:
        out.append((run, start, stop))
    return out
