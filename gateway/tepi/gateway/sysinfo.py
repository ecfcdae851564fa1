"""Facts about the host the agent reports: boot id, CPU, memory, disk.

Whether the clock is synced is :func:`tepi.core.clock.clock_synced`."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path


def boot_id() -> str:
    """The kernel's boot id: changes on every boot, with the monotonic clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


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
