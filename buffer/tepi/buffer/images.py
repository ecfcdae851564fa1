"""The durable image buffer: camera images kept on disk until the broker has acknowledged them.

Images are too big for the readings buffer's rows and too many for RAM, so they live as one
file each in ``DIR/images/`` with a small SQLite index beside them, ``DIR/images.db`` (``DIR``
is the data dir the store is given). The readings buffer is not involved and not slowed down:
its file, its thread and its tuned raw-sqlite3 hot path are its own. The index schema is
made by sqlite-utils migrations (recorded in its ``_sqlite_migrations`` table), so a later
version adds a migration rather than a check of its own. Only one store has a directory open
at a time (an flock on ``DIR/images.lock``, released by the kernel if the process dies):
another's reconcile would delete the files this one is writing.

Crash safety. A put writes ``images/.tmp-SEQ``, fsyncs it, renames it to its final name,
fsyncs the directory, and only then commits the index row. So a committed row always names a
complete, durable file, and a crash at any point leaves at worst a file without a row, which
the next :meth:`ImageStore.open` deletes. Open also deletes rows whose file is missing, and
rows whose file has another size than the row says (with that file: it is not the image the
row describes). Each is counted
(``reconciled_orphan_files``, ``reconciled_missing_files``). The content is checked against
its sha256 when it is read (:meth:`ImageStore.read`), not at open: hashing a full SD card's
worth of images would delay every start.

A damaged index (``PRAGMA quick_check`` not ``ok``, a file that is not SQLite, a schema this
code does not know) is moved aside as ``images.db.corrupt-<UTC time>`` with one log line,
counted (``quarantined``), and a new, empty index started. Its images then have no row and are
deleted as orphans: without the index an image's camera, reason, class, time and boot are
unknown, and an image the IOC cannot place is worth less than the room it takes from new ones.
The sequence numbers do survive it (see below), so the IOC never sees a seq twice.

Sequence numbers. ``seq`` increases with every put and is never reused: the index keeps the
last one stored (``meta.last_seq``, committed with each row; at a clean close, the last one
handed out), and a reservation in
``DIR/images.seq`` (raised a block at a time, one fsync per block) covers a lost index or a
crash; after either, numbering resumes above the reservation. :meth:`ImageStore.reserve_seq`
hands out a seq without storing anything (the agent keeps an image in RAM for a while and
writes it, with that seq, only if the broker has not taken it meanwhile): such a seq is covered
by the same reservation, so it is not handed out again whether or not its image is written.

Quotas. ``max_bytes`` bounds the sum of the image files' sizes (``st_size``, temporary files
included while they are written). Not counted: the index (``images.db`` and its WAL, a few
hundred bytes a row, the WAL capped by ``journal_size_limit``) and the filesystem's rounding to
whole blocks. The bound holds at every moment, also with puts in several threads: a put
reserves its size and evicts *before* it writes, and open evicts down to a ``max_bytes``
lowered since the last run. Eviction goes by class, lowest priority first
(``snapshot``, then ``thumbnail``, then ``event``), oldest first within a class, and a put may
evict only images of its own class or lower: an image that would only fit by evicting a higher
class is refused. ``max_age_s`` (optional) drops images older than that, on each put and on
:meth:`ImageStore.expire`, judged by clocks that can be trusted (see :meth:`ImageStore.expire`).
``reserve_bytes`` keeps the readings buffer's share of the disk: a put that would leave less
free space than it returns is refused.

Every image dropped is counted by reason in ``ImageStats.dropped`` (:data:`DROP_REASONS`):

- ``quota``: evicted to make room for a newer image (``max_bytes``);
- ``age``: older than ``max_age_s``;
- ``too_large``: one image larger than ``max_bytes``, refused;
- ``refused_priority``: refused, as it would fit only by evicting a higher class;
- ``disk_reserve``: refused, as it would leave less free disk than ``reserve_bytes()``;
- ``write_error``: the disk refused the write (full, I/O error, index write failed);
- ``damaged``: found unreadable or with another sha256 by :meth:`ImageStore.read`, deleted.

Threads. Every method is blocking (file and SQLite I/O) and safe to call from several threads
at once (the agent calls them through ``asyncio.to_thread``; ``aput``, ``anext``, ``aread``,
``aack`` do that for it). One lock guards the index and the accounting; a put holds it only to
reserve (seq, room, evictions) and to commit its row, not while it writes and syncs its file.

Importing this module is cheap: sqlite-utils (which pulls in numpy when it is installed) is
imported when a store is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tepi.buffer.db import (
    SchemaError,
    SeqCeiling,
    connect_private,
    fsync_dir,
    is_corrupt,
    lock_dir,
    quarantine,
    sqlite_utils_lean,
)
from tepi.buffer.records import IMAGE_DROP_REASONS
from tepi.core.clock import boottime

if TYPE_CHECKING:
    from sqlite_utils import Database, Migrations

log = logging.getLogger(__name__)

EVENT, THUMBNAIL, SNAPSHOT = "event", "thumbnail", "snapshot"
CLASSES = (EVENT, THUMBNAIL, SNAPSHOT)  # delivery order: highest priority first
EVICTION_ORDER = (SNAPSHOT, THUMBNAIL, EVENT)  # the reverse: lowest priority goes first
PRIORITY = {SNAPSHOT: 0, THUMBNAIL: 1, EVENT: 2}
DROP_REASONS = IMAGE_DROP_REASONS
SEQ_BLOCK = 1000  # seqs reserved in images.seq per fsync
TMP_PREFIX = ".tmp-"
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_COLUMNS = (
    "seq, camera, cls, reason, ts, mono, boot, width, height, size, sha256, content_type,"
    " parent, attempts, event, name"
)


class ImageStoreError(Exception):
    """Base of what the image store raises for an image it cannot take or give."""


class ImageRefused(ImageStoreError):
    """The put was refused by policy and counted; nothing was written.

    ``reason`` is the drop counter it went to: ``too_large``, ``refused_priority`` or
    ``disk_reserve``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageWriteError(ImageStoreError):
    """The disk refused the image (full, I/O error, the index could not be written). Counted
    as ``write_error``; no file of it is left behind. ``errno`` is the OS error's, if any."""

    def __init__(self, message: str, err_no: int | None = None) -> None:
        super().__init__(message)
        self.errno = err_no


class ImageGone(ImageStoreError, LookupError):
    """No such image (any more): acknowledged, evicted, expired or found damaged."""

    def __init__(self, seq: int, why: str = "not in the store") -> None:
        super().__init__(f"image {seq} {why}")
        self.seq = seq


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """One stored image: what the uplink needs to send it, without its bytes."""

    seq: int
    camera: str
    cls: str  # event, thumbnail or snapshot
    reason: str  # why it was taken: periodic, request, alarm:...
    ts: float  # UTC wall clock, seconds
    mono: float  # CLOCK_BOOTTIME, seconds
    boot: str  # kernel boot id of the boot ``mono`` belongs to
    width: int
    height: int
    size: int  # bytes of the file
    sha256: str  # hex
    content_type: str
    parent: int | None  # a thumbnail's full image
    attempts: int  # delivery attempts recorded with ImageStore.attempt
    event: str | None  # an event image's event, a JSON object (camera analytics)
    path: Path


@dataclass(frozen=True, slots=True)
class Usage:
    """Images of one class: how many, and their bytes."""

    count: int
    size: int


@dataclass(slots=True)
class ImageStats:
    """What the health message and the tools report about the image store."""

    classes: dict[str, Usage]  # per class, every class present
    total_bytes: int  # sum of the files' sizes, as bounded by max_bytes
    max_bytes: int
    oldest_ts: float | None
    next_seq: int
    dropped: dict[str, int] = field(default_factory=dict)  # every DROP_REASONS key
    reconciled_orphan_files: int = 0  # files without a row, deleted at open
    reconciled_missing_files: int = 0  # rows without their file (or of another size)
    quarantined: int = 0  # index files moved aside as corrupt
    puts: int = 0
    acks: int = 0
    write_errors: int = 0
    in_flight_bytes: int = 0  # reserved by puts still writing


def _migrations() -> Migrations:
    """The index schema, as sqlite-utils migrations (recorded in ``_sqlite_migrations``).

    A new version adds a function here; one already released is never changed."""
    sqlite_utils_lean()  # first: without numpy, if nothing loaded it yet
    from sqlite_utils import Migrations

    migrations = Migrations("tepi.buffer.images")

    @migrations()
    def m001_images(db: Database) -> None:
        db.table("images").create(
            {
                "seq": int,
                "camera": str,
                "cls": str,
                "reason": str,
                "ts": float,
                "mono": float,
                "boot": str,
                "width": int,
                "height": int,
                "size": int,
                "sha256": str,
                "content_type": str,
                "parent": int,
                "attempts": int,
                "name": str,
            },
            pk="seq",
            not_null=[
                "camera",
                "cls",
                "reason",
                "ts",
                "mono",
                "boot",
                "width",
                "height",
                "size",
                "sha256",
                "content_type",
                "attempts",
                "name",
            ],
            defaults={"content_type": "image/jpeg", "attempts": 0},
        )
        # next() and eviction walk one class in seq order.
        db.table("images").create_index(["cls", "seq"])
        db.table("meta").create({"key": str, "value": int}, pk="key", not_null=["value"])

    @migrations()
    def m002_event(db: Database) -> None:
        # An event image's event (camera analytics), a JSON object; NULL for other images.
        db.table("images").add_column("event", str)

    return migrations


_FIELDS = tuple(c.strip() for c in _COLUMNS.split(","))
_EXPECTED_COLUMNS = frozenset(_FIELDS)


def _unlink(path: Path) -> bool:
    """Delete ``path``; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class ImageStore:
    """Durable, bounded store of camera images; see the module docstring.

    ``directory`` is the data dir: the index is ``directory/images.db``, the files are in
    ``directory/images/``. ``boot_id`` is the kernel's boot id (ages of this boot's images are
    judged by ``mono``); ``clock_synced`` says whether the wall clock may be trusted for the
    ages of earlier boots' images. ``sync`` False skips every fsync (tests, tmpfs): a power
    cut may then lose images whose put had returned, never corrupt the index.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        max_age_s: float | None = None,
        reserve_bytes: Callable[[], int] = lambda: 0,
        sync: bool = True,
        boot_id: str = "",
        clock_synced: Callable[[], bool] = lambda: False,
    ) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.index_path = self.directory / "images.db"
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.reserve_bytes = reserve_bytes
        self.sync = sync
        self.boot_id = boot_id
        self.clock_synced = clock_synced
        self._ceiling = SeqCeiling(self.directory / "images.seq")
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._lock_fd: int | None = None
        self._next_seq = 1
        self._usage = {c: [0, 0] for c in CLASSES}  # class -> [count, bytes] of indexed rows
        self._reserved = 0  # bytes of puts between their reservation and their row
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._orphans = 0
        self._missing = 0
        self._quarantined = 0
        self._puts = 0
        self._acks = 0
        self._write_errors = 0

    # ---- opening and closing -------------------------------------------------------------

    def open(self) -> Self:
        """Open (or create) the index, move a damaged one aside, reconcile it with the files,
        and evict down to ``max_bytes`` (it may have been lowered since the last run). Safe
        to call on an open store (does nothing).

        Only one store may have a directory open at a time (``images.lock``, an flock the
        kernel releases when the process dies): another's reconcile would delete the files
        this one is writing. A second one raises :class:`ImageStoreError`."""
        with self._lock:
            if self._db is not None:
                return self
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            self.images_dir.mkdir(exist_ok=True, mode=0o750)
            self._take_dir_lock()
            try:
                self._open()
            except BaseException:
                self._close_db()
                self._release_dir_lock()
                raise
        return self

    def _open(self) -> None:
        try:
            created, clean = self._open_index()
        except (sqlite3.DatabaseError, SchemaError) as err:
            if isinstance(err, sqlite3.DatabaseError) and not is_corrupt(err):
                raise
            self._quarantine(str(err))
            created, clean = self._open_index()
        self._reconcile()
        db = self.db
        last = db.execute("SELECT max(value) FROM meta WHERE key = 'last_seq'").fetchone()[0]
        top = db.execute("SELECT max(seq) FROM images").fetchone()[0]
        last = max(last or 0, top or 0)
        ceiling = self._ceiling.load()
        if created or not clean:
            # A lost index, or a crash: seqs up to the reservation may have been handed out.
            last = max(last, ceiling)
        self._next_seq = last + 1
        self._load_usage()
        excess = self._total() - self.max_bytes
        if excess > 0:
            victims = self._victims(EVENT, excess) or []
            self._delete(victims)
            self._dropped["quota"] += len(victims)
            log.warning(
                "image store %s: %d images evicted at open to fit max_bytes=%d",
                self.directory,
                len(victims),
                self.max_bytes,
            )

    def _take_dir_lock(self) -> None:
        try:
            self._lock_fd = lock_dir(self.directory / "images.lock")
        except OSError as err:
            raise ImageStoreError(
                f"image store {self.directory} is in use by another process or store "
                f"(images.lock: {err.strerror})"
            ) from err

    def _release_dir_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _open_index(self) -> tuple[bool, bool]:
        """Connect, check and migrate the index; (created now, last run closed cleanly)."""
        sqlite_utils_lean()  # first: without numpy, if nothing loaded it yet
        from sqlite_utils import Database

        conn = connect_private(self.index_path)  # synchronous=FULL until clean is cleared
        self._db = db = Database(conn, recursive_triggers=False, execute_plugins=False)
        check = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise SchemaError(f"quick_check: {'; '.join(map(str, check[:3]))}")
        created = not db.table("images").exists()
        _migrations().apply(db)
        columns = set(db.table("images").columns_dict)
        if not columns >= _EXPECTED_COLUMNS:
            raise SchemaError(f"images table lacks {sorted(_EXPECTED_COLUMNS - columns)}")
        with db.atomic():
            row = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('clean', 0)"
                " ON CONFLICT(key) DO UPDATE SET value = 0"
            )
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync else 'NORMAL'}")
        return created, row is not None and row[0] == 1

    def _quarantine(self, why: str) -> None:
        """Move the index (and its -wal/-shm) aside, count it and say where it went."""
        self._close_db()
        target = quarantine(self.index_path)
        self._quarantined += 1
        log.error(
            "image index %s is unusable (%s): moved aside to %s, starting a new index; "
            "its images are deleted as orphans",
            self.index_path,
            why,
            target,
        )

    def _reconcile(self) -> None:
        """Make the index and the files agree: files without a row (leftover temporary files
        included) are deleted, and so are rows without their file or whose file has another
        size (and that file)."""
        db = self.db
        rows = {
            name: (seq, size)
            for seq, name, size in db.execute("SELECT seq, name, size FROM images")
        }
        gone: list[int] = []
        orphans = 0
        with os.scandir(self.images_dir) as it:
            entries = [e for e in it if not e.is_dir(follow_symlinks=False)]
        for entry in entries:
            row = rows.pop(entry.name, None)
            if row is None:
                orphans += _unlink(Path(entry.path))
            elif entry.stat(follow_symlinks=False).st_size != row[1]:
                _unlink(Path(entry.path))
                gone.append(row[0])
        gone += [seq for seq, _ in rows.values()]
        if gone:
            with db.atomic():
                db.conn.executemany("DELETE FROM images WHERE seq = ?", [(s,) for s in gone])
        if orphans and self.sync:
            fsync_dir(self.images_dir)
        self._orphans += orphans
        self._missing += len(gone)
        if orphans or gone:
            log.warning(
                "image store %s: deleted %d files without an index row and %d rows whose "
                "file was missing or of another size",
                self.directory,
                orphans,
                len(gone),
            )

    def _load_usage(self) -> None:
        self._usage = {c: [0, 0] for c in CLASSES}
        for cls, count, size in self.db.execute(
            "SELECT cls, count(*), coalesce(sum(size), 0) FROM images GROUP BY cls"
        ):
            self._usage.setdefault(cls, [0, 0])[:] = [count, size]

    def close(self) -> None:
        """Record the last seq and a clean close, then close the index."""
        with self._lock:
            if self._db is None:
                return
            try:
                with self._db.atomic():
                    self._db.conn.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        [("last_seq", self._next_seq - 1), ("clean", 1)],
                    )
            except sqlite3.Error as err:
                log.warning("closing image index %s: %s", self.index_path, err)
            self._close_db()
            self._release_dir_lock()

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as err:
                log.warning("closing image index %s: %s", self.index_path, err)
            self._db = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._db is None:
            raise ImageStoreError(f"image store {self.directory} is not open")

    @property
    def db(self) -> Database:
        if self._db is None:
            raise ImageStoreError(f"image store {self.directory} is not open")
        return self._db

    # ---- putting ---------------------------------------------------------------------------

    def put(
        self,
        camera: str,
        cls: str,
        jpeg: bytes,
        *,
        reason: str,
        ts: float,
        mono: float,
        width: int,
        height: int,
        parent: int | None = None,
        content_type: str = "image/jpeg",
        event: str | None = None,
        seq: int | None = None,
    ) -> ImageMeta:
        """Store one image durably and return it with its seq.

        ``seq``: a seq handed out earlier by :meth:`reserve_seq` (an image the agent kept in
        RAM and writes only now); None takes the next one.

        When this returns, the image is on disk (with ``sync``) and its row committed. Raises
        :class:`ImageRefused` (too large, only room by evicting a higher class, or the disk
        reserve) or :class:`ImageWriteError` (the disk refused it); either is counted and
        leaves nothing of this image behind. A refused image evicts nothing; images evicted
        for one whose write then fails stay evicted (room is made before the write, so that
        the total never exceeds ``max_bytes``). What ``reserve_bytes()`` raises is raised
        as it is."""
        if cls not in PRIORITY:
            raise ValueError(f"image class must be one of {', '.join(CLASSES)}, not {cls!r}")
        size = len(jpeg)
        with self._lock:
            try:
                seq = self._reserve(cls, size, seq)
            except (OSError, sqlite3.Error) as err:  # evicting or the seq reservation
                self._write_failed()
                raise ImageWriteError(
                    f"image from {camera} not stored: {err}", getattr(err, "errno", None)
                ) from err
        final = self.path_for(seq, content_type)
        name = final.name
        digest = hashlib.sha256(jpeg).hexdigest()
        try:
            self._write(seq, jpeg, final)
        except OSError as err:
            with self._lock:
                self._reserved -= size
                self._write_failed()
            raise ImageWriteError(
                f"image {seq} from {camera} not stored: {err.strerror or err} ({final.parent})",
                err.errno,
            ) from err
        meta = ImageMeta(
            seq=seq,
            camera=camera,
            cls=cls,
            reason=reason,
            ts=ts,
            mono=mono,
            boot=self.boot_id,
            width=width,
            height=height,
            size=size,
            sha256=digest,
            content_type=content_type,
            parent=parent,
            attempts=0,
            event=event,
            path=final,
        )
        with self._lock:
            self._reserved -= size
            try:
                with self.db.atomic():
                    self.db.conn.execute(
                        f"INSERT INTO images({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                        (*_values(meta), name),
                    )
                    self.db.conn.execute(
                        "INSERT INTO meta(key, value) VALUES ('last_seq', ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        (seq,),
                    )
            except (sqlite3.Error, ImageStoreError) as err:
                _unlink(final)
                self._write_failed()
                raise ImageWriteError(f"image {seq} from {camera} not indexed: {err}") from err
            usage = self._usage[cls]
            usage[0] += 1
            usage[1] += size
            self._puts += 1
        return meta

    def _write_failed(self) -> None:
        self._write_errors += 1
        self._dropped["write_error"] += 1

    def reserve_seq(self) -> int:
        """Hand out the next seq without storing anything: for an image kept in RAM first and
        given to :meth:`put` (``seq=``) only if it must be written. It is covered by the
        reservation in ``images.seq`` like any other, so it is never handed out again, even
        after a crash, whether or not the image is ever written."""
        with self._lock:
            self._check_open()
            return self._take_seq()

    def _take_seq(self) -> int:
        seq = self._next_seq
        if seq > self._ceiling.value:
            self._ceiling.raise_to(seq + SEQ_BLOCK)
        self._next_seq = seq + 1
        return seq

    def path_for(self, seq: int, content_type: str = "image/jpeg") -> Path:
        """Where image ``seq`` is (or would be) stored."""
        return self.images_dir / f"{seq:012d}.{_EXTENSIONS.get(content_type, 'bin')}"

    def _reserve(self, cls: str, size: int, seq: int | None = None) -> int:
        """Under the lock: expire, check the limits, evict for room, and reserve ``size``
        bytes and a seq (``seq``, if given, was handed out by :meth:`reserve_seq`). Nothing
        is evicted for an image that is then refused."""
        self._check_open()
        if seq is not None and not 0 < seq < self._next_seq:
            raise ValueError(f"seq {seq} was not handed out by reserve_seq()")
        if self.max_age_s is not None:
            self._expire(None, None)
        if size > self.max_bytes:
            self._dropped["too_large"] += 1
            raise ImageRefused("too_large", f"{cls} image of {size} bytes is larger than max_bytes")
        need = self._total() + self._reserved + size - self.max_bytes
        victims: list[tuple[int, str, str, int]] = []
        if need > 0:
            found = self._victims(cls, need)
            if found is None:
                self._dropped["refused_priority"] += 1
                raise ImageRefused(
                    "refused_priority",
                    f"{cls} image of {size} bytes would fit only by evicting higher classes",
                )
            victims = found
        st = os.statvfs(self.images_dir)
        free = st.f_bavail * st.f_frsize - self._reserved + sum(v[3] for v in victims)
        reserve = self.reserve_bytes()
        if free - size < reserve:
            self._dropped["disk_reserve"] += 1
            raise ImageRefused(
                "disk_reserve",
                f"{cls} image of {size} bytes refused: {max(free, 0)} bytes free on the disk "
                f"and {reserve} must stay free for the readings",
            )
        if victims:
            self._delete(victims)
            self._dropped["quota"] += len(victims)
        if seq is None:
            seq = self._take_seq()
        self._reserved += size
        return seq

    def _victims(self, cls: str, need: int) -> list[tuple[int, str, str, int]] | None:
        """The images to evict for ``need`` bytes, or None if that takes a higher class."""
        victims: list[tuple[int, str, str, int]] = []
        freed = 0
        for victim_cls in EVICTION_ORDER:
            if PRIORITY[victim_cls] > PRIORITY[cls]:
                break
            for seq, name, size in self.db.conn.execute(
                "SELECT seq, name, size FROM images WHERE cls = ? ORDER BY seq", (victim_cls,)
            ):
                victims.append((seq, victim_cls, name, size))
                freed += size
                if freed >= need:
                    return victims
        return None

    def _write(self, seq: int, data: bytes, final: Path) -> None:
        """Temporary file, fsync, rename, fsync the directory; nothing left on failure."""
        tmp = self.images_dir / f"{TMP_PREFIX}{seq}"
        renamed = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            tmp.rename(final)
            renamed = True
            if self.sync:
                fsync_dir(self.images_dir)
        except OSError:
            with contextlib.suppress(OSError):
                _unlink(final if renamed else tmp)
            raise

    # ---- removing --------------------------------------------------------------------------

    def _delete(self, victims: list[tuple[int, str, str, int]]) -> None:
        """Under the lock: delete files, then rows. The accounting drops them only once
        their rows are gone, so it never counts less than is on disk."""
        for _, _, name, _ in victims:
            _unlink(self.images_dir / name)
        with self.db.atomic():
            self.db.conn.executemany(
                "DELETE FROM images WHERE seq = ?", [(seq,) for seq, _, _, _ in victims]
            )
        for _, cls, _, size in victims:
            usage = self._usage[cls]
            usage[0] -= 1
            usage[1] -= size

    def ack(self, seq: int) -> bool:
        """The broker has the image: delete its file, then its row. False if it was already
        gone (acknowledged twice, evicted, expired): not an error."""
        with self._lock:
            row = self.db.conn.execute(
                "SELECT cls, name, size FROM images WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return False
            cls, name, size = row
            self._delete([(seq, cls, name, size)])
            self._acks += 1
            return True

    def expire(self, now_mono: float | None = None, now_ts: float | None = None) -> int:
        """Delete images older than ``max_age_s`` (if set); return how many.

        Ages are judged by clocks that can be trusted: this boot's images by ``mono``
        (CLOCK_BOOTTIME, which never jumps), earlier boots' by ``ts`` only while
        ``clock_synced()`` is true (``now_ts``, if given, is taken as synced). An image whose
        age cannot be known is kept; ``max_bytes`` still bounds the store."""
        with self._lock:
            self._check_open()
            return self._expire(now_mono, now_ts)

    def _expire(self, now_mono: float | None, now_ts: float | None) -> int:
        if self.max_age_s is None:
            return 0
        if now_mono is None:
            now_mono = boottime()
        if now_ts is None and self.clock_synced():
            now_ts = time.time()
        sql = "SELECT seq, cls, name, size FROM images WHERE (boot = ? AND mono < ?)"
        args: list[object] = [self.boot_id, now_mono - self.max_age_s]
        if now_ts is not None:
            sql += " OR (boot != ? AND ts < ?)"
            args += [self.boot_id, now_ts - self.max_age_s]
        victims = [
            (seq, cls, name, size) for seq, cls, name, size in self.db.conn.execute(sql, args)
        ]
        if victims:
            self._delete(victims)
            self._dropped["age"] += len(victims)
        return len(victims)

    # ---- delivering ------------------------------------------------------------------------

    def next(self, exclude: Collection[int] = ()) -> ImageMeta | None:
        """The next image to send: events, then thumbnails, then snapshots, each oldest
        (lowest seq) first; seqs in ``exclude`` (in flight) are skipped. None if none."""
        skip = sorted(set(exclude))
        marks = ",".join("?" * len(skip))
        sql = f"SELECT {_COLUMNS} FROM images WHERE cls = ?"  # noqa: S608
        if skip:
            sql += f" AND seq NOT IN ({marks})"
        sql += " ORDER BY seq LIMIT 1"
        with self._lock:
            conn = self.db.conn
            for cls in CLASSES:
                row = conn.execute(sql, (cls, *skip)).fetchone()
                if row is not None:
                    return self._meta(row)
        return None

    def get(self, seq: int) -> ImageMeta | None:
        """The image ``seq``'s metadata, or None if it is not in the store."""
        with self._lock:
            row = self.db.conn.execute(
                f"SELECT {_COLUMNS} FROM images WHERE seq = ?",  # noqa: S608
                (seq,),
            ).fetchone()
        return None if row is None else self._meta(row)

    def _meta(self, row: tuple[Any, ...]) -> ImageMeta:
        fields: dict[str, Any] = dict(zip(_FIELDS, row, strict=True))
        path = self.images_dir / fields.pop("name")
        return ImageMeta(**fields, path=path)

    def read(self, seq: int) -> bytes:
        """The image's bytes, checked against its sha256. Raises :class:`ImageGone` if it is
        not in the store (acknowledged, evicted or expired meanwhile), or if its file is
        missing or damaged (then its row and file are deleted, counted as ``damaged``)."""
        meta = self.get(seq)
        if meta is None:
            raise ImageGone(seq)
        try:
            data = meta.path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as err:
            if err.errno != errno.EIO:
                raise ImageStoreError(f"image {seq}: {err}") from err
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == meta.sha256:
            return data
        with self._lock:
            row = self.db.conn.execute("SELECT name FROM images WHERE seq = ?", (seq,)).fetchone()
            if row is None:  # acknowledged or evicted while it was being read
                raise ImageGone(seq)
            self._delete([(seq, meta.cls, row[0], meta.size)])
            self._dropped["damaged"] += 1
        log.error("image %d (%s) is missing or damaged on disk: deleted", seq, meta.path)
        raise ImageGone(seq, "is missing or damaged on disk")

    def attempt(self, seq: int) -> int:
        """Count one delivery attempt of ``seq`` (a committed write); the new count, or 0 if
        the image is gone."""
        with self._lock, self.db.atomic():
            conn = self.db.conn
            conn.execute("UPDATE images SET attempts = attempts + 1 WHERE seq = ?", (seq,))
            row = conn.execute("SELECT attempts FROM images WHERE seq = ?", (seq,)).fetchone()
        return 0 if row is None else int(row[0])

    def pending(self) -> dict[str, Usage]:
        """Images waiting for delivery, per class (every class present)."""
        with self._lock:
            return {c: Usage(*self._usage[c]) for c in CLASSES}

    def _total(self) -> int:
        return sum(u[1] for u in self._usage.values())

    def stats(self) -> ImageStats:
        with self._lock:
            oldest = None
            if self._db is not None:
                oldest = self._db.conn.execute("SELECT min(ts) FROM images").fetchone()[0]
            return ImageStats(
                classes={c: Usage(*self._usage[c]) for c in CLASSES},
                total_bytes=self._total(),
                max_bytes=self.max_bytes,
                oldest_ts=oldest,
                next_seq=self._next_seq,
                dropped=dict(self._dropped),
                reconciled_orphan_files=self._orphans,
                reconciled_missing_files=self._missing,
                quarantined=self._quarantined,
                puts=self._puts,
                acks=self._acks,
                write_errors=self._write_errors,
                in_flight_bytes=self._reserved,
            )

    # ---- async wrappers: the blocking calls in a worker thread -------------------------------

    async def aput(
        self,
        camera: str,
        cls: str,
        jpeg: bytes,
        *,
        reason: str,
        ts: float,
        mono: float,
        width: int,
        height: int,
        parent: int | None = None,
        content_type: str = "image/jpeg",
        event: str | None = None,
    ) -> ImageMeta:
        return await asyncio.to_thread(
            lambda: self.put(
                camera, cls, jpeg, reason=reason, ts=ts, mono=mono, width=width,
                height=height, parent=parent, content_type=content_type, event=event,
            )
        )  # fmt: skip

    async def anext(self, exclude: Collection[int] = ()) -> ImageMeta | None:
        return await asyncio.to_thread(self.next, tuple(exclude))

    async def aread(self, seq: int) -> bytes:
        return await asyncio.to_thread(self.read, seq)

    async def aack(self, seq: int) -> bool:
        return await asyncio.to_thread(self.ack, seq)


def _values(meta: ImageMeta) -> tuple[object, ...]:
    return (
        meta.seq, meta.camera, meta.cls, meta.reason, meta.ts, meta.mono, meta.boot,
        meta.width, meta.height, meta.size, meta.sha256, meta.content_type, meta.parent,
        meta.attempts, meta.event,
    )  # fmt: skip
