"""The blocking half of the buffer: one SQLite connection, used from one thread only.

Everything here runs in the buffer's dedicated writer thread (see ``tepi.buffer.store``), so
there is exactly one writer and no locking between threads. The schema keeps readings in
columns rather than as encoded payloads, so that other encodings and exports can read them.

Schema (``PRAGMA user_version`` = 1)::

    meta(key, value)                 -- last_seq: the highest seq handed out and recorded;
                                     -- clean: 1 if the last run closed the file cleanly
    boots(id, boot_id)               -- kernel boot ids, referenced by readings
    readings(seq PK, boot, ts, mono, device, metric, value, unit, flags, reason)

Failure handling: a file SQLite cannot read (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``) or a
schema this code does not know is moved aside with its -wal/-shm files and a new one is
started. A full disk (``SQLITE_FULL``) evicts the oldest rows and tries again once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tepi.buffer.records import Run

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FLAG_BOOL = 1  # the value is a bool (SQLite stores it as an integer)
FLAG_UNSYNCED = 2  # read while the wall clock was not synchronised (Reading.synced False)
FLAG_UNCERTAIN = 4  # a value with a reason (Reading.uncertain): quality "uncertain"
FLAG_GPS_TIME = 8  # ts dated from a GPS receiver's time, the system clock unsynced
CORRUPT_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_ROW_OVERHEAD = 24  # rough per-row cost beyond the column bytes, for eviction estimates
_IMPORT_LOCK = threading.Lock()


# ---- what the small stores share (alarms, images, and the like) ---------------------------


def lock_dir(path: Path) -> int:
    """An exclusive flock on ``path`` (made 0600 if missing), not waited for: its fd, which
    holds the lock until it is closed (the kernel releases it if the process dies). OSError
    if another process or store holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def quarantine(path: Path) -> Path:
    """Move a database file that cannot be used (and its -wal and -shm) aside, as
    ``NAME.corrupt-<UTC time>``; where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.replace(Path(f"{target}{suffix}"))
    return target


def fsync_dir(path: Path) -> None:
    """Make a rename or an unlink in the directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync: bool = True, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` whole or not at all: a temp file beside it, fsynced,
    renamed over it, the directory fsynced (``sync`` False: no fsync, for tests and tmpfs).
    OSError when the disk refuses; the old file is then untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def connect_private(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """A connection to a store's file, made readable by the service's user only (the data
    of a site), usable from the store's worker threads under its own lock, in WAL mode,
    synchronous=FULL until the store says otherwise. ``autocommit``: no implicit
    transactions (they begin and commit exactly where the code says)."""
    old_umask = os.umask(0o077)
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None if autocommit else "DEFERRED",  # DEFERRED: sqlite3's default
            check_same_thread=False,
            timeout=10,
        )
    finally:
        os.umask(old_umask)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA journal_size_limit=1048576")
    return conn


def sqlite_utils_lean() -> ModuleType:
    """sqlite-utils (the alarm and image stores' migrations), imported without numpy when
    numpy is not loaded yet.

    sqlite-utils imports numpy, if installed, only to store numpy values, which tepi never
    does; numpy is installed beside OpenCV and costs about 11 MB of RSS (13.8 MB with it,
    2.3 MB without, on this machine), a fifth of the agent, on a box whose rules need nothing
    of it. Once numpy is loaded (OpenCV, with cameras) it is used as it is. The image store
    opens before any camera starts, so no camera imports OpenCV while numpy is hidden."""
    found = sys.modules.get("sqlite_utils")
    if found is not None:
        return found
    with _IMPORT_LOCK:
        hide = "numpy" not in sys.modules
        if hide:
            sys.modules["numpy"] = None  # type: ignore[assignment]  # import numpy: ImportError
        try:
            import sqlite_utils
        finally:
            if hide and "numpy" in sys.modules and sys.modules["numpy"] is None:
                del sys.modules["numpy"]
    return sqlite_utils


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS boots (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL,
    ts REAL NOT NULL,
    mono REAL NOT NULL,
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    value,
    unit TEXT,
    flags INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
"""


_COLUMNS = "seq, boot, ts, mono, device, metric, value, unit, flags, reason"
_ROWS_PER_INSERT = 1000  # 10,000 parameters: far below SQLite's limit of 32,766


def _insert_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * rows)  # placeholders only: values are bound
    return f"INSERT INTO readings({_COLUMNS}) VALUES {values}"  # noqa: S608


_INSERT_SQL = _insert_sql(_ROWS_PER_INSERT)


class SchemaError(Exception):
    """The file is a SQLite database, but not one this version can use."""


class SeqCeiling:
    """A reservation of sequence numbers, kept in a small file beside the database.

    Sequence numbers must never go back, or the IOC would drop new readings as duplicates.
    The database knows the last one, but a database that is lost (corrupt at start, deleted)
    takes that knowledge with it. So every seq handed out stays below a ceiling that is on
    disk first, raised a block at a time (one fsync per block); a new database starts at it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = 0

    def load(self) -> int:
        try:
            self.value = max(int(self.path.read_text().strip()), 0)
        except (OSError, ValueError):
            self.value = 0
        return self.value

    def raise_to(self, value: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(f"{value}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.value = value


def _estimate(row: tuple[object, ...]) -> int:
    """Rough bytes a row takes in the file, to make room before inserting it."""
    text = sum(len(c) for c in row if isinstance(c, str))
    return _ROW_OVERHEAD + 24 + text + 8


def _row(seq: int, run: Run, boot: int) -> tuple[object, ...]:
    """The file's columns for the reading ``seq`` of ``run``."""
    i = seq - run.first
    value = run.values[i]
    is_bool = isinstance(value, bool)
    if isinstance(value, bool):
        value = int(value)  # SQLite has no bool; FLAG_BOOL says it was one
    return (
        seq,
        boot,
        run.ts,
        run.mono,
        run.device,
        run.metrics[i],
        value,
        run.units[i],
        (FLAG_BOOL if is_bool else 0)
        | (0 if run.synced else FLAG_UNSYNCED)
        | (FLAG_UNCERTAIN if run.uncertain is not None and run.uncertain[i] else 0)
        | (FLAG_GPS_TIME if run.gps_time else 0),
        None if run.reasons is None else run.reasons[i],
    )


def _closed(
    run: Run,
    metrics: list[str],
    units: list[str | None],
    reasons: list[str | None],
    uncertain: list[bool],
) -> Run:
    """``run`` with its columns filled in (None where nothing is bad or uncertain)."""
    run.metrics = tuple(metrics)
    run.units = tuple(units)
    run.reasons = reasons if any(r is not None for r in reasons) else None
    run.uncertain = uncertain if any(uncertain) else None
    return run


def is_corrupt(err: sqlite3.Error) -> bool:
    """True for errors that mean the file itself is unusable (not a full disk or a lock)."""
    return getattr(err, "sqlite_errorname", "") in CORRUPT_ERRORS


@dataclass(slots=True)
class Opened:
    """What the store learns from the file when it opens it."""

    last_seq: int
    depth: int
    quarantined: Path | None
    created: bool = False
    clean: bool = True


class Database:
    """One connection to the buffer file, with the few statements the buffer needs."""

    def __init__(self, path: Path, *, sync_full: bool, max_bytes: int) -> None:
        self.path = path
        self.sync_full = sync_full
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._boot_ref = 0

    # ---- opening, and recovering from a bad file -------------------------------------

    def open(self, boot_id: str) -> Opened:
        """Open (or create) the file; a file that cannot be used is moved aside first."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        quarantined: Path | None = None
        try:
            opened = self._open_checked(boot_id)
        except (sqlite3.DatabaseError, SchemaError) as err:
            if isinstance(err, sqlite3.DatabaseError) and not is_corrupt(err):
                raise
            self.close()
            quarantined = self.quarantine(str(err))
            opened = self._open_checked(boot_id)
        opened.quarantined = quarantined
        return opened

    def _open_checked(self, boot_id: str) -> Opened:
        old_umask = os.umask(0o077)  # the buffer holds site data: not for other users
        try:
            # Raw sqlite3, not sqlite-utils (which the read-only ``tepi buffer`` tools use): the
            # writer's hot path is its multi-row INSERTs and transactions that begin and commit
            # exactly where the fsync boundaries must be (isolation_level=None), and a wrapper
            # that opens or commits transactions of its own would move them.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        finally:
            os.umask(old_umask)
        self._conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL until the open transaction below has committed, whatever sync_full says: it
        # clears the clean flag, and that must be on disk before any seq is handed out, or a
        # power cut brings back clean=1 and the next run reuses seqs (SeqCeiling is skipped).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        conn.execute("PRAGMA temp_store=MEMORY")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables):
            raise SchemaError(f"unknown buffer schema (user_version={version}, tables={tables})")
        with self._tx():
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("INSERT OR IGNORE INTO boots(boot_id) VALUES (?)", (boot_id,))
            clean = conn.execute("SELECT value FROM meta WHERE key='clean'").fetchone()
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('clean', 0)"
                " ON CONFLICT(key) DO UPDATE SET value=0"
            )
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync_full else 'NORMAL'}")
        self._boot_ref = conn.execute(
            "SELECT id FROM boots WHERE boot_id=?", (boot_id,)
        ).fetchone()[0]
        row = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        max_row = conn.execute("SELECT max(seq) FROM readings").fetchone()[0]
        last_seq = max(row[0] if row else 0, max_row or 0)
        depth = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        return Opened(
            last_seq=last_seq,
            depth=depth,
            quarantined=None,
            created=version == 0,
            clean=version == 0 or (clean is not None and clean[0] == 1),
        )

    def close_clean(self, last_seq: int) -> None:
        """Record the last seq handed out and that this run ended cleanly, then close.

        Readings the broker acknowledged from memory were never written, so without this the
        next run could not know their seqs. After a crash the flag is missing, and the next
        run starts at the reserved ceiling instead (see ``SeqCeiling``).
        """
        with self._tx():
            self.conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
                [("last_seq", last_seq), ("clean", 1)],
            )
        self.close()

    def quarantine(self, why: str) -> Path:
        """Move the file (and its -wal/-shm) aside and log where it went."""
        self.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{target}{suffix}"))
        log.error(
            "buffer file %s is unusable (%s): moved aside to %s, starting a new buffer",
            self.path,
            why,
            target,
        )
        return target

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as err:
                log.warning("closing buffer file %s: %s", self.path, err)
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("buffer database is not open")
        return self._conn

    # ---- writing -----------------------------------------------------------------------

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def _tx(self) -> Database._Tx:
        return Database._Tx(self.conn)

    def commit(
        self, rows: list[tuple[int, Run]], deletes: Iterable[tuple[int, int]], depth: int
    ) -> tuple[int, int]:
        """Delete acknowledged ranges, make room, and insert ``rows``: one transaction.

        Room is made *before* the insert, so the file never grows past ``max_bytes`` (up to
        the page-level slack). Returns (rows removed by the deletes, rows evicted for room).
        """
        conn = self.conn
        boot = self._boot_ref
        params = [_row(seq, run, boot) for seq, run in rows]
        removed = evicted = 0
        with self._tx():
            for lo, hi in deletes:
                removed += conn.execute(
                    "DELETE FROM readings WHERE seq BETWEEN ? AND ?", (lo, hi)
                ).rowcount
            if params:
                incoming = sum(map(_estimate, params))
                room = self.max_bytes * 95 // 100
                if self.bytes_used() + incoming > room:
                    evicted = self._evict(depth - removed, max(room - incoming, 0))
                self._insert(params)
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('last_seq', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
                    (rows[-1][0],),
                )
        return removed, evicted

    def _insert(self, params: list[tuple[object, ...]]) -> None:
        """Many rows per statement, not ``executemany``: each SQLite step releases and
        retakes the GIL, and while the event loop is busy each retake can wait a whole
        switch interval. 10,000 rows one by one took 8 s against a busy loop; in statements
        of 1,000 rows they take milliseconds (docs/performance.md, "GIL convoy")."""
        conn = self.conn
        for i in range(0, len(params), _ROWS_PER_INSERT):
            chunk = params[i : i + _ROWS_PER_INSERT]
            sql = _INSERT_SQL if len(chunk) == _ROWS_PER_INSERT else _insert_sql(len(chunk))
            conn.execute(sql, [v for row in chunk for v in row])

    def bytes_used(self) -> int:
        """Bytes in live pages of the main file (freed pages are reused, so not counted)."""
        conn = self.conn
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def evict_oldest(self, depth: int, target_bytes: int) -> int:
        """Delete the oldest rows until the live pages fit ``target_bytes``; return the count."""
        with self._tx():
            return self._evict(depth, target_bytes)

    def _evict(self, depth: int, target_bytes: int) -> int:
        removed = 0
        for _ in range(64):
            used = self.bytes_used()
            left = depth - removed
            if used <= target_bytes or left <= 0:
                break
            per_row = max(used // max(left, 1), _ROW_OVERHEAD)
            n = max((used - target_bytes) // per_row + 1, 64)
            removed += self.conn.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings ORDER BY seq LIMIT ?)",
                (n,),
            ).rowcount
        return removed

    def expire(self, max_age_s: float, now_mono: float, now_ts: float | None) -> int:
        """Delete rows older than ``max_age_s`` (the optional age limit), by clocks that can
        be trusted: this boot's rows by ``mono`` (which never jumps); earlier boots' rows by
        ``ts``, only if they were read with a synced clock and ``now_ts`` (the current wall
        clock) is given, i.e. synced too. A row whose age cannot be known is kept: a clock
        that jumps from 1970 to today must not expire a day of readings. ``max_bytes`` still
        bounds the file."""
        sql = "DELETE FROM readings WHERE (boot = ? AND mono < ?)"
        args: list[object] = [self._boot_ref, now_mono - max_age_s]
        if now_ts is not None:
            sql += f" OR (boot != ? AND flags & {FLAG_UNSYNCED} = 0 AND ts < ?)"
            args += [self._boot_ref, now_ts - max_age_s]
        with self._tx():
            return self.conn.execute(sql, args).rowcount

    # ---- reading -----------------------------------------------------------------------

    def fetch(self, after_seq: int, limit: int, upto: int | None = None) -> tuple[str, list[Run]]:
        """The oldest rows after ``after_seq`` (and up to ``upto``), cut where the boot changes,
        as runs (``first`` is the seq of a run's first row)."""
        cur = self.conn.execute(
            "SELECT r.seq, b.boot_id, r.ts, r.mono, r.device, r.metric, r.value, r.unit,"
            " r.flags, r.reason FROM readings r JOIN boots b ON b.id = r.boot"
            " WHERE r.seq > ? AND r.seq <= ? ORDER BY r.seq LIMIT ?",
            (after_seq, 2**63 - 1 if upto is None else upto, limit),
        )
        boot_id = ""
        out: list[Run] = []
        # Rows of one poll (one device, one instant, consecutive seqs) become one run again,
        # as they were put: one object a poll, and the encoder's per-run work done once.
        metrics: list[str] = []
        units: list[str | None] = []
        reasons: list[str | None] = []
        uncertain: list[bool] = []
        run: Run | None = None
        for seq, boot, ts, mono, device, metric, value, unit, flags, reason in cur:
            if run is None:
                boot_id = boot
            elif boot != boot_id:
                break
            val = bool(value) if flags & FLAG_BOOL else value
            synced = not flags & FLAG_UNSYNCED
            gps = bool(flags & FLAG_GPS_TIME)
            if (
                run is None
                or seq != run.first + len(run.values)
                or device != run.device
                or ts != run.ts
                or mono != run.mono
                or synced != run.synced
                or gps != run.gps_time
            ):
                if run is not None:
                    out.append(_closed(run, metrics, units, reasons, uncertain))
                run = Run(device, (), (), [], ts, mono, synced, gps, first=seq)
                metrics, units, reasons, uncertain = [], [], [], []
            run.values.append(val)
            metrics.append(metric)
            units.append(unit)
            reasons.append(reason)
            uncertain.append(bool(flags & FLAG_UNCERTAIN))
        if run is not None:
            out.append(_closed(run, metrics, units, reasons, uncertain))
        return boot_id, out

    def oldest_ts(self) -> float | None:
        row = self.conn.execute("SELECT ts FROM readings ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])
