"""Store-and-forward buffer: the durability boundary between drivers and the uplink.

A reading is safe once :meth:`Buffer.put` has handed it over and the next group commit
has run (at most ``commit_interval`` later). The uplink takes batches oldest first and
acknowledges them only after the broker has; only then are their rows deleted.
"""

from tepi.buffer.records import Batch, BufferStats
from tepi.buffer.store import Buffer, BufferSettings
from tepi.core.records import Reading

__all__ = ["Batch", "Buffer", "BufferSettings", "BufferStats", "Reading"]
