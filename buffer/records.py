"""Plain records that cross the buffer's boundary: what goes in, what comes out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Value = float | int | bool | str | None
_INT64 = 2**63


def storable(value: Value) -> str | None:
    """Why the buffer cannot keep ``value`` (SQLite integers are 64-bit, JSON has no NaN),
    or None: a uint64 register at 2**63 or more, or a text node's 1e999."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return "value out of range"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    return None


@dataclass(slots=True, frozen=True)
class Reading:
    """One value read from one metric of one device, stamped when it was read.

    ``ts`` is wall-clock UTC seconds; ``mono`` is seconds since boot (CLOCK_BOOTTIME), so a
    timestamp taken before the clock was synced can be corrected later from the boot id.
    ``reason`` is None for a good reading and says why for a bad one. ``synced`` is False
    when the kernel did not consider the wall clock synchronised as the value was read: its
    ``ts`` may be far off, and the sender corrects it from ``mono`` once the clock syncs.
    ``gps_time`` is True when the wall clock was not synced but ``ts`` was dated from a GPS
    receiver's time (``synced`` is then True). ``uncertain`` marks a value that was read but
    is not yet trustworthy (a sensor warming up): ``reason`` says why and ``value`` is kept.
    """

    device: str
    metric: str
    value: Value
    unit: str | None
    ts: float
    mono: float
    reason: str | None = None
    synced: bool = True
    uncertain: bool = False
    gps_time: bool = False

    @property
    def good(self) -> bool:
        return self.reason is None

    @property
    def quality(self) -> str:
        """good, uncertain (a value with a reason) or bad (no value, a reason)."""
        if self.reason is None:
            return "good"
        return "uncertain" if self.uncertain else "bad"


@dataclass(slots=True, frozen=True)
class StoredReading:
    """A reading as the buffer hands it back: with its sequence number."""

    seq: int
    reading: Reading


@dataclass(slots=True, frozen=True)
class Batch:
    """Readings from one boot, contiguous in ``seq`` order among the rows that exist."""

    boot_id: str
    items: list[StoredReading]

    @property
    def first_seq(self) -> int:
        return self.items[0].seq

    @property
    def last_seq(self) -> int:
        return self.items[-1].seq

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class BufferStats:
    """What the health message and the CLI report about the buffer."""

    depth: int
    bytes_used: int
    max_bytes: int
    oldest_ts: float | None
    next_seq: int
    pending: int
    dropped: dict[str, int] = field(default_factory=dict)
    quarantined_files: int = 0
    write_errors: int = 0
    acked_in_memory: int = 0  # acknowledged before their commit was due: never written
    written: int = 0  # readings inserted into the file
    commits: int = 0  # write transactions
    file_error: str | None = None  # why the file cannot be used (readings in memory only)
