"""Modbus RTU over TCP: a serial-to-Ethernet converter in front of an RS-485 line.

Clients connect to 127.0.0.1:PORT and send RTU frames (unit, PDU, CRC) over the TCP stream,
as through a converter in transparent mode. Several slaves can sit behind one endpoint (the
devices configured with the same ``bus``); a frame for a unit nobody has gets no answer, as
on the line. Requests on a connection are answered one at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tepi_sim.device import Device
from tepi_sim.errors import StartupError
from tepi_sim.protocol import RtuParser, rtu_reply

__all__ = ["RtuTcpEndpoint"]

log = logging.getLogger(__name__)


class RtuTcpEndpoint:
    """One converter: a TCP port speaking RTU frames to the devices behind it."""

    def __init__(self, name: str, devices: list[Device], port: int = 0) -> None:
        self.name = name
        self.devices = {d.unit: d for d in devices}
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
        except OSError as err:
            raise StartupError(f"rtu-tcp {self.name}: cannot listen: {err}") from err
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtuParser()
        try:
            while data := await reader.read(4096):
                for unit, pdu in parser.feed(data):
                    if not await self._answer(unit, pdu, writer):
                        return
        except ConnectionError:
            log.debug("rtu-tcp %s: client went away", self.name)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, unit: int, pdu: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one frame; False when the connection must close (fault: disconnect)."""
        if unit == 0:
            for each in self.devices.values():
                each.handle_broadcast(pdu)
            return True
        device = self.devices.get(unit)
        if device is None:
            return True  # nobody on the line has this unit: silence
        action = device.handle(pdu)
        if action.kind == "disconnect":
            return False
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.kind == "garbage":
            writer.write(action.data)
        elif action.prepare is not None:
            prepared = action.prepare()
            writer.write(rtu_reply(unit, prepared.pdu, action.kind))
            if action.kind == "answer":  # not bad_crc, partial, wrong_unit
                prepared.commit()
        await writer.drain()
        return True
