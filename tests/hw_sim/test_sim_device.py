"""Device logic without a transport: register map, counters, writes, fault decisions."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from tepi_sim import Device, load_config


def _device(registers: list[dict[str, Any]], **extra: Any) -> Device:
    config = load_config(
        {
            "seed": 1,
            "devices": [
                {"id": "d", "transport": "tcp", "unit": 1, "registers": registers, **extra}
            ],
        }
    )
    return Device(config.devices[0], seed=1)


def _read(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def _answer(device: Device, pdu: bytes, *, send: bool = True) -> bytes:
    """Run one request as a healthy transport would: prepare, send, commit."""
    action = device.handle(pdu)
    assert action.kind == "answer"
    assert action.prepare is not None
    prepared = action.prepare()
    if send:
        prepared.commit()
    return prepared.pdu


COUNTER = [{"address": 10, "kind": "counter"}]


def test_counter_counts_answered_requests_not_words() -> None:
    device = _device([{"address": 10, "kind": "counter", "type": "uint32"}])
    assert device.counter_value(10) == 0
    assert _answer(device, _read(3, 10, 2)) == bytes.fromhex("03 04 00 00 00 01")
    assert _answer(device, _read(3, 10, 2)) == bytes.fromhex("03 04 00 00 00 02")
    assert device.counter_value(10) == 2


def test_counter_not_advanced_when_reply_not_sent() -> None:
    device = _device(COUNTER)
    _answer(device, _read(3, 10, 1), send=False)
    assert device.counter_value(10) == 0
    assert _answer(device, _read(3, 10, 1)) == bytes.fromhex("03 02 00 01")


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("no_reply", "silent"),
        ("exception", "answer"),
        ("bad_crc", "bad_crc"),
        ("garbage", "garbage"),
        ("partial", "partial"),
        ("wrong_unit", "wrong_unit"),
        ("disconnect", "disconnect"),
        ("unplugged", "disconnect"),
    ],
)
def test_faulted_requests_are_counted_but_do_not_advance(mode: str, kind: str) -> None:
    device = _device(COUNTER)
    device.set_fault(mode)
    action = device.handle(_read(3, 10, 1))
    assert action.kind == kind
    if action.kind == "answer":  # exception mode answers, but with an exception PDU
        assert action.prepare is not None
        prepared = action.prepare()
        assert prepared.pdu == bytes.fromhex("83 04")
        prepared.commit()
    assert device.requests == 1
    assert device.counter_value(10) == 0


def test_exception_mode_uses_fault_code() -> None:
    device = _device(COUNTER)
    device.set_fault("exception", code=6)
    action = device.handle(_read(3, 10, 1))
    assert action.prepare is not None
    assert action.prepare().pdu == bytes.fromhex("83 06")


def test_uint16_counter_wraps() -> None:
    device = _device(COUNTER)
    device.memory.point("holding", 10).count = 65535
    assert _answer(device, _read(3, 10, 1)) == bytes.fromhex("03 02 00 00")
    assert device.counter_value(10) == 0


def test_gaps_filled_or_rejected() -> None:
    regs = [
        {"address": 0, "kind": "constant", "value": 5},
        {"address": 2, "kind": "constant", "value": 6},
    ]
    assert _answer(_device(regs), _read(3, 0, 3)) == bytes.fromhex("03 06 00 05 00 00 00 06")
    strict = _device(regs, fill_gaps=False)
    assert _answer(strict, _read(3, 0, 3)) == bytes.fromhex("83 02")
    assert _answer(strict, _read(4, 0, 1)) == bytes.fromhex("84 02")  # other table: unmapped


def test_second_word_of_32_bit_is_mapped() -> None:
    device = _device(
        [{"address": 0, "kind": "constant", "type": "float32", "value": 1.0}], fill_gaps=False
    )
    assert _answer(device, _read(3, 1, 1)) == bytes.fromhex("03 02 00 00")
    assert _answer(device, _read(3, 0, 2)) == bytes.fromhex("03 04 3F 80 00 00")


def test_range_past_end_of_address_space() -> None:
    assert _answer(_device(COUNTER), _read(3, 0xFFFF, 2)) == bytes.fromhex("83 02")


def test_unknown_function_and_too_many_registers() -> None:
    device = _device(COUNTER)
    assert _answer(device, bytes([0x07])) == bytes.fromhex("87 01")
    assert _answer(device, _read(3, 0, 126)) == bytes.fromhex("83 03")
    assert _answer(device, _read(1, 0, 2001)) == bytes.fromhex("81 03")


def test_write_constant_scaled_and_32_bit() -> None:
    device = _device(
        [
            {"address": 0, "kind": "constant", "value": 1.5, "scale": 0.1},
            {"address": 1, "kind": "constant", "value": 0, "type": "int32", "word_order": "little"},
        ]
    )
    assert _answer(device, bytes.fromhex("06 00 00 00 2A")) == bytes.fromhex("06 00 00 00 2A")
    assert device.value(0) == pytest.approx(4.2)
    # int32 -2 little-endian words: low word first.
    assert _answer(device, bytes.fromhex("10 00 01 00 02 04 FF FE FF FF")) == bytes.fromhex(
        "10 00 01 00 02"
    )
    assert device.value(1) == -2
    assert _answer(device, _read(3, 0, 3)) == bytes.fromhex("03 06 00 2A FF FE FF FF")


def test_write_coils_and_read_back() -> None:
    device = _device(
        [{"address": i, "table": "coil", "kind": "constant", "value": False} for i in range(10)]
    )
    assert _answer(device, bytes.fromhex("0F 00 00 00 0A 02 05 02")) == bytes.fromhex(
        "0F 00 00 00 0A"
    )
    assert _answer(device, bytes.fromhex("05 00 01 FF 00")) == bytes.fromhex("05 00 01 FF 00")
    assert _answer(device, _read(1, 0, 10)) == bytes.fromhex("01 02 07 02")


def test_write_not_applied_when_faulted() -> None:
    device = _device([{"address": 0, "kind": "constant", "value": 1}])
    device.set_fault("no_reply")
    assert device.handle(bytes.fromhex("06 00 00 00 09")).kind == "silent"
    assert device.value(0) == 1


def test_broadcast_write_applies_without_answer() -> None:
    device = _device([{"address": 0, "kind": "constant", "value": 1}])
    device.handle_broadcast(bytes.fromhex("06 00 00 00 09"))
    assert device.value(0) == 9
    assert device.requests == 0


def test_slow_mode_delay() -> None:
    device = _device(COUNTER, delay_s=0.25)
    device.set_fault("slow")
    assert device.handle(_read(3, 10, 1)).delay_s == 0.25
    device.set_fault("slow", delay_s=1.5)
    assert device.handle(_read(3, 10, 1)).delay_s == 1.5


def test_garbage_is_1_to_20_bytes() -> None:
    device = _device(COUNTER)
    sizes = {len(device.garbage()) for _ in range(500)}
    assert min(sizes) >= 1
    assert max(sizes) <= 20
    assert len(sizes) > 10


def test_bad_arguments_raise_value_error() -> None:
    device = _device(COUNTER)
    with pytest.raises(ValueError, match="unknown fault mode 'nope'"):
        device.set_fault("nope")
    with pytest.raises(ValueError, match="unknown table"):
        device.counter_value(10, table="holdings")
    with pytest.raises(KeyError):
        device.counter_value(11)


async def test_wait_requests_wakes_on_request_and_times_out() -> None:
    device = _device(COUNTER)
    waiter = asyncio.create_task(device.wait_requests(2, timeout=5))
    await asyncio.sleep(0)  # let the waiter start waiting
    device.handle(_read(3, 10, 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    device.handle(_read(3, 10, 1))
    assert await waiter == 2
    with pytest.raises(TimeoutError):
        await device.wait_requests(3, timeout=0.01)
