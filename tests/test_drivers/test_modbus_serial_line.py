"""Modbus RTU on a serial port, on tepi's own transport (``serialline``) and transaction layer.

Real ptys throughout: the transport's writes and reads, a port that goes away under a request,
and requests of several devices on one line held until their poll's tick.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from pathlib import Path
from typing import Any

import pytest

from tepi.core.due import Due
from tepi.core.errors import DeviceUnavailable
from tepi.core.records import as_samples
from tepi.drivers.base import SharedResources
from tepi.drivers.modbus import ModbusDriver, ModbusRtuConfig
from tepi.drivers.modbus.link import ModbusLink
from tepi.drivers.modbus.serialline import SerialTransport
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(30)


class _Kept(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: list[Exception | None] = []
        self.gone = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.gone.set()


def _pty() -> tuple[int, Any]:
    import serial

    master, slave = os.openpty()
    tty.setraw(slave)
    port = serial.Serial(os.ttyname(slave), timeout=0, write_timeout=0)
    os.close(slave)
    return master, port


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


async def test_a_request_is_written_at_once_and_what_the_port_cannot_take_in_parts() -> None:
    """A frame is on the line when ``write`` returns: no writer, no turn of the loop. A
    write larger than the port takes waits for a writer and arrives whole, in order."""
    loop = asyncio.get_running_loop()
    master, port = _pty()
    os.set_blocking(master, False)
    proto = _Kept()
    transport = SerialTransport(loop, proto, port)
    try:
        transport.write(b"\x01\x03\x00\x00\x00\x02\xc4\x0b")
        assert os.read(master, 64) == b"\x01\x03\x00\x00\x00\x02\xc4\x0b"
        assert transport.get_write_buffer_size() == 0
        big = bytes(range(256)) * 1024  # 256 KiB: far more than a pty holds
        transport.write(big)
        assert 0 < transport.get_write_buffer_size() < len(big)
        got = b""
        async with asyncio.timeout(10):
            while len(got) < len(big):
                got += _read_all(master)
                await asyncio.sleep(0)
        assert got == big
        assert transport.get_write_buffer_size() == 0
    finally:
        transport.close()
        os.close(master)
    await asyncio.wait_for(proto.gone.wait(), 5)
    assert proto.lost == [None]


async def test_a_port_that_goes_is_noticed_at_once_and_opened_again(tmp_path: Path) -> None:
    """The simulator's loose connector replugs its adapter (a new pty at the same link) at
    each request: the request fails as disconnected at once, not after its 2 s timeout, and
    once the connector holds the next poll opens the port again and reads."""
    link = tmp_path / "ttyRS485"
    sim_cfg = {
        "devices": [
            {
                "id": "dev",
                "transport": "rtu",
                "unit": 3,
                "link": str(link),
                "registers": [{"address": 0, "kind": "counter"}],
            }
        ]
    }
    async with Simulator(sim_cfg) as sim:
        cfg = ModbusRtuConfig.model_validate(
            {
                "id": "dev",
                "driver": "modbus-rtu",
                "port": str(link),
                "unit": 3,
                "timeout": "2s",
                "registers": [{"name": "n", "address": 0}],
            }
        )
        async with ModbusDriver(cfg, SharedResources()) as drv:
            [first] = as_samples(await drv.read())
            assert first.reason is None
            sim.device("dev").set_fault("disconnect")
            started = time.monotonic()
            with pytest.raises(DeviceUnavailable) as info:
                as_samples(await drv.read())
            took = time.monotonic() - started
            assert info.value.reason in ("disconnected", "cannot connect"), info.value
            assert took < 1.0, took
            sim.device("dev").set_fault("none")
            [back] = as_samples(await drv.read())
            stats = drv.protocol_stats()
    assert back.reason is None
    assert back.value is not None
    link_stats = stats["link"]
    assert isinstance(link_stats, dict)
    assert link_stats["disconnects"] >= 1
    assert link_stats["connects"] >= 2
    assert stats["timeouts"] == 0


async def test_a_port_that_goes_while_a_request_waits_fails_it_at_once() -> None:
    """The line goes after the request went out (the pty's other side closes on reading it):
    the wait for the answer ends at once as disconnected, not after the 2 s timeout."""
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    closed: list[int] = []

    def hang_up() -> None:
        os.read(master, 256)
        loop.remove_reader(master)
        os.close(master)
        closed.append(master)

    loop.add_reader(master, hang_up)
    link = ModbusLink.serial(path, 9600, "N", 8, 1)
    try:
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable) as info:
            await link.read("holding", 0, 2, 1, 2.0)
        took = time.monotonic() - started
    finally:
        await link.aclose()
        if not closed:
            loop.remove_reader(master)
            os.close(master)
        os.close(slave)
    assert closed
    assert info.value.reason == "disconnected", info.value
    assert took < 1.0, took
    assert link.stream_stats.disconnects == 1


async def test_held_requests_on_one_line_go_at_their_tick_one_at_a_time() -> None:
    """Five devices on one line, each read with a ``Due`` a moment ahead (as the poller
    does): nothing goes before the tick; then all five are answered, one after the other,
    with the standard's silence (3.65 ms at 9,600 baud) before each request."""
    counter = [{"address": 0, "table": "holding", "kind": "counter"}]
    sim_cfg = {
        "devices": [
            {"id": f"d{u}", "transport": "rtu", "unit": u, "bus": "line", "registers": counter}
            for u in range(1, 6)
        ]
    }
    async with Simulator(sim_cfg) as sim:
        port = sim.endpoint("d1")
        resources = SharedResources()
        drivers = [
            ModbusDriver(
                ModbusRtuConfig.model_validate(
                    {
                        "id": f"d{u}",
                        "driver": "modbus-rtu",
                        "port": port,
                        "unit": u,
                        "registers": [{"name": "n", "address": 0}],
                    }
                ),
                resources,
            )
            for u in range(1, 6)
        ]
        for d in drivers:
            await d.__aenter__()
        try:
            await drivers[0].read()  # opened: the line's first request
            assert all(d.schedules() for d in drivers)
            loop = asyncio.get_running_loop()
            for _ in range(3):
                before = sum(sim.device(f"d{u}").requests for u in range(1, 6))
                dues = [Due() for _ in drivers]
                tick = loop.time() + 0.2
                for due in dues:
                    due.when = tick
                pairs = zip(drivers, dues, strict=True)
                reads = [asyncio.ensure_future(d.read(due)) for d, due in pairs]
                await asyncio.sleep(0.1)
                assert sum(sim.device(f"d{u}").requests for u in range(1, 6)) == before
                results = await asyncio.gather(*reads)
                assert loop.time() >= tick
                assert all(v.reasons is None for [v] in results), results
        finally:
            for d in drivers:
                await d.__aexit__(None, None, None)
        gaps = [g for _, g in sim.buses["line"].gaps]
    assert len(gaps) >= 15
    assert min(gaps) >= 3.5 * 10 / 9600 - 0.0005, min(gaps)
