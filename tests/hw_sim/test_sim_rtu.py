"""Modbus RTU over real pseudo-terminals, checked with pymodbus and with raw frames."""

from __future__ import annotations

import asyncio
import os
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from tepi_sim import Simulator
from tepi_sim.protocol import crc16, rtu_frame

# The fixtures come from conftest.py; test modules cannot import from it by name.
StartSim = Callable[[dict[str, Any]], Awaitable[Simulator]]
RtuClientFactory = Callable[..., Awaitable[AsyncModbusSerialClient]]


class RawLine:
    """A pty opened directly, to send frames pymodbus would refuse to build."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B9600  # the bus's speed, as a serial client sets it
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def receive(self, size: int, timeout: float = 2.0) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        ready = asyncio.Event()
        loop.add_reader(self.fd, ready.set)
        try:
            async with asyncio.timeout(timeout):
                while len(buf) < size:
                    await ready.wait()
                    ready.clear()
                    try:
                        buf += os.read(self.fd, size - len(buf))
                    except BlockingIOError:
                        continue
        finally:
            loop.remove_reader(self.fd)
        return bytes(buf)

    def close(self) -> None:
        os.close(self.fd)


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "seed": 42,
        "devices": [
            {
                "id": "aq",
                "transport": "rtu",
                "unit": 1,
                "bus": "b0",
                "link": str(tmp_path / "ttyAQ"),
                "registers": [
                    {"address": 0, "kind": "pm25", "type": "uint16", "scale": 0.1},
                    {
                        "address": 2,
                        "kind": "temperature",
                        "type": "float32",
                        "word_order": "little",
                    },
                    {"address": 10, "kind": "counter"},
                    {"address": 20, "kind": "constant", "value": 0},
                ],
            },
            {
                "id": "noise",
                "transport": "rtu",
                "unit": 2,
                "bus": "b0",
                "registers": [
                    {"address": 0, "kind": "noise", "scale": 0.1},
                    {"address": 1, "kind": "counter"},
                    {"address": 20, "kind": "constant", "value": 0},
                ],
            },
            {
                "id": "strict",
                "transport": "rtu",
                "unit": 5,
                "fill_gaps": False,
                "registers": [
                    {"address": 0, "kind": "counter"},
                    {"address": 2, "kind": "level", "type": "uint32", "scale": 0.001},
                ],
            },
        ],
    }


@pytest.fixture
async def sim(start_sim: StartSim, tmp_path: Path) -> Simulator:
    return await start_sim(_config(tmp_path))


@pytest.fixture
async def raw(sim: Simulator) -> AsyncIterator[RawLine]:
    line = RawLine(sim.endpoint("aq"))
    yield line
    line.close()


async def test_reads_plausible_values(sim: Simulator, rtu_client: RtuClientFactory) -> None:
    client = await rtu_client(sim.endpoint("aq"))
    result = await client.read_holding_registers(0, count=4, device_id=1)
    assert not result.isError()
    assert 5.0 <= result.registers[0] * 0.1 <= 150.0
    temperature = struct.unpack(">f", struct.pack(">HH", result.registers[3], result.registers[2]))
    assert 22.0 <= temperature[0] <= 36.0


async def test_counter_increments_once_per_request(
    sim: Simulator, rtu_client: RtuClientFactory
) -> None:
    client = await rtu_client(sim.endpoint("aq"))
    seen = []
    for _ in range(5):
        result = await client.read_holding_registers(8, count=4, device_id=1)
        seen.append(result.registers[2])
    assert seen == [1, 2, 3, 4, 5]
    assert sim.device("aq").counter_value(10) == 5
    assert sim.device("aq").requests == 5


async def test_two_slaves_share_one_pty(sim: Simulator, rtu_client: RtuClientFactory) -> None:
    assert sim.endpoint("aq") == sim.endpoint("noise")
    assert sim.endpoint("strict") != sim.endpoint("aq")
    client = await rtu_client(sim.endpoint("aq"), timeout=0.3)
    one = await client.read_holding_registers(10, count=1, device_id=1)
    two = await client.read_holding_registers(1, count=1, device_id=2)
    two_again = await client.read_holding_registers(1, count=1, device_id=2)
    assert (one.registers, two.registers, two_again.registers) == ([1], [1], [2])
    with pytest.raises(ModbusException):  # nobody is unit 9 on this line: silence
        await client.read_holding_registers(1, count=1, device_id=9)
    assert (sim.device("aq").requests, sim.device("noise").requests) == (1, 2)


async def test_counter_not_advanced_by_faults(sim: Simulator, rtu_client: RtuClientFactory) -> None:
    device = sim.device("aq")
    client = await rtu_client(sim.endpoint("aq"), timeout=0.3)
    assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [1]

    device.set_fault("no_reply")
    with pytest.raises(ModbusException):
        await client.read_holding_registers(10, count=1, device_id=1)

    device.set_fault("exception")
    result = await client.read_holding_registers(10, count=1, device_id=1)
    assert result.isError()
    assert result.exception_code == 4

    device.set_fault("exception", code=6)
    assert (await client.read_holding_registers(10, count=1, device_id=1)).exception_code == 6

    device.set_fault("bad_crc")
    with pytest.raises(ModbusException):
        await client.read_holding_registers(10, count=1, device_id=1)

    device.set_fault("garbage")
    with pytest.raises(ModbusException):
        await client.read_holding_registers(10, count=1, device_id=1)

    device.set_fault("none")
    assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [2]
    assert device.requests == 7
    assert device.counter_value(10) == 2


async def test_bad_crc_reply_is_right_answer_with_wrong_crc(sim: Simulator, raw: RawLine) -> None:
    sim.device("aq").set_fault("bad_crc")
    raw.send(rtu_frame(1, bytes.fromhex("03 00 0A 00 01")))
    reply = await raw.receive(7)
    assert reply[:5] == bytes.fromhex("01 03 02 00 01")
    assert crc16(reply) != 0
    assert sim.device("aq").counter_value(10) == 0


async def test_partial_reply_is_the_first_half_then_silence(sim: Simulator, raw: RawLine) -> None:
    sim.device("aq").set_fault("partial")
    raw.send(rtu_frame(1, bytes.fromhex("03 00 0A 00 01")))
    assert await raw.receive(3) == bytes.fromhex("01 03 02")  # 3 of the answer's 7 bytes
    with pytest.raises(TimeoutError):
        await raw.receive(1, timeout=0.2)  # the rest never comes
    assert sim.device("aq").counter_value(10) == 0
    sim.device("aq").set_fault("none")
    raw.send(rtu_frame(1, bytes.fromhex("03 00 0A 00 01")))
    assert await raw.receive(7) == rtu_frame(1, bytes.fromhex("03 02 00 01"))


async def test_wrong_unit_reply_is_the_answer_from_the_next_unit(
    sim: Simulator, raw: RawLine
) -> None:
    sim.device("aq").set_fault("wrong_unit")
    raw.send(rtu_frame(1, bytes.fromhex("03 00 0A 00 01")))
    reply = await raw.receive(7)
    assert reply == rtu_frame(2, bytes.fromhex("03 02 00 01")), "valid, but from unit 2"
    assert sim.device("aq").counter_value(10) == 0


async def test_a_real_client_skips_a_wrong_unit_reply(
    sim: Simulator, rtu_client: RtuClientFactory
) -> None:
    client = await rtu_client(sim.endpoint("aq"), timeout=0.3)
    sim.device("aq").set_fault("wrong_unit")
    with pytest.raises(ModbusException):  # not its answer: skipped, then a timeout
        await client.read_holding_registers(10, count=1, device_id=1)
    sim.device("aq").set_fault("none")
    assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [1]


async def test_slow_reply_arrives_after_delay(sim: Simulator, rtu_client: RtuClientFactory) -> None:
    sim.device("aq").set_fault("slow", delay_s=0.3)
    client = await rtu_client(sim.endpoint("aq"), timeout=3.0)
    started = time.monotonic()
    result = await client.read_holding_registers(10, count=1, device_id=1)
    assert time.monotonic() - started >= 0.3
    assert result.registers == [1]


async def test_disconnect_replugs_with_new_path_and_link(
    sim: Simulator, rtu_client: RtuClientFactory, tmp_path: Path
) -> None:
    link = tmp_path / "ttyAQ"
    old_path = sim.endpoint("aq")
    assert link.readlink() == Path(old_path)
    client = await rtu_client(str(link), timeout=0.5)
    assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [1]

    sim.device("aq").set_fault("disconnect")
    new_path = sim.endpoint("aq")
    assert new_path != old_path
    assert sim.endpoint("noise") == new_path  # the whole line was unplugged
    assert link.readlink() == Path(new_path)
    with pytest.raises(ModbusException):
        await client.read_holding_registers(10, count=1, device_id=1)
    client.close()

    sim.device("aq").set_fault("none")
    again = await rtu_client(str(link), timeout=1.0)
    assert (await again.read_holding_registers(10, count=1, device_id=1)).registers == [2]


async def test_unplugged_removes_the_port_until_plugged_back(
    sim: Simulator, rtu_client: RtuClientFactory, tmp_path: Path
) -> None:
    link = tmp_path / "ttyAQ"
    client = await rtu_client(str(link), timeout=0.3)
    assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [1]

    sim.device("aq").set_fault("unplugged")
    assert not link.is_symlink(), "the adapter is out: its path is gone"
    with pytest.raises(RuntimeError, match="unplugged"):
        sim.endpoint("noise")  # the whole line went
    with pytest.raises(ModbusException):
        await client.read_holding_registers(10, count=1, device_id=1)
    client.close()
    sim.device("noise").set_fault("slow")  # another device's fault does not plug it back
    assert not link.is_symlink()

    sim.device("aq").set_fault("none")
    assert sim.buses["b0"].replugs == 1, "plugged back in once"
    assert link.readlink() == Path(sim.endpoint("aq"))
    sim.device("noise").set_fault("none")
    again = await rtu_client(str(link), timeout=1.0)
    assert (await again.read_holding_registers(10, count=1, device_id=1)).registers == [2]


async def test_link_removed_on_stop(tmp_path: Path) -> None:
    sim = Simulator(_config(tmp_path))
    async with sim:
        assert (tmp_path / "ttyAQ").is_symlink()
    assert not (tmp_path / "ttyAQ").exists()
    assert not (tmp_path / "ttyAQ").is_symlink()


async def test_holes_answer_exception_2_without_fill_gaps(
    sim: Simulator, rtu_client: RtuClientFactory
) -> None:
    client = await rtu_client(sim.endpoint("strict"))
    hole = await client.read_holding_registers(0, count=3, device_id=5)
    assert hole.isError()
    assert hole.exception_code == 2
    both_words = await client.read_holding_registers(2, count=2, device_id=5)
    assert not both_words.isError()
    assert sim.device("strict").counter_value(0) == 0


async def test_too_many_registers_answers_exception_3(sim: Simulator, raw: RawLine) -> None:
    raw.send(rtu_frame(1, struct.pack(">BHH", 3, 0, 126)))
    assert await raw.receive(5) == rtu_frame(1, bytes.fromhex("83 03"))


async def test_unknown_function_answers_exception_1(sim: Simulator, raw: RawLine) -> None:
    raw.send(rtu_frame(1, bytes([0x11])))
    assert await raw.receive(5) == rtu_frame(1, bytes.fromhex("91 01"))


async def test_resync_after_line_noise(sim: Simulator, raw: RawLine) -> None:
    raw.send(bytes.fromhex("FF 00 13 37") + rtu_frame(1, struct.pack(">BHH", 3, 10, 1)))
    assert await raw.receive(7) == rtu_frame(1, bytes.fromhex("03 02 00 01"))


async def test_broadcast_write_reaches_every_slave_silently(sim: Simulator, raw: RawLine) -> None:
    raw.send(rtu_frame(0, struct.pack(">BHH", 6, 20, 77)))
    raw.send(rtu_frame(2, struct.pack(">BHH", 3, 20, 1)))
    # Had the broadcast been answered, its bytes would arrive first.
    assert await raw.receive(7) == rtu_frame(2, bytes.fromhex("03 02 00 4D"))
    assert sim.device("aq").value(20) == 77
    assert sim.device("noise").value(20) == 77


async def test_write_then_read_back(sim: Simulator, rtu_client: RtuClientFactory) -> None:
    client = await rtu_client(sim.endpoint("aq"))
    assert not (await client.write_register(20, 1234, device_id=1)).isError()
    assert (await client.read_holding_registers(20, count=1, device_id=1)).registers == [1234]
    assert sim.device("aq").value(20) == 1234


async def test_wire_time_makes_a_reply_take_as_long_as_on_a_real_line() -> None:
    """At 9600 baud (10-bit characters) a read of 10 registers is 8 bytes out, a 3.5-character
    silence, and 25 bytes back: 38.0 ms, which the emulated line must not beat."""
    from pymodbus.client import AsyncModbusSerialClient

    regs = [{"address": a, "kind": "constant", "value": a} for a in range(10)]
    cfg = {
        "devices": [
            {"id": "w", "transport": "rtu", "unit": 1, "wire_time": True, "registers": regs}
        ]
    }
    async with Simulator(cfg) as sim:
        client = AsyncModbusSerialClient(port=sim.endpoint("w"), baudrate=9600, timeout=2)
        await client.connect()
        try:
            loop = asyncio.get_running_loop()
            took = []
            for _ in range(3):
                started = loop.time()
                resp = await client.read_holding_registers(0, count=10, device_id=1)
                took.append(loop.time() - started)
                assert list(resp.registers) == list(range(10))
        finally:
            client.close()
    assert min(took) >= (8 + 25 + 3.5) * 10 / 9600, took


async def test_a_client_that_lost_its_port_leaves_the_replugged_one_alone(
    sim: Simulator, rtu_client: RtuClientFactory, tmp_path: Path
) -> None:
    """The tests' clients do not reopen a lost port on their own, as the agent's do not
    (``reconnect_delay=0``, drivers/tepi/drivers/modbus/link.py). With pymodbus's default
    (0.1 s) the old client reopened the link, which by then led to the replugged adapter's
    new pty, and held it locked (pyserial's exclusive flock): the next client failed with
    "Could not exclusively lock port" (issue 21, point 8, seen in a Debian 12 root)."""
    link = tmp_path / "ttyAQ"
    old = await rtu_client(str(link), timeout=0.3)
    assert (await old.read_holding_registers(10, count=1, device_id=1)).registers == [1]
    sim.device("aq").set_fault("disconnect")  # a new pty behind the link at once
    with pytest.raises(ModbusException):
        await old.read_holding_registers(10, count=1, device_id=1)
    assert not old.connected, "the old client reopened the port on its own"
    sim.device("aq").set_fault("none")
    again = await rtu_client(str(link), timeout=1.0)  # the old one is not closed
    assert (await again.read_holding_registers(10, count=1, device_id=1)).registers == [2]
