"""Modbus on ``asyncio.Protocol``: the lean transaction layer under ``ModbusLink``, on TCP
and, with RTU framing, on a serial port (``serialline``; a line's silence, below).

pymodbus's client spent about twice asyncio's own floor per request here (docs/performance.md,
"The request path"). This layer keeps only what a request needs:

- the request: its PDU built once (``wire.read_pdu``, by pymodbus's request classes) behind a
  struct-packed MBAP header, or with its CRC for RTU framing; one ``transport.write``;
- the answer: ``data_received`` splits the stream into frames by the MBAP length and resolves
  the future of the request with that transaction id; with RTU framing (no transaction id)
  it looks for a frame with a valid CRC from the unit asked, as pymodbus's RTU framer does;
- a deadline per request, and one timer for the link, armed for the earliest deadline while
  requests are in flight (not one a request: arming and cancelling a timer for each of 50
  pipelined requests a tick cost more than the rest of a request); a request past its
  deadline fails, classified from what did arrive.

**Pipelining.** Up to ``limit`` requests are in flight on one connection (``max_outstanding``,
for a gateway with several units behind it), never two to one unit, so a device's requests
stay in order. Answers are matched by transaction id and checked against the unit asked. A
request that times out leaves its transaction id on a short list: an answer that comes late
is dropped and counted, and the id is not handed out again while it is on the list, so a late
answer is never taken for another request's, not even after the ids wrap at 65535. A request
waits for a slot, never behind another unit's timeout while a slot is free. The request
that frees a slot sends the next one waiting (``_grant``), so a request that waited wakes its
task once, with the answer, as one that did not.

**A serial line** (``opener``, ``ModbusLink.serial``): RTU frames, one request at a time.
After each request the line stays quiet for the standard's silence (``gap_s``, counted from
the moment the answer was whole), the device's ``pause``, and ``LATE_REPLY_GUARD_S`` more
after no answer. The next request waiting is sent at the end of that silence by a precise
timer (``timer.PreciseTimer``), not by its task: a poll's task wakes once, with its answer.

**Held until the tick.** A poll's first request can come with a ``Due`` (``tepi.core.due``):
the link holds it until its instant, and one timer for everything due at that instant (the
devices of one poll grid, on every link: ``at_instant``) queues them all and sends as many as
have a slot, in one write. The poll's task wakes once a poll, with the answer, not also for
the tick. The poll loop's bell calls a held request off (``CalledOff``); once released it
goes on as any other.

Some gateways (pymodbus 3.16's own server among them) answer only the first of the frames
that reach them together and drop the rest. Those requests time out. From the answers alone
such a unit looks dead, so the link asks: a unit whose request timed out while others were
in flight sends its next request alone (once nothing else is in flight, waiting at most its
own timeout plus the longest on the link; others go on meanwhile). Answered alone, it lost
the other request to the gateway, not to an outage. When three units have each shown that
twice within ``SUSPECT_WINDOW`` requests, the link falls back to one request at a time and
says so once in the log (``StreamStats.pipelining_fallbacks``). A dead unit loses its request
alone too, and units that come back together after an outage show it once each: neither
trips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.framer.rtu import FramerRTU

from tepi.core.due import CalledOff, Due, at_instant
from tepi.core.errors import DeviceUnavailable, ProtocolError
from tepi.core.tasks import cancel_and_wait
from tepi.drivers.modbus.timer import PreciseTimer
from tepi.drivers.modbus.wire import RX_KEEP, answer_length, rtu_frame, why_no_reply

log = logging.getLogger(__name__)

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit
MAX_OUTSTANDING = 32
LATE_KEEP = 256  # transaction ids of timed-out requests remembered, to drop late answers
SUSPECT_UNITS = 3  # units that lost a pipelined request and answered one sent alone, ...
SUSPECT_TIMES = 2  # ... each this many times ...
SUSPECT_WINDOW = 500  # ... within this many requests: the gateway cannot queue
_MIN_ANSWER = 9  # MBAP header (7) + function code + one byte (a count or an exception code)
# After a request on a serial line got no answer, the line stays quiet this much longer: a
# late answer from the device that timed out cannot be read as the next request's.
LATE_REPLY_GUARD_S = 0.05

# Opens a serial line (``tepi.drivers.modbus.serialline``) for the link's protocol.
Opener = Callable[[Callable[[], asyncio.Protocol]], Awaitable[asyncio.Transport]]


@dataclass(slots=True)
class StreamStats:
    """What one connection's (or serial port's) stream held besides answers, for diagnosis."""

    requests: int = 0
    late_answers: int = 0  # answers to requests that had timed out: dropped
    stray_frames: int = 0  # frames with a transaction id not asked for: dropped
    garbage_bytes: int = 0  # bytes that were no frame
    connects: int = 0
    disconnects: int = 0
    pipelining_fallbacks: int = 0  # max_outstanding lowered to 1 (see the module's docstring)
    most_in_flight: int = 0  # the most requests that were in flight together


class _Request:
    __slots__ = ("answered_at", "deadline", "future", "pipelined", "rx", "tid", "unit")

    def __init__(self, future: asyncio.Future[Any], unit: int, tid: int, pipelined: bool):
        self.future = future
        self.unit = unit
        self.tid = tid
        self.pipelined = pipelined
        self.rx = bytearray()  # what arrived that answered nothing, to say why it failed
        self.deadline = 0.0  # on the loop's clock
        self.answered_at = 0.0  # when its answer was whole (a line's silence counts from it)


class _Waiting:
    """A request waiting for a slot: sent by ``_grant`` (``req``) with ``future`` as its
    answer's, or let in (``let_in``) with ``future``'s result True or False (was nothing else
    in flight?) for its task to go on. ``alone``: it waits for nothing else to be in flight.
    ``at``: held until that instant (a poll's ``Due``), then it waits like the others."""

    __slots__ = ("alone", "at", "future", "let_in", "pdu", "req", "timeout_s", "timer", "unit")

    def __init__(self, unit: int, pdu: bytes, timeout_s: float, future: asyncio.Future[Any]):
        self.unit = unit
        self.pdu = pdu
        self.timeout_s = timeout_s
        self.future = future
        self.alone = False  # set when it is queued (``_queue``)
        self.req: _Request | None = None
        self.let_in = False
        self.at: float | None = None
        self.timer: asyncio.TimerHandle | None = None  # a probe's: it stops waiting alone


class _Connection(asyncio.Protocol):
    """One connection's callbacks, passed on to the link while it is the link's current one
    (a connection given up on can still call back before it is gone)."""

    def __init__(self, owner: Transactions) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.owner._attach(self, transport)

    def data_received(self, data: bytes) -> None:
        if self.owner._conn is self:
            self.owner._received(data)

    def eof_received(self) -> bool:
        return False  # close our side too: a Modbus server that stops sending is gone

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner._conn is self:
            self.owner._lost(exc)


class Transactions:
    """Requests and answers on one TCP connection to a Modbus server or gateway, or on one
    serial port (``opener``)."""

    def __init__(
        self,
        host: str,
        port: int,
        label: str,
        *,
        rtu: bool = False,
        max_outstanding: int = 1,
        opener: Opener | None = None,
        gap_s: float = 0.0,
    ) -> None:
        if not 1 <= max_outstanding <= MAX_OUTSTANDING:
            raise ValueError(f"max_outstanding {max_outstanding}: 1 to {MAX_OUTSTANDING}")
        if rtu and max_outstanding != 1:
            raise ValueError("RTU framing has no transaction id: one request at a time")
        self.host = host
        self.port = port
        self.label = label
        self.rtu = rtu
        self.limit = max_outstanding
        # A serial line (``opener``, ``gap_s``): after each request the line stays quiet for
        # the standard's silence (``gap_s``, from the answer's end), the device's ``pause``
        # and, after no answer, ``LATE_REPLY_GUARD_S``. The next request is sent by a precise
        # timer at the end of that silence (``_grant``), not by a task that wakes to wait.
        self._opener = opener
        self.gap_s = gap_s
        self._line_quiet = 0.0  # on the loop's clock: the line is quiet until then
        self._quiet_timer: PreciseTimer | None = PreciseTimer() if opener is not None else None
        self.stats = StreamStats()
        self._conn: _Connection | None = None
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: dict[int, _Request] = {}
        self._late: dict[int, None] = {}  # insertion order: the oldest is dropped first
        self._tid = 0
        self._buf = bytearray()  # received, not yet a whole frame
        self._scan = 0  # RTU: the first offset of _buf that may still start the answer
        self._in_flight = 0
        self._busy: set[int] = set()  # units with a request in flight
        self._waiting: deque[_Waiting] = deque()  # requests waiting for a slot
        self._held: dict[float, list[_Waiting]] = {}  # requests held until an instant
        self._quiet: dict[int | None, float] = {}  # pause: quiet until, link-wide or per unit
        self._lost_pipelined: set[int] = set()  # their next request goes alone
        self._longest_s = 0.0  # the longest timeout of a request so far
        self._suspects: dict[int, list[int]] = {}  # unit -> request counts when it answered
        # alone after losing a pipelined request
        # Pipelined requests made in one turn of the event loop (the devices of one poll
        # tick) go out in one write at its end: one system call, not one a request.
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None  # for the earliest deadline in flight

    def limit_outstanding(self, n: int) -> None:
        """Devices sharing the connection asked for different limits: the smallest holds."""
        self.limit = max(1, min(self.limit, n))

    def alive(self) -> bool:
        """Connected, with a transport that is not closing. A transport asyncio is closing
        (a write failed, say) is given up on at once: its requests fail as disconnected,
        and the next request connects again."""
        transport = self._transport
        if transport is None:
            return False
        if transport.is_closing():
            self._lost(None)
            return False
        return True

    async def transact(
        self,
        unit: int,
        pdu: bytes,
        timeout_s: float,
        pause_s: float = 0.0,
        due: Due | None = None,
    ) -> bytes:
        """Send ``pdu`` to ``unit`` and return the answer's PDU, or raise a DeviceError:
        DeviceUnavailable (timeout, cannot connect, disconnected) or ProtocolError.

        ``due``: send it at ``due.when``, not now (see ``tepi.core.due``); called off before
        then, it raises ``CalledOff``."""
        loop = asyncio.get_running_loop()
        w: _Waiting | None = None
        if due is not None and due.when > loop.time():
            # Held until its instant, then it waits for a slot like any other (``_release``).
            w = _Waiting(unit, pdu, timeout_s, loop.create_future())
            self._hold(w, due.when, loop)
            due.hold(self._call_off, w)
        elif (
            self._waiting
            or self._in_flight >= self.limit
            or (self._line_quiet and self._line_quiet > loop.time())
            or unit in self._busy
            or (self._lost_pipelined and unit in self._lost_pipelined)
        ):
            # Wait for a slot. The request is sent by whoever frees it (``_grant``), and
            # this task wakes once, with the answer: not once to be let in and once more
            # for the answer (a resume of every frame down to here, for most of the 50
            # devices of a tick at max_outstanding 8). Only a request that must wait out a
            # pause, or connect first, wakes to do that itself (its future's result: a bool).
            w = _Waiting(unit, pdu, timeout_s, loop.create_future())
            self._wait(w, loop)
        if w is not None:
            try:
                got = await w.future
            except CalledOff:
                raise  # never let in: nothing to undo
            except BaseException:
                if w.req is not None:  # sent: failed, or cancelled while out
                    self._done(w.req, unit, pause_s, loop)
                elif w.let_in:  # let in, then cancelled before it went on
                    self._done(None, unit, 0.0, loop)
                else:
                    self._unqueue(w)
                raise
            finally:
                if w.timer is not None:
                    w.timer.cancel()
            if w.req is not None:
                self._done(w.req, unit, pause_s, loop)
                return got  # type: ignore[no-any-return]  # the answer's PDU
            alone: bool = got
        else:
            alone = False
            self._in_flight += 1
            self._busy.add(unit)
        req: _Request | None = None
        try:
            if self._quiet:
                await self._keep_quiet(unit, loop)
            transport = self._transport
            if transport is None or transport.is_closing():
                await self._ensure_connected(timeout_s)
                transport = self._transport
                if transport is None or transport.is_closing():
                    # Connected, then lost again before this request's turn came (a reset
                    # right after the accept): as any request on a lost connection.
                    raise DeviceUnavailable("disconnected", f"{self.label}: lost at once")
            req = self._send(
                unit,
                pdu,
                timeout_s,
                loop.create_future(),
                alone=alone,
                transport=transport,
                loop=loop,
            )
            return await req.future  # type: ignore[no-any-return]
        finally:
            self._done(req, unit, pause_s, loop)

    def _send(
        self,
        unit: int,
        pdu: bytes,
        timeout_s: float,
        fut: asyncio.Future[Any],
        *,
        alone: bool,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
    ) -> _Request:
        """Put a request on the wire (or in this turn's write), with its deadline."""
        self._longest_s = max(self._longest_s, timeout_s)
        if self.rtu:
            self._buf.clear()  # no transaction id: what came before this request is stale
            self._scan = 0
            req = _Request(fut, unit, 0, False)
            frame = rtu_frame(unit, pdu)
        else:
            req = _Request(fut, unit, self._next_tid(), not alone and self._in_flight > 1)
            frame = MBAP.pack(req.tid, 0, len(pdu) + 1, unit) + pdu
        self._pending[req.tid] = req
        req.deadline = deadline = loop.time() + timeout_s
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire_due)
        stats = self.stats
        stats.requests += 1
        stats.most_in_flight = max(stats.most_in_flight, self._in_flight)
        if self.limit == 1:
            transport.write(frame)  # nothing to gather
        else:
            if not self._out:
                loop.call_soon(self._flush, transport)
            self._out.append(frame)
        return req

    def _done(
        self,
        req: _Request | None,
        unit: int,
        pause_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """A request let in has ended (answered, failed or cancelled): its slot is free."""
        if req is not None and self._pending.get(req.tid) is req:  # cancelled while out
            del self._pending[req.tid]
            if not self._pending:
                self._stop_timer()
            if not self.rtu:
                self._remember_late(req.tid)
        if self._opener is not None:
            if req is not None:  # it went out: the line's silence, from the answer's end
                if req.answered_at:
                    quiet = req.answered_at + self.gap_s + pause_s
                else:  # none came, or not yet: a late one must not answer the next request
                    quiet = loop.time() + self.gap_s + pause_s + LATE_REPLY_GUARD_S
                self._line_quiet = max(self._line_quiet, quiet)
        elif pause_s > 0:
            self._quiet[None if self.limit == 1 else unit] = loop.time() + pause_s
        self._in_flight -= 1
        self._busy.discard(unit)
        if self._waiting:
            self._grant()

    async def aclose(self) -> None:
        if self._connecting is not None:
            with contextlib.suppress(DeviceUnavailable):
                await cancel_and_wait(self._connecting)
        transport = self._transport
        self._lost(None)
        if self._quiet_timer is not None:
            self._quiet_timer.close()
        if transport is not None:
            transport.close()

    # -- admission: at most ``limit`` in flight, one per unit --------------------------------

    def _wait(self, w: _Waiting, loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``w`` for a slot."""
        self._queue(w, loop)
        self._grant()

    def _queue(self, w: _Waiting, loop: asyncio.AbstractEventLoop) -> None:
        """A unit that lost a pipelined request probes: it waits long enough for every
        request now in flight to end, answered or timed out; then it goes with others."""
        if self.limit > 1 and self._lost_pipelined and w.unit in self._lost_pipelined:
            w.alone = True
            w.timer = loop.call_later(w.timeout_s + self._longest_s, self._stop_waiting_alone, w)
        self._waiting.append(w)

    def _hold(self, w: _Waiting, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Keep ``w`` until ``when``: one timer for every request held until that instant
        (the devices of one poll grid), which queues them all (``_release``)."""
        held = self._held.get(when)
        if held is None:
            held = self._held[when] = []
            at_instant(loop, when, self._release)  # one timer an instant, for every link
        held.append(w)
        w.at = when

    def _release(self, when: float) -> None:
        """The instant of held requests: they queue for a slot, in the order they came,
        and as many as have one go out in one write."""
        held = self._held.pop(when, None)
        if not held:
            return
        loop = asyncio.get_running_loop()
        for w in held:
            w.at = None
            if not w.future.done():
                self._queue(w, loop)
        self._grant()

    def _unhold(self, w: _Waiting) -> bool:
        """Take ``w`` from the held requests; False if it is not held (released already)."""
        held = None if w.at is None else self._held.get(w.at)
        if held is None or w not in held:
            return False
        held.remove(w)
        w.at = None
        return True

    def _call_off(self, w: _Waiting) -> None:
        """The poll loop's bell rang: a request not yet released is called off (one
        released goes on as any request)."""
        if self._unhold(w) and not w.future.done():
            w.future.set_exception(CalledOff())

    def _unqueue(self, w: _Waiting) -> None:
        """A request cancelled before it was let in leaves the held ones, or the queue."""
        if not self._unhold(w) and w in self._waiting:
            self._waiting.remove(w)

    def _stop_waiting_alone(self, w: _Waiting) -> None:
        w.alone = False
        self._grant()

    def _grant(self) -> None:
        """Let in the waiting requests, oldest first, whose unit has nothing in flight, and
        send them; a unit that lost a pipelined request waits for nothing else in flight (a
        while: see ``transact``), while others go on."""
        loop: asyncio.AbstractEventLoop | None = None
        waiting = self._waiting
        if self._line_quiet and waiting:
            loop = asyncio.get_running_loop()
            if self._line_quiet > loop.time():
                assert self._quiet_timer is not None
                self._quiet_timer.call_at(self._line_quiet, self._grant)
                return
            self._line_quiet = 0.0
        i = 0  # nearly always the first one goes: no copy of the deque, no remove() scan
        while i < len(waiting) and self._in_flight < self.limit:
            w = waiting[i]
            if w.future.done() or w.unit in self._busy or (w.alone and self._in_flight):
                i += 1
                continue
            del waiting[i]
            w.let_in = True
            alone = self._in_flight == 0
            self._in_flight += 1
            self._busy.add(w.unit)
            transport = self._transport
            if self._quiet or transport is None or transport.is_closing():
                w.future.set_result(alone)  # its task waits out the pause or connects
                continue
            if loop is None:
                loop = asyncio.get_running_loop()
            w.req = self._send(
                w.unit, w.pdu, w.timeout_s, w.future, alone=alone, transport=transport, loop=loop
            )

    async def _keep_quiet(self, unit: int, loop: asyncio.AbstractEventLoop) -> None:
        """A device's ``pause``: after its request, the connection (one request at a time)
        or, with pipelining, that unit stays quiet this long."""
        until = max(self._quiet.pop(None, 0.0), self._quiet.pop(unit, 0.0))
        if until > loop.time():
            await asyncio.sleep(until - loop.time())

    def _next_tid(self) -> int:
        tid = (self._tid + 1) & 0xFFFF
        while tid in self._pending or tid in self._late:
            tid = (tid + 1) & 0xFFFF
        self._tid = tid
        return tid

    def _remember_late(self, tid: int) -> None:
        self._late[tid] = None
        if len(self._late) > LATE_KEEP:
            del self._late[next(iter(self._late))]

    # -- the connection ----------------------------------------------------------------------

    async def _ensure_connected(self, timeout_s: float) -> None:
        """Connect, once for all the requests that find the link down together."""
        if self.alive():
            return
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._open(timeout_s), name=f"tepi-modbus[{self.label}].connect"
            )
            self._connecting = task
            task.add_done_callback(self._connected)
        await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: each request waiting on it raises it itself

    async def _open(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation.
            async with asyncio.timeout(timeout_s + 1.0):
                if self._opener is not None:
                    transport = await self._opener(lambda: _Connection(self))
                else:
                    transport, _ = await loop.create_connection(
                        lambda: _Connection(self), self.host, self.port
                    )
        except (OSError, TimeoutError) as err:
            raise DeviceUnavailable("cannot connect", f"{self.label}: {err}") from err
        if transport.is_closing() or self._transport is not transport:
            raise DeviceUnavailable("cannot connect", f"{self.label}: closed at once")
        self.stats.connects += 1

    def _flush(self, transport: asyncio.Transport) -> None:
        out, self._out = self._out, []
        if transport is self._transport and not transport.is_closing():
            transport.write(b"".join(out))
        # else: the connection went, and _lost() failed these requests already

    def _attach(self, conn: _Connection, transport: asyncio.Transport) -> None:
        self._conn = conn
        self._transport = transport
        self._buf.clear()

    def _lost(self, exc: Exception | None) -> None:
        """The connection is gone: every request on it fails as disconnected, at once."""
        if self._conn is not None:
            self.stats.disconnects += 1
        self._conn = None
        self._transport = None
        self._buf.clear()
        pending = list(self._pending.values())
        self._pending.clear()
        why = f"{self.label}: connection lost" + (f" ({exc})" if exc else "")
        self._stop_timer()
        for req in pending:
            if not req.future.done():
                req.future.set_exception(DeviceUnavailable("disconnected", why))

    # -- answers -----------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self.rtu:
            self._received_rtu(data)
            return
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        pending = self._pending
        n = len(data)
        pos = 0
        junk = -1  # where bytes that are no frame began
        while n - pos >= _MIN_ANSWER:
            tid, proto, length, unit = MBAP.unpack_from(data, pos)
            if proto or not 3 <= length <= 254:  # 254: a unit id and the 253-byte PDU maximum
                if junk < 0:
                    junk = pos
                pos += 1  # out of step: look for the next frame one byte on
                continue
            if junk >= 0:
                self._noise(data[junk:pos])
                junk = -1
            end = pos + 6 + length
            if end > n:
                break
            req = pending.pop(tid, None)
            if req is None and tid == 0 and len(pending) == 1 and self.limit == 1:
                # Some devices answer every request with transaction id 0; pymodbus took
                # that as the answer, and so does this layer, one request at a time.
                _, req = pending.popitem()
            if req is None:
                self._unmatched(tid, data[pos:end])
            else:
                self._answer(req, unit, data[pos + 7 : end])
            pos = end
        if junk >= 0:
            self._noise(data[junk:pos])
        if pos < n:
            buf += data[pos:]

    def _answer(self, req: _Request, unit: int, pdu: bytes) -> None:
        if not self._pending:
            self._stop_timer()  # nothing else in flight: no wake-up for nothing
        if req.future.done():
            return
        if unit != req.unit:
            req.future.set_exception(
                ProtocolError(
                    "bad frame",
                    f"{self.label} unit {req.unit}: answer to its transaction from unit {unit}",
                )
            )
            return
        if self._lost_pipelined and unit in self._lost_pipelined:
            self._lost_pipelined.discard(unit)
            if not req.pipelined:
                self._suspect(unit)
        req.future.set_result(pdu)

    def _unmatched(self, tid: int, frame: bytes) -> None:
        if tid in self._late:
            del self._late[tid]
            self.stats.late_answers += 1
            log.debug("%s: late answer to transaction %d dropped", self.label, tid)
        else:
            self.stats.stray_frames += 1
            self._noise(frame)

    def _noise(self, data: bytes) -> None:
        """Bytes that answer nothing: counted, and kept by every request waiting, to say
        why it failed if it does."""
        self.stats.garbage_bytes += len(data)
        for req in self._pending.values():
            if len(req.rx) < RX_KEEP:
                req.rx += data[: RX_KEEP - len(req.rx)]

    def _received_rtu(self, data: bytes) -> None:
        req = self._pending.get(0)
        if req is None:
            self.stats.garbage_bytes += len(data)  # nothing asked: a late answer, or noise
            return
        if len(req.rx) < RX_KEEP:
            req.rx += data[: RX_KEEP - len(req.rx)]
        buf = self._buf
        buf += data
        found = self._find_rtu(buf, req.unit)
        if found is None:
            if len(buf) > 2 * RX_KEEP:  # no frame is this long: the start is noise
                del buf[:RX_KEEP]
                self._scan = max(0, self._scan - RX_KEEP)
            return
        start, end = found
        del self._pending[0]
        req.answered_at = asyncio.get_running_loop().time()
        pdu = bytes(buf[start + 1 : end - 2])
        buf.clear()
        self._answer(req, req.unit, pdu)

    def _find_rtu(self, buf: bytearray, unit: int) -> tuple[int, int] | None:
        """The first whole frame from ``unit`` with a valid CRC, as (start, end). A valid
        frame from another unit is stepped over (pymodbus skips it too); a bad CRC or bytes
        that start no frame are stepped over one byte at a time."""
        n = len(buf)
        i = self._scan
        incomplete = -1
        while n - i >= 5:  # the shortest answer, an exception, is 5 bytes
            size = answer_length(buf, i)
            if size is None:
                i += 1
                continue
            if i + size > n:
                if incomplete < 0:
                    incomplete = i
                i += 1
                continue
            crc = buf[i + size - 2] << 8 | buf[i + size - 1]
            if FramerRTU.check_CRC(bytes(buf[i : i + size - 2]), crc):
                if buf[i] == unit:
                    return i, i + size
                i += size
                continue
            i += 1
        self._scan = i if incomplete < 0 else incomplete
        return None

    # -- timeouts ----------------------------------------------------------------------------

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        """The link's timer: fail the requests past their deadline, then arm it for the
        earliest deadline left."""
        self._timer = None
        now = asyncio.get_running_loop().time() + 1e-6
        due = [req for req in self._pending.values() if req.deadline <= now]
        for req in sorted(due, key=lambda r: r.deadline):
            self._expire(req)
        if self._pending:
            first = min(req.deadline for req in self._pending.values())
            self._timer = asyncio.get_running_loop().call_at(first, self._expire_due)

    def _expire(self, req: _Request) -> None:
        if self._pending.get(req.tid) is not req:
            return
        del self._pending[req.tid]
        if self.rtu:
            self._buf.clear()
        else:
            self._remember_late(req.tid)
            self._drop_stale(req)
        if req.pipelined and self.limit > 1:
            self._lost_pipelined.add(req.unit)
        else:
            self._lost_pipelined.discard(req.unit)  # lost alone: the unit, not the gateway
        if not req.future.done():
            req.future.set_exception(why_no_reply(self.label, req.unit, bytes(req.rx), self.rtu))

    def _drop_stale(self, req: _Request) -> None:
        """What waits in the buffer for the rest of a frame when a request times out: with
        nothing else in flight, or with a whole header whose transaction nobody waits for,
        it is a frame cut short (the rest is not coming), and would swallow the next answer."""
        buf = self._buf
        if not buf:
            return
        if self._pending and (len(buf) < MBAP.size or MBAP.unpack_from(buf)[0] in self._pending):
            return
        self.stats.garbage_bytes += len(buf)
        if len(req.rx) < RX_KEEP:
            req.rx += buf[: RX_KEEP - len(req.rx)]
        buf.clear()

    def _suspect(self, unit: int) -> None:
        """``unit`` answers, yet lost a request sent while others were in flight."""
        now = self.stats.requests
        self._suspects.setdefault(unit, []).append(now)
        for u, times in list(self._suspects.items()):
            kept = [t for t in times if now - t <= SUSPECT_WINDOW]
            if kept:
                self._suspects[u] = kept
            else:
                del self._suspects[u]
        units = sorted(u for u, times in self._suspects.items() if len(times) >= SUSPECT_TIMES)
        if len(units) < SUSPECT_UNITS or self.limit == 1:
            return
        log.warning(
            "%s: units %s lost requests sent while others were in flight, and answered the "
            "next ones: the gateway takes one request at a time. max_outstanding is lowered "
            "from %d to 1 on this link; set max_outstanding: 1 for the devices at this address",
            self.label,
            ", ".join(map(str, units)),
            self.limit,
        )
        self.limit = 1
        self.stats.pipelining_fallbacks += 1
        self._suspects.clear()
        self._lost_pipelined.clear()
