"""What the buffer hands out: stored readings with their seqs, batches and its stats.

What goes in is a :class:`tepi.core.records.Reading`, or a poll's readings at once as a
:class:`Run`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tepi.core.records import Reading, Value

# Why the alarm and image stores drop what they drop (health counts them by these). Here, not
# in those modules, so that health names them without importing the stores.
ALARM_DROP_REASONS = ("resolved_state", "resolved_message", "firing_followup")
IMAGE_DROP_REASONS = (
    "quota",
    "age",
    "too_large",
    "refused_priority",
    "disk_reserve",
    "write_error",
    "damaged",
)


@dataclass(slots=True)
class Run:
    """The readings of one poll as the buffer keeps them: one object, not one per value.

    One device, read at one instant (``ts``, ``mono``, ``synced``, ``gps_time`` are the
    run's), its metrics with seqs ``first`` to ``first + len - 1``. ``metrics`` and ``units``
    are the driver's own tuples, shared by every poll of the device. ``reasons`` is None when
    every value is good; ``uncertain`` is None when no value is uncertain. The buffer sets
    ``first`` and ``put_at`` (monotonic) when it takes the run.
    """

    device: str
    metrics: tuple[str, ...]
    units: tuple[str | None, ...]
    values: list[Value]
    ts: float
    mono: float
    synced: bool = True
    gps_time: bool = False
    reasons: list[str | None] | None = None
    uncertain: list[bool] | None = None
    first: int = 0
    put_at: float = 0.0

    @classmethod
    def of(cls, r: Reading, first: int = 0) -> Run:
        """A run of one reading."""
        return cls(
            r.device,
            (r.metric,),
            (r.unit,),
            [r.value],
            r.ts,
            r.mono,
            r.synced,
            r.gps_time,
            None if r.reason is None else [r.reason],
            [True] if r.uncertain else None,
            first,
        )

    def __len__(self) -> int:
        return len(self.values)

    def reading(self, i: int) -> Reading:
        """The ``i``-th value as a :class:`Reading` (tools, tests and the file's rows)."""
        reasons = self.reasons
        return Reading(
            self.device,
            self.metrics[i],
            self.values[i],
            self.units[i],
            self.ts,
            self.mono,
            None if reasons is None else reasons[i],
            self.synced,
            False if self.uncertain is None else self.uncertain[i],
            self.gps_time,
        )


@dataclass(slots=True, frozen=True)
class StoredReading:
    """A reading with its sequence number (tools and tests; the hot path uses spans)."""

    seq: int
    reading: Reading


Span = tuple[Run, int, int]  # values start..stop-1 of a run: seqs run.first + start, ...


@dataclass(slots=True, frozen=True)
class Batch:
    """Readings from one boot, in ``seq`` order, contiguous among the rows that exist.

    ``spans`` holds them as slices of runs, so a poll's readings stay one object from the
    driver to the encoder."""

    boot_id: str
    spans: list[Span]

    @classmethod
    def of(cls, boot_id: str, items: Iterable[StoredReading]) -> Batch:
        """A batch of single readings (tools and tests)."""
        return cls(boot_id, [(Run.of(i.reading, i.seq), 0, 1) for i in items])

    @property
    def items(self) -> list[StoredReading]:
        """The readings one by one (tools and tests; not the hot path)."""
        return [
            StoredReading(run.first + i, run.reading(i))
            for run, start, stop in self.spans
            for i in range(start, stop)
        ]

    @property
    def first_seq(self) -> int:
        run, start, _ = self.spans[0]
        return run.first + start

    @property
    def last_seq(self) -> int:
        run, _, stop = self.spans[-1]
        return run.first + stop - 1

    def __len__(self) -> int:
        return sum(stop - start for _, start, stop in self.spans)

    def head(self, n: int) -> Batch:
        """The first ``n`` readings."""
        out: list[Span] = []
        for run, start, stop in self.spans:
            if n <= 0:
                break
            take = min(stop - start, n)
            out.append((run, start, start + take))
            n -= take
        return Batch(self.boot_id, out)


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
