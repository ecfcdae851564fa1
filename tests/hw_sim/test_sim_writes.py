"""Writes: every write a device carries out is recorded with its time, and outputs keep what
is written. Checked through real pymodbus clients on a pty (RTU) and a socket (TCP), and
through the control socket."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from tepi_sim import Device, Simulator, WriteRecord, load_config
from tepi_sim.control import ControlServer, apply_command
from tepi_sim.device import WRITES_KEPT
from tepi_sim.protocol import rtu_frame

# The fixtures come from conftest.py; test modules cannot import from it by name.
StartSim = Callable[[dict[str, Any]], Awaitable[Simulator]]
RtuClientFactory = Callable[..., Awaitable[AsyncModbusSerialClient]]
TcpClientFactory = Callable[..., Awaitable[AsyncModbusTcpClient]]
Client = AsyncModbusSerialClient | AsyncModbusTcpClient

OUTPUTS: list[dict[str, Any]] = [
    {"address": 0, "table": "coil", "kind": "output"},  # a siren
    {"address": 1, "table": "coil", "kind": "output", "value": True},
    {"address": 2, "table": "coil", "kind": "output"},
    {"address": 10, "table": "holding", "kind": "output", "type": "int16", "scale": 0.1},
    {"address": 11, "table": "holding", "kind": "output", "type": "float32"},
    {"address": 20, "table": "holding", "kind": "counter"},
]


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "devices": [
            {"id": "siren-rtu", "transport": "rtu", "unit": 1, "registers": OUTPUTS},
            {"id": "siren-tcp", "transport": "tcp", "unit": 1, "registers": OUTPUTS},
            {
                "id": "gate",
                "transport": "rtu",
                "unit": 2,
                "bus": "line",
                "fill_gaps": False,
                "registers": [{"address": 0, "table": "coil", "kind": "output"}],
            },
        ]
    }


@pytest.fixture
async def sim(start_sim: StartSim, tmp_path: Path) -> Simulator:
    return await start_sim(_config(tmp_path))


@pytest.fixture(params=["rtu", "tcp"])
async def pair(
    request: pytest.FixtureRequest,
    sim: Simulator,
    rtu_client: RtuClientFactory,
    tcp_client: TcpClientFactory,
) -> tuple[Device, Client]:
    """One output device and a real client connected to it, over RTU and over TCP."""
    device_id = f"siren-{request.param}"
    connect = rtu_client if request.param == "rtu" else tcp_client
    return sim.device(device_id), await connect(sim.endpoint(device_id))


async def _write(client: Client, fc: int) -> None:
    if fc == 5:
        result = await client.write_coil(0, True, device_id=1)
    elif fc == 15:
        result = await client.write_coils(0, [False, True, True], device_id=1)
    elif fc == 6:
        result = await client.write_register(10, 0xFF38, device_id=1)  # -200 as int16
    else:
        result = await client.write_registers(10, [125, 0x4048, 0xF5C3], device_id=1)
    assert not result.isError(), result


@pytest.mark.parametrize(
    ("fc", "table", "address", "values"),
    [
        (5, "coil", 0, (True,)),
        (15, "coil", 0, (False, True, True)),
        (6, "holding", 10, (0xFF38,)),
        (16, "holding", 10, (125, 0x4048, 0xF5C3)),
    ],
)
async def test_each_write_function_code_is_recorded_with_its_time(
    pair: tuple[Device, Client], fc: int, table: str, address: int, values: tuple[Any, ...]
) -> None:
    device, client = pair
    wall, mono = time.time(), time.monotonic()
    await _write(client, fc)
    # The record is made right after the reply was sent, so it is there once it arrived.
    assert device.writes_total == 1
    (record,) = device.writes
    assert (record.fc, record.table, record.address, record.values) == (fc, table, address, values)
    assert record.value == values[0]
    assert wall <= record.t <= time.time()
    assert mono <= record.mono <= time.monotonic()
    assert record.broadcast is False
    assert all(isinstance(v, bool) for v in record.values) == (table == "coil")


async def test_outputs_keep_what_is_written(pair: tuple[Device, Client]) -> None:
    device, client = pair
    assert (await client.read_coils(0, count=3, device_id=1)).bits[:3] == [False, True, False]
    await _write(client, 15)
    await _write(client, 16)
    for _ in range(3):
        assert (await client.read_coils(0, count=3, device_id=1)).bits[:3] == [False, True, True]
        regs = (await client.read_holding_registers(10, count=3, device_id=1)).registers
        assert regs == [125, 0x4048, 0xF5C3]
    assert device.value(0, table="coil") == 0.0
    assert device.value(1, table="coil") == 1.0
    assert device.value(10) == pytest.approx(12.5)
    assert device.value(11) == pytest.approx(3.14, abs=1e-6)
    await _write(client, 6)
    assert device.value(10) == pytest.approx(-20.0)
    assert [w.fc for w in device.writes] == [15, 16, 6]


def test_an_output_does_not_drift() -> None:
    now = [0.0]
    config = load_config(
        {"devices": [{"id": "d", "transport": "tcp", "unit": 1, "registers": OUTPUTS}]}
    )
    device = Device(config.devices[0], seed=3, clock=lambda: now[0])
    device.set_value(10, 42.0)
    device.set_value(0, 1.0, table="coil")
    now[0] = 86_400.0  # a day of 1 s ticks: a walk or a toggle would have moved
    assert device.value(10) == 42.0
    assert device.value(0, table="coil") == 1.0
    assert device.value(2, table="coil") == 0.0  # the default start value


async def test_wait_writes_syncs_on_a_write(sim: Simulator, tcp_client: TcpClientFactory) -> None:
    device = sim.device("siren-tcp")
    client = await tcp_client(sim.endpoint("siren-tcp"))
    waiter = asyncio.create_task(device.wait_writes(2, timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    await client.write_coil(0, True, device_id=1)
    await asyncio.sleep(0)
    assert not waiter.done()
    await client.write_coil(0, False, device_id=1)
    assert await waiter == 2
    assert [w.value for w in device.writes] == [True, False]
    assert await device.wait_writes(1, timeout=0) == 2  # already there: no wait
    with pytest.raises(TimeoutError):
        await device.wait_writes(3, timeout=0.05)


async def test_refused_and_faulted_writes_are_not_recorded(
    sim: Simulator, rtu_client: RtuClientFactory
) -> None:
    gate = sim.device("gate")
    client = await rtu_client(sim.endpoint("gate"), timeout=0.3)
    refused = await client.write_coil(5, True, device_id=2)  # unmapped, fill_gaps: false
    assert refused.isError()
    assert refused.exception_code == 2
    gate.set_fault("exception")
    assert (await client.write_coil(0, True, device_id=2)).isError()
    gate.set_fault("none")
    assert gate.writes_total == 0
    assert not (await client.write_coil(0, True, device_id=2)).isError()
    assert [(w.address, w.value) for w in gate.writes] == [(0, True)]
    assert gate.value(0, table="coil") == 1.0


async def test_a_broadcast_write_is_recorded_as_one() -> None:
    config = {
        "devices": [
            {
                "id": f"s{unit}",
                "transport": "rtu",
                "unit": unit,
                "bus": "b",
                "registers": [{"address": 0, "table": "coil", "kind": "output"}],
            }
            for unit in (1, 2)
        ]
    }
    async with Simulator(config) as sim:
        fd = os.open(sim.endpoint("s1"), os.O_RDWR | os.O_NOCTTY)
        try:
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = termios.B9600  # the bus's speed, as a serial client sets it
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            os.write(fd, rtu_frame(0, struct.pack(">BHH", 5, 0, 0xFF00)))
            for unit in (1, 2):
                await sim.device(f"s{unit}").wait_writes(1, timeout=5)
        finally:
            os.close(fd)
        for unit in (1, 2):
            (record,) = sim.device(f"s{unit}").writes
            assert (record.fc, record.value, record.broadcast) == (5, True, True)
            assert sim.device(f"s{unit}").value(0, table="coil") == 1.0


def test_the_write_log_keeps_the_newest() -> None:
    config = load_config(
        {"devices": [{"id": "d", "transport": "tcp", "unit": 1, "registers": OUTPUTS}]}
    )
    device = Device(config.devices[0])
    for i in range(WRITES_KEPT + 5):
        device.memory.execute(struct.pack(">BHH", 6, 10, i)).commit()
    assert device.writes_total == WRITES_KEPT + 5
    assert len(device.writes) == WRITES_KEPT
    assert device.writes[0].value == 5
    assert device.writes[-1].value == WRITES_KEPT + 4
    assert device.writes_since(0) == list(device.writes)
    assert device.writes_since(device.writes[-1].t) == []


def test_write_record_as_dict() -> None:
    record = WriteRecord(1796.5, 12.0, 15, "coil", 3, (True, False))
    assert record.as_dict() == {
        "t": 1796.5,
        "mono": 12.0,
        "fc": 15,
        "table": "coil",
        "address": 3,
        "value": True,
        "values": [True, False],
        "broadcast": False,
    }
    json.dumps(record.as_dict())


@pytest.fixture
async def control(sim: Simulator, tmp_path: Path) -> AsyncIterator[Path]:
    server = ControlServer(sim, tmp_path / "control.sock")
    await server.start()
    yield server.path
    await server.stop()


async def _ask(path: Path, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    try:
        writer.write(b"".join(json.dumps(c).encode() + b"\n" for c in commands))
        await writer.drain()
        return [json.loads(await reader.readline()) for _ in commands]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_control_socket_answers_the_writes(
    sim: Simulator, control: Path, tcp_client: TcpClientFactory
) -> None:
    client = await tcp_client(sim.endpoint("siren-tcp"))
    await client.write_coil(0, True, device_id=1)
    middle = time.time()
    await client.write_coil(0, False, device_id=1)
    (everything,) = await _ask(control, {"query": "writes"})
    assert everything["ok"] is True
    assert set(everything["writes"]) == {"siren-rtu", "siren-tcp", "gate"}
    assert everything["writes"]["siren-rtu"] == []
    on, off = everything["writes"]["siren-tcp"]
    assert (on["table"], on["address"], on["value"], off["value"]) == ("coil", 0, True, False)
    assert on["t"] <= middle < off["t"]
    assert on["fc"] == 5
    assert on["values"] == [True]

    one, later, bad_device, bad_since, bad_key = await _ask(
        control,
        {"query": "writes", "device": "siren-tcp"},
        {"query": "writes", "device": "siren-tcp", "since": middle},
        {"query": "writes", "device": "nope"},
        {"query": "writes", "since": "yesterday"},
        {"query": "writes", "limit": 3},
    )
    assert one == {"ok": True, "writes": {"siren-tcp": [on, off]}}
    assert later == {"ok": True, "writes": {"siren-tcp": [off]}}
    assert bad_device["ok"] is False
    assert "no device 'nope'" in bad_device["error"]
    assert bad_since == {"ok": False, "error": '"since" must be a number (wall time, seconds)'}
    assert bad_key == {"ok": False, "error": "unknown keys for writes: limit"}


def test_unknown_query_names_writes(sim: Simulator) -> None:
    answer = apply_command(sim, b'{"query": "writez"}')
    assert answer["ok"] is False
    assert '"writes"' in answer["error"]
