"""The data behind ``tepi scan`` and ``tepi read``, against the simulator: which units answer
at which speed, and every decoding of a read (how the CLI prints them:
tests/test_gateway/test_modbus_cli.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tepi.core.errors import DeviceUnavailable
from tepi.drivers.modbus.link import ExceptionReply
from tepi.drivers.modbus.tools import BAUD_RATES, Decodings, Port, Probe, read, scan
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(60)


def device(id_: str, transport: str, unit: int, **kw: Any) -> dict[str, Any]:
    regs = [{"address": 0, "table": "holding", "kind": "constant", "value": unit}]
    return {"id": id_, "transport": transport, "unit": unit, "registers": regs, **kw}


async def probes(port: Port, units: range, bauds: tuple[int, ...], reply_s: float) -> list[Probe]:
    return [p async for p in scan(port, units, bauds, reply_s)]


async def test_scan_asks_each_unit_and_stops_at_the_first_speed_that_answers() -> None:
    cfg = {
        "devices": [
            device("a", "rtu", 3, bus="line", baudrate=19200),
            device("b", "rtu", 7, bus="line", baudrate=19200),
        ]
    }
    async with Simulator(cfg) as sim:
        got = await probes(Port.parse(sim.endpoint("a")), range(1, 9), BAUD_RATES, 0.1)
    assert BAUD_RATES[:2] == (9600, 19200)
    assert [(p.unit, p.baud) for p in got] == [(u, b) for b in BAUD_RATES[:2] for u in range(1, 9)]
    assert [p for p in got if p.answer] == [
        Probe(3, 19200, "registers"),
        Probe(7, 19200, "registers"),
    ]


async def test_scan_over_tcp_asks_once_without_a_baud_rate() -> None:
    cfg = {"devices": [device("a", "tcp", 1, bus="gw"), device("b", "tcp", 2, bus="gw")]}
    async with Simulator(cfg) as sim:
        got = await probes(Port.parse(sim.endpoint("a")), range(1, 3), BAUD_RATES, 0.2)
    assert got == [Probe(1, None, "registers"), Probe(2, None, "registers")]


async def test_read_returns_every_decoding() -> None:
    regs = [
        {
            "address": 0,
            "kind": "constant",
            "type": "float32",
            "value": 12.5,
            "word_order": "little",
        },
        {"address": 2, "kind": "constant", "type": "int16", "value": -7},
        {"address": 3, "kind": "constant", "type": "uint16", "value": 0x4142},
    ]
    cfg = {"devices": [{"id": "m", "transport": "tcp", "unit": 4, "registers": regs}]}
    async with Simulator(cfg) as sim:
        got = await read(Port.parse(sim.endpoint("m")), "holding", 0, 4, 4)
    assert isinstance(got, Decodings)
    assert [(r.address, r.word, r.int16, r.ascii) for r in got.registers][2:] == [
        (2, 0xFFF9, -7, ".."),
        (3, 0x4142, 0x4142, "AB"),
    ]
    assert [w.address for w in got.x32] == [0, 1, 2]
    assert [o for o, v in got.x32[0].floats.items() if v == 12.5] == ["CDAB"]
    assert got.x32[1].ints["ABCD"] == 0x4148FFF9  # registers 1 and 2, high word first
    assert len(got.x64) == 1
    assert set(got.x64[0].floats) == {"ABCD", "CDAB", "BADC", "DCBA"}


async def test_read_returns_bits_and_exceptions() -> None:
    regs = [
        {"address": 0, "table": "coil", "kind": "constant", "value": True},
        {"address": 1, "table": "coil", "kind": "constant", "value": False},
    ]
    cfg = {
        "devices": [
            {"id": "m", "transport": "tcp", "unit": 1, "registers": regs, "fill_gaps": False}
        ]
    }
    async with Simulator(cfg) as sim:
        port = Port.parse(sim.endpoint("m"))
        assert await read(port, "coil", 0, 2, 1) == [True, False]
        missing = await read(port, "holding", 50, 2, 1)
    assert isinstance(missing, ExceptionReply)
    assert missing.code == 2


async def test_read_refuses_a_count_beyond_the_protocol_and_a_missing_port() -> None:
    with pytest.raises(ValueError, match="1 to 125"):
        await read(Port.parse("/dev/ttyNOPE0"), "holding", 0, 126, 1)
    with pytest.raises(DeviceUnavailable):
        await read(Port.parse("/dev/ttyNOPE0"), "holding", 0, 2, 1)


def test_ports_are_serial_devices_or_host_and_port() -> None:
    assert Port.parse("/dev/ttyUSB0").serial
    tcp = Port.parse("10.0.0.5:1502", "rtu")
    assert (tcp.host, tcp.tcp_port, tcp.framing, tcp.serial) == ("10.0.0.5", 1502, "rtu", False)
    assert str(Port.parse("gw")) == "gw:502"
    with pytest.raises(ValueError, match="neither a serial port"):
        Port.parse("gw:modbus")
