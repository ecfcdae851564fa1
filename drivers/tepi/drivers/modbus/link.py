"""One pymodbus client per serial port or TCP endpoint, shared by the devices behind it.

Requests on one link go one at a time (the lock), so slaves on one RS-485 line never talk
over each other. Each request carries its own device's timeout. pymodbus's errors are
classified here, at the boundary, into tepi's: no answer -> DeviceUnavailable, an answer that
is wrong -> ProtocolError. A Modbus exception reply is not an error of the link: it comes
back as :class:`ExceptionReply` so the driver can mark just those registers bad.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU

from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError
from tepi.drivers.modbus.timer import PreciseTimer

log = logging.getLogger(__name__)

_READ_FN = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
_READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device answered with a Modbus exception code."""

    code: int

    @property
    def reason(self) -> str:
        return f"modbus exception {self.code} ({EXCEPTION_NAMES.get(self.code, 'unknown')})"


def _check_port(path: str) -> None:
    """Say why a serial port cannot be opened, in words a technician can act on."""
    if not os.path.exists(path):  # noqa: PTH110 - a device node, not a data file
        raise DeviceUnavailable(
            "port missing", f"{path} does not exist: is the adapter plugged in?"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise DeviceUnavailable(
            "permission denied", f"cannot open {path}: add the service user to the dialout group"
        )


LATE_REPLY_GUARD_S = 0.05
RX_KEEP = 512  # bytes of a failed answer kept to say why it failed
_PRECISE_BELOW_S = 0.005


def _crc_ok_somewhere(frame: bytes) -> bool:
    """Whether some prefix of ``frame`` (5 bytes or more) ends in its own valid CRC."""
    for end in range(5, len(frame) + 1):
        crc = int.from_bytes(frame[end - 2 : end], "big")
        if FramerRTU.check_CRC(frame[: end - 2], crc):
            return True
    return False


def _answer_length(frame: bytes) -> int | None:
    """How long the RTU answer that ``frame`` starts is meant to be, from its function code
    (and byte count); None when that cannot be told."""
    if len(frame) < 2:
        return None
    fc = frame[1]
    if fc & 0x80:
        return 5  # an exception reply
    if fc in (1, 2, 3, 4):
        return 5 + frame[2] if len(frame) >= 3 else None
    if fc in (5, 6, 15, 16):
        return 8
    return None


def _drop_undecodable(client: AsyncModbusSerialClient | AsyncModbusTcpClient) -> None:
    """Make pymodbus drop an answer it cannot decode, as it drops one with a bad CRC.

    An answer whose CRC is right but whose function code or length pymodbus cannot make sense
    of (``01 80 19 80 0a``) makes its framer raise ``ModbusIOException`` from inside the
    protocol's ``data_received``: asyncio then logs a traceback and, on TCP, drops the
    connection. Dropped here, the request gets no answer, and ``_why_no_reply`` classifies it
    from the bytes that came (a bad frame), like any other garbled answer.
    """
    framer = client.ctx.framer
    handle = framer.handleFrame

    def handle_frame(data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:
        try:
            return handle(data, exp_devid, exp_tid)
        except ModbusIOException:
            return len(data), None

    framer.handleFrame = handle_frame  # type: ignore[method-assign]


def frame_gap(baudrate: int, parity: str, bytesize: int, stopbits: int) -> float:
    """The silence Modbus RTU requires between frames: 3.5 character times, or a fixed
    1.75 ms above 19,200 baud (the standard's rule)."""
    if baudrate > 19200:
        return 0.00175
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return 3.5 * bits / baudrate


class ModbusLink:
    """A serialised pymodbus client for one port or endpoint: the bus scheduler.

    One request at a time, in the order asked (an ``asyncio.Lock`` is FIFO). On a serial line
    it keeps the inter-frame silence before each request, plus the device's own ``pause``
    when it needs one; after a timeout it waits a little longer, so a late reply from the
    device that timed out cannot be read as the answer to the next request.
    """

    def __init__(
        self,
        client: AsyncModbusSerialClient | AsyncModbusTcpClient,
        label: str,
        serial_path: str | None = None,
        gap_s: float = 0.0,
    ) -> None:
        self.client = client
        _drop_undecodable(client)
        self.label = label
        self._serial_path = serial_path
        self._lock = asyncio.Lock()
        self.gap_s = gap_s
        self._quiet_until = 0.0
        self._timer = PreciseTimer()
        self.rtu = serial_path is not None
        # What the current request got back: the raw bytes (to tell a bad CRC or a garbled
        # answer from silence) and when its reply was complete (the line's silence counts
        # from there, not from when this task next runs).
        self._rx = bytearray()
        self._rx_buffer = b""  # pymodbus's receive buffer, as last handed to trace_packet
        self._replied_at: float | None = None

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's hook for the bytes sent or received. Received, it is handed pymodbus's
        whole receive buffer (what is left of earlier chunks, then the new one), so only the
        bytes not seen before are kept: an answer that came in pieces is kept once."""
        if not sending:
            seen = self._rx_buffer
            new = data[len(seen) :] if seen and data.startswith(seen) else data
            self._rx_buffer = data
            if len(self._rx) < RX_KEEP:
                self._rx += new[: RX_KEEP - len(self._rx)]
        return data

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's hook for every frame decoded: a reply is complete."""
        if not sending:
            self._replied_at = asyncio.get_running_loop().time()
        return pdu

    def _why_no_reply(self, unit: int) -> DeviceError:
        """Classify a request that got no valid reply from what did arrive."""
        rx = bytes(self._rx)
        if not rx:
            return DeviceUnavailable("timeout", f"{self.label} unit {unit}: no answer")
        shown = rx[:16].hex(" ") + (" ..." if len(rx) > 16 else "")
        whole = len(rx) >= (_answer_length(rx) or 0)  # a frame cut short has no CRC to be wrong
        if self.rtu and rx[0] == unit and len(rx) >= 5 and whole and not _crc_ok_somewhere(rx):
            return ProtocolError(
                "crc error", f"{self.label} unit {unit}: answer with a bad CRC: {shown}"
            )
        if self.rtu and rx[0] != unit and _crc_ok_somewhere(rx):
            return ProtocolError(
                "wrong unit", f"{self.label} unit {unit}: answer not from unit {unit}: {shown}"
            )
        return ProtocolError(
            "bad frame", f"{self.label} unit {unit}: garbled or short answer: {shown}"
        )

    @classmethod
    def serial(
        cls, port: str, baudrate: int, parity: str, bytesize: int, stopbits: int
    ) -> ModbusLink:
        client = AsyncModbusSerialClient(
            port,
            baudrate=baudrate,
            parity=parity,
            bytesize=bytesize,
            stopbits=stopbits,
            timeout=1.0,
            retries=0,
            reconnect_delay=0,
            name=f"tepi:{port}",
            # lambdas: ``link`` is bound below, once the client exists
            trace_packet=lambda sending, data: link.trace_packet(sending, data),  # noqa: PLW0108
            trace_pdu=lambda sending, pdu: link.trace_pdu(sending, pdu),  # noqa: PLW0108
        )
        gap = frame_gap(baudrate, parity, bytesize, stopbits)
        link = cls(client, port, serial_path=port, gap_s=gap)
        return link

    @classmethod
    def tcp(cls, host: str, port: int, framing: str = "mbap") -> ModbusLink:
        client = AsyncModbusTcpClient(
            host,
            port=port,
            framer=FramerType.RTU if framing == "rtu" else FramerType.SOCKET,
            timeout=1.0,
            retries=0,
            reconnect_delay=0,
            name=f"tepi:{host}:{port}",
            # lambdas: ``link`` is bound below, once the client exists
            trace_packet=lambda sending, data: link.trace_packet(sending, data),  # noqa: PLW0108
            trace_pdu=lambda sending, pdu: link.trace_pdu(sending, pdu),  # noqa: PLW0108
        )
        link = cls(client, f"{host}:{port}")
        link.rtu = framing == "rtu"
        return link

    async def aclose(self) -> None:
        self.client.close()
        self._timer.close()

    def _set_timeout(self, timeout_s: float) -> None:
        """pymodbus reads the reply timeout per request from its transaction manager's own
        copy of the parameters (``ctx.comm_params``), not from ``client.comm_params``; under
        our lock, setting both makes it this device's timeout."""
        self.client.comm_params.timeout_connect = timeout_s
        self.client.ctx.comm_params.timeout_connect = timeout_s

    def _alive(self) -> bool:
        """Connected, with a transport that is not closed. pymodbus can go on holding a
        transport that asyncio has closed: ``connected`` stays True, each request is written
        to a dead socket and times out, and the device never comes back. The soak saw it
        once (a Modbus TCP device whose gateway dropped every connection for a while; asyncio
        logged "socket.send() raised exception"); the exact race in pymodbus is not pinned
        down. Checked before every request, it costs one attribute read."""
        transport = getattr(self.client.ctx, "transport", None)
        if transport is None:
            return False
        if transport.is_closing():
            self.client.close()
            return False
        return True

    async def _ensure_connected(self, timeout_s: float) -> None:
        if self._alive():
            return
        if self._serial_path is not None:
            _check_port(self._serial_path)
        self._set_timeout(timeout_s)
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation.
            async with asyncio.timeout(timeout_s + 1.0):
                ok = await self.client.connect()
        except (OSError, TimeoutError, ModbusException) as err:
            raise DeviceUnavailable("cannot connect", f"{self.label}: {err}") from err
        if not ok or not self._alive():
            raise DeviceUnavailable("cannot connect", self.label)

    async def _transact(
        self,
        unit: int,
        timeout_s: float,
        call: Callable[[], Awaitable[ModbusPDU]],
        pause_s: float = 0.0,
    ) -> ModbusPDU:
        """One request under the lock, with pymodbus's failures turned into ours."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            quiet = self._quiet_until - loop.time()
            if quiet >= _PRECISE_BELOW_S:
                await asyncio.sleep(quiet)
            elif quiet > 0:
                # The event loop's timers round up to whole milliseconds, which would add a
                # third to every request at 115,200 baud (1.75 ms of silence waited as 2-3).
                await self._timer.sleep_until(self._quiet_until)
            await self._ensure_connected(timeout_s)
            self._set_timeout(timeout_s)
            after = self.gap_s + pause_s
            self._rx.clear()
            self._rx_buffer = b""  # pymodbus empties its own for each request
            self._replied_at = None
            try:
                return await call()
            except ModbusIOException as err:
                self._replied_at = None
                if self._serial_path is not None:
                    after += LATE_REPLY_GUARD_S
                raise self._why_no_reply(unit) from err
            except ConnectionException as err:
                raise DeviceUnavailable("disconnected", f"{self.label}: {err}") from err
            except ModbusException as err:
                raise ProtocolError("bad frame", f"{self.label} unit {unit}: {err}") from err
            finally:
                ended = loop.time() if self._replied_at is None else self._replied_at
                self._quiet_until = ended + after

    async def write(
        self,
        table: str,
        address: int,
        values: list[int] | list[bool],
        unit: int,
        timeout_s: float,
        *,
        pause_s: float = 0.0,
    ) -> ExceptionReply | None:
        """Write registers (fc 6 or 16) or coils (fc 5 or 15) once; None when accepted."""
        c = self.client
        if table == "coil":
            bits = [bool(v) for v in values]
            call: Callable[[], Awaitable[ModbusPDU]] = (
                (lambda: c.write_coil(address, bits[0], device_id=unit))
                if len(bits) == 1
                else (lambda: c.write_coils(address, bits, device_id=unit))
            )
        else:
            words = [int(v) for v in values]
            call = (
                (lambda: c.write_register(address, words[0], device_id=unit))
                if len(words) == 1
                else (lambda: c.write_registers(address, words, device_id=unit))
            )
        resp = await self._transact(unit, timeout_s, call, pause_s)
        if resp.isError():
            return ExceptionReply(int(getattr(resp, "exception_code", 0)))
        return None

    async def read(
        self,
        table: str,
        address: int,
        count: int,
        unit: int,
        timeout_s: float,
        *,
        pause_s: float = 0.0,
    ) -> list[int] | list[bool] | ExceptionReply:
        """Read once; the words or bits, an exception reply, or raise."""
        fn = getattr(self.client, _READ_FN[table])
        resp = await self._transact(
            unit, timeout_s, lambda: fn(address, count=count, device_id=unit), pause_s
        )
        answered = resp.function_code & 0x7F
        if answered != _READ_FC[table]:
            # pymodbus takes any frame from the unit; an answer to another function (a late
            # reply to a read of another table) would give that table's values as these.
            raise ProtocolError(
                "bad frame",
                f"{self.label} unit {unit}: an answer to function {answered}, "
                f"not to the read of {table} (function {_READ_FC[table]})",
            )
        if resp.isError():
            return ExceptionReply(int(getattr(resp, "exception_code", 0)))
        if table in ("coil", "discrete"):
            bits = list(resp.bits)
            if len(bits) < count:
                raise ProtocolError("short answer", f"asked {count} bits, got {len(bits)}")
            return bits[:count]
        words = list(resp.registers)
        if len(words) != count:
            raise ProtocolError("short answer", f"asked {count} registers, got {len(words)}")
        return words

    async def read_bytes(
        self,
        table: str,
        address: int,
        count: int,
        unit: int,
        timeout_s: float,
        *,
        pause_s: float = 0.0,
    ) -> bytes | list[bool] | ExceptionReply:
        """Like :meth:`read`, with registers as their bytes on the wire (2 per register)."""
        got = await self.read(table, address, count, unit, timeout_s, pause_s=pause_s)
        if isinstance(got, ExceptionReply) or table in ("coil", "discrete"):
            return got  # type: ignore[return-value]  # bits, for these tables
        return struct.pack(f">{count}H", *got)
