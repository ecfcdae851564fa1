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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gateway.errors import DeviceUnavailable, ProtocolError

log = logging.getLogger(__name__)

_READ_FN = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
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
_PRECISE_BELOW_S = 0.005


async def _quiet(seconds: float) -> None:
    """Wait out a line's silence. The event loop's timers round up to whole milliseconds,
    which would add a third to every request at 115,200 baud (1.75 ms of silence waited as
    2 to 3); a short silence is waited in a worker thread instead, to the microsecond."""
    if seconds < _PRECISE_BELOW_S:
        await asyncio.to_thread(time.sleep, seconds)
    else:
        await asyncio.sleep(seconds)


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
        self.label = label
        self._serial_path = serial_path
        self._lock = asyncio.Lock()
        self.gap_s = gap_s
        self._quiet_until = 0.0

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
        )
        gap = frame_gap(baudrate, parity, bytesize, stopbits)
        return cls(client, port, serial_path=port, gap_s=gap)

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
        )
        return cls(client, f"{host}:{port}")

    async def aclose(self) -> None:
        self.client.close()

    def _set_timeout(self, timeout_s: float) -> None:
        """pymodbus reads the reply timeout per request from its transaction manager's own
        copy of the parameters (``ctx.comm_params``), not from ``client.comm_params``; under
        our lock, setting both makes it this device's timeout."""
        self.client.comm_params.timeout_connect = timeout_s
        self.client.ctx.comm_params.timeout_connect = timeout_s

    async def _ensure_connected(self, timeout_s: float) -> None:
        if self.client.connected:
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
        if not ok:
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
            if quiet > 0:
                await _quiet(quiet)
            await self._ensure_connected(timeout_s)
            self._set_timeout(timeout_s)
            after = self.gap_s + pause_s
            try:
                return await call()
            except ModbusIOException as err:
                if self._serial_path is not None:
                    after += LATE_REPLY_GUARD_S
                raise DeviceUnavailable(
                    "timeout", f"{self.label} unit {unit}: no valid answer"
                ) from err
            except ConnectionException as err:
                raise DeviceUnavailable("disconnected", f"{self.label}: {err}") from err
            except ModbusException as err:
                raise ProtocolError("bad frame", f"{self.label} unit {unit}: {err}") from err
            finally:
                self._quiet_until = loop.time() + after

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
