"""Modbus TCP: pymodbus client reads, raw MBAP framing, concurrency and faults."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from tepi_sim import Simulator
from tepi_sim.protocol import mbap_frame, other_unit

# The fixtures come from conftest.py; test modules cannot import from it by name.
StartSim = Callable[[dict[str, Any]], Awaitable[Simulator]]
TcpClientFactory = Callable[..., Awaitable[AsyncModbusTcpClient]]

CONFIG: dict[str, Any] = {
    "devices": [
        {
            "id": "river",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {"address": 100, "table": "input", "kind": "level", "type": "int16", "scale": 0.01},
                {"address": 101, "table": "input", "kind": "counter"},
                {"address": 0, "table": "discrete", "kind": "toggle"},
            ],
        },
        {
            "id": "other",
            "transport": "tcp",
            "unit": 3,
            "registers": [{"address": 0, "kind": "counter"}],
        },
    ]
}


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    return await start_sim(CONFIG)


@pytest.fixture
async def raw(sim: Simulator) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, _, port = sim.endpoint("river").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    yield reader, writer
    writer.close()


def _read_input(tid: int, unit: int, address: int, count: int) -> bytes:
    return mbap_frame(tid, unit, struct.pack(">BHH", 4, address, count))


async def test_reads_and_counter(sim: Simulator, tcp_client: TcpClientFactory) -> None:
    assert sim.endpoint("river").startswith("127.0.0.1:")
    assert sim.endpoint("river") != sim.endpoint("other")
    client = await tcp_client(sim.endpoint("river"))
    for expected in (1, 2, 3):
        result = await client.read_input_registers(100, count=2, device_id=1)
        assert 0.2 <= result.registers[0] * 0.01 <= 4.0
        assert result.registers[1] == expected
    bits = await client.read_discrete_inputs(0, count=1, device_id=1)
    assert bits.bits[0] in (True, False)
    assert sim.device("river").counter_value(101, table="input") == 3
    assert sim.device("river").requests == 4


async def test_pipelined_requests_answered_in_order(sim: Simulator, raw: Any) -> None:
    reader, writer = raw
    writer.write(b"".join(_read_input(tid, 1, 101, 1) for tid in (7, 8, 9)))
    replies = [await reader.readexactly(11) for _ in range(3)]
    assert replies == [
        mbap_frame(tid, 1, bytes([4, 2, 0, value])) for tid, value in ((7, 1), (8, 2), (9, 3))
    ]


async def test_concurrent_connections_count_exactly(
    sim: Simulator, tcp_client: TcpClientFactory
) -> None:
    clients = [await tcp_client(sim.endpoint("river")) for _ in range(4)]

    async def poll(client: AsyncModbusTcpClient) -> list[int]:
        return [
            (await client.read_input_registers(101, count=1, device_id=1)).registers[0]
            for _ in range(10)
        ]

    results = await asyncio.gather(*(poll(c) for c in clients))
    handed_out = sorted(v for values in results for v in values)
    assert handed_out == list(range(1, 41))  # no value handed out twice, none skipped


async def test_wrong_unit_answers_gateway_target_failed(sim: Simulator, raw: Any) -> None:
    reader, writer = raw
    writer.write(_read_input(5, 9, 101, 1))
    assert await reader.readexactly(9) == mbap_frame(5, 9, bytes.fromhex("84 0B"))
    assert sim.device("river").requests == 0


async def test_too_many_registers_answers_exception_3(sim: Simulator, raw: Any) -> None:
    reader, writer = raw
    writer.write(_read_input(1, 1, 0, 126))
    assert await reader.readexactly(9) == mbap_frame(1, 1, bytes.fromhex("84 03"))


async def test_faults_seen_by_client(sim: Simulator, tcp_client: TcpClientFactory) -> None:
    device = sim.device("river")
    client = await tcp_client(sim.endpoint("river"), timeout=0.3)

    device.set_fault("no_reply")
    with pytest.raises(ModbusException):
        await client.read_input_registers(101, count=1, device_id=1)

    device.set_fault("exception", code=5)
    result = await client.read_input_registers(101, count=1, device_id=1)
    assert result.isError()
    assert result.exception_code == 5
    assert device.counter_value(101, table="input") == 0

    device.set_fault("none")
    assert (await client.read_input_registers(101, count=1, device_id=1)).registers == [1]


async def test_partial_and_wrong_unit_replies(sim: Simulator, raw: Any) -> None:
    reader, writer = raw
    device = sim.device("river")
    device.set_fault("wrong_unit")
    writer.write(_read_input(4, 1, 101, 1))
    assert await reader.readexactly(11) == mbap_frame(4, 2, bytes([4, 2, 0, 1]))
    device.set_fault("partial")
    writer.write(_read_input(5, 1, 101, 1))
    assert await reader.readexactly(5) == mbap_frame(5, 1, bytes([4, 2, 0, 1]))[:5]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await reader.read(1)  # the rest of the frame never comes
    assert device.counter_value(101, table="input") == 0
    assert other_unit(247) == 1


@pytest.mark.parametrize("mode", ["garbage", "bad_crc"])
async def test_garbage_instead_of_answer(sim: Simulator, raw: Any, mode: str) -> None:
    reader, writer = raw
    sim.device("river").set_fault(mode)
    writer.write(_read_input(1, 1, 101, 1))
    data = await reader.read(100)
    assert 1 <= len(data) <= 20
    assert data != mbap_frame(1, 1, bytes([4, 2, 0, 1]))
    assert sim.device("river").counter_value(101, table="input") == 0


async def test_disconnect_closes_current_and_new_connections(
    sim: Simulator, raw: Any, tcp_client: TcpClientFactory
) -> None:
    reader, writer = raw
    writer.write(_read_input(1, 1, 101, 1))
    assert len(await reader.readexactly(11)) == 11
    sim.device("river").set_fault("disconnect")
    assert await reader.read(100) == b""  # closed by the simulator
    host, _, port = sim.endpoint("river").rpartition(":")
    reader2, writer2 = await asyncio.open_connection(host, int(port))
    assert await reader2.read(100) == b""
    writer2.close()
    sim.device("river").set_fault("none")
    client = await tcp_client(sim.endpoint("river"))
    assert (await client.read_input_registers(101, count=1, device_id=1)).registers == [2]


async def test_slow_reply(sim: Simulator, raw: Any) -> None:
    reader, writer = raw
    sim.device("river").set_fault("slow", delay_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(_read_input(1, 1, 101, 1))
    assert await reader.readexactly(11) == mbap_frame(1, 1, bytes([4, 2, 0, 1]))
    assert loop.time() - started >= 0.2
