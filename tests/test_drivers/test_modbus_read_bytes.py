"""``ModbusLink.read_bytes``: registers as on the wire, bits as bools, on every transport."""

from __future__ import annotations

import struct

import pytest

from tepi.drivers.modbus.link import ExceptionReply, ModbusLink
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(30)

WORDS = [0x1234, 0xABCD, 0x0001]


@pytest.mark.parametrize("transport", ["rtu", "tcp", "rtu-tcp"])
async def test_read_bytes_gives_the_registers_as_on_the_wire(transport: str) -> None:
    regs = [{"address": a, "kind": "constant", "value": w} for a, w in enumerate(WORDS)]
    regs += [
        {"address": a, "table": "coil", "kind": "constant", "value": v}
        for a, v in enumerate([1, 0, 1])
    ]
    sim_cfg = {
        "devices": [
            {"id": "d", "transport": transport, "unit": 2, "fill_gaps": False, "registers": regs}
        ]
    }
    async with Simulator(sim_cfg) as sim:
        endpoint = sim.endpoint("d")
        if transport == "rtu":
            link = ModbusLink.serial(endpoint, 9600, "N", 8, 1)
        else:
            host, port = endpoint.split(":")
            link = ModbusLink.tcp(host, int(port), "rtu" if transport == "rtu-tcp" else "mbap")
        try:
            got = await link.read_bytes("holding", 0, 3, 2, 1.0)
            assert got == struct.pack(">3H", *WORDS)
            assert await link.read("holding", 0, 3, 2, 1.0) == WORDS
            assert await link.read_bytes("coil", 0, 3, 2, 1.0) == [True, False, True]
            assert await link.read_bytes("holding", 40, 1, 2, 1.0) == ExceptionReply(2)
        finally:
            await link.aclose()
