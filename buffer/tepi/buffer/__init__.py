"""Store-and-forward buffer: the durability boundary between drivers and the uplink.

:meth:`Buffer.put` takes a reading into RAM and gives it its seq. It is then either
acknowledged by the broker or committed to SQLite within ``commit_interval`` (at once while
the uplink is down); a reading acknowledged first is never written. The uplink takes batches
oldest first, from RAM and then from the file, and a reading's row (if it has one) is deleted
only after the broker has acknowledged it.

Alarms have a store of their own, :class:`AlarmStore` (``tepi.buffer.alarms``): each rule's
alarm state and the alarm messages still to deliver, bounded apart from the readings (a firing
alarm is never dropped). Importing it is cheap, as for the images.

Commands from the IOC are logged by id in :class:`CommandLog` (``tepi.buffer.commands``), so
that a redelivered or replayed request never runs twice and its result is sent at least once.

Camera images have a store of their own, :class:`ImageStore` (``tepi.buffer.images``): a file
per image and a small index, beside the readings' file. Importing it is cheap; sqlite-utils
is imported when a store is opened.
"""

from typing import TYPE_CHECKING, Any

from tepi.buffer.commands import CommandLog, CommandLogError
from tepi.buffer.records import Batch, BufferStats
from tepi.buffer.store import Buffer, BufferSettings
from tepi.core.records import Reading

if TYPE_CHECKING:
    from tepi.buffer.alarms import (
        AlarmState,
        AlarmStats,
        AlarmStore,
        AlarmStoreError,
        AlarmWriteError,
    )
    from tepi.buffer.alarms import Message as AlarmMessage
    from tepi.buffer.images import (
        ImageGone,
        ImageMeta,
        ImageRefused,
        ImageStats,
        ImageStore,
        ImageStoreError,
        ImageWriteError,
    )

# The alarm and image stores are imported when first named (PEP 562): a box without rules
# or cameras does not hold their code (docs/performance.md#memory).
_LAZY = {
    "AlarmMessage": ("tepi.buffer.alarms", "Message"),
    **{
        n: ("tepi.buffer.alarms", n)
        for n in ("AlarmState", "AlarmStats", "AlarmStore", "AlarmStoreError", "AlarmWriteError")
    },
    **{
        n: ("tepi.buffer.images", n)
        for n in (
            "ImageGone",
            "ImageMeta",
            "ImageRefused",
            "ImageStats",
            "ImageStore",
            "ImageStoreError",
            "ImageWriteError",
        )
    },
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'tepi.buffer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


__all__ = [
    "AlarmMessage",
    "AlarmState",
    "AlarmStats",
    "AlarmStore",
    "AlarmStoreError",
    "AlarmWriteError",
    "Batch",
    "Buffer",
    "BufferSettings",
    "BufferStats",
    "CommandLog",
    "CommandLogError",
    "ImageGone",
    "ImageMeta",
    "ImageRefused",
    "ImageStats",
    "ImageStore",
    "ImageStoreError",
    "ImageWriteError",
    "Reading",
]
