"""The technician's Modbus tools: ``tepi scan`` (what answers on this port, at which speed)
and ``tepi read`` (one read, every decoding side by side).

Both use the agent's own link (``ModbusLink``), so what works here works in ``tepi run``, and
both turn failures into sentences a person can act on ("add the user to the dialout group").
"""

from __future__ import annotations

import asyncio
import struct
import sys
from argparse import Namespace
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from tepi.core.errors import DeviceError, DeviceUnavailable
from tepi.drivers.modbus.codec import to_bytes
from tepi.drivers.modbus.link import ExceptionReply, ModbusLink

# Most common first: a scan with --baud auto stops at the first speed where a unit answers.
BAUD_RATES = (9600, 19200, 38400, 115200, 57600, 4800, 2400, 14400, 1200)
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


@dataclass(frozen=True, slots=True)
class Port:
    """Where to talk: a serial device, or host:port (Modbus TCP, or RTU over TCP)."""

    path: str | None = None
    host: str | None = None
    tcp_port: int = 502
    framing: str = "mbap"

    @classmethod
    def parse(cls, text: str, framing: str = "mbap") -> Port:
        if text.startswith("/"):
            return cls(path=text)
        host, _, port = text.rpartition(":")
        if not host:
            return cls(host=text, framing=framing)
        try:
            return cls(host=host, tcp_port=int(port), framing=framing)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a serial port (/dev/...) nor host:port"
            ) from None

    @property
    def serial(self) -> bool:
        return self.path is not None

    def link(self, baud: int) -> ModbusLink:
        if self.path is not None:
            return ModbusLink.serial(self.path, baud, "N", 8, 1)
        assert self.host is not None
        return ModbusLink.tcp(self.host, self.tcp_port, self.framing)

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.tcp_port}"


@dataclass(frozen=True, slots=True)
class Found:
    unit: int
    baud: int | None  # None on TCP
    answer: str  # "registers" or the exception the unit answered with


async def probe(link: ModbusLink, unit: int, reply_s: float) -> str | None:
    """Ask ``unit`` for holding register 0. Any answer, even an exception, means it is there."""
    try:
        got = await link.read("holding", 0, 1, unit, reply_s)
    except DeviceUnavailable as err:
        if err.reason in ("timeout", "disconnected"):
            return None
        raise
    except DeviceError as err:
        if err.reason == "wrong unit":
            return None  # another unit spoke
        return "a garbled answer"  # something is there, at a speed or framing close to this
    if isinstance(got, ExceptionReply):
        return got.reason
    return "registers"


async def scan(
    port: Port,
    units: Iterable[int],
    bauds: Iterable[int],
    reply_s: float,
    progress: Callable[[int, int, int | None], None] | None = None,
) -> list[Found]:
    """Find the units that answer. Over several baud rates it stops at the first that has
    any: devices on one line share its speed."""
    unit_list = list(units)
    found: list[Found] = []
    for baud in bauds if port.serial else [0]:
        link = port.link(baud or 9600)
        try:
            for n, unit in enumerate(unit_list, 1):
                if progress is not None:
                    progress(n, len(unit_list), baud or None)
                answer = await probe(link, unit, reply_s)
                if answer is not None:
                    found.append(Found(unit, baud or None, answer))
        finally:
            await link.aclose()
        if found:
            break
    return found


async def read_words(port: Port, args: Namespace) -> list[int] | list[bool] | ExceptionReply:
    link = port.link(args.baud)
    try:
        return await link.read(args.table, args.address, args.count, args.unit, args.timeout)
    finally:
        await link.aclose()


def decodings(words: list[int], address: int) -> list[str]:
    """A table: each register in hex, int16, uint16 and text; then each 32-bit value (from
    every starting register) as int32, uint32 and float32 in all four byte orders; and float64
    when four registers are there."""
    lines = [f"{'addr':>6}  {'hex':>6}  {'uint16':>6}  {'int16':>6}  ascii"]
    for i, w in enumerate(words):
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in w.to_bytes(2, "big"))
        signed = w - 0x10000 if w & 0x8000 else w
        lines.append(f"{address + i:>6}  0x{w:04X}  {w:>6}  {signed:>6}  {text}")
    if len(words) >= 2:
        lines.append("")
        head = "".join(f"  {o + ' float32':>16}  {o + ' int32':>12}" for o in ORDERS)
        lines.append(f"{'addr':>6}{head}")
        for i in range(len(words) - 1):
            cells = []
            for order in ORDERS:
                raw = to_bytes(words[i : i + 2], order)  # type: ignore[arg-type]
                f32 = struct.unpack(">f", raw)[0]
                i32 = struct.unpack(">i", raw)[0]
                cells.append(f"  {f32:>16.6g}  {i32:>12}")
            lines.append(f"{address + i:>6}{''.join(cells)}")
        lines.append(f"{'':>6}  (uint32 = int32 + 4294967296 when negative)")
    if len(words) >= 4:
        lines.append("")
        lines.append(f"{'addr':>6}" + "".join(f"  {o + ' float64':>16}" for o in ORDERS))
        for i in range(len(words) - 3):
            cells = [
                f"  {struct.unpack('>d', to_bytes(words[i : i + 4], o))[0]:>16.8g}"  # type: ignore[arg-type]
                for o in ORDERS
            ]
            lines.append(f"{address + i:>6}{''.join(cells)}")
    return lines


def progress_bar(out: TextIO) -> Callable[[int, int, int | None], None]:
    """A one-line progress bar on a terminal; nothing when output goes to a file."""

    def show(n: int, total: int, baud: int | None) -> None:
        if not out.isatty():
            return
        width = 30
        done = width * n // total
        at = f" at {baud} baud" if baud else ""
        out.write(f"\r[{'#' * done}{' ' * (width - done)}] {n}/{total}{at} ")
        if n == total:
            out.write("\n")
        out.flush()

    return show


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


def run_scan(args: Namespace, out: TextIO) -> int:
    """``tepi scan``: raises ValueError for bad arguments, DeviceError for a port problem."""
    if args.baud != "auto" and not str(args.baud).isdigit():
        raise ValueError(f"--baud {args.baud}: give a number or auto")
    port = Port.parse(args.port, args.framing)
    bauds = list(BAUD_RATES) if args.baud == "auto" else [int(args.baud)]
    units = units_arg(args.units)
    found = asyncio.run(scan(port, units, bauds, args.timeout, progress_bar(sys.stderr)))
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


def run_read(args: Namespace, out: TextIO) -> int:
    """``tepi read``: raises ValueError for bad arguments, DeviceError for a port problem."""
    if not 1 <= args.count <= 125:
        raise ValueError("--count is 1 to 125 (the protocol's limit)")
    port = Port.parse(args.port, args.framing)
    got = asyncio.run(read_words(port, args))
    if isinstance(got, ExceptionReply):
        print(f"unit {args.unit} answered {got.reason}", file=out)
        if got.code == 2:
            print("the device has no such address: check the table and address_base", file=out)
        return 1
    if args.table in ("coil", "discrete"):
        for i, bit in enumerate(got):
            print(f"{args.address + i:>6}  {int(bit)}", file=out)
        return 0
    print("\n".join(decodings([int(w) for w in got], args.address)), file=out)
    return 0
