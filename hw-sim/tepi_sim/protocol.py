"""Modbus wire format: CRC16, RTU framing with resync, MBAP framing, and PDU codecs.

Layers, bottom up (the same split pymodbus uses, written independently so the simulator
is a real cross-check of the client):

* ``crc16`` / ``rtu_frame``: the RTU checksum and frame builder; ``rtu_reply`` /
  ``mbap_reply`` build an answer as a faulty device sends it (bad CRC, another unit id, cut off).
* ``RtuParser``: finds request frames in a byte stream. A serial line has no packet
  boundaries, so the parser derives each frame's length from its function code, checks the
  CRC, and on any mismatch drops one byte and tries again (resync). When the line goes
  quiet, ``flush`` resyncs through whatever incomplete bytes are left.
* ``mbap_frame`` / ``MBAP``: the 7-byte Modbus TCP header.
* ``Request`` / ``parse_request`` and the ``*_response`` builders: PDUs (function code +
  data, no addressing, no checksum) independent of the transport.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "EXC_ILLEGAL_ADDRESS",
    "EXC_ILLEGAL_FUNCTION",
    "EXC_ILLEGAL_VALUE",
    "EXC_TARGET_FAILED",
    "MBAP",
    "READ_FCS",
    "WRITE_FCS",
    "Request",
    "RequestError",
    "RtuParser",
    "bits_response",
    "crc16",
    "exception_response",
    "mbap_frame",
    "mbap_reply",
    "other_unit",
    "parse_request",
    "registers_response",
    "rtu_frame",
    "rtu_reply",
    "truncated",
]

EXC_ILLEGAL_FUNCTION: Final = 1
EXC_ILLEGAL_ADDRESS: Final = 2
EXC_ILLEGAL_VALUE: Final = 3
EXC_DEVICE_FAILURE: Final = 4
EXC_TARGET_FAILED: Final = 0x0B

READ_FCS: Final = frozenset({1, 2, 3, 4})
WRITE_FCS: Final = frozenset({5, 6, 15, 16})
MAX_READ_REGISTERS: Final = 125
MAX_READ_BITS: Final = 2000
MAX_WRITE_REGISTERS: Final = 123
MAX_WRITE_BITS: Final = 1968

MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC16 (poly 0xA001 reflected, init 0xFFFF). Sent little-endian on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes, *, corrupt_crc: bool = False) -> bytes:
    """Build an RTU frame; ``corrupt_crc`` inverts the checksum (fault injection)."""
    body = bytes([unit]) + pdu
    crc = crc16(body) ^ (0xFFFF if corrupt_crc else 0)
    return body + crc.to_bytes(2, "little")


def mbap_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    """Build a Modbus TCP frame (MBAP header + PDU)."""
    return MBAP.pack(transaction_id, 0, len(pdu) + 1, unit) + pdu


def other_unit(unit: int) -> int:
    """The unit id a ``wrong_unit`` answer comes from: the next one (247 wraps to 1)."""
    return unit % 247 + 1


def truncated(frame: bytes) -> bytes:
    """The first half of ``frame`` (at least one byte): an answer cut off half way."""
    return frame[: max(1, len(frame) // 2)]


def rtu_reply(unit: int, pdu: bytes, kind: str = "answer") -> bytes:
    """The RTU frame a device sends: ``answer`` as it should be; ``bad_crc`` with the
    checksum inverted; ``wrong_unit`` from :func:`other_unit`; ``partial`` cut off half way."""
    if kind == "wrong_unit":
        return rtu_frame(other_unit(unit), pdu)
    frame = rtu_frame(unit, pdu, corrupt_crc=kind == "bad_crc")
    return truncated(frame) if kind == "partial" else frame


def mbap_reply(transaction_id: int, unit: int, pdu: bytes, kind: str = "answer") -> bytes:
    """The Modbus TCP frame a device sends: as :func:`rtu_reply`, without a CRC to break."""
    if kind == "wrong_unit":
        return mbap_frame(transaction_id, other_unit(unit), pdu)
    frame = mbap_frame(transaction_id, unit, pdu)
    return truncated(frame) if kind == "partial" else frame


_NEED_MORE: Final = -1
_INVALID: Final = 0
# Requests with function codes we do not implement still get "exception 1" if their frame
# can be recognised: the common ones are 4 bytes (fc 7, 11, 12, 17) or 8 bytes (fc 8).
_UNKNOWN_FC_LENGTHS: Final = (4, 8)


@dataclass(slots=True)
class RtuParser:
    """Incremental RTU request parser. Yields ``(unit, pdu)`` for each valid frame."""

    _buf: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # bytes discarded while resyncing

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every complete, valid frame found."""
        self._buf += data
        return self._parse()

    def flush(self) -> list[tuple[int, bytes]]:
        """The line went quiet: nothing will complete the held bytes, so resync through them."""
        frames = self._parse()
        while self._buf:
            self._drop()
            frames += self._parse()
        return frames

    def _drop(self) -> None:
        del self._buf[0]
        self.dropped += 1

    def _parse(self) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        while self._buf:
            length = self._frame_length()
            if length == _NEED_MORE:
                break
            if length == _INVALID:
                self._drop()
                continue
            frame = bytes(self._buf[:length])
            del self._buf[:length]
            frames.append((frame[0], frame[1:-2]))
        return frames

    def _crc_ok(self, length: int) -> bool:
        buf = self._buf
        return crc16(bytes(buf[: length - 2])) == int.from_bytes(buf[length - 2 : length], "little")

    def _frame_length(self) -> int:
        buf = self._buf
        if len(buf) < 2:
            return _NEED_MORE
        unit, fc = buf[0], buf[1]
        if unit > 247 or fc == 0 or fc & 0x80:
            return _INVALID
        if fc in READ_FCS or fc in (5, 6):
            length = 8
        elif fc in (15, 16):
            if len(buf) < 7:
                return _NEED_MORE
            count = int.from_bytes(buf[4:6], "big")
            expected = 2 * count if fc == 16 else (count + 7) // 8
            if buf[6] != expected:
                return _INVALID
            length = 9 + buf[6]
        else:
            for candidate in _UNKNOWN_FC_LENGTHS:
                if len(buf) < candidate:
                    return _NEED_MORE
                if self._crc_ok(candidate):
                    return candidate
            return _INVALID
        if len(buf) < length:
            return _NEED_MORE
        return length if self._crc_ok(length) else _INVALID


class RequestError(Exception):
    """A request that must be answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request PDU. ``values`` holds written words, or 0/1 for bits."""

    fc: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    @property
    def table(self) -> str:
        """The data table this function code addresses."""
        return {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 6: "holding"}.get(
            self.fc, "coil" if self.fc == 15 else "holding"
        )


def parse_request(pdu: bytes) -> Request:
    """Decode a request PDU; raise :class:`RequestError` with the exception code to answer."""
    if not pdu:
        raise RequestError(EXC_ILLEGAL_FUNCTION)
    fc = pdu[0]
    if fc not in READ_FCS and fc not in WRITE_FCS:
        raise RequestError(EXC_ILLEGAL_FUNCTION)
    if len(pdu) < 5:
        raise RequestError(EXC_ILLEGAL_VALUE)
    address, second = struct.unpack_from(">HH", pdu, 1)
    if fc in READ_FCS:
        limit = MAX_READ_BITS if fc in (1, 2) else MAX_READ_REGISTERS
        if len(pdu) != 5 or not 1 <= second <= limit:
            raise RequestError(EXC_ILLEGAL_VALUE)
        return Request(fc, address, second)
    if fc == 5:
        if len(pdu) != 5 or second not in (0x0000, 0xFF00):
            raise RequestError(EXC_ILLEGAL_VALUE)
        return Request(fc, address, 1, (1 if second else 0,))
    if fc == 6:
        if len(pdu) != 5:
            raise RequestError(EXC_ILLEGAL_VALUE)
        return Request(fc, address, 1, (second,))
    count, data = second, pdu[6:]
    if len(pdu) < 6 or pdu[5] != len(data):  # short-circuit keeps pdu[5] in range
        raise RequestError(EXC_ILLEGAL_VALUE)
    if fc == 15:
        if not 1 <= count <= MAX_WRITE_BITS or len(data) != (count + 7) // 8:
            raise RequestError(EXC_ILLEGAL_VALUE)
        bits = tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))
        return Request(fc, address, count, bits)
    if not 1 <= count <= MAX_WRITE_REGISTERS or len(data) != 2 * count:
        raise RequestError(EXC_ILLEGAL_VALUE)
    return Request(fc, address, count, struct.unpack(f">{count}H", data))


def exception_response(fc: int, code: int) -> bytes:
    """Exception PDU: the function code with the high bit set, then the code."""
    return bytes([(fc | 0x80) & 0xFF, code & 0xFF])


def registers_response(fc: int, words: list[int]) -> bytes:
    """Response PDU for fc 3/4."""
    return bytes([fc, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)


def bits_response(fc: int, bits: list[bool]) -> bytes:
    """Response PDU for fc 1/2: bits packed LSB first."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i // 8] |= 1 << (i % 8)
    return bytes([fc, len(packed)]) + bytes(packed)


def write_response(request: Request, pdu: bytes) -> bytes:
    """Response PDU for writes: fc 5/6 echo the request, fc 15/16 echo address and count."""
    if request.fc in (5, 6):
        return pdu[:5]
    return struct.pack(">BHH", request.fc, request.address, request.count)
