"""Facts about the host the agent reports: boot id, clock sync, CPU, memory, disk."""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
from pathlib import Path

_TIME_ERROR = 5
_libc: ctypes.CDLL | None = None


def boot_id() -> str:
    """The kernel's boot id: changes on every boot, with the monotonic clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def clock_synced() -> bool:
    """Whether the kernel believes the wall clock is synchronised (adjtimex != TIME_ERROR)."""
    global _libc  # noqa: PLW0603 - loaded once, lazily
    try:
        if _libc is None:
            # The process's own symbols (libc's adjtimex, or a preloaded one): not a second
            # handle on libc, which would bypass LD_PRELOAD.
            _libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0, read only
        state = _libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return bool(state != _TIME_ERROR and state >= 0)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def free_disk_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
