"""A scripted MQTT 3.1.1 server, for what a real broker cannot be made to do on cue: send
PUBLISH packets and end the link in one write, so that a client reads the messages and the
link's loss together. It speaks only what a client's session needs (CONNACK, SUBACK, UNSUBACK,
PINGRESP, PUBACK when asked) over a real TCP socket on loopback; everything else is a real
Mosquitto's job (helpers.Broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13


@dataclass
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def topic(self) -> str:
        """A PUBLISH's topic."""
        n = int.from_bytes(self.body[:2])
        return self.body[2 : 2 + n].decode()

    @property
    def payload(self) -> bytes:
        """A PUBLISH's payload (after the packet id at QoS 1 and 2)."""
        n = 2 + int.from_bytes(self.body[:2])
        return self.body[n + (2 if self.flags & 0x06 else 0) :]

    @property
    def filters(self) -> list[str]:
        """A SUBSCRIBE's topic filters."""
        out, i = [], 2
        while i < len(self.body):
            n = int.from_bytes(self.body[i : i + 2])
            out.append(self.body[i + 2 : i + 2 + n].decode())
            i += 2 + n + 1  # and its QoS byte
        return out


def encode(kind: int, flags: int, body: bytes) -> bytes:
    length, size = b"", len(body)
    while True:
        byte, size = size % 128, size // 128
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([kind << 4 | flags]) + length + body


def publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH."""
    name = topic.encode()
    return encode(PUBLISH, 0x02, len(name).to_bytes(2) + name + packet_id.to_bytes(2) + payload)


async def read_packet(reader: asyncio.StreamReader) -> Packet | None:
    """The next packet, or None at the end of the link."""
    try:
        first = (await reader.readexactly(1))[0]
        size, scale = 0, 1
        while True:
            byte = (await reader.readexactly(1))[0]
            size += (byte & 0x7F) * scale
            if not byte & 0x80:
                break
            scale *= 128
        return Packet(first >> 4, first & 0x0F, await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


@dataclass
class Link:
    """One client connection, answered as a broker would; ``ack`` says which of its QoS 1
    PUBLISHes get a PUBACK. What the client sent is kept in order."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    changed: asyncio.Condition
    ack: Callable[[Packet], bool] = lambda _: True
    received: list[Packet] = field(default_factory=list)

    async def serve(self, until: Callable[[Link], bool] = lambda _: False) -> bool:
        """Answer the client until ``until`` holds (True) or the link ends (False)."""
        while not until(self):
            p = await read_packet(self.reader)
            if p is None:
                return False
            async with self.changed:
                self.received.append(p)
                self.changed.notify_all()
            pid = p.body[:2]
            if p.kind == CONNECT:
                self.writer.write(encode(CONNACK, 0, b"\x00\x00"))
            elif p.kind == SUBSCRIBE:
                self.writer.write(encode(SUBACK, 0, pid + b"\x01" * len(p.filters)))
            elif p.kind == UNSUBSCRIBE:
                self.writer.write(encode(UNSUBACK, 0, pid))
            elif p.kind == PINGREQ:
                self.writer.write(encode(PINGRESP, 0, b""))
            elif p.kind == PUBLISH and p.flags & 0x06 and self.ack(p):
                n = 2 + int.from_bytes(p.body[:2])
                self.writer.write(encode(PUBACK, 0, p.body[n : n + 2]))
            await self.writer.drain()
        return True

    def of(self, kind: int) -> list[Packet]:
        return [p for p in self.received if p.kind == kind]

    def send_and_end(self, *packets: bytes) -> None:
        """Write ``packets`` and the end of the link (FIN) at once; the client may still
        write (its PUBACKs)."""
        self.writer.write(b"".join(packets))
        self.writer.write_eof()


class ScriptedBroker:
    """A TCP server on loopback that hands each connection, as a :class:`Link`, to
    ``script`` (with its index, from 0)."""

    def __init__(self, script: Callable[[int, Link], Awaitable[None]]) -> None:
        self.script = script
        self.port = 0
        self.links: list[Link] = []
        self.changed = asyncio.Condition()  # notified at every packet a client sends
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for link in self.links:
            link.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(reader, writer, self.changed)
        self.links.append(link)
        try:
            await self.script(len(self.links) - 1, link)
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()
