"""The data behind the technician's Modbus tools: :func:`scan` (what answers on this port,
at which speed) and :func:`read` (one read, with every decoding of it).

Both use the agent's own link (``ModbusLink``), so what works here works in ``tepi run``, and
its errors are already sentences a person can act on ("add the user to the dialout group").
They return data; ``tepi scan`` and ``tepi read`` (``tepi.gateway.modbustool``) print it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from tepi.core.errors import DeviceError, DeviceUnavailable
from tepi.drivers.modbus.codec import MAX_REGISTERS, decode
from tepi.drivers.modbus.config import BIT_TABLES, ByteOrder
from tepi.drivers.modbus.link import ExceptionReply, ModbusLink

# Most common first: a scan with --baud auto stops at the first speed where a unit answers.
BAUD_RATES = (9600, 19200, 38400, 115200, 57600, 4800, 2400, 14400, 1200)


# A Modbus TCP gateway's answers for a unit behind it that is not there: 10 (no path to
# it), 11 (it did not respond). The gateway is there, not the unit.
GATEWAY_NO_UNIT = frozenset({10, 11})


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
class Probe:
    """One unit asked at one speed, and what it answered."""

    unit: int
    baud: int | None  # None on TCP
    answer: str | None  # "registers", the exception the unit answered with, or None: silence


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
        if got.code in GATEWAY_NO_UNIT:
            return None  # the TCP gateway answered for a unit that did not
        return got.reason
    return "registers"


async def scan(
    port: Port, units: Iterable[int], bauds: Iterable[int], reply_s: float
) -> AsyncIterator[Probe]:
    """Ask every unit, and yield each probe as it ends (silent ones too, to follow progress).

    Over several baud rates it stops after the first at which any unit answered: devices on
    one line share its speed. Over TCP the baud rates do not matter and it asks once.
    """
    unit_list = list(units)
    for baud in bauds if port.serial else [0]:
        link = port.link(baud or 9600)
        answered = False
        try:
            for unit in unit_list:
                answer = await probe(link, unit, reply_s)
                answered = answered or answer is not None
                yield Probe(unit, baud or None, answer)
        finally:
            await link.aclose()
        if answered:
            return


ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")


@dataclass(frozen=True, slots=True)
class Register:
    """One 16-bit register, four ways."""

    address: int
    word: int
    int16: int
    ascii: str  # its two bytes, "." for what is not printable


@dataclass(frozen=True, slots=True)
class Wide:
    """The value that starts at ``address`` and spans 2 (32-bit) or 4 (64-bit) registers, in
    each byte order (``ORDERS``). ``ints`` is empty for 64-bit values."""

    address: int
    floats: dict[str, float]
    ints: dict[str, int]


@dataclass(frozen=True, slots=True)
class Decodings:
    """Every way to read some registers: each as 16 bits; then each 32-bit value (from every
    starting register) as int32 and float32, and each 64-bit one as float64, in all orders."""

    registers: list[Register]
    x32: list[Wide]
    x64: list[Wide]


def decodings(words: list[int], address: int) -> Decodings:
    regs = [
        Register(
            address + i,
            w,
            int(decode([w], "int16")),
            "".join(chr(b) if 32 <= b < 127 else "." for b in w.to_bytes(2, "big")),
        )
        for i, w in enumerate(words)
    ]
    x32 = [
        Wide(
            address + i,
            {o: float(decode(words[i : i + 2], "float32", o)) for o in ORDERS},
            {o: int(decode(words[i : i + 2], "int32", o)) for o in ORDERS},
        )
        for i in range(len(words) - 1)
    ]
    x64 = [
        Wide(
            address + i,
            {o: float(decode(words[i : i + 4], "float64", o)) for o in ORDERS},
            {},
        )
        for i in range(len(words) - 3)
    ]
    return Decodings(regs, x32, x64)


async def read(
    port: Port,
    table: str,
    address: int,
    count: int,
    unit: int,
    *,
    baud: int = 9600,
    reply_s: float = 1.0,
) -> Decodings | list[bool] | ExceptionReply:
    """One read: every decoding of the registers, the bits of a coil or discrete input
    table, or the exception the unit answered with. ValueError for a count the protocol
    does not allow."""
    if not 1 <= count <= MAX_REGISTERS:
        raise ValueError(f"--count is 1 to {MAX_REGISTERS} (the protocol's limit)")
    link = port.link(baud)
    try:
        got = await link.read(table, address, count, unit, reply_s)
    finally:
        await link.aclose()
    if isinstance(got, ExceptionReply):
        return got
    if table in BIT_TABLES:
        return [bool(b) for b in got]
    return decodings([int(w) for w in got], address)
