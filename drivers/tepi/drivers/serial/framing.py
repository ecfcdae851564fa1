"""Cut a UART byte stream into whole frames or lines, whatever the chunks it arrives in.

A serial port hands over bytes in arbitrary pieces: half a frame, three frames at once, line
noise from a loose connector, the tail of a frame sent before the port was opened. The framers
here keep the bytes between calls and return only whole frames that pass their checksum.

Both are pure (no I/O) and bounded: a ``BinaryFramer`` never holds more than ``max_frame - 1``
bytes between calls, a ``LineFramer`` no more than ``max_len`` plus its line ending. Whatever
is dropped is counted in ``stats``, so a driver can tell a noisy line from a silent one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class FramerStats:
    """What a framer has seen since it was made (``reset`` keeps the counts)."""

    frames: int = 0
    """Valid frames (or lines) returned."""
    bad_checksums: int = 0
    """Candidate frames (right header and length) whose checksum failed."""
    garbage_bytes: int = 0
    """Bytes skipped while hunting for a frame start, including the first byte of each
    bad-checksum candidate. For lines: the bytes of lines dropped for being too long."""
    too_long: int = 0
    """Lines (or frames) dropped for exceeding the maximum length."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for a diagnostics payload."""
        return asdict(self)


class BinaryFramer:
    """Frames that start with a fixed header, have a size known from the first ``head_len``
    bytes, and a checksum.

    ``size(head)`` gets the first ``head_len`` bytes of a candidate and returns the whole
    frame's length, or None when they cannot start a frame (a length field out of range, an
    unknown command byte). ``valid(frame)`` checks the checksum (and any trailer).

    After garbage or a failed checksum the framer moves on by *one* byte past the failed
    start, never by a whole candidate: a valid frame that begins inside a bad candidate, or
    right after garbage, is still found. The header is looked for with ``bytes.find``, so a
    quiet 1 Hz sensor costs a handful of C calls per read.
    """

    def __init__(
        self,
        header: bytes,
        head_len: int,
        size: Callable[[bytes], int | None],
        valid: Callable[[bytes], bool],
        *,
        max_frame: int,
    ) -> None:
        if not header:
            raise ValueError("header must not be empty")
        if not len(header) <= head_len <= max_frame:
            raise ValueError(
                f"need len(header) <= head_len <= max_frame, got {len(header)}, "
                f"{head_len}, {max_frame}"
            )
        self._header = header
        self._head_len = head_len
        self._size = size
        self._valid = valid
        self._max_frame = max_frame
        self._buf = bytearray()
        self.stats = FramerStats()

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete (always below ``max_frame``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop the partial frame (the port was reopened: its bytes no longer belong to it).
        The dropped bytes are not counted in ``stats``."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Every complete, valid frame in the stream so far, in order."""
        buf = self._buf
        buf += data
        header, head_len, stats = self._header, self._head_len, self.stats
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while True:
            start = buf.find(header, pos)
            if start < 0:
                # Keep a trailing piece that may be the start of a header cut by the chunking.
                keep = _header_prefix_at_end(buf, pos, header)
                stats.garbage_bytes += end - keep - pos
                pos = end - keep
                break
            stats.garbage_bytes += start - pos
            pos = start
            if end - pos < head_len:
                break
            n = self._size(bytes(buf[pos : pos + head_len]))
            if n is None or n < head_len:
                stats.garbage_bytes += 1
                pos += 1
                continue
            if n > self._max_frame:
                stats.too_long += 1
                stats.garbage_bytes += 1
                pos += 1
                continue
            if end - pos < n:
                break
            frame = bytes(buf[pos : pos + n])
            if self._valid(frame):
                frames.append(frame)
                stats.frames += 1
                pos += n
            else:
                stats.bad_checksums += 1
                stats.garbage_bytes += 1
                pos += 1
        del buf[:pos]
        return frames


def _header_prefix_at_end(buf: bytearray, pos: int, header: bytes) -> int:
    """Length of the longest tail of ``buf[pos:]`` that is a proper prefix of ``header``."""
    for k in range(min(len(header) - 1, len(buf) - pos), 0, -1):
        if buf.endswith(header[:k]):
            return k
    return 0


class LineFramer:
    """Text lines, split on ``ending``; returned without it (and without a ``\\r`` before a
    ``\\n`` ending). Empty lines are skipped.

    A line longer than ``max_len`` is dropped and counted in ``stats.too_long``, and everything
    up to the next ending goes with it, so a stream with no line endings at all (wrong baud
    rate, a binary sensor on the port) never holds more than ``max_len`` plus the ending.
    Lines are returned whatever bytes they hold: the parsers decide what is valid text.
    """

    def __init__(self, *, ending: bytes = b"\n", max_len: int = 256) -> None:
        if not ending:
            raise ValueError("ending must not be empty")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self._ending = ending
        self._max_len = max_len
        self._strip_cr = ending == b"\n"
        # A held remainder may still end in part of the ending (or a \r before \n) that does
        # not count towards the line's length; beyond this it is too long for sure.
        self._limit = max_len + len(ending) - 1 + int(self._strip_cr)
        self._buf = bytearray()
        self._dropping = False  # inside a too-long line: discard up to the next ending
        self.stats = FramerStats()

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet complete (at most ``max_len + len(ending)``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop the partial line."""
        self._buf.clear()
        self._dropping = False

    def feed(self, data: bytes) -> list[bytes]:
        """Every complete line in the stream so far, in order."""
        buf, ending, stats = self._buf, self._ending, self.stats
        buf += data
        pos = 0
        if self._dropping:
            idx = buf.find(ending)
            if idx < 0:
                self._drop_rest(buf, 0)
                return []
            stats.garbage_bytes += idx
            pos = idx + len(ending)
            self._dropping = False
        lines: list[bytes] = []
        while (idx := buf.find(ending, pos)) >= 0:
            line = bytes(buf[pos:idx])
            raw_len = len(line)
            if self._strip_cr and line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_len:
                stats.too_long += 1
                stats.garbage_bytes += raw_len
            elif line:
                lines.append(line)
                stats.frames += 1
            pos = idx + len(ending)
        if len(buf) - pos > self._limit:
            stats.too_long += 1
            self._dropping = True
            self._drop_rest(buf, pos)
        else:
            del buf[:pos]
        return lines

    def _drop_rest(self, buf: bytearray, pos: int) -> None:
        """Discard ``buf[pos:]`` but its last bytes, which may begin the ending."""
        keep = min(len(self._ending) - 1, len(buf) - pos)
        self.stats.garbage_bytes += len(buf) - pos - keep
        del buf[: len(buf) - keep]
