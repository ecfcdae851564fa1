"""What one Modbus TCP request costs in CPU, and what pipelining gains behind one address.

The simulator (a separate ``tepi-sim`` process) serves holding registers on loopback; this
process reads them one request at a time and takes its own CPU time (``time.process_time``)
over N requests, so the simulator's CPU is not counted. Each request reads 20 holding
registers. The variants:

- ``pymodbus``: pymodbus 3.16's ``AsyncModbusTcpClient`` alone;
- ``pymodbus + hooks``: the same with the trace hooks the link used to classify failures
  (``trace_packet``, ``trace_pdu``);
- ``link.read`` / ``link.read_bytes``: tepi's ``ModbusLink`` (words, or the raw bytes);
- ``link.read, rtu framing``: RTU frames over TCP (a serial-to-Ethernet converter);
- ``asyncio floor``: a bare ``asyncio.Protocol`` that writes a prepared frame and resolves a
  future on the answer, to show what no Modbus layer can go below.

``--pipelining`` then reads 50 units x 20 registers behind one gateway address with
``max_outstanding`` 1 to 32: in rounds of 50 requests at once (the most it can carry) and
at a poll every 100 ms per unit (the issue's workload, 500 requests/s).

    .venv/bin/python bench/modbus_request.py                     # the request path
    .venv/bin/python bench/modbus_request.py --pipelining        # and the gateway
    .venv/bin/python bench/modbus_request.py --requests 500 --repeats 1 --pipelining --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import start_simulator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from tepi.drivers.modbus.link import ModbusLink

REGISTERS = 20
UNITS = 50
PACED_INTERVAL_S = 0.1


def sim_config() -> dict[str, Any]:
    regs: list[dict[str, Any]] = [{"address": 0, "table": "holding", "kind": "counter"}]
    regs += [
        {"address": a, "table": "holding", "kind": "constant", "value": a}
        for a in range(1, REGISTERS)
    ]
    devices: list[dict[str, Any]] = [
        {"id": "one", "transport": "tcp", "unit": 1, "registers": regs},
        {"id": "conv", "transport": "rtu-tcp", "unit": 1, "registers": regs},
    ]
    devices += [
        {"id": f"gw{u}", "transport": "tcp", "unit": u, "bus": "gw", "registers": regs}
        for u in range(1, UNITS + 1)
    ]
    return {"devices": devices}


class Hooks:
    """The trace hooks as the link had them on pymodbus: the bytes of each answer kept to
    say why a request failed, and the moment a reply was complete."""

    def __init__(self) -> None:
        self.rx = bytearray()
        self.seen = b""
        self.replied_at: float | None = None

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            new = data[len(self.seen) :] if self.seen and data.startswith(self.seen) else data
            self.seen = data
            if len(self.rx) < 512:
                self.rx += new[: 512 - len(self.rx)]
        return data

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.replied_at = asyncio.get_running_loop().time()
        return pdu


class Floor(asyncio.Protocol):
    """The least a request can cost on asyncio: one write, one callback, one future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def timed(n: int, one: Callable[[], Awaitable[object]]) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm up: connect, caches, the first exchanges
        await one()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await one()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}


async def request_path(endpoints: dict[str, Any], n: int) -> dict[str, dict[str, float]]:
    host, port = endpoints["one"]["endpoint"].split(":")
    out: dict[str, dict[str, float]] = {}

    async def pymodbus_variant(name: str, hooks: Hooks | None) -> None:
        client = AsyncModbusTcpClient(
            host,
            port=int(port),
            timeout=1.0,
            retries=0,
            trace_packet=None if hooks is None else hooks.trace_packet,
            trace_pdu=None if hooks is None else hooks.trace_pdu,
        )
        await client.connect()

        async def one() -> object:
            if hooks is not None:  # what the link reset before each request
                hooks.rx.clear()
                hooks.seen = b""
                hooks.replied_at = None
            resp = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
            return list(resp.registers)

        try:
            out[name] = await timed(n, one)
        finally:
            client.close()

    await pymodbus_variant("pymodbus", None)
    await pymodbus_variant("pymodbus + hooks", Hooks())

    link = ModbusLink.tcp(host, int(port))
    try:
        out["link.read"] = await timed(n, lambda: link.read("holding", 0, REGISTERS, 1, 1.0))
        if hasattr(link, "read_bytes"):
            out["link.read_bytes"] = await timed(
                n, lambda: link.read_bytes("holding", 0, REGISTERS, 1, 1.0)
            )
    finally:
        await link.aclose()

    chost, cport = endpoints["conv"]["endpoint"].split(":")
    link = ModbusLink.tcp(chost, int(cport), framing="rtu")
    try:
        out["link.read, rtu framing"] = await timed(
            n, lambda: link.read("holding", 0, REGISTERS, 1, 1.0)
        )
    finally:
        await link.aclose()

    loop = asyncio.get_running_loop()
    transport, floor = await loop.create_connection(Floor, host, int(port))
    request = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, REGISTERS)

    async def bare() -> object:
        floor.waiter = loop.create_future()
        transport.write(request)
        return await floor.waiter

    try:
        out["asyncio floor"] = await timed(n, bare)
    finally:
        transport.close()
    return out


async def rounds(link: ModbusLink, seconds: float) -> dict[str, float]:
    """As many rounds of one request to each unit, all at once, as fit in ``seconds``."""

    async def one(unit: int) -> None:
        got = await link.read("holding", 0, REGISTERS, unit, 1.0)
        if not isinstance(got, list):
            raise SystemExit(f"unit {unit}: {got}")

    await asyncio.gather(*(one(u) for u in range(1, UNITS + 1)))
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        await asyncio.gather(*(one(u) for u in range(1, UNITS + 1)))
        done += UNITS
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "requests_per_s": done / wall,
        "round_ms": wall / (done / UNITS) * 1e3,
        "cpu_us_per_request": cpu / done * 1e6,
    }


async def paced(link: ModbusLink, seconds: float) -> dict[str, float]:
    """Each unit read every 100 ms on a fixed grid, staggered: the issue's workload."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    missed = 0
    start = loop.time() + 0.2

    async def poller(unit: int) -> None:
        nonlocal missed
        tick = start + PACED_INTERVAL_S * unit / UNITS
        while tick < start + seconds:
            await asyncio.sleep(max(0.0, tick - loop.time()))
            t0 = loop.time()
            got = await link.read("holding", 0, REGISTERS, unit, 1.0)
            if not isinstance(got, list):
                raise SystemExit(f"unit {unit}: {got}")
            latencies.append(loop.time() - t0)
            tick += PACED_INTERVAL_S
            while tick < loop.time():
                tick += PACED_INTERVAL_S
                missed += 1

    cpu0 = time.process_time()
    await asyncio.gather(*(poller(u) for u in range(1, UNITS + 1)))
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "polls_per_s": len(latencies) / seconds,
        "missed": missed,
        "cpu_s_per_1000_polls": cpu / len(latencies) * 1000,
        "latency_p50_ms": latencies[len(latencies) // 2] * 1e3,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


async def pipelining(endpoints: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    host, port = endpoints["gw1"]["endpoint"].split(":")
    results = []
    for outstanding in (1, 2, 4, 8, 16, 32):
        link = ModbusLink.tcp(host, int(port), max_outstanding=outstanding)
        try:
            burst = await rounds(link, seconds)
            steady = await paced(link, seconds)
        finally:
            await link.aclose()
        results.append({"max_outstanding": outstanding, "rounds": burst, "paced": steady})
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-request-"))
    sim, endpoints = await start_simulator(work, sim_config())
    try:
        runs = [await request_path(endpoints, args.requests) for _ in range(args.repeats)]
        path = {
            name: {k: statistics.median(r[name][k] for r in runs) for k in runs[0][name]}
            for name in runs[0]
        }
        gateway = await pipelining(endpoints, args.seconds) if args.pipelining else []
    finally:
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "requests": args.requests,
        "repeats": args.repeats,
        "registers": REGISTERS,
        "request_path": path,
        "pipelining": gateway,
    }


def print_tables(res: dict[str, Any]) -> None:
    print(f"{res['machine']}; {res['registers']} holding registers a request, loopback")
    print(f"median of {res['repeats']} runs of {res['requests']} requests, one at a time\n")
    print(f"{'request path':<26} {'CPU us/request':>15} {'wall us/request':>16}")
    for name, r in res["request_path"].items():
        print(f"{name:<26} {r['cpu_us']:>15.1f} {r['wall_us']:>16.1f}")
    if not res["pipelining"]:
        return
    print(f"\n{UNITS} units x {REGISTERS} registers behind one address")
    print(
        f"{'max_outstanding':>15} | {'rounds: req/s':>13} {'round ms':>9} {'CPU us/req':>10} | "
        f"{'100 ms: polls/s':>15} {'missed':>6} {'CPU s/1000':>10} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for row in res["pipelining"]:
        b, p = row["rounds"], row["paced"]
        print(
            f"{row['max_outstanding']:>15} | {b['requests_per_s']:>13.0f} {b['round_ms']:>9.2f} "
            f"{b['cpu_us_per_request']:>10.1f} | {p['polls_per_s']:>15.1f} {p['missed']:>6} "
            f"{p['cpu_s_per_1000_polls']:>10.3f} {p['latency_p50_ms']:>7.2f} "
            f"{p['latency_p99_ms']:>7.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--requests", type=int, default=5000, help="requests a variant and run")
    p.add_argument("--repeats", type=int, default=3, help="runs; the median is shown")
    p.add_argument("--pipelining", action="store_true", help="also 50 units behind one address")
    p.add_argument("--seconds", type=float, default=5.0, help="each pipelining measurement")
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = p.parse_args()
    res = asyncio.run(run(args))
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        print_tables(res)


if __name__ == "__main__":
    main()
