"""``tepi buffer stats|export|purge``: look into the store-and-forward buffer on site.

``stats`` and ``export`` open the file **read-only** (SQLite URI ``mode=ro``) and read in
short transactions: in WAL mode a reader never blocks the running agent's writer, and can
never change or corrupt the file. ``export`` streams the readings, oldest first, as JSON
lines (the payload's reading objects, plus ``boot``) or CSV, with a progress bar on a
terminal. ``purge`` deletes readings and so changes what the IOC will get: it asks for
confirmation, and refuses while the agent runs (the agent holds the buffer's state in
memory; stop the service first), so the two never disagree.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sqlite_utils import Database

from tepi.buffer.db import FLAG_BOOL, FLAG_GPS_TIME, FLAG_UNCERTAIN, FLAG_UNSYNCED
from tepi.gateway.progress import Progress

BATCH = 5000
CSV_FIELDS = (
    "seq",
    "boot",
    "device",
    "metric",
    "value",
    "unit",
    "ts",
    "mono",
    "quality",
    "reason",
    "ts_status",
)


_SELECT = (
    "SELECT r.seq, b.boot_id AS boot, r.device, r.metric, r.value, r.unit, r.ts, r.mono,"
    " r.flags, r.reason FROM readings r JOIN boots b ON b.id = r.boot WHERE r.seq > ?"
)
_SQL_ALL = _SELECT + " ORDER BY r.seq LIMIT ?"
_SQL_DEVICE = _SELECT + " AND r.device = ? ORDER BY r.seq LIMIT ?"


class BufferToolError(Exception):
    """A clear message for the technician; the command exits non-zero."""


def open_ro(path: Path) -> Database:
    """The buffer, read-only: sqlite-utils over a ``mode=ro`` connection, so nothing here
    can write, and without its plugins or connection pragmas."""
    if not path.exists():
        raise BufferToolError(f"no buffer file at {path} (check gateway.data_dir)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise BufferToolError(f"cannot read {path}: {err} (run as root or as user tepi)") from err
    return db


def stats(path: Path) -> dict[str, Any]:
    db = open_ro(path)
    try:
        (summary,) = db.query(
            "SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi, min(ts) AS t0,"
            " max(ts) AS t1, count(DISTINCT boot) AS boots FROM readings"
        )
        per_device = {
            r["device"]: r["n"]
            for r in db.query(
                "SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY device"
            )
        }
    finally:
        db.close()
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    t0 = summary["t0"]
    return {
        "file": str(path),
        "bytes": size,
        "readings": summary["n"],
        "first_seq": summary["lo"],
        "last_seq": summary["hi"],
        "oldest_ts": t0,
        "newest_ts": summary["t1"],
        "oldest_age_s": None if t0 is None else round(time.time() - t0, 1),
        "boots": summary["boots"],
        "devices": per_device,
    }


def _rows(db: Database, device: str | None) -> Iterator[dict[str, Any]]:
    """Every reading, oldest first, read in batches (short read transactions)."""
    after = 0
    while True:
        args: tuple[Any, ...] = (after, device, BATCH) if device else (after, BATCH)
        batch = list(db.query(_SQL_DEVICE if device else _SQL_ALL, args))
        if not batch:
            return
        for row in batch:
            flags = row.pop("flags")
            if flags & FLAG_BOOL:
                row["value"] = bool(row["value"])
            row["quality"] = (
                "good"
                if row["reason"] is None
                else "uncertain"
                if flags & FLAG_UNCERTAIN
                else "bad"
            )
            row["ts_status"] = (
                "gps" if flags & FLAG_GPS_TIME else "unsynced" if flags & FLAG_UNSYNCED else None
            )
            yield {k: row[k] for k in CSV_FIELDS}  # the documented key order
        after = batch[-1]["seq"]


def export(
    path: Path, out: TextIO, fmt: str, *, device: str | None = None, progress: TextIO | None = None
) -> int:
    """Write every reading to ``out``; how many. A progress bar on ``progress`` if a tty."""
    db = open_ro(path)
    try:
        bar = Progress(progress, db["readings"].count)
        writer = csv.DictWriter(out, CSV_FIELDS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        n = 0
        for row in _rows(db, device):
            if writer is not None:
                writer.writerow(row)
            else:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
            bar.update(n, "readings")
        bar.close()
    finally:
        db.close()
    return n


def purge(path: Path, *, before_ts: float | None) -> int:
    """Delete readings (all, or those read before ``before_ts``); how many."""
    if not path.exists():
        raise BufferToolError(f"no buffer file at {path}")
    conn = sqlite3.connect(path, timeout=5)
    try:
        with conn:
            if before_ts is None:
                n = conn.execute("DELETE FROM readings").rowcount
            else:
                n = conn.execute("DELETE FROM readings WHERE ts < ?", (before_ts,)).rowcount
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return n


def confirm(question: str, stdin: TextIO = sys.stdin) -> bool:
    if not stdin.isatty():
        return False
    sys.stderr.write(question)
    sys.stderr.flush()
    return stdin.readline().strip() == "purge"
