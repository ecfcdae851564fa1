"""A serial port as an ``asyncio.Transport``, for Modbus RTU on tepi's transaction layer.

pyserial opens and sets up the port (baud rate, framing, an exclusive lock); from then on the
port's file descriptor is read and written directly from the event loop. A request is
written at once (``os.write`` on a port that has room, as it nearly always has for a frame
of a few bytes); only what the port does not take waits for a writer. pymodbus 3.16's serial
transport, which this replaces under the link, waited for a writer for every request (a
turn of the loop and two ``epoll_ctl`` a request) and never said it was closing, so a port
that had gone looked connected (``ModbusLink`` worked around it).

An error reading or writing (the adapter unplugged: ``EIO``), or a port that says it is
readable and gives nothing, closes the transport: the protocol's ``connection_lost`` fails
the request in flight as disconnected, and the next request opens the port again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import serial

from tepi.core.errors import DeviceUnavailable
from tepi.drivers.modbus.tcp import Opener

__all__ = ["SerialTransport", "check_port", "open_serial"]

_READ_SIZE = 1024


def check_port(path: str) -> None:
    """Say why a serial port cannot be opened, in words a technician can act on."""
    if not os.path.exists(path):  # noqa: PTH110 - a device node, not a data file
        raise DeviceUnavailable(
            "port missing", f"{path} does not exist: is the adapter plugged in?"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise DeviceUnavailable(
            "permission denied", f"cannot open {path}: add the service user to the dialout group"
        )


class SerialTransport(asyncio.Transport):
    """One open serial port, read and written from the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, port: serial.Serial
    ) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._port: serial.Serial | None = port
        self._fd = port.fileno()
        self._out = bytearray()  # what the port did not take yet
        self._closing = False
        loop.add_reader(self._fd, self._read_ready)
        protocol.connection_made(self)  # before the opener returns, as create_connection does

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def can_write_eof(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not self._out:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError as err:
                self._close(err)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._out += data

    def _write_ready(self) -> None:
        try:
            n = os.write(self._fd, self._out)
        except BlockingIOError:
            return
        except OSError as err:
            self._close(err)
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:  # EIO: the adapter is gone (or a pty's other side closed)
            self._close(err)
            return
        if not data:  # readable, yet nothing: the device is gone
            self._close(OSError("the port reports data and gives none: is it disconnected?"))
            return
        self._protocol.data_received(data)

    def close(self) -> None:
        self._close(None)

    def abort(self) -> None:
        self._close(None)

    def _close(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._out.clear()
        port, self._port = self._port, None
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        if port is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                port.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


def open_serial(path: str, baudrate: int, parity: str, bytesize: int, stopbits: int) -> Opener:
    """An opener for ``Transactions``: the port at ``path``, set up, as a transport."""

    async def opener(factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
        check_port(path)
        try:
            port = serial.Serial(
                path,
                baudrate=baudrate,
                parity=parity,
                bytesize=bytesize,
                stopbits=stopbits,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (OSError, ValueError) as err:  # serial.SerialException is an OSError
            raise DeviceUnavailable("cannot connect", f"{path}: {err}") from err
        return SerialTransport(asyncio.get_running_loop(), factory(), port)

    return opener
