"""Modbus TCP: one listening port on 127.0.0.1 per TCP device, or per gateway.

Each connection is served by its own task; requests on one connection are answered in
order (pipelined requests queue up in the socket and are read one after another), and
connections run concurrently. TCP devices with the same ``bus`` sit behind one port, as
units behind a Modbus TCP gateway. A request for a unit id nobody there has is answered
with exception 0x0B (gateway target device failed to respond), as a gateway would.

With ``pipelining: false`` the endpoint behaves like pymodbus 3.16's own server and many
small gateways: it answers the first frame of each read from the socket and drops the whole frames
that arrived together with it (``dropped_frames``). A client that sends one request at a
time never notices; one that pipelines loses every request but the first of a burst.

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
        self.pipelining = self.device.config.pipelining
        self.connections = 0  # accepted so far
        self.dropped_frames = 0  # pipelining: false: frames that came with another, dropped
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
        if not self.pipelining:
            await self._first_of_each_read(reader, writer)
            return
        while not writer.is_closing():
            header = await reader.readexactly(MBAP.size)
            tid, protocol, length, unit = MBAP.unpack(header)
            if protocol != 0 or not 2 <= length <= 254:
                log.warning("%s: bad MBAP header %s, closing", self.address, header.hex(" "))
                return
            pdu = await reader.readexactly(length - 1)
            if not await self._answer(tid, unit, pdu, writer):
                return

    async def _first_of_each_read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the first whole frame of what one read returns; drop the whole frames
        that came with it."""
        buf = b""
        while not writer.is_closing():
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk
            if len(buf) < MBAP.size:
                continue
            tid, protocol, length, unit = MBAP.unpack_from(buf)
            if protocol != 0 or not 2 <= length <= 254:
                log.warning("%s: bad MBAP header %s, closing", self.address, buf[:7].hex(" "))
                return
            end = 6 + length
            if len(buf) < end:
                continue
            pdu, buf = buf[MBAP.size : end], buf[end:]
            # Whole frames that came with it are dropped; one still arriving is kept, so the
            # stream stays in step (the client sees lost requests, not a broken connection).
            while len(buf) >= MBAP.size and len(buf) >= 6 + MBAP.unpack_from(buf)[2]:
                self.dropped_frames += 1
                buf = buf[6 + MBAP.unpack_from(buf)[2] :]
            if not await self._answer(tid, unit, pdu, writer):
                return

    async def _answer(self, tid: int, unit: int, pdu: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        log.debug("%s: rx tid=%d unit=%d %s", self.address, tid, unit, pdu.hex(" "))
        device = self.devices.get(unit)
        if device is None:
            writer.write(mbap_frame(tid, unit, exception_response(pdu[0], EXC_TARGET_FAILED)))
            await writer.drain()
            return True
        action = device.handle(pdu)
        if action.kind == "disconnect":
            return False
        if action.kind in ("garbage", "bad_crc"):
            writer.write(device.garbage() if action.kind == "bad_crc" else action.data)
        elif action.kind in ("partial", "wrong_unit") and action.prepare is not None:
            writer.write(mbap_reply(tid, unit, action.prepare().pdu, action.kind))
        elif action.kind == "answer" and action.prepare is not None:
            if action.delay_s:
                await asyncio.sleep(action.delay_s)
            if writer.is_closing():
                return False
            prepared = action.prepare()
            writer.write(mbap_frame(tid, unit, prepared.pdu))
            prepared.commit()
        await writer.drain()
        return True
