"""The data dir's lock: one agent per data dir, and no tool writing under a running agent.

The agent holds an exclusive ``flock`` on ``<data_dir>/tepi.lock`` for its whole life, and
writes its pid into the file. A tool that writes to the buffer (``tepi buffer purge``) takes
the same lock, without waiting, for as long as it writes; so does a second ``tepi run`` on the
same data dir. Whoever finds the lock taken refuses, naming the pid that holds it. The kernel
releases an ``flock`` when its holder dies, even by ``kill -9`` or an OOM kill: a stale lock
file never blocks anything, and there is nothing to clean up.

Reading (``tepi buffer stats|export``) needs no lock: SQLite readers never disturb the writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "tepi.lock"


class DataDirBusy(Exception):
    """Another process holds the data dir's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{who} holds {path}")


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[Path | None]:
    """Hold the data dir's lock while the block runs; raise :class:`DataDirBusy` at once if
    another process holds it. Yields the lock file, or None when the data dir cannot hold one
    (read-only or not writable: then nothing can write the buffer there either, and the
    agent runs from memory, as the buffer says)."""
    path = data_dir / LOCK_NAME
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        writable = True
    except PermissionError:
        try:  # made by another user (root ran a purge): flock needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        except OSError as err:
            log.warning("cannot open the data dir lock %s (%s): running without it", path, err)
            yield None
            return
    except OSError as err:
        log.warning("cannot open the data dir lock %s (%s): running without it", path, err)
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirBusy(path, _holder(fd)) from None
            raise
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
