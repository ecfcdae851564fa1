"""The link to one serial port or TCP endpoint, shared by the devices behind it.

Both are tepi's own lean transaction layer (``tcp.py``) on an ``asyncio.Protocol``: on a
serial port (``serialline``), RTU frames one request at a time, so slaves on one RS-485 line
never talk over each other, with the line's silence kept between frames; on TCP, MBAP or RTU
frames, with up to ``max_outstanding`` requests in flight for the units behind one gateway.
Each request carries its own device's timeout. Failures are classified at the boundary into
tepi's: no answer -> DeviceUnavailable, an answer that is wrong -> ProtocolError. A Modbus
exception reply is not an error of the link: it comes back as :class:`ExceptionReply` so the
driver can mark just those registers bad. pymodbus builds the request PDUs and checks the
CRC; its client is not used (docs/performance.md, "The request path").
"""

from __future__ import annotations

from tepi.drivers.modbus.serialline import open_serial
from tepi.drivers.modbus.tcp import StreamStats, Transactions
from tepi.drivers.modbus.wire import (
    EXCEPTION_NAMES,
    READ_FC,
    ExceptionReply,
    read_answer,
    read_pdu,
    words_of,
    write_answer,
    write_pdu,
)

__all__ = ["EXCEPTION_NAMES", "ExceptionReply", "ModbusLink", "frame_gap"]


def frame_gap(baudrate: int, parity: str, bytesize: int, stopbits: int) -> float:
    """The silence Modbus RTU requires between frames: 3.5 character times, or a fixed
    1.75 ms above 19,200 baud (the standard's rule)."""
    if baudrate > 19200:
        return 0.00175
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return 3.5 * bits / baudrate


class ModbusLink:
    """The bus scheduler for one serial port or TCP endpoint: tepi's transaction layer
    (:class:`~tepi.drivers.modbus.tcp.Transactions`) on the port or the connection.

    Serial: RTU frames on the port (``serialline``), one request at a time in the order
    asked, with the line's silence after each answer, plus the device's own ``pause`` when
    it needs one; after a timeout the line stays quiet a little longer, so a late reply from
    the device that timed out cannot be read as the answer to the next request.

    TCP: requests matched by transaction id, so several can be in flight
    (``max_outstanding``).
    """

    def __init__(self, label: str, tcp: Transactions) -> None:
        self._tcp = tcp
        self.label = label

    @property
    def transactions(self) -> Transactions:
        """The link's transaction layer, for the driver's reads to call directly (see
        ``ModbusDriver._request``)."""
        return self._tcp

    @property
    def stream_stats(self) -> StreamStats:
        """What the link's stream held besides answers (late answers dropped, ...)."""
        return self._tcp.stats

    @property
    def max_outstanding(self) -> int:
        """Requests in flight at most: 1 on a serial line and with RTU framing."""
        return self._tcp.limit

    def limit_outstanding(self, n: int) -> None:
        """A device sharing this TCP link allows at most ``n`` requests in flight: the
        smallest value of the devices sharing it holds."""
        self._tcp.limit_outstanding(n)

    @classmethod
    def serial(
        cls, port: str, baudrate: int, parity: str, bytesize: int, stopbits: int
    ) -> ModbusLink:
        transactions = Transactions(
            port,
            0,
            port,
            rtu=True,
            opener=open_serial(port, baudrate, parity, bytesize, stopbits),
            gap_s=frame_gap(baudrate, parity, bytesize, stopbits),
        )
        return cls(port, transactions)

    @classmethod
    def tcp(
        cls, host: str, port: int, framing: str = "mbap", max_outstanding: int = 1
    ) -> ModbusLink:
        label = f"{host}:{port}"
        transactions = Transactions(
            host, port, label, rtu=framing == "rtu", max_outstanding=max_outstanding
        )
        return cls(label, transactions)

    async def aclose(self) -> None:
        await self._tcp.aclose()

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
        pdu = write_pdu(table, address, values)
        answer = await self._tcp.transact(unit, pdu, timeout_s, pause_s)
        return write_answer(self.label, unit, pdu, answer)

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
        pdu = read_pdu(READ_FC[table], address, count)
        answer = await self._tcp.transact(unit, pdu, timeout_s, pause_s)
        return read_answer(self.label, unit, table, count, answer)

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
        got = await self.read_bytes(table, address, count, unit, timeout_s, pause_s=pause_s)
        return words_of(got) if isinstance(got, bytes) else got
