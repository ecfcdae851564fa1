"""An update bundle sent in parts over MQTT, for a city with a broker and no HTTP server
(issue 19 point 4; docs/update.md, "Over MQTT").

The ``update`` command with ``"transfer": "mqtt"`` opens a :class:`Transfer`: a staging file
of the announced size and a map of the parts received. The IOC publishes the bundle's bytes
on ``{prefix}/{gateway}/update_part/{request_id}/{offset}`` (QoS 1), each part exactly
``part_size`` bytes (the last one shorter) at an offset that is a multiple of ``part_size``.
The uplink subscribes to ``update_part/+/+`` only while a transfer is open (:class:`PartSink`
says when) and hands each message to :meth:`PartSink.receive`, which never blocks: the part
is written at its offset (page cache; the file is fsynced once, at the end).

A part again replaces the same bytes (a redelivery after a reconnect is harmless); a part for
another request id, outside ``[0, size)``, or not of its slot's length is dropped and counted.
When every part is in, the updater checks the sha256 and goes on exactly as after an HTTPS
download. The parts carry no signature of their own: the request (signed) names the sha256,
and the bundle's MANIFEST signature is checked as for any bundle.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from pathlib import Path

__all__ = ["PART_SIZE", "PartSink", "Transfer", "parse_part_topic"]

PART_SIZE = 64 * 1024  # what the agent asks for: a few per second on a slow 4G link
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a request id (tepi.gateway.commands)
_OFFSET = re.compile(r"^(0|[1-9][0-9]{0,11})$")  # decimal, no sign, no leading zero


def parse_part_topic(rest: str) -> tuple[str, int] | None:
    """``{request_id}/{offset}`` (the topic after ``update_part/``) as (id, offset), or None."""
    request_id, sep, offset = rest.partition("/")
    if not sep or not _ID.match(request_id) or not _OFFSET.match(offset):
        return None
    return request_id, int(offset)


class Transfer:
    """One bundle being received into ``path`` (the module docstring)."""

    def __init__(self, request_id: str, path: Path, size: int, part_size: int = PART_SIZE) -> None:
        if size <= 0 or part_size <= 0:
            raise ValueError("a transfer needs a size and a part size above 0")
        self.request_id = request_id
        self.path = path
        self.size = size
        self.part_size = part_size
        self.parts = -(-size // part_size)
        self._have = bytearray(self.parts)  # 1 per part written
        self.missing = self.parts
        self.received = 0  # parts written, again ones included
        self.opened = self.last = time.monotonic()
        self.complete = asyncio.Event()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
        try:
            os.ftruncate(fd, size)  # sparse: the disk fills as parts come
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def write(self, offset: int, data: bytes) -> str | None:
        """Write one part; None, or why it was dropped (a key of :attr:`PartSink.dropped`)."""
        if self._fd is None:
            return "closed"
        if offset >= self.size:
            return "out_of_range"
        index, rest = divmod(offset, self.part_size)
        if rest or len(data) != min(self.part_size, self.size - offset):
            return "misshapen"
        # Small and to the page cache, like the HTTPS download's writes: not worth a thread.
        os.pwrite(self._fd, data, offset)
        self.received += 1
        self.last = time.monotonic()
        if not self._have[index]:
            self._have[index] = 1
            self.missing -= 1
            if not self.missing:
                self.complete.set()
        return None

    def finish(self) -> None:
        """Flush to the disk and close (the file stays for the checks)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PartSink:
    """Between the updater and the uplink: the transfer open now (at most one), a change
    the uplink's subscription follows, and the parts that arrive."""

    def __init__(self, topic: str) -> None:
        self.topic = topic  # {prefix}/{gateway}/update_part
        self.transfer: Transfer | None = None
        self.changed = asyncio.Event()  # a transfer opened or closed
        self.subscribed = asyncio.Event()  # the broker acknowledged the open one's filter
        # Uplink sessions with the parts lane running (two for a moment during a reload):
        # the idle time counts only while there is one.
        self.sessions = 0
        self.refused: str | None = None  # why the broker would not subscribe us (its ACL)
        self.dropped: Counter[str] = Counter()

    @property
    def linked(self) -> bool:
        return self.sessions > 0

    def open(self, transfer: Transfer) -> None:
        if self.transfer is not None:
            raise RuntimeError("one transfer at a time")
        self.transfer = transfer
        self.refused = None
        self.subscribed.clear()
        self.changed.set()

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.close()
            self.transfer = None
        self.subscribed.clear()
        self.changed.set()

    def receive(self, rest: str, data: bytes) -> None:
        """A message on ``update_part/{rest}`` (from the uplink's message loop)."""
        where = parse_part_topic(rest)
        t = self.transfer
        if where is None:
            why: str | None = "bad_topic"
        elif t is None or where[0] != t.request_id:
            why = "unknown_request"
        else:
            why = t.write(where[1], data)
        if why is not None:
            self.dropped[why] += 1
