"""The answer path: whatever bytes come back, the link gives the reading or a classified error.

tepi's transaction layer frames the answer (pymodbus checks the CRC); the link turns what
went wrong into tepi's errors (timeout, crc error, wrong unit, bad frame, short answer).
These tests put any bytes on the
wire as the answer, through a real link (RTU framing over TCP, and a real pty): random bytes,
frames with a valid CRC around any function code and payload, and the right answer broken in
the ways a line breaks it (cut short, a bit flipped, from another unit, another function).
"""

from __future__ import annotations

import asyncio
import os
import struct
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError
from tepi.drivers.modbus.link import ExceptionReply, ModbusLink

pytestmark = pytest.mark.timeout(60)

UNIT = 1
WORDS = [0x1234, 0xABCD]
REASONS = {"timeout", "crc error", "wrong unit", "bad frame", "short answer"}


def rtu(body: bytes) -> bytes:
    """``body`` (unit, function, data) with its CRC."""
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


RIGHT = rtu(bytes([UNIT, 3, 4]) + struct.pack(">2H", *WORDS))  # the answer to the read below


def flip(frame: bytes, bit: int) -> bytes:
    out = bytearray(frame)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


answers = st.one_of(
    st.binary(max_size=40),  # line noise
    st.builds(  # a valid CRC around anything: past the CRC check, into the decoder
        lambda unit, fc, data: rtu(bytes([unit, fc]) + data),
        st.sampled_from([UNIT, 2, 0, 247]),
        st.integers(0, 255),
        st.binary(max_size=12),
    ),
    st.builds(  # a read answer with any byte count and words
        lambda n, data: rtu(bytes([UNIT, 3, n]) + data),
        st.integers(0, 255),
        st.binary(max_size=12),
    ),
    st.builds(lambda n: RIGHT[:n], st.integers(0, len(RIGHT) - 1)),  # cut short
    st.builds(flip, st.just(RIGHT), st.integers(0, 8 * len(RIGHT) - 1)),  # one bit flipped
    st.builds(lambda unit: rtu(bytes([unit]) + RIGHT[1:-2]), st.integers(2, 255)),  # other unit
    st.builds(lambda fc: rtu(bytes([UNIT, fc]) + RIGHT[2:-2]), st.sampled_from([1, 2, 4, 0x83])),
    st.builds(lambda code: rtu(bytes([UNIT, 0x83, code])), st.integers(0, 255)),  # exception
    st.builds(lambda noise: noise + RIGHT, st.binary(min_size=1, max_size=8)),  # noise first
)


@asynccontextmanager
async def answering(first: bytes) -> AsyncIterator[tuple[ModbusLink, list[Any]]]:
    """A link to a server that answers ``first`` to the first request and the right answer
    after that; and the exceptions that reached the event loop meanwhile."""
    loop = asyncio.get_running_loop()
    escaped: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while await reader.read(256):
            served += 1
            writer.write(first if served == 1 else RIGHT)
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    link = ModbusLink.tcp("127.0.0.1", server.sockets[0].getsockname()[1], framing="rtu")
    try:
        yield link, escaped
    finally:
        await link.aclose()  # the server's side sees the end and returns
        server.close()


async def read_after(answer: bytes) -> tuple[object, list[int] | list[bool] | ExceptionReply]:
    """What the link made of ``answer``, and of the right answer to the next request."""
    async with answering(answer) as (link, escaped):
        first: object
        try:
            first = await link.read("holding", 0, 2, UNIT, 0.05)
        except DeviceError as err:
            first = err
        second = await link.read("holding", 0, 2, UNIT, 1.0)
        assert escaped == [], f"raised inside pymodbus, logged by asyncio: {escaped}"
    return first, second


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(answer=answers)
@example(answer=RIGHT)
@example(answer=rtu(bytes([UNIT, 4]) + RIGHT[2:-2]))  # input registers for holding ones
@example(answer=rtu(bytes.fromhex("01 80 19")))  # undecodable: pymodbus raised in a callback
def test_any_answer_gives_the_reading_or_a_classified_error(answer: bytes) -> None:
    first, second = asyncio.run(read_after(answer))
    event(type(first).__name__ + (f" {first.reason}" if isinstance(first, DeviceError) else ""))
    if isinstance(first, DeviceError):
        assert isinstance(first, ProtocolError | DeviceUnavailable)
        assert first.reason in REASONS, first
        assert (first.reason == "timeout") == (answer == b""), first
    elif isinstance(first, ExceptionReply):
        assert rtu(bytes([UNIT, 0x83, first.code])) in answer
    else:
        assert first == WORDS, f"wrong values taken from {answer.hex(' ')}"
        assert RIGHT in answer
    assert second == WORDS, "the link reads well again after any answer"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"", "timeout"),
        (RIGHT[:5], "bad frame"),  # cut short: no CRC to be wrong
        (RIGHT[:-1], "bad frame"),
        (flip(RIGHT, 40), "crc error"),  # complete, from our unit, CRC wrong
        (rtu(bytes([2]) + RIGHT[1:-2]), "wrong unit"),
        (bytes.fromhex("0d f2 c6"), "bad frame"),
        (rtu(bytes.fromhex("01 80 19")), "bad frame"),  # a valid CRC, undecodable by pymodbus
        (rtu(bytes([UNIT, 4]) + RIGHT[2:-2]), "bad frame"),  # input registers, for holding ones
    ],
    ids=["silence", "cut-5", "cut-1", "bit-flip", "unit-2", "noise", "undecodable", "fc-4"],
)
async def test_each_broken_answer_is_classified(answer: bytes, reason: str) -> None:
    first, second = await read_after(answer)
    assert isinstance(first, DeviceError)
    assert first.reason == reason, first
    assert second == WORDS


@asynccontextmanager
async def on_a_pty(
    *answers: list[bytes],
) -> AsyncIterator[tuple[ModbusLink, list[Any]]]:
    """A serial link on a real pty whose other side answers each request with the next of
    ``answers``, each a list of pieces written as they come (the line's bytes in parts);
    and the exceptions that reached the event loop meanwhile."""
    loop = asyncio.get_running_loop()
    escaped: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    master, slave = os.openpty()
    tty.setraw(slave)
    todo = list(answers)

    def answer() -> None:
        os.read(master, 256)
        for i, piece in enumerate(todo.pop(0) if todo else []):
            loop.call_later(0.005 * i, os.write, master, piece)

    loop.add_reader(master, answer)
    link = ModbusLink.serial(os.ttyname(slave), 9600, "N", 8, 1)
    try:
        yield link, escaped
    finally:
        await link.aclose()
        loop.remove_reader(master)
        os.close(master)
        os.close(slave)


async def test_an_undecodable_answer_on_a_serial_line_escapes_nothing() -> None:
    """The serial transport reads the answer in a bare loop callback: an exception raised
    while taking it apart would be logged by asyncio with a traceback. It is a bad frame, as
    over TCP, and the next read is fine."""
    async with on_a_pty([rtu(bytes.fromhex("01 80 19"))], [RIGHT]) as (link, escaped):
        with pytest.raises(ProtocolError) as info:
            await link.read("holding", 0, 2, UNIT, 0.1)
        assert info.value.reason == "bad frame", info.value
        assert await link.read("holding", 0, 2, UNIT, 1.0) == WORDS
    assert escaped == []


async def test_an_answer_in_pieces_is_read_whole_and_shown_once() -> None:
    """A line delivers an answer in parts: it is put together. One cut short is shown, in
    the error, as the bytes that came, once each."""
    pieces = [RIGHT[:2], RIGHT[2:5], RIGHT[5:]]
    cut = [RIGHT[:2], RIGHT[2:4], RIGHT[4:6]]
    async with on_a_pty(pieces, cut, [RIGHT]) as (link, escaped):
        assert await link.read("holding", 0, 2, UNIT, 1.0) == WORDS
        with pytest.raises(ProtocolError) as info:
            await link.read("holding", 0, 2, UNIT, 0.2)
        assert info.value.reason == "bad frame", info.value
        assert info.value.detail.endswith(RIGHT[:6].hex(" ")), info.value.detail
        assert await link.read("holding", 0, 2, UNIT, 1.0) == WORDS
    assert escaped == []
