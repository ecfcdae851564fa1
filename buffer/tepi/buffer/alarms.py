"""The durable alarm store: each rule's alarm state, and the alarm messages still to deliver.

Alarms have a store of their own, ``DIR/alarms.db`` (``DIR`` is the data dir the store is
given), beside the readings buffer and the image index: the readings' quotas, evictions and
age limits never touch it, and it has its own bound (below). The schema is made by
sqlite-utils migrations (``_sqlite_migrations``); the statements of a transition are raw
sqlite3, each transition one ``BEGIN IMMEDIATE`` … ``COMMIT``. Only one store has a
directory open at a time (an flock on ``DIR/alarms.lock``, released by the kernel if the
process dies): two writers would hand out the same seqs.

Two tables, changed together:

- ``alarms``: one row per rule that has an active or remembered alarm, its lifecycle
  ``firing`` → ``resolved`` (and ``acknowledged``, a flag on either), with the time the
  condition became true (``since_ts``, ``since_mono``), the value that fired it, and how often
  it fired (``count``). :meth:`AlarmStore.firing` gives the engine what to restore after a
  restart: a rule that is firing stays firing, and :meth:`AlarmStore.fire` returns None for
  it, so neither a restart nor a duplicate call re-fires an alarm.
- ``messages``: each transition that changed a state row, to be published in the alarm lane
  (:meth:`AlarmStore.pending` in seq order, :meth:`AlarmStore.ack` after the PUBACK), and the
  outcome of each of a rule's actions (:meth:`AlarmStore.action`: an ``action`` message, its
  ``detail`` the outcome, also kept on the state row's ``actions``).

Crash safety. A transition writes its state row, its message and the last seq in one
transaction, committed (``synchronous=FULL`` with ``sync``) before the method returns. So a
``kill -9`` or a power cut at any point loses no transition whose call returned, and never
leaves a state row without its message or a message without its state change. With ``sync``
False (tests, tmpfs) a power cut may lose the last transitions whole, never half of one.

A transition or an ack the disk refuses (full, I/O error) raises :class:`AlarmWriteError`,
counted (``write_errors``), with nothing of it recorded: the state stays as it was, so the
caller (the rule engine) may run the rule's local actions anyway and call again later.

Sequence numbers. ``seq`` increases with every message and is never reused: the file keeps
the last one (``meta.last_seq``, committed with each message), and a reservation in
``DIR/alarms.seq`` (raised :data:`SEQ_BLOCK` at a time, one fsync per block) covers a lost
file or a crash with ``sync`` off; after either, numbering resumes above the reservation. A
damaged file (``PRAGMA quick_check`` not ``ok``, not SQLite, a schema this code does not
know) is moved aside as ``alarms.db.corrupt-<UTC time>`` with one log line, counted
(``quarantined``), and an empty store started; its seqs still resume above the reservation.
If the reservation file is lost too, they resume at the wall clock in milliseconds, above
any seq the store can have handed out as long as the clock is roughly right.

The bound. ``max_alarms`` bounds the state rows plus the message rows. A transition that
takes the store past it drops, in the same transaction, in this order (oldest first within
each, by seq), each counted in ``AlarmStats.dropped`` (:data:`DROP_REASONS`):

- ``resolved_state``: a resolved rule's state row. It is only the store's memory (the count,
  the last values, the acknowledgement): its messages carry everything the IOC needs, and
  the rule simply fires afresh next time;
- ``resolved_message``: a message of an alarm that is over (its rule resolved, or a firing
  rule's earlier episode), not yet delivered;
- ``firing_followup``: the ``acknowledged`` and ``action`` messages of an alarm that is still
  firing.

A firing alarm's state row and its ``firing`` message are never dropped. When only those
remain the store goes over ``max_alarms`` rather than drop one, and says so
(``AlarmStats.over_bound``, ``refused_drops``, a log line). So the store never holds more than
``max(max_alarms, 2 * firing alarms)`` rows, and firing alarms are at most the rules in the
config. Each message is marked with what the bound may do with it (``messages.keep``,
re-marked when its alarm resolves), so finding what to drop is an index lookup even when
nothing may be dropped.

Threads. Every method is blocking and safe to call from several threads at once (the agent
calls them through ``asyncio.to_thread``; the ``a…`` methods do that for it): one lock guards
the connection and the counters.

Importing this module is cheap: sqlite-utils is imported when a store is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tepi.buffer.db import (
    SchemaError,
    SeqCeiling,
    connect_private,
    is_corrupt,
    lock_dir,
    quarantine,
    sqlite_utils_lean,
)
from tepi.buffer.records import ALARM_DROP_REASONS
from tepi.core.clock import boottime

if TYPE_CHECKING:
    from sqlite_utils import Database, Migrations

log = logging.getLogger(__name__)

FIRING, RESOLVED, ACKNOWLEDGED, ACTION = "firing", "resolved", "acknowledged", "action"
TRANSITIONS = (FIRING, RESOLVED, ACKNOWLEDGED, ACTION)
DROP_REASONS = ALARM_DROP_REASONS
SEQ_BLOCK = 1000  # seqs reserved in alarms.seq per fsync
# messages.keep: which messages the bound may drop, in this order (an index makes it cheap).
KEEP_OVER = 0  # of an alarm that is over (resolved, or an earlier episode): dropped first
KEEP_ACK = 1  # an acknowledgement or action outcome of an alarm still firing: dropped last
KEEP_FIRING = 2  # the firing message of an alarm still firing: never dropped

Value = float | int | bool | str | None

_STATE_COLUMNS = (
    "rule, state, acknowledged, ack_ts, ack_by, severity, since_ts, since_mono, boot, value,"
    " device, metric, labels, fired_ts, resolved_ts, resolved_value, count, fire_seq, last_seq,"
    " actions"
)
_MESSAGE_COLUMNS = (
    "seq, transition, rule, severity, value, device, metric, since_ts, since_mono, ts, mono,"
    " labels, boot, by, detail"
)
_STATE_FIELDS = tuple(c.strip() for c in _STATE_COLUMNS.split(","))
_MESSAGE_FIELDS = tuple(c.strip() for c in _MESSAGE_COLUMNS.split(","))
_UPSERT_LAST_SEQ = (
    "INSERT INTO meta(key, value) VALUES ('last_seq', ?)"
    " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"
)


class AlarmStoreError(Exception):
    """The alarm store cannot be used: not open, or its directory in use by another store."""


class AlarmWriteError(AlarmStoreError):
    """A transition or an ack could not be written (full disk, I/O error): nothing of it was
    recorded, and the states and messages are as before the call. Counted as
    ``write_errors``. ``errno`` is the OS error's, if any."""

    def __init__(self, message: str, err_no: int | None = None) -> None:
        super().__init__(message)
        self.errno = err_no


@dataclass(frozen=True, slots=True)
class AlarmState:
    """One rule's alarm, as the state row keeps it."""

    rule: str
    state: str  # firing or resolved
    acknowledged: bool  # in this episode (a new firing clears it)
    ack_ts: float | None
    ack_by: str | None
    severity: str
    since_ts: float  # UTC wall clock when the condition became true
    since_mono: float  # CLOCK_BOOTTIME of the same moment, of boot ``boot``
    boot: str  # the kernel boot id when it fired
    value: Value  # the value that fired it
    device: str
    metric: str
    labels: dict[str, str]
    fired_ts: float  # when it fired (the hold time after ``since_ts``)
    resolved_ts: float | None
    resolved_value: Value
    count: int  # times fired
    fire_seq: int  # seq of this episode's firing message
    last_seq: int  # seq of its latest message
    # Each action's latest outcome in this episode, by its key (``rule.actions`` index).
    actions: dict[str, Any] = field(default_factory=dict)

    @property
    def firing(self) -> bool:
        return self.state == FIRING


@dataclass(frozen=True, slots=True)
class Message:
    """One transition to publish on ``{prefix}/{rule}/alarm``."""

    seq: int
    transition: str  # firing, resolved or acknowledged
    rule: str
    severity: str
    value: Value  # firing: what fired it; resolved: what cleared it; acknowledged: the firing one
    device: str
    metric: str
    since_ts: float  # when the condition became true (not when this was sent)
    since_mono: float
    ts: float  # when the transition happened
    mono: float
    labels: dict[str, str]
    boot: str  # the kernel boot id at the transition
    by: str | None = None  # who acknowledged it
    detail: dict[str, Any] | None = None  # an action message: the action's outcome


@dataclass(slots=True)
class AlarmStats:
    """What the health message and the tools report about the alarm store."""

    firing: int
    resolved: int
    pending: int  # messages not yet acknowledged by the broker
    rows: int  # state rows plus message rows, as bounded by max_alarms
    max_alarms: int
    next_seq: int
    over_bound: int = 0  # rows above max_alarms: only firing alarms left to drop
    refused_drops: int = 0  # transitions after which only firing alarms were left to drop
    dropped: dict[str, int] = field(default_factory=dict)  # every DROP_REASONS key
    quarantined: int = 0
    fired: int = 0
    resolved_transitions: int = 0
    acknowledged: int = 0
    acks: int = 0  # messages deleted after the broker's acknowledgement
    write_errors: int = 0  # transitions and acks that could not be written


def _migrations() -> Migrations:
    """The schema, as sqlite-utils migrations. A new version adds a function here; one already
    released is never changed."""
    sqlite_utils_lean()  # first: without numpy, if nothing loaded it yet
    from sqlite_utils import Migrations

    migrations = Migrations("tepi.buffer.alarms")

    @migrations()
    def m001_alarms(db: Database) -> None:
        db.table("alarms").create(
            {
                "rule": str,
                "state": str,
                "acknowledged": int,
                "ack_ts": float,
                "ack_by": str,
                "severity": str,
                "since_ts": float,
                "since_mono": float,
                "boot": str,
                "value": str,  # JSON: a number, a bool, a string or null
                "device": str,
                "metric": str,
                "labels": str,  # JSON object
                "fired_ts": float,
                "resolved_ts": float,
                "resolved_value": str,  # JSON
                "count": int,
                "fire_seq": int,
                "last_seq": int,
            },
            pk="rule",
            not_null=[
                "state",
                "acknowledged",
                "severity",
                "since_ts",
                "since_mono",
                "boot",
                "value",
                "device",
                "metric",
                "labels",
                "fired_ts",
                "count",
                "fire_seq",
                "last_seq",
            ],
        )
        db.table("messages").create(
            {
                "seq": int,
                "transition": str,
                "rule": str,
                "severity": str,
                "value": str,  # JSON
                "device": str,
                "metric": str,
                "since_ts": float,
                "since_mono": float,
                "ts": float,
                "mono": float,
                "labels": str,  # JSON object
                "boot": str,
                "by": str,
                "keep": int,  # KEEP_*
            },
            pk="seq",
            not_null=[
                "transition",
                "rule",
                "severity",
                "value",
                "device",
                "metric",
                "since_ts",
                "since_mono",
                "ts",
                "mono",
                "labels",
                "boot",
                "keep",
            ],
        )
        # Resolving re-marks a rule's messages; the bound drops by keep, oldest first.
        db.table("messages").create_index(["rule", "seq"])
        db.table("messages").create_index(["keep", "seq"])
        db.table("alarms").create_index(["state", "last_seq"])
        db.table("meta").create({"key": str, "value": int}, pk="key", not_null=["value"])

    @migrations()
    def m002_actions(db: Database) -> None:
        # The outcome of a rule's actions: on the state row (latest of each) and in the
        # action messages.
        db.table("alarms").add_column("actions", str)  # JSON object, by action key
        db.table("messages").add_column("detail", str)  # JSON object

    return migrations


def _dump(value: Value) -> str:
    return json.dumps(value)


def _labels(labels: Mapping[str, str] | None) -> str:
    return json.dumps(dict(labels or {}), sort_keys=True, separators=(",", ":"))


def _state(row: tuple[Any, ...]) -> AlarmState:
    f: dict[str, Any] = dict(zip(_STATE_FIELDS, row, strict=True))
    f["acknowledged"] = bool(f["acknowledged"])
    f["value"] = json.loads(f["value"])
    f["resolved_value"] = None if f["resolved_value"] is None else json.loads(f["resolved_value"])
    f["labels"] = json.loads(f["labels"])
    f["actions"] = json.loads(f["actions"]) if f["actions"] else {}
    return AlarmState(**f)


def _message(row: tuple[Any, ...]) -> Message:
    f: dict[str, Any] = dict(zip(_MESSAGE_FIELDS, row, strict=True))
    f["value"] = json.loads(f["value"])
    f["labels"] = json.loads(f["labels"])
    f["detail"] = None if f["detail"] is None else json.loads(f["detail"])
    return Message(**f)


class AlarmStore:
    """Durable, bounded store of alarm states and alarm messages; see the module docstring.

    ``directory`` is the data dir: the file is ``directory/alarms.db``. ``boot_id`` is the
    kernel's boot id, recorded with each transition (``since_mono`` and ``mono`` belong to
    it). ``sync`` False commits with ``synchronous=NORMAL``: a power cut may then lose the
    last transitions (whole), a ``kill -9`` still none.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_alarms: int = 10_000,
        sync: bool = True,
        boot_id: str = "",
    ) -> None:
        if max_alarms < 1:
            raise ValueError(f"max_alarms must be at least 1, not {max_alarms}")
        self.directory = Path(directory)
        self.path = self.directory / "alarms.db"
        self.max_alarms = max_alarms
        self.sync = sync
        self.boot_id = boot_id
        self._ceiling = SeqCeiling(self.directory / "alarms.seq")
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._lock_fd: int | None = None
        self._next_seq = 1
        self._states = 0  # rows in alarms
        self._messages = 0  # rows in messages
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._refused = 0
        self._over = False  # whether the last transition left the store over its bound
        self._quarantined = 0
        self._fired = self._resolved = self._acknowledged = self._acks = 0
        self._write_errors = 0

    # ---- opening and closing -------------------------------------------------------------

    def open(self) -> Self:
        """Open (or create) the file, move a damaged one aside, and drop down to
        ``max_alarms`` (it may have been lowered since the last run). Does nothing on an open
        store. A second store on the same directory raises :class:`AlarmStoreError`."""
        with self._lock:
            if self._db is not None:
                return self
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._take_dir_lock()
            try:
                self._open()
            except BaseException:
                self._close_db()
                self._release_dir_lock()
                raise
        return self

    def _open(self) -> None:
        quarantined = False
        try:
            created, clean = self._open_file()
        except (sqlite3.DatabaseError, SchemaError) as err:
            if isinstance(err, sqlite3.DatabaseError) and not is_corrupt(err):
                raise
            self._quarantine(str(err))
            quarantined = True
            created, clean = self._open_file()
        conn = self.conn
        last = conn.execute("SELECT max(value) FROM meta WHERE key = 'last_seq'").fetchone()[0]
        top = conn.execute("SELECT max(seq) FROM messages").fetchone()[0]
        last = max(last or 0, top or 0)
        ceiling = self._ceiling.load()
        if created or not clean:
            # A lost file, or a crash: seqs up to the reservation may have been handed out.
            last = max(last, ceiling)
        if quarantined and ceiling == 0:
            # Both the file and the reservation are lost: only the clock is left to go by.
            last = max(last, int(time.time() * 1000))
        self._next_seq = last + 1
        self._count()
        with self._tx():
            self._evict()

    def _open_file(self) -> tuple[bool, bool]:
        """Connect, check and migrate; (created now, last run closed cleanly)."""
        sqlite_utils_lean()  # first: without numpy, if nothing loaded it yet
        from sqlite_utils import Database

        # autocommit: transactions begin and commit exactly where the code says;
        # synchronous=FULL until the clean flag below is cleared.
        conn = connect_private(self.path, autocommit=True)
        self._db = db = Database(conn, recursive_triggers=False, execute_plugins=False)
        check = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise SchemaError(f"quick_check: {'; '.join(map(str, check[:3]))}")
        created = not db.table("alarms").exists()
        try:
            _migrations().apply(db)
        except sqlite3.OperationalError as err:
            # A table of another making in the way (SQLITE_ERROR); not a full disk or a lock.
            if getattr(err, "sqlite_errorname", "") != "SQLITE_ERROR":
                raise
            raise SchemaError(f"migrating: {err}") from err
        for table, fields in (("alarms", _STATE_FIELDS), ("messages", (*_MESSAGE_FIELDS, "keep"))):
            missing = set(fields) - set(db.table(table).columns_dict)
            if missing:
                raise SchemaError(f"{table} table lacks {sorted(missing)}")
        with self._tx():
            row = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('clean', 0)"
                " ON CONFLICT(key) DO UPDATE SET value = 0"
            )
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync else 'NORMAL'}")
        return created, row is not None and row[0] == 1

    def _take_dir_lock(self) -> None:
        try:
            self._lock_fd = lock_dir(self.directory / "alarms.lock")
        except OSError as err:
            raise AlarmStoreError(
                f"alarm store {self.directory} is in use by another process or store "
                f"(alarms.lock: {err.strerror})"
            ) from err

    def _release_dir_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _quarantine(self, why: str) -> None:
        """Move the file (and its -wal/-shm) aside, count it and say where it went."""
        self._close_db()
        target = quarantine(self.path)
        self._quarantined += 1
        log.error(
            "alarm store %s is unusable (%s): moved aside to %s, starting an empty one; "
            "its alarms and undelivered alarm messages are lost",
            self.path,
            why,
            target,
        )

    def close(self) -> None:
        """Record the last seq and a clean close, then close the file."""
        with self._lock:
            if self._db is None:
                return
            try:
                with self._tx():
                    self.conn.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        [("last_seq", self._next_seq - 1), ("clean", 1)],
                    )
            except sqlite3.Error as err:
                log.warning("closing alarm store %s: %s", self.path, err)
            self._close_db()
            self._release_dir_lock()

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as err:
                log.warning("closing alarm store %s: %s", self.path, err)
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

    @property
    def conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AlarmStoreError(f"alarm store {self.directory} is not open")
        return self._db.conn

    @contextmanager
    def _tx(self, what: str | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on leaving. On an error it is rolled back and the row
        counters are read again from the file; with ``what`` (a transition, an ack), an
        SQLite or OS error is counted and raised as :class:`AlarmWriteError`."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            with suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._count()
            if what is None or not isinstance(err, sqlite3.Error | OSError):
                raise
            self._write_errors += 1
            raise AlarmWriteError(
                f"alarm store {self.path}: {what} not recorded: {err}",
                getattr(err, "errno", None),
            ) from err

    def _count(self) -> None:
        conn = self.conn
        self._states = conn.execute("SELECT count(*) FROM alarms").fetchone()[0]
        self._messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]

    # ---- transitions ---------------------------------------------------------------------

    def fire(
        self,
        rule: str,
        *,
        severity: str,
        since_ts: float,
        since_mono: float,
        value: Value,
        device: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        ts: float | None = None,
        mono: float | None = None,
    ) -> Message | None:
        """The rule's condition held for its hold time: record it firing and return its
        ``firing`` message, committed. None if the rule is already firing (a restart or a
        duplicate never fires twice). ``since_*`` is when the condition became true; ``ts``
        and ``mono`` when it fired (now, if not given)."""
        ts = time.time() if ts is None else ts
        mono = boottime() if mono is None else mono
        labels_json = _labels(labels)
        with self._lock, self._tx(f"firing of {rule}") as conn:
            row = conn.execute("SELECT state, count FROM alarms WHERE rule = ?", (rule,)).fetchone()
            if row is not None and row[0] == FIRING:
                return None
            seq = self._take_seq()
            msg = Message(
                seq, FIRING, rule, severity, value, device, metric, since_ts, since_mono,
                ts, mono, dict(json.loads(labels_json)), self.boot_id,
            )  # fmt: skip
            conn.execute(
                f"INSERT OR REPLACE INTO alarms({_STATE_COLUMNS})"  # noqa: S608
                " VALUES (?,?,0,NULL,NULL,?,?,?,?,?,?,?,?,?,NULL,NULL,?,?,?,NULL)",
                (
                    rule, FIRING, severity, since_ts, since_mono, self.boot_id, _dump(value),
                    device, metric, labels_json, ts, (row[1] if row else 0) + 1, seq, seq,
                ),
            )  # fmt: skip
            self._states += row is None
            self._insert(msg, labels_json, KEEP_FIRING)
            self._fired += 1
        return msg

    def resolve(
        self,
        rule: str,
        *,
        ts: float,
        mono: float | None = None,
        value: Value = None,
        since_ts: float | None = None,
        since_mono: float | None = None,
    ) -> Message | None:
        """The rule's condition cleared: record it resolved and return its ``resolved``
        message (``value`` is what cleared it; ``since_*`` when the condition became false,
        by default the transition's own time), committed. None if it is not firing."""
        mono = boottime() if mono is None else mono
        with self._lock, self._tx(f"resolving of {rule}") as conn:
            row = conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM alarms WHERE rule = ?",  # noqa: S608
                (rule,),
            ).fetchone()
            if row is None or row[1] != FIRING:
                return None
            state = _state(row)
            seq = self._take_seq()
            conn.execute(
                "UPDATE alarms SET state = ?, resolved_ts = ?, resolved_value = ?, last_seq = ?"
                " WHERE rule = ?",
                (RESOLVED, ts, _dump(value), seq, rule),
            )
            msg = self._follow_up(state, RESOLVED, seq=seq, value=value, ts=ts, mono=mono, by=None)
            msg = dataclasses.replace(
                msg,
                since_ts=ts if since_ts is None else since_ts,
                since_mono=mono if since_mono is None else since_mono,
            )
            # The alarm is over: every message of it may now be dropped for room.
            conn.execute(
                "UPDATE messages SET keep = ? WHERE rule = ? AND keep != ?",
                (KEEP_OVER, rule, KEEP_OVER),
            )
            self._insert(msg, row[12], KEEP_OVER)
            self._resolved += 1
        return msg

    def acknowledge(
        self, rule: str, by: str, ts: float, *, mono: float | None = None
    ) -> Message | None:
        """An operator acknowledged the rule's alarm (firing or resolved): record it and
        return its ``acknowledged`` message, committed. None if there is no alarm for the
        rule or it is already acknowledged (until it fires again)."""
        mono = boottime() if mono is None else mono
        with self._lock, self._tx(f"acknowledgement of {rule}") as conn:
            row = conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM alarms WHERE rule = ?",  # noqa: S608
                (rule,),
            ).fetchone()
            if row is None or row[2]:
                return None
            state = _state(row)
            seq = self._take_seq()
            conn.execute(
                "UPDATE alarms SET acknowledged = 1, ack_ts = ?, ack_by = ?, last_seq = ?"
                " WHERE rule = ?",
                (ts, by, seq, rule),
            )
            msg = self._follow_up(
                state, ACKNOWLEDGED, seq=seq, value=state.value, ts=ts, mono=mono, by=by
            )
            self._insert(msg, row[12], KEEP_ACK if state.firing else KEEP_OVER)
            self._acknowledged += 1
        return msg

    def action(
        self,
        rule: str,
        key: str,
        detail: Mapping[str, Any],
        ts: float,
        *,
        mono: float | None = None,
    ) -> Message | None:
        """The outcome of one of the rule's actions (``key``: which, e.g. its index in the
        rule's ``actions``): kept on the state row and returned as an ``action`` message
        (``detail``: the outcome, JSON), committed. None if the rule has no alarm."""
        mono = boottime() if mono is None else mono
        out = dict(detail)
        with self._lock, self._tx(f"action outcome of {rule}") as conn:
            row = conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM alarms WHERE rule = ?",  # noqa: S608
                (rule,),
            ).fetchone()
            if row is None:
                return None
            state = _state(row)
            seq = self._take_seq()
            actions = {**state.actions, key: out}
            conn.execute(
                "UPDATE alarms SET actions = ?, last_seq = ? WHERE rule = ?",
                (json.dumps(actions, sort_keys=True), seq, rule),
            )
            msg = self._follow_up(
                state, ACTION, seq=seq, value=state.value, ts=ts, mono=mono, by=None, detail=out
            )
            self._insert(msg, row[12], KEEP_ACK if state.firing else KEEP_OVER)
        return msg

    def _follow_up(
        self,
        state: AlarmState,
        transition: str,
        *,
        seq: int,
        value: Value,
        ts: float,
        mono: float,
        by: str | None,
        detail: dict[str, Any] | None = None,
    ) -> Message:
        return Message(
            seq, transition, state.rule, state.severity, value, state.device, state.metric,
            state.since_ts, state.since_mono, ts, mono, state.labels, self.boot_id, by, detail,
        )  # fmt: skip

    def _take_seq(self) -> int:
        """Under the lock, in the transition's transaction. If the transaction then fails,
        the seq is skipped, never handed out twice."""
        seq = self._next_seq
        if seq > self._ceiling.value:
            self._ceiling.raise_to(seq + SEQ_BLOCK)
        self._next_seq = seq + 1
        return seq

    def _insert(self, msg: Message, labels_json: str, keep: int) -> None:
        conn = self.conn
        conn.execute(
            f"INSERT INTO messages({_MESSAGE_COLUMNS}, keep)"  # noqa: S608
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                msg.seq, msg.transition, msg.rule, msg.severity, _dump(msg.value), msg.device,
                msg.metric, msg.since_ts, msg.since_mono, msg.ts, msg.mono, labels_json,
                msg.boot, msg.by, None if msg.detail is None else json.dumps(msg.detail), keep,
            ),
        )  # fmt: skip
        conn.execute(_UPSERT_LAST_SEQ, (msg.seq,))
        self._messages += 1
        self._evict()

    # ---- the bound -----------------------------------------------------------------------

    def _evict(self) -> None:
        """In a transaction: drop down to ``max_alarms`` by the policy in the module
        docstring; never a firing alarm's state row or ``firing`` message."""
        excess = self._states + self._messages - self.max_alarms
        while excess > 0:
            n = self._drop_states(excess) or self._drop_messages(excess)
            if not n:
                break
            excess -= n
        over = excess > 0
        if over:
            self._refused += 1
            if not self._over:
                log.warning(
                    "alarm store %s is over its bound (%d rows, max_alarms=%d): only firing "
                    "alarms are left, and a firing alarm is never dropped",
                    self.path,
                    self._states + self._messages,
                    self.max_alarms,
                )
        elif self._over:
            log.info("alarm store %s is back within max_alarms=%d", self.path, self.max_alarms)
        self._over = over

    def _drop_states(self, limit: int) -> int:
        conn = self.conn
        rules = [
            r[0]
            for r in conn.execute(
                "SELECT rule FROM alarms WHERE state = ? ORDER BY last_seq LIMIT ?",
                (RESOLVED, limit),
            )
        ]
        conn.executemany("DELETE FROM alarms WHERE rule = ?", [(r,) for r in rules])
        self._states -= len(rules)
        self._dropped["resolved_state"] += len(rules)
        return len(rules)

    def _drop_messages(self, limit: int) -> int:
        conn = self.conn
        for reason, keep in (("resolved_message", KEEP_OVER), ("firing_followup", KEEP_ACK)):
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM messages WHERE keep = ? ORDER BY seq LIMIT ?", (keep, limit)
                )
            ]
            if seqs:
                conn.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs])
                self._messages -= len(seqs)
                self._dropped[reason] += len(seqs)
                return len(seqs)
        return 0

    # ---- reading the states --------------------------------------------------------------

    def get(self, rule: str) -> AlarmState | None:
        """The rule's alarm, or None if it has none (never fired, or dropped when resolved)."""
        with self._lock:
            row = self.conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM alarms WHERE rule = ?",  # noqa: S608
                (rule,),
            ).fetchone()
        return None if row is None else _state(row)

    def states(self) -> dict[str, AlarmState]:
        """Every rule's alarm, firing and resolved, by rule."""
        return self._states_where("")

    def firing(self) -> dict[str, AlarmState]:
        """The firing alarms, by rule: what the engine restores after a restart."""
        return self._states_where(f" WHERE state = '{FIRING}'")

    def _states_where(self, where: str) -> dict[str, AlarmState]:
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM alarms{where} ORDER BY rule"  # noqa: S608
            ).fetchall()
        return {row[0]: _state(row) for row in rows}

    # ---- delivering ----------------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[Message]:
        """Up to ``limit`` messages not yet acknowledged by the broker, in seq order."""
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY seq LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        return [_message(row) for row in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """The broker has these messages: delete them (committed); how many were there.
        A seq already gone (acknowledged twice, dropped) is not an error."""
        params = [(int(s),) for s in seqs]
        if not params:
            return 0
        with self._lock, self._tx("ack of delivered messages") as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM messages WHERE seq = ?", params)
            n = conn.total_changes - before
            self._messages -= n
            self._acks += n
        return n

    def pending_count(self) -> int:
        with self._lock:
            return self._messages

    def pending_count_quick(self) -> int:
        """``pending_count`` without the lock: never waits for a write in progress (an int
        read is atomic; it may be one transition behind)."""
        return self._messages

    def stats(self, *, quick: bool = False) -> AlarmStats:
        """The store's figures. ``quick``: from the counters only, without the lock or SQL
        (``firing`` and ``resolved`` are then 0): never waits for a write in progress."""
        with contextlib.nullcontext() if quick else self._lock:
            firing = resolved = 0
            if self._db is not None and not quick:
                for state, n in self.conn.execute(
                    "SELECT state, count(*) FROM alarms GROUP BY state"
                ):
                    if state == FIRING:
                        firing = n
                    else:
                        resolved += n
            rows = self._states + self._messages
            return AlarmStats(
                firing=firing,
                resolved=resolved,
                pending=self._messages,
                rows=rows,
                max_alarms=self.max_alarms,
                next_seq=self._next_seq,
                over_bound=max(rows - self.max_alarms, 0),
                refused_drops=self._refused,
                dropped=dict(self._dropped),
                quarantined=self._quarantined,
                fired=self._fired,
                resolved_transitions=self._resolved,
                acknowledged=self._acknowledged,
                acks=self._acks,
                write_errors=self._write_errors,
            )

    # ---- async wrappers: the blocking calls in a worker thread -----------------------------

    async def afire(
        self,
        rule: str,
        *,
        severity: str,
        since_ts: float,
        since_mono: float,
        value: Value,
        device: str,
        metric: str,
        labels: Mapping[str, str] | None = None,
        ts: float | None = None,
        mono: float | None = None,
    ) -> Message | None:
        return await asyncio.to_thread(
            lambda: self.fire(
                rule, severity=severity, since_ts=since_ts, since_mono=since_mono, value=value,
                device=device, metric=metric, labels=labels, ts=ts, mono=mono,
            )
        )  # fmt: skip

    async def aresolve(
        self, rule: str, *, ts: float, mono: float | None = None, value: Value = None
    ) -> Message | None:
        return await asyncio.to_thread(lambda: self.resolve(rule, ts=ts, mono=mono, value=value))

    async def aacknowledge(
        self, rule: str, by: str, ts: float, *, mono: float | None = None
    ) -> Message | None:
        return await asyncio.to_thread(lambda: self.acknowledge(rule, by, ts, mono=mono))

    async def aaction(
        self, rule: str, key: str, detail: Mapping[str, Any], ts: float
    ) -> Message | None:
        return await asyncio.to_thread(lambda: self.action(rule, key, detail, ts))

    async def apending(self, limit: int = 100) -> list[Message]:
        return await asyncio.to_thread(self.pending, limit)

    async def aack(self, seqs: Iterable[int]) -> int:
        return await asyncio.to_thread(self.ack, tuple(seqs))
