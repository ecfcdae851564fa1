"""``tepi scan`` and ``tepi read``: the technician's Modbus tools, printed.

The driver (``tepi.drivers.modbus.tools``) asks the units and decodes what they answer; this
module parses the arguments, shows the progress, prints the answers and says what to check.
Both return 0 when a unit answered as asked and 1 when none did (or it answered with an
exception); they raise ValueError for bad arguments and DeviceError for a port problem,
which ``tepi.gateway.cli`` turns into its exit codes.
"""

from __future__ import annotations

import asyncio
import sys
from argparse import Namespace
from typing import TextIO

from tepi.drivers.modbus.link import ExceptionReply
from tepi.drivers.modbus.tools import BAUD_RATES, ORDERS, Decodings, Port, Probe, read, scan
from tepi.gateway.progress import Progress


def units_arg(text: str) -> list[int]:
    """``1-247``, ``5``, or ``1,3,10-12``."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not 0 <= a <= b <= 247:
            raise ValueError(f"unit range {part!r} is not within 0-247")
        out += range(a, b + 1)
    return out


async def _scan(
    port: Port, units: list[int], bauds: list[int], reply_s: float, progress: TextIO
) -> list[Probe]:
    found: list[Probe] = []
    bar = Progress(progress, len(units))
    done: dict[int | None, int] = {}
    try:
        async for p in scan(port, units, bauds, reply_s):
            done[p.baud] = done.get(p.baud, 0) + 1
            bar.update(done[p.baud], f"units at {p.baud} baud" if p.baud else "units")
            if p.answer is not None:
                found.append(p)
    finally:
        bar.close()
    return found


def run_scan(args: Namespace, out: TextIO, progress: TextIO = sys.stderr) -> int:
    """``tepi scan``: each unit that answered, or what to check when none did."""
    if args.baud != "auto" and not str(args.baud).isdigit():
        raise ValueError(f"--baud {args.baud}: give a number or auto")
    port = Port.parse(args.port, args.framing)
    bauds = list(BAUD_RATES) if args.baud == "auto" else [int(args.baud)]
    found = asyncio.run(_scan(port, units_arg(args.units), bauds, args.timeout, progress))
    if not found:
        speeds = "any baud rate tried" if args.baud == "auto" else f"{args.baud} baud"
        print(
            f"no unit answered on {port} at {speeds}. Check the wiring (A/B swapped?), the "
            "termination, the unit ids, and that nothing else uses the port.",
            file=out,
        )
        return 1
    for f in found:
        at = f" at {f.baud} baud" if f.baud else ""
        print(f"unit {f.unit:>3}{at}: answers ({f.answer})", file=out)
    return 0


def table(d: Decodings) -> list[str]:
    """The decodings side by side: one row per starting register."""
    lines = [f"{'addr':>6}  {'hex':>6}  {'uint16':>6}  {'int16':>6}  ascii"]
    lines += [
        f"{r.address:>6}  0x{r.word:04X}  {r.word:>6}  {r.int16:>6}  {r.ascii}" for r in d.registers
    ]
    if d.x32:
        head = "".join(f"  {o + ' float32':>16}  {o + ' int32':>12}" for o in ORDERS)
        lines += ["", f"{'addr':>6}{head}"]
        lines += [
            f"{w.address:>6}" + "".join(f"  {w.floats[o]:>16.6g}  {w.ints[o]:>12}" for o in ORDERS)
            for w in d.x32
        ]
        lines.append(f"{'':>6}  (uint32 = int32 + 4294967296 when negative)")
    if d.x64:
        lines += ["", f"{'addr':>6}" + "".join(f"  {o + ' float64':>16}" for o in ORDERS)]
        lines += [
            f"{w.address:>6}" + "".join(f"  {w.floats[o]:>16.8g}" for o in ORDERS) for w in d.x64
        ]
    return lines


def run_read(args: Namespace, out: TextIO) -> int:
    """``tepi read``: every decoding of the registers (or the bits), or the exception."""
    port = Port.parse(args.port, args.framing)
    got = asyncio.run(
        read(
            port,
            args.table,
            args.address,
            args.count,
            args.unit,
            baud=args.baud,
            reply_s=args.timeout,
        )
    )
    if isinstance(got, ExceptionReply):
        print(f"unit {args.unit} answered {got.reason}", file=out)
        if got.code == 2:
            print("the device has no such address: check the table and address_base", file=out)
        return 1
    if isinstance(got, Decodings):
        print("\n".join(table(got)), file=out)
        return 0
    for i, bit in enumerate(got):
        print(f"{args.address + i:>6}  {int(bit)}", file=out)
    return 0
