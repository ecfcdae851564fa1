"""Store-and-forward buffer: the durability boundary between drivers and the uplink.

:meth:`Buffer.put` takes a reading into RAM and gives it its seq. It is then either
acknowledged by the broker or committed to SQLite within ``commit_interval`` (at once while
the uplink is down); a reading acknowledged first is never written. The uplink takes batches
oldest first, from RAM and then from the file, and a reading's row (if it has one) is deleted
only after the broker has acknowledged it.

Alarms have a store of their own, :class:`AlarmStore` (``tepi.buffer.alarms``): each rule's
alarm state and the alarm messages still to deliver, bounded apart from the readings (a firing
alarm is never dropped). It is imported from there, with the first rule: a box without
rules does not hold its code (docs/performance.md#memory); the same for the images.

Commands from the IOC are logged by id in :class:`CommandLog` (``tepi.buffer.commands``), so
that a redelivered or replayed request never runs twice and its result is sent at least once.

Camera images have a store of their own, :class:`ImageStore` (``tepi.buffer.images``): a file
per image and a small index, beside the readings' file, imported from there with the first
camera; sqlite-utils is imported when a store is opened.
"""

from tepi.buffer.commands import CommandLog, CommandLogError
from tepi.buffer.records import Batch, BufferStats
from tepi.buffer.store import Buffer, BufferSettings
from tepi.core.records import Reading

__all__ = [
    "Batch",
    "Buffer",
    "BufferSettings",
    "BufferStats",
    "CommandLog",
    "CommandLogError",
    "Reading",
]
