"""The link to one serial port or TCP endpoint, shared by the devices behind it.

A serial port is a pymodbus client with a lock: requests go one at a time, so slaves on one
RS-485 line never talk over each other, with the line's silence kept between frames. A TCP
endpoint is tepi's own lean transaction layer (``tcp.py``): MBAP or RTU frames on an
``asyncio.Protocol``, with up to ``max_outstanding`` requests in flight for the units behind
one gateway. Each request carries its own device's timeout. Failures are classified here, at
the boundary, into tepi's: no answer -> DeviceUnavailable, an answer that is wrong ->
ProtocolError. A Modbus exception reply is not an error of the link: it comes back as
:class:`ExceptionReply` so the driver can mark just those registers bad.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError
from tepi.drivers.modbus.tcp import TcpStats, TcpTransactions
from tepi.drivers.modbus.timer import PreciseTimer
from tepi.drivers.modbus.wire import (
    EXCEPTION_NAMES,
    READ_FC,
    RX_KEEP,
    ExceptionReply,
    bytes_of,
    other_function,
    read_answer,
    read_pdu,
    why_no_reply,
    words_of,
    write_answer,
    write_pdu,
)

__all__ = ["EXCEPTION_NAMES", "ExceptionReply", "ModbusLink", "frame_gap"]

log = logging.getLogger(__name__)

_READ_FN = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


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
_PRECISE_BELOW_S = 0.005


def _drop_undecodable(client: AsyncModbusSerialClient) -> None:
    """Make pymodbus drop an answer it cannot decode, as it drops one with a bad CRC.

    An answer whose CRC is right but whose function code or length pymodbus cannot make sense
    of (``01 80 19 80 0a``) makes its framer raise ``ModbusIOException`` from inside the
    serial transport's read callback: asyncio then logs a traceback. Dropped here, the request
    gets no answer, and ``why_no_reply`` classifies it from the bytes that came (a bad frame),
    like any other garbled answer.
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
    """The bus scheduler for one serial port or TCP endpoint.

    Serial: a pymodbus client, one request at a time in the order asked (an ``asyncio.Lock``
    is FIFO). It keeps the inter-frame silence before each request, plus the device's own
    ``pause`` when it needs one; after a timeout it waits a little longer, so a late reply
    from the device that timed out cannot be read as the answer to the next request.

    TCP: :class:`~tepi.drivers.modbus.tcp.TcpTransactions`, which matches answers by
    transaction id and so can keep several requests in flight (``max_outstanding``).
    """

    def __init__(
        self,
        client: AsyncModbusSerialClient | None,
        label: str,
        serial_path: str | None = None,
        gap_s: float = 0.0,
        *,
        tcp: TcpTransactions | None = None,
    ) -> None:
        self.client = client
        self._tcp = tcp
        if client is not None:
            _drop_undecodable(client)
        self.label = label
        self._serial_path = serial_path
        self._lock = asyncio.Lock()
        self.gap_s = gap_s
        self._quiet_until = 0.0
        self._timer = PreciseTimer()
        self.rtu = serial_path is not None or (tcp is not None and tcp.rtu)
        # What the current serial request got back: the raw bytes (to tell a bad CRC or a
        # garbled answer from silence) and when its reply was complete (the line's silence
        # counts from there, not from when this task next runs).
        self._rx = bytearray()
        self._rx_buffer = b""  # pymodbus's receive buffer, as last handed to trace_packet
        self._replied_at: float | None = None

    @property
    def transactions(self) -> TcpTransactions | None:
        """A TCP link's transaction layer (None on a serial line), for the driver's reads to
        call directly (see ``ModbusDriver._request``)."""
        return self._tcp

    @property
    def tcp_stats(self) -> TcpStats | None:
        """What a TCP link's stream held besides answers (late answers dropped, ...)."""
        return None if self._tcp is None else self._tcp.stats

    @property
    def max_outstanding(self) -> int:
        """Requests in flight at most: 1 on a serial line and with RTU framing."""
        return 1 if self._tcp is None else self._tcp.limit

    def limit_outstanding(self, n: int) -> None:
        """A device sharing this TCP link allows at most ``n`` requests in flight: the
        smallest value of the devices sharing it holds."""
        if self._tcp is not None:
            self._tcp.limit_outstanding(n)

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
        return why_no_reply(self.label, unit, bytes(self._rx), self.rtu)

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
    def tcp(
        cls, host: str, port: int, framing: str = "mbap", max_outstanding: int = 1
    ) -> ModbusLink:
        label = f"{host}:{port}"
        transactions = TcpTransactions(
            host, port, label, rtu=framing == "rtu", max_outstanding=max_outstanding
        )
        return cls(None, label, tcp=transactions)

    async def aclose(self) -> None:
        if self._tcp is not None:
            await self._tcp.aclose()
        if self.client is not None:
            self.client.close()
        self._timer.close()

    def _set_timeout(self, timeout_s: float) -> None:
        """pymodbus reads the reply timeout per request from its transaction manager's own
        copy of the parameters (``ctx.comm_params``), not from ``client.comm_params``; under
        our lock, setting both makes it this device's timeout."""
        assert self.client is not None
        self.client.comm_params.timeout_connect = timeout_s
        self.client.ctx.comm_params.timeout_connect = timeout_s

    def _alive(self) -> bool:
        """Connected, with a transport that is not closed. pymodbus can go on holding a
        transport that asyncio has closed: ``connected`` stays True, each request is written
        to a dead port and times out, and the device never comes back. The soak saw it once on
        TCP (a Modbus TCP device whose gateway dropped every connection for a while; asyncio
        logged "socket.send() raised exception"), before TCP had a layer of its own (which
        checks the same, ``TcpTransactions.alive``). Checked before every request, it costs
        one attribute read."""
        assert self.client is not None
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
        assert self.client is not None
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
        """One serial request under the lock, with pymodbus's failures turned into ours."""
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
        if self._tcp is not None:
            pdu = write_pdu(table, address, values)
            answer = await self._tcp.transact(unit, pdu, timeout_s, pause_s)
            return write_answer(self.label, unit, pdu, answer)
        c = self.client
        assert c is not None
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
        """Read once: for registers the data as on the wire (``2 * count`` bytes, big-endian
        words), for coils and discrete inputs ``count`` bools; an exception reply; or raise."""
        tcp = self._tcp
        if tcp is not None:
            pdu = read_pdu(READ_FC[table], address, count)
            answer = await tcp.transact(unit, pdu, timeout_s, pause_s)
            return read_answer(self.label, unit, table, count, answer)
        resp = await self._serial_read(table, address, count, unit, timeout_s, pause_s=pause_s)
        if isinstance(resp, ExceptionReply):
            return resp
        if table in ("coil", "discrete"):
            return _bits(resp, count)
        return bytes_of(_words(resp, count))

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
        if self._tcp is not None:
            got = await self.read_bytes(table, address, count, unit, timeout_s, pause_s=pause_s)
            return words_of(got) if isinstance(got, bytes) else got
        resp = await self._serial_read(table, address, count, unit, timeout_s, pause_s=pause_s)
        if isinstance(resp, ExceptionReply):
            return resp
        if table in ("coil", "discrete"):
            return _bits(resp, count)
        return _words(resp, count)

    async def _serial_read(
        self, table: str, address: int, count: int, unit: int, timeout_s: float, *, pause_s: float
    ) -> ModbusPDU | ExceptionReply:
        fn = getattr(self.client, _READ_FN[table])
        resp: ModbusPDU = await self._transact(
            unit, timeout_s, lambda: fn(address, count=count, device_id=unit), pause_s
        )
        answered = resp.function_code & 0x7F
        if answered != READ_FC[table]:
            # pymodbus takes any frame from the unit; an answer to another function (a late
            # reply to a read of another table) would give that table's values as these.
            raise other_function(self.label, unit, answered, READ_FC[table], f"read of {table}")
        if resp.isError():
            return ExceptionReply(int(getattr(resp, "exception_code", 0)))
        return resp


def _bits(resp: ModbusPDU, count: int) -> list[bool]:
    bits = list(resp.bits)
    if len(bits) < count:
        raise ProtocolError("short answer", f"asked {count} bits, got {len(bits)}")
    return bits[:count]


def _words(resp: ModbusPDU, count: int) -> list[int]:
    words = list(resp.registers)
    if len(words) != count:
        raise ProtocolError("short answer", f"asked {count} registers, got {len(words)}")
    return words
