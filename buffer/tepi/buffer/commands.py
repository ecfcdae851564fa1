"""The command log: each request from the IOC by its id, so that none runs twice.

MQTT at QoS 1 delivers a command at least once: after a reconnect the broker sends again what
it had not seen acknowledged, and anyone can replay a message. A command that moves a gate or
writes a setpoint must run at most once, and its result must reach the IOC at least once. The
log, ``DIR/commands.db`` beside the readings buffer, gives both:

- :meth:`CommandLog.begin` records a request as ``running`` and commits it **before** the
  command runs. A second ``begin`` of the same id, now or after any restart, finds it and
  returns what is known (:class:`Known`): the caller answers with the kept result, marked
  ``replayed`` (recorded again with :meth:`finish`), and does not run it again.
- :meth:`CommandLog.finish` records the result (a JSON object, the ``cmd_result`` payload)
  and queues it to be sent; :meth:`pending` and :meth:`sent` are the sending side, like the
  alarm store's. A result waits here while the link is down.
- A request still ``running`` when the log is opened was cut short by a crash or power cut:
  :meth:`interrupted` lists them, and the caller finishes them as failed (``interrupted``),
  never runs them again. What a command did before the cut is unknown; the IOC is told so.

Bound: at most ``keep`` requests are remembered. Past it, the oldest whose result was sent go
first; a result not yet sent is kept (the store goes over ``keep`` rather than lose it, up to
``10 * keep``, past which the oldest unsent results go too, counted in ``dropped``). A request
forgotten that way and then replayed would run again: ``commands.max_lifetime`` (at most a
week) bounds how old a request can be and still be accepted, so ``keep`` should cover the
requests of that long (1,000 by default).

One store per directory (an flock on ``DIR/commands.lock``); the methods are blocking and
thread-safe (one lock), and each change is one transaction, committed with
``synchronous=FULL`` (``sync`` False: NORMAL, for tests on tmpfs). A damaged file is moved
aside (``commands.db.corrupt-<time>``) and a new one started: the requests it remembered may
then run again if replayed, which the log says once, at ERROR.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tepi.buffer.db import (
    SchemaError,
    connect_private,
    is_corrupt,
    lock_dir,
    quarantine,
    sqlite_utils_lean,
)

if TYPE_CHECKING:
    from sqlite_utils import Migrations

log = logging.getLogger(__name__)

RUNNING, DONE = "running", "done"
_COLUMNS = ("id", "command", "received", "state", "result", "sent", "seq")


class CommandLogError(Exception):
    """The log cannot be used: not open, its directory in use by another, or a write the
    disk refused (then nothing of it was recorded)."""


@dataclass(frozen=True, slots=True)
class Known:
    """A request the log has seen: ``result`` is None while it runs (or ran when the gateway
    stopped)."""

    id: str
    command: str
    received: float
    running: bool
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Stats:
    requests: int
    running: int
    pending: int  # results not yet sent
    keep: int
    dropped: int  # unsent results dropped past 10 * keep
    quarantined: int


def _migrations() -> Migrations:
    """The schema, as sqlite-utils migrations; a released one is never changed."""
    sqlite_utils_lean()  # first: without numpy, if nothing loaded it yet
    from sqlite_utils import Migrations

    migrations = Migrations("tepi.buffer.commands")

    @migrations()
    def m001_requests(db: Any) -> None:
        db.table("requests").create(
            {
                "id": str,
                "command": str,
                "received": float,
                "state": str,  # running | done
                "result": str,  # JSON, once done
                "sent": int,  # 1 once the broker acknowledged the result
                "seq": int,  # order of arrival
            },
            pk="id",
            not_null=["command", "received", "state", "sent", "seq"],
        )
        db.table("requests").create_index(["sent", "seq"])
        db.table("requests").create_index(["state"])

    return migrations


class CommandLog:
    """See the module docstring."""

    def __init__(self, directory: Path, *, keep: int = 1000, sync: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.directory = Path(directory)
        self.path = self.directory / "commands.db"
        self.keep = keep
        self.sync = sync
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._dropped = 0
        self._quarantined = 0

    # ---- opening and closing -------------------------------------------------------------

    def open(self) -> Self:
        with self._lock:
            if self._conn is not None:
                return self
            try:
                self._lock_fd = lock_dir(self.directory / "commands.lock")
            except OSError as err:
                raise CommandLogError(
                    f"command log {self.directory} is in use by another process or store "
                    f"(commands.lock: {err.strerror})"
                ) from err
            try:
                try:
                    self._open_file()
                except (sqlite3.DatabaseError, SchemaError) as err:
                    if isinstance(err, sqlite3.DatabaseError) and not is_corrupt(err):
                        raise
                    self._close_conn()
                    target = quarantine(self.path)
                    self._quarantined += 1
                    log.error(
                        "command log %s is unusable (%s): moved aside to %s, starting a new "
                        "one; a request it remembered would run again if it were replayed",
                        self.path,
                        err,
                        target,
                    )
                    self._open_file()
            except BaseException:
                self._close_conn()
                self._release()
                raise
        return self

    def _open_file(self) -> None:
        sqlite_utils_lean()
        from sqlite_utils import Database

        conn = connect_private(self.path, autocommit=True)
        self._conn = conn
        check = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise SchemaError(f"quick_check: {'; '.join(map(str, check[:3]))}")
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        try:
            _migrations().apply(db)
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorname", "") != "SQLITE_ERROR":
                raise
            raise SchemaError(f"migrating: {err}") from err
        missing = set(_COLUMNS) - set(db.table("requests").columns_dict)
        if missing:
            raise SchemaError(f"requests table lacks {sorted(missing)}")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync else 'NORMAL'}")
        self._seq = conn.execute("SELECT coalesce(max(seq), 0) FROM requests").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._close_conn()
            self._release()

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as err:
                log.warning("closing command log %s: %s", self.path, err)
            self._conn = None

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

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
        if self._conn is None:
            raise CommandLogError("the command log is not open")
        return self._conn

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CommandLogError(f"{what}: {err}") from err

    # ---- the requests ----------------------------------------------------------------------

    def begin(self, request_id: str, command: str, received: float) -> Known | None:
        """Record the request as running, committed, and return None: it may run now. If
        the log knows the id already, return what it knows instead (it must not run)."""
        with self._lock, self._tx(f"recording request {request_id}") as conn:
            row = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE id = ?",  # noqa: S608
                (request_id,),
            ).fetchone()
            if row is not None:
                return _known(row)
            self._seq += 1
            conn.execute(
                "INSERT INTO requests(id, command, received, state, result, sent, seq)"
                " VALUES (?, ?, ?, ?, NULL, 0, ?)",
                (request_id, command, received, RUNNING, self._seq),
            )
            self._bound(conn)
        return None

    def finish(
        self,
        request_id: str,
        result: dict[str, Any],
        *,
        command: str | None = None,
        received: float | None = None,
    ) -> None:
        """The request's result: recorded, and queued to be sent. ``command`` and
        ``received`` record a request that was never begun (a refusal that had an id)."""
        data = json.dumps(result, separators=(",", ":"), allow_nan=False)
        with self._lock, self._tx(f"recording the result of {request_id}") as conn:
            n = conn.execute(
                "UPDATE requests SET state = ?, result = ?, sent = 0 WHERE id = ?",
                (DONE, data, request_id),
            ).rowcount
            if not n:  # a request never begun (a refusal with an id): recorded now
                self._seq += 1
                conn.execute(
                    "INSERT INTO requests(id, command, received, state, result, sent, seq)"
                    " VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (
                        request_id,
                        command if command is not None else str(result.get("command", "")),
                        received if received is not None else time.time(),
                        DONE,
                        data,
                        self._seq,
                    ),
                )
                self._bound(conn)

    def interrupted(self) -> list[Known]:
        """Requests that were running when the gateway stopped (at open: a crash cut them)."""
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE state = ?"  # noqa: S608
                " ORDER BY seq",
                (RUNNING,),
            ).fetchall()
        return [_known(r) for r in rows]

    # ---- sending the results ---------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Results not yet acknowledged by the broker, oldest first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT result FROM requests WHERE sent = 0 AND state = ? ORDER BY seq LIMIT ?",
                (DONE, limit),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def sent(self, request_ids: Iterable[str]) -> None:
        """The broker has these results."""
        params = [(i,) for i in request_ids]
        if not params:
            return
        with self._lock, self._tx("marking results sent") as conn:
            conn.executemany("UPDATE requests SET sent = 1 WHERE id = ?", params)
            self._bound(conn)

    def stats(self) -> Stats:
        with self._lock:
            total, running, pending = self.conn.execute(
                "SELECT count(*), coalesce(sum(state = ?), 0),"
                " coalesce(sum(sent = 0 AND state = ?), 0) FROM requests",
                (RUNNING, DONE),
            ).fetchone()
        return Stats(total, running, pending, self.keep, self._dropped, self._quarantined)

    def _bound(self, conn: sqlite3.Connection) -> None:
        """In a transaction: forget the oldest sent requests past ``keep``; past
        ``10 * keep``, the oldest unsent results too (counted)."""
        total = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        over = total - self.keep
        if over <= 0:
            return
        conn.execute(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE sent = 1"
            " ORDER BY seq LIMIT ?)",
            (over,),
        )
        total = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        over = total - 10 * self.keep
        if over > 0:
            conn.execute(
                "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE state = ?"
                " ORDER BY seq LIMIT ?)",
                (DONE, over),
            )
            self._dropped += over
            log.warning(
                "command log %s: %d results not yet sent dropped (over %d kept)",
                self.path,
                over,
                10 * self.keep,
            )


def _known(row: tuple[Any, ...]) -> Known:
    f = dict(zip(_COLUMNS, row, strict=True))
    return Known(
        f["id"],
        f["command"],
        f["received"],
        f["state"] == RUNNING,
        None if f["result"] is None else json.loads(f["result"]),
    )
