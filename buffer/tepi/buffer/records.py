"""What the buffer hands out: stored readings with their seqs, batches and its stats.

What goes in is a :class:`tepi.core.records.Reading`."""

from __future__ import annotations

from dataclasses import dataclass, field

from tepi.core.records import Reading


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
