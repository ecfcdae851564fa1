"""The asyncio half of the buffer: sequence numbers, group commits, batches and acks.

Readings arrive with :meth:`Buffer.put` (no await, no I/O) and get their sequence number
there. :meth:`Buffer.run`, a task in the agent's TaskGroup, commits what is pending in one
transaction at most ``commit_interval`` after the first pending reading arrived, or as soon
as ``commit_max_readings`` are waiting. That is the durability boundary: a reading is
committed within ``commit_interval`` of being read. Nothing wakes up while nothing is pending.

All SQLite work runs in one dedicated thread (``tepi-buffer``), so statements never block
the event loop and there is only ever one writer. Acknowledged batches are deleted in the
next group commit, not one transaction per ack, which saves SD-card writes.

Limits: the file is bounded by ``max_bytes`` (the oldest rows are evicted and counted as
``buffer_full``), optionally by ``max_age`` (counted as ``expired``), and the in-memory
queue in front of SQLite is bounded by ``max_pending`` (counted as ``overflow``) for the
case where the disk stops taking writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from buffer.db import Database, SeqCeiling, is_corrupt
from buffer.records import Batch, BufferStats, Reading

log = logging.getLogger(__name__)
T = TypeVar("T")
_EXPIRE_EVERY_S = 10.0
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 30.0
SEQ_BLOCK = 100_000


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """How the buffer is sized and how often it commits (from the ``buffer:`` config)."""

    path: Path
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = None
    commit_interval_s: float = 0.2
    commit_max_readings: int = 1000
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


class Buffer:
    """Durable, bounded store-and-forward queue of readings, oldest out first."""

    def __init__(self, settings: BufferSettings, boot_id: str) -> None:
        self.settings = settings
        self.boot_id = boot_id
        self._db = Database(
            settings.path, sync_full=settings.sync_full, max_bytes=settings.max_bytes
        )
        self._ceiling = SeqCeiling(settings.path.with_name(settings.path.name + ".seq"))
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tepi-buffer")
        self._pending: deque[tuple[int, Reading]] = deque()
        self._deletes: list[tuple[int, int]] = []
        self._next_seq = 1
        self._committed_seq = 0
        self._depth = 0
        self._bytes_used = 0
        self._oldest_ts: float | None = None
        self._dropped: Counter[str] = Counter()
        self._quarantined = 0
        self._write_errors = 0
        self._first_pending_at = 0.0
        self._last_expire = 0.0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._changed = asyncio.Condition()
        self._opened = False

    # ---- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Buffer:
        opened = await self._call(self._db.open, self.boot_id)
        ceiling = await self._call(self._ceiling.load)
        self._next_seq = opened.last_seq + 1
        if (opened.created or opened.quarantined) and ceiling > self._next_seq:
            # A new file after a lost one: start above every seq that may have been sent.
            log.warning(
                "buffer %s is new: sequence numbers continue from %d", self.settings.path, ceiling
            )
            self._next_seq = ceiling
        await self._call(self._ceiling.raise_to, self._next_seq + SEQ_BLOCK)
        self._committed_seq = opened.last_seq
        self._depth = opened.depth
        if opened.quarantined is not None:
            self._quarantined += 1
        self._bytes_used = await self._call(self._db.bytes_used)
        self._oldest_ts = await self._call(self._db.oldest_ts)
        self._opened = True
        log.info(
            "buffer %s open: %d readings waiting, next seq %d",
            self.settings.path,
            self._depth,
            self._next_seq,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit what is pending, close the file and stop the writer thread."""
        if not self._opened:
            return
        self._opened = False
        try:
            await self._commit_once()
        finally:
            await self._call(self._db.close)
            self._exec.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    # ---- the event-loop side API -----------------------------------------------------------

    def put(self, reading: Reading) -> int:
        """Queue ``reading`` for the next group commit and return its sequence number."""
        if not self._opened:
            raise RuntimeError("Buffer.put() before the buffer is open: seq would be reused")
        seq = self._next_seq
        self._next_seq += 1
        if self._next_seq >= self._ceiling.value:
            # Once per SEQ_BLOCK readings: a tiny fsynced write, so it is done right here.
            self._ceiling.raise_to(self._next_seq + SEQ_BLOCK)
        if len(self._pending) >= self.settings.max_pending:
            self._pending.popleft()
            self._dropped["overflow"] += 1
        if not self._pending:
            self._first_pending_at = time.monotonic()
        self._pending.append((seq, reading))
        self._wake.set()
        if len(self._pending) >= self.settings.commit_max_readings:
            self._urgent.set()
        return seq

    def ack(self, batch: Batch) -> None:
        """The broker has this batch: delete its rows in the next group commit."""
        if not self._pending and not self._deletes:
            self._first_pending_at = time.monotonic()
        self._deletes.append((batch.first_seq, batch.last_seq))
        self._wake.set()

    async def flush(self) -> None:
        """Commit everything pending now (used at shutdown and before a resend)."""
        await self._commit_once()

    @property
    def committed_seq(self) -> int:
        """The highest sequence number that is committed to the file."""
        return self._committed_seq

    async def wait_for_data(self, after_seq: int) -> None:
        """Return once a reading with a seq above ``after_seq`` is committed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._committed_seq > after_seq)

    async def fetch(self, after_seq: int, max_readings: int) -> Batch | None:
        """The oldest committed readings after ``after_seq``, all from one boot."""
        boot_id, items = await self._call(self._db.fetch, after_seq, max_readings)
        return Batch(boot_id, items) if items else None

    def stats(self) -> BufferStats:
        return BufferStats(
            depth=self._depth + len(self._pending),
            bytes_used=self._bytes_used,
            max_bytes=self.settings.max_bytes,
            oldest_ts=(
                self._oldest_ts
                if self._oldest_ts is not None
                else (self._pending[0][1].ts if self._pending else None)
            ),
            next_seq=self._next_seq,
            pending=len(self._pending),
            dropped=dict(self._dropped),
            quarantined_files=self._quarantined,
            write_errors=self._write_errors,
        )

    # ---- the commit loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Group-commit forever. Run it as a task; cancel it to stop (then ``aclose``)."""
        retry = _RETRY_MIN_S
        while True:
            await self._wake.wait()
            delay = self._first_pending_at + self.settings.commit_interval_s - time.monotonic()
            if delay > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._urgent.wait()
            try:
                await self._commit_once()
                retry = _RETRY_MIN_S
            except (sqlite3.Error, OSError) as err:
                self._write_errors += 1
                if self._write_errors == 1 or retry == _RETRY_MIN_S:
                    log.error(
                        "buffer commit failed, %d readings held in memory: %s",
                        len(self._pending),
                        err,
                    )
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX_S)

    async def _commit_once(self) -> None:
        if not self._pending and not self._deletes:
            self._wake.clear()
            return
        rows = list(self._pending)
        self._pending.clear()
        deletes, self._deletes = self._deletes, []
        self._wake.clear()
        self._urgent.clear()
        write = asyncio.get_running_loop().run_in_executor(self._exec, self._write, rows, deletes)
        try:
            res = await asyncio.shield(write)
        except asyncio.CancelledError:
            # Cancelling the await does not stop the thread: the write lands all the same.
            # Count it, or the rows would be queued again and inserted twice.
            try:
                res = await write
            except Exception:  # noqa: BLE001 - requeued, and the cancel goes on
                self._requeue(rows, deletes)
                raise asyncio.CancelledError from None
            await self._applied(rows, res)
            raise
        except Exception:
            self._requeue(rows, deletes)  # then raise: the commit loop retries with backoff
            raise
        await self._applied(rows, res)

    def _requeue(self, rows: list[tuple[int, Reading]], deletes: list[tuple[int, int]]) -> None:
        """The write failed, nothing was committed: put it all back in front, in order."""
        self._pending.extendleft(reversed(rows))
        while len(self._pending) > self.settings.max_pending:
            self._pending.popleft()
            self._dropped["overflow"] += 1
        self._deletes = deletes + self._deletes
        if self._pending or self._deletes:
            self._wake.set()

    async def _applied(self, rows: list[tuple[int, Reading]], res: _WriteResult) -> None:
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
        if rows:
            async with self._changed:
                self._committed_seq = max(self._committed_seq, rows[-1][0])
                self._changed.notify_all()

    def _write(
        self, rows: list[tuple[int, Reading]], deletes: list[tuple[int, int]]
    ) -> _WriteResult:
        """In the writer thread: one transaction, then the limits."""
        db = self._db
        quarantined = False
        depth = self._depth
        try:
            removed, evicted = db.commit(rows, deletes, depth)
        except sqlite3.DatabaseError as err:
            if is_corrupt(err):
                db.quarantine(str(err))
                db.open(self.boot_id)
                quarantined = True
                removed, evicted = db.commit(rows, [], 0)
            elif getattr(err, "sqlite_errorname", "") == "SQLITE_FULL":
                # The disk is fuller than max_bytes assumed: give back a tenth, retry once.
                freed = db.evict_oldest(depth, db.bytes_used() * 9 // 10)
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
            expired = db.expire(time.time() - self.settings.max_age_s)
        return _WriteResult(removed, evicted, expired, used, db.oldest_ts(), quarantined)
