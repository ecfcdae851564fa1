"""CRC16, RTU framing and resync, and request PDU decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi_sim.protocol import (
    Request,
    RequestError,
    RtuParser,
    bits_response,
    crc16,
    exception_response,
    mbap_frame,
    parse_request,
    registers_response,
    rtu_frame,
)


@pytest.mark.parametrize(
    ("body", "wire_crc"),
    [
        ("01 03 00 00 00 0A", "C5 CD"),
        ("01 03 00 00 00 01", "84 0A"),
        ("11 03 00 6B 00 03", "76 87"),  # the example in the Modbus over serial line spec
        ("01 06 00 01 00 03", "98 0B"),
    ],
)
def test_crc16_known_vectors(body: str, wire_crc: str) -> None:
    data = bytes.fromhex(body)
    assert crc16(data).to_bytes(2, "little") == bytes.fromhex(wire_crc)
    assert rtu_frame(data[0], data[1:]) == data + bytes.fromhex(wire_crc)


def test_crc16_of_frame_with_its_crc_is_zero() -> None:
    frame = rtu_frame(1, bytes.fromhex("03 00 00 00 0A"))
    assert crc16(frame) == 0


def test_corrupt_crc_is_detected() -> None:
    frame = rtu_frame(1, bytes.fromhex("03 00 00 00 0A"), corrupt_crc=True)
    assert crc16(frame) != 0
    assert frame[:-2] == bytes.fromhex("01 03 00 00 00 0A")


def _request_pdu(fc: int, address: int, count: int, values: list[int]) -> bytes:
    if fc in (1, 2, 3, 4):
        return struct.pack(">BHH", fc, address, count)
    if fc == 5:
        return struct.pack(">BHH", fc, address, 0xFF00 if values[0] else 0)
    if fc == 6:
        return struct.pack(">BHH", fc, address, values[0])
    if fc == 15:
        packed = bytearray((len(values) + 7) // 8)
        for i, bit in enumerate(values):
            packed[i // 8] |= (bit & 1) << (i % 8)
        return struct.pack(">BHHB", fc, address, len(values), len(packed)) + bytes(packed)
    return struct.pack(f">BHHB{len(values)}H", fc, address, len(values), 2 * len(values), *values)


requests = st.sampled_from([1, 2, 3, 4, 5, 6, 15, 16]).flatmap(
    lambda fc: st.tuples(
        st.integers(0, 247),
        st.just(fc),
        st.integers(0, 0xFFFF),
        st.integers(1, 125),
        st.lists(
            st.integers(0, 1) if fc in (5, 15) else st.integers(0, 0xFFFF),
            min_size=1,
            max_size=1 if fc in (5, 6) else 60,
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(request=requests, garbage=st.binary(max_size=40), split=st.integers(0, 400))
def test_parser_resyncs_through_garbage(
    request: tuple[int, int, int, int, list[int]], garbage: bytes, split: int
) -> None:
    unit, fc, address, count, values = request
    pdu = _request_pdu(fc, address, count, values)
    frame = rtu_frame(unit, pdu)
    stream = garbage + frame
    split = min(split, len(stream))
    parser = RtuParser()
    # Bytes arrive in two chunks at an arbitrary split; then the line goes quiet.
    frames = parser.feed(stream[:split]) + parser.feed(stream[split:]) + parser.flush()
    assert frames, "the valid frame was not found"
    assert frames[-1] == (unit, pdu)
    assert parser.pending == 0


def test_parser_drops_bad_crc_and_finds_next_frame() -> None:
    good = rtu_frame(1, bytes.fromhex("03 00 00 00 02"))
    bad = rtu_frame(1, bytes.fromhex("03 00 05 00 02"), corrupt_crc=True)
    parser = RtuParser()
    assert parser.feed(bad + good) == [(1, bytes.fromhex("03 00 00 00 02"))]
    assert parser.dropped == len(bad)


def test_parser_waits_for_rest_of_write_multiple() -> None:
    frame = rtu_frame(3, _request_pdu(16, 10, 2, [0x1234, 0xABCD]))
    parser = RtuParser()
    assert parser.feed(frame[:9]) == []
    assert parser.pending == 9
    assert parser.feed(frame[9:]) == [(3, frame[1:-2])]


def test_parser_recognises_unknown_function_frame() -> None:
    frame = rtu_frame(1, bytes([0x11]))  # fc 17, report server id: 4 bytes on the wire
    assert RtuParser().feed(frame) == [(1, bytes([0x11]))]


@given(request=requests)
def test_parse_request_round_trip(request: tuple[int, int, int, int, list[int]]) -> None:
    _, fc, address, count, values = request
    parsed = parse_request(_request_pdu(fc, address, count, values))
    assert parsed.fc == fc
    assert parsed.address == address
    if fc in (1, 2, 3, 4):
        assert parsed.count == count
    else:
        assert list(parsed.values) == values


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("07", 1),  # read exception status: not implemented
        ("2B 0E 01 00", 1),
        ("03 00 00 00 7E", 3),  # 126 registers
        ("03 00 00 00 00", 3),  # zero registers
        ("01 00 00 07 D1", 3),  # 2001 bits
        ("05 00 01 12 34", 3),  # coil value must be FF00 or 0000
        ("10 00 00 00 02 03 00 01 00", 3),  # byte count does not match
        ("03 00 00", 3),  # truncated
    ],
)
def test_parse_request_errors(pdu: str, code: int) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(bytes.fromhex(pdu))
    assert info.value.code == code


def test_request_tables() -> None:
    assert Request(1, 0, 1).table == "coil"
    assert Request(2, 0, 1).table == "discrete"
    assert Request(4, 0, 1).table == "input"
    assert Request(15, 0, 1).table == "coil"
    assert Request(16, 0, 1).table == "holding"


def test_response_builders() -> None:
    assert exception_response(3, 2) == bytes.fromhex("83 02")
    assert registers_response(3, [1, 0xABCD]) == bytes.fromhex("03 04 00 01 AB CD")
    assert bits_response(1, [True, False, True] + [False] * 6 + [True]) == bytes.fromhex(
        "01 02 05 02"
    )
    assert mbap_frame(0x1234, 7, b"\x03\x02\x00\x01") == bytes.fromhex(
        "12 34 00 00 00 05 07 03 02 00 01"
    )
