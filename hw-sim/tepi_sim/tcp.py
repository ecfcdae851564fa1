"""Modbus TCP: one listening port on 127.0.0.1 per TCP device, or per gateway.

Each connection is served by its own task; requests on one connection are answered in
order (pipelined requests queue up in the socket and are read one after another), and
connections run concurrently. TCP devices with the same ``bus`` sit behind one port, as
units behind a Modbus TCP gateway. A request for a unit id nobody there has is answered
with exception 0x0B (gateway target device failed to respond), as a gateway would.

Faults: ``disconnect`` (and ``unplugged``) closes every open connection as soon as it is
set and closes new ones as they arrive while it stays on; ``bad_crc`` has no meaning without
a CRC and is sent as garbage; ``partial`` sends the first half of the MBAP frame,
``wrong_unit`` the answer with the next unit id in its header.
"""

from __future__ import annotations

import asyncio
import logging

from tepi_sim.device import Device
from tepi_sim.errors import StartupError
from tepi_sim.protocol import (
    EXC_TARGET_FAILED,
    MBAP,
    exception_response,
    mbap_frame,
    mbap_reply,
)

__all__ = ["TcpEndpoint"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class TcpEndpoint:
    """The Modbus TCP server for one device, or for the units behind one gateway."""

    def __init__(self, devices: Device | list[Device], port: int = 0) -> None:
        group = devices if isinstance(devices, list) else [devices]
        self.device = group[0]
        self.devices = {d.unit: d for d in group}
        self.port = port
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        for device in group:
            device.add_fault_listener(self._on_fault)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    async def start(self) -> None:
        """Listen; with port 0 the OS picks a free port."""
        try:
            self._server = await asyncio.start_server(self._serve, HOST, self.port)
        except OSError as err:
            raise StartupError(
                f"device {self.device.id!r}: cannot listen on {HOST}:{self.port}: {err.strerror}"
            ) from err
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _on_fault(self, device: Device) -> None:
        if device.fault in ("disconnect", "unplugged"):
            for writer in list(self._writers):
                writer.close()

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that spawns our own task: cancelling a task created by
        # start_server itself makes Python 3.11's stream protocol log a spurious error.
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(
            self._connection(reader, writer),
            name=f"tepi-sim[{self.device.id}].tcp-conn{self.connections}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if all(d.fault not in ("disconnect", "unplugged") for d in self.devices.values()):
                await self._requests(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.debug("device %s: client went away", self.device.id)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            header = await reader.readexactly(MBAP.size)
            tid, protocol, length, unit = MBAP.unpack(header)
            if protocol != 0 or not 2 <= length <= 254:
                log.warning("%s: bad MBAP header %s, closing", self.address, header.hex(" "))
                return
            pdu = await reader.readexactly(length - 1)
            log.debug("%s: rx tid=%d unit=%d %s", self.address, tid, unit, pdu.hex(" "))
            device = self.devices.get(unit)
            if device is None:
                writer.write(mbap_frame(tid, unit, exception_response(pdu[0], EXC_TARGET_FAILED)))
                await writer.drain()
                continue
            action = device.handle(pdu)
            if action.kind == "disconnect":
                return
            if action.kind in ("garbage", "bad_crc"):
                writer.write(device.garbage() if action.kind == "bad_crc" else action.data)
            elif action.kind in ("partial", "wrong_unit") and action.prepare is not None:
                writer.write(mbap_reply(tid, unit, action.prepare().pdu, action.kind))
            elif action.kind == "answer" and action.prepare is not None:
                if action.delay_s:
                    await asyncio.sleep(action.delay_s)
                if writer.is_closing():
                    return
                prepared = action.prepare()
                writer.write(mbap_frame(tid, unit, prepared.pdu))
                prepared.commit()
            await writer.drain()
