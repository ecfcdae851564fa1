"""Modbus RTU polls per second on an emulated wire, against the physical maximum.

The simulator (a separate ``tepi-sim`` process) emulates the wire time of an RS-485 line at a
given baud rate: it answers only when the request and the reply would have crossed a real
line, after the 3.5-character silence a slave waits for. The agent's own Modbus driver polls
the devices on that line as fast as it can, keeping the standard's silence between frames.

The theoretical maximum for the same requests is, per request,
    (request bytes + reply bytes) x 10 bits / baud  +  2 x the inter-frame silence,
with a read request of 8 bytes and a reply of 5 + 2 x registers bytes (8N1: 10 bits a byte).

    .venv/bin/python bench/modbus.py                      # 9,600 and 115,200 baud, 10 s each
    .venv/bin/python bench/modbus.py --bauds 19200 --registers 60 --devices 3 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from harness import start_simulator  # noqa: E402

from tepi.core.records import as_samples  # noqa: E402
from tepi.drivers.base import SharedResources  # noqa: E402
from tepi.drivers.modbus import ModbusDriver, ModbusRtuConfig  # noqa: E402
from tepi.drivers.modbus.link import frame_gap  # noqa: E402


def theoretical_polls_per_s(baud: int, registers: int, devices: int) -> float:
    char_s = 10 / baud
    per_request = (8 + 5 + 2 * registers) * char_s + 2 * frame_gap(baud, "N", 8, 1)
    return 1 / (per_request * devices)


async def run(baud: int, registers: int, devices: int, seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-modbus-"))
    regs = [{"address": 0, "table": "holding", "kind": "counter"}] + [
        {"address": a, "table": "holding", "kind": "constant", "value": a}
        for a in range(1, registers)
    ]
    sim_cfg = {
        "devices": [
            {
                "id": f"d{u}",
                "transport": "rtu",
                "unit": u,
                "bus": "line",
                "baudrate": baud,
                "wire_time": True,
                "registers": regs,
            }
            for u in range(1, devices + 1)
        ]
    }
    sim, endpoints = await start_simulator(work, sim_cfg)
    try:
        port = endpoints["d1"]["endpoint"]
        resources = SharedResources()
        drivers = [
            ModbusDriver(
                ModbusRtuConfig.model_validate(
                    {
                        "id": f"d{u}",
                        "driver": "modbus-rtu",
                        "port": port,
                        "baudrate": baud,
                        "unit": u,
                        "registers": [{"name": f"r{a}", "address": a} for a in range(registers)],
                    }
                ),
                resources,
            )
            for u in range(1, devices + 1)
        ]
        for d in drivers:
            await d.__aenter__()
        try:
            for d in drivers:  # warm up: connect, first exchange
                await d.read()
            polls = 0
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                for d in drivers:
                    samples = as_samples(await d.read())
                    if any(s.reason for s in samples):
                        raise SystemExit(f"a read failed: {samples}")
                polls += 1
            elapsed = time.monotonic() - started
        finally:
            for d in drivers:
                await d.__aexit__(None, None, None)
        measured = polls / elapsed
        theory = theoretical_polls_per_s(baud, registers, devices)
        return {
            "baud": baud,
            "devices": devices,
            "registers": registers,
            "requests_per_poll": devices,
            "polls_per_s": round(measured, 2),
            "theoretical_polls_per_s": round(theory, 2),
            "of_theoretical": round(measured / theory, 3),
        }
    finally:
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--bauds", type=int, nargs="+", default=[9600, 115200])
    p.add_argument("--registers", type=int, default=10, help="registers a device (one read)")
    p.add_argument("--devices", type=int, default=1, help="devices on the line")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    for baud in args.bauds:
        res = asyncio.run(run(baud, args.registers, args.devices, args.seconds))
        res["machine"] = machine
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
