"""What goes on the wire and what comes back, whatever carries it: request PDUs, RTU frames,
answers taken apart, and a failed answer classified from the bytes that did arrive.

Used by tepi's transaction layer (``tcp.py``), on a serial port and on TCP.
Request PDUs are built with pymodbus's own request classes, once for each (function,
address, count): a poll asks the same few reads again and again, so the hot path is a dict
lookup, not an object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError

READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
RX_KEEP = 512  # bytes of a failed answer kept to say why it failed
_CACHE_MAX = 1024  # request PDUs and frames kept; a config asks for a few dozen

_READ_REQUESTS: dict[int, type[ModbusPDU]] = {
    1: ReadCoilsRequest,
    2: ReadDiscreteInputsRequest,
    3: ReadHoldingRegistersRequest,
    4: ReadInputRegistersRequest,
}
_read_pdus: dict[tuple[int, int, int], bytes] = {}
_rtu_frames: dict[tuple[int, bytes], bytes] = {}
_words: dict[int, struct.Struct] = {}
# Each byte of a bit answer as its 8 bits, least significant first (the Modbus order).
BITS = [tuple(bool(b >> i & 1) for i in range(8)) for b in range(256)]


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device answered with a Modbus exception code."""

    code: int

    @property
    def reason(self) -> str:
        return f"modbus exception {self.code} ({EXCEPTION_NAMES.get(self.code, 'unknown')})"


def pdu_bytes(pdu: ModbusPDU) -> bytes:
    """A pymodbus request as the bytes of its PDU: function code, then data."""
    return bytes([pdu.function_code]) + pdu.encode()


def read_pdu(fc: int, address: int, count: int) -> bytes:
    """The PDU of a read, built once by pymodbus's request class (which checks the address
    and count, raising ValueError) and kept."""
    key = (fc, address, count)
    pdu = _read_pdus.get(key)
    if pdu is None:
        if len(_read_pdus) >= _CACHE_MAX:
            _read_pdus.clear()
        pdu = _read_pdus[key] = pdu_bytes(_READ_REQUESTS[fc](address=address, count=count))
    return pdu


def write_pdu(table: str, address: int, values: list[int] | list[bool]) -> bytes:
    """The PDU of a write (fc 5, 6, 15 or 16), by pymodbus's request classes."""
    if table == "coil":
        bits = [bool(v) for v in values]
        if len(bits) == 1:
            return pdu_bytes(WriteSingleCoilRequest(address=address, bits=bits))
        return pdu_bytes(WriteMultipleCoilsRequest(address=address, bits=bits))
    words = [int(v) for v in values]
    if len(words) == 1:
        return pdu_bytes(WriteSingleRegisterRequest(address=address, registers=words))
    return pdu_bytes(WriteMultipleRegistersRequest(address=address, registers=words))


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """``unit``, ``pdu`` and the CRC (pymodbus's FramerRTU), kept for the next poll."""
    key = (unit, pdu)
    frame = _rtu_frames.get(key)
    if frame is None:
        if len(_rtu_frames) >= _CACHE_MAX:
            _rtu_frames.clear()
        body = bytes([unit]) + pdu
        frame = _rtu_frames[key] = body + FramerRTU.compute_CRC(body).to_bytes(2, "big")
    return frame


def words_of(data: bytes) -> list[int]:
    """Register data as on the wire (big-endian words) as a list of ints."""
    n = len(data) // 2
    unpack = _words.get(n)
    if unpack is None:
        unpack = _words[n] = struct.Struct(f">{n}H")
    return list(unpack.unpack(data))


def crc_ok_somewhere(frame: bytes) -> bool:
    """Whether some prefix of ``frame`` (5 bytes or more) ends in its own valid CRC."""
    for end in range(5, len(frame) + 1):
        crc = int.from_bytes(frame[end - 2 : end], "big")
        if FramerRTU.check_CRC(frame[: end - 2], crc):
            return True
    return False


def answer_length(frame: bytes | bytearray, at: int = 0) -> int | None:
    """How long the RTU answer that starts at ``frame[at]`` is meant to be, from its function
    code (and byte count); None when that cannot be told (yet)."""
    if len(frame) - at < 2:
        return None
    fc = frame[at + 1]
    if fc & 0x80:
        return 5  # an exception reply
    if fc in (1, 2, 3, 4):
        return 5 + frame[at + 2] if len(frame) - at >= 3 else None
    if fc in (5, 6, 15, 16):
        return 8
    return None


def why_no_reply(label: str, unit: int, rx: bytes, rtu: bool) -> DeviceError:
    """Classify a request that got no valid reply from what did arrive."""
    if not rx:
        return DeviceUnavailable("timeout", f"{label} unit {unit}: no answer")
    shown = rx[:16].hex(" ") + (" ..." if len(rx) > 16 else "")
    whole = len(rx) >= (answer_length(rx) or 0)  # a frame cut short has no CRC to be wrong
    if rtu and rx[0] == unit and len(rx) >= 5 and whole and not crc_ok_somewhere(rx):
        return ProtocolError("crc error", f"{label} unit {unit}: answer with a bad CRC: {shown}")
    if rtu and rx[0] != unit and crc_ok_somewhere(rx):
        return ProtocolError(
            "wrong unit", f"{label} unit {unit}: answer not from unit {unit}: {shown}"
        )
    return ProtocolError("bad frame", f"{label} unit {unit}: garbled or short answer: {shown}")


def other_function(label: str, unit: int, answered: int, fc: int, what: str) -> ProtocolError:
    """An answer to another function: a late reply to another request, never these values."""
    return ProtocolError(
        "bad frame",
        f"{label} unit {unit}: an answer to function {answered}, not to the {what} (function {fc})",
    )


def read_answer(
    label: str, unit: int, table: str, count: int, pdu: bytes
) -> bytes | list[bool] | ExceptionReply:
    """A read's answer PDU taken apart: the register bytes, the bits, or the exception."""
    fc = READ_FC[table]
    answered = pdu[0]
    if answered != fc:
        if answered == fc | 0x80 and len(pdu) >= 2:
            return ExceptionReply(pdu[1])
        raise other_function(label, unit, answered & 0x7F, fc, f"read of {table}")
    if len(pdu) < 2 or len(pdu) < 2 + pdu[1]:
        raise ProtocolError(
            "bad frame", f"{label} unit {unit}: an answer cut short: {pdu[:16].hex(' ')}"
        )
    n = pdu[1]
    if fc >= 3:
        if n != 2 * count:
            raise ProtocolError("short answer", f"asked {count} registers, got {n // 2}")
        return pdu[2 : 2 + n]
    if n * 8 < count:
        raise ProtocolError("short answer", f"asked {count} bits, got {n * 8}")
    bits = [b for byte in pdu[2 : 2 + n] for b in BITS[byte]]
    return bits[:count]


def write_answer(label: str, unit: int, pdu: bytes, answer: bytes) -> ExceptionReply | None:
    """A write's answer: None when accepted, or the exception."""
    fc = pdu[0]
    if answer[0] == fc | 0x80 and len(answer) >= 2:
        return ExceptionReply(answer[1])
    if answer[0] != fc:
        raise other_function(label, unit, answer[0] & 0x7F, fc, "write")
    return None
