"""A Modbus device: plan its reads once, then read, decode and stamp on every poll.

The plan merges registers into few requests, filling gaps of up to ``max_gap`` unused
registers. A device that answers a merged read with exception 2 (illegal data address) has a
hole there: the read is split, at once and for good (the device keeps its own plan), so only
a register that is itself refused ends up as a bad reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from tepi.core.clock import boottime
from tepi.core.due import Due
from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError, WriteRefused
from tepi.core.records import MetricInfo, Values
from tepi.drivers.base import SharedResources
from tepi.drivers.modbus.codec import (
    ReadRequest,
    Value,
    decode_register,
    plan_reads,
    raw_for_write,
    value_of,
)
from tepi.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from tepi.drivers.modbus.decoder import Decoder, compile_request
from tepi.drivers.modbus.link import ExceptionReply, ModbusLink
from tepi.drivers.modbus.wire import READ_FC, read_answer, read_pdu

log = logging.getLogger(__name__)
ILLEGAL_ADDRESS = 2


def split(req: ReadRequest) -> list[ReadRequest]:
    """A refused merged read, in smaller reads: first without the gaps, then one by one."""
    parts = plan_reads(req.registers, max_gap=0)
    if len(parts) > 1:
        return parts
    if len(req.registers) > 1:
        return [ReadRequest(req.table, r.address, r.width, (r,)) for r in req.registers]
    return [req]


@dataclass(slots=True)
class LinkStats:
    """What one device's requests met on the wire, for the health message."""

    requests: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    retries: int = 0
    splits: int = 0  # merged reads split after the device refused them (exception 2)
    latency_total_s: float = 0.0
    latency_max_s: float = 0.0
    answered: int = 0

    def as_dict(self) -> dict[str, object]:
        avg = self.latency_total_s / self.answered if self.answered else None
        return {
            "requests": self.requests,
            "timeouts": self.timeouts,
            "bad_frames": self.bad_frames,
            "crc_errors": self.crc_errors,
            "exceptions": self.exceptions,
            "retries": self.retries,
            "splits": self.splits,
            "latency_ms_avg": None if avg is None else round(avg * 1000, 2),
            "latency_ms_max": round(self.latency_max_s * 1000, 2) if self.answered else None,
        }


@dataclass(slots=True)
class _Sent:
    value: Value | None
    reason: str | None
    mono: float


def changed(old: Value | None, new: Value | None, deadband: float) -> bool:
    if isinstance(old, bool) or isinstance(new, bool) or old is None or new is None:
        return old != new
    if isinstance(old, int | float) and isinstance(new, int | float):
        return abs(new - old) > deadband
    return old != new


class ModbusDriver:
    """Reads one Modbus device's configured registers; see ``tepi.drivers.base.Driver``."""

    def __init__(
        self, config: ModbusRtuConfig | ModbusTcpConfig, resources: SharedResources
    ) -> None:
        self.config = config
        self._resources = resources
        self._plan = [
            (req, compile_request(req))
            for req in plan_reads(config.wire_registers(), max_gap=config.max_gap)
        ]
        self._by_name = {r.name: r for r in config.registers}
        self._deadbands = {r.name: r.deadband for r in config.registers if r.deadband is not None}
        self._sent: dict[str, _Sent] = {}
        self.link_stats = LinkStats()
        self._link: ModbusLink | None = None
        if isinstance(config, ModbusRtuConfig):
            self._key: tuple[object, ...] = ("modbus-serial", config.port)
        else:
            self._key = ("modbus-tcp", config.host, config.port, config.framing)

    async def _make_link(self) -> ModbusLink:
        cfg = self.config
        if isinstance(cfg, ModbusRtuConfig):
            return ModbusLink.serial(cfg.port, cfg.baudrate, cfg.parity, cfg.bytesize, cfg.stopbits)
        return ModbusLink.tcp(cfg.host, cfg.port, cfg.framing, cfg.max_outstanding)

    async def __aenter__(self) -> Self:
        link = await self._resources.acquire(self._key, self._make_link)
        assert isinstance(link, ModbusLink)
        if isinstance(self.config, ModbusTcpConfig):
            link.limit_outstanding(self.config.max_outstanding)  # tepi check refuses a mismatch
        self._link = link
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._link is not None:
            self._link = None
            await self._resources.release(self._key)

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo(r.name, r.unit) for r in self.config.registers]

    @property
    def plan(self) -> list[ReadRequest]:
        """The reads a poll makes now (a refused merged read is split for good)."""
        return [req for req, _ in self._plan]

    def schedules(self) -> bool:
        """Whether ``read`` takes a ``Due``: once open, yes: the link (TCP or a serial line)
        holds the poll's first request until the tick and sends it then (``tepi.core.due``)."""
        return self._link is not None

    async def read(self, due: Due | None = None) -> list[Values]:
        """One poll: the values of each request as one :class:`Values`. Raises when no
        request got an answer; otherwise a request that failed gives its registers as bad
        values with the failure's short reason. ``due`` (when ``schedules``): the first
        request goes at ``due.when``; called off before then, this raises ``CalledOff``."""
        if self._link is None:
            raise RuntimeError("ModbusDriver.read() outside its context")
        cfg = self.config
        out: list[Values] = []
        errors: list[DeviceError] = []
        answered = 0
        todo = deque(self._plan)
        plan: list[tuple[ReadRequest, Decoder]] = []
        while todo:
            req, decoder = todo.popleft()
            data: bytes | list[bool] | ExceptionReply | DeviceError
            try:
                data = await self._request(req, due)
            except DeviceError as err:
                if isinstance(err, DeviceUnavailable) and answered == 0:
                    raise  # not answering: do not spend a timeout on each request
                data = err
            due = None  # the poll's first request only: the others follow its answer
            if isinstance(data, ExceptionReply) and data.code == ILLEGAL_ADDRESS:
                parts = split(req)
                if len(parts) > 1:
                    self.link_stats.splits += 1
                    log.info(
                        "device %s refused a read of %d %s registers at %d (exception 2): "
                        "split into %d reads, kept for this device",
                        cfg.id,
                        req.count,
                        req.table,
                        req.address,
                        len(parts),
                    )
                    todo.extendleft(reversed([(p, compile_request(p)) for p in parts]))
                    continue
            plan.append((req, decoder))
            ts, mono = time.time(), boottime()
            if isinstance(data, DeviceError | ExceptionReply):
                if isinstance(data, DeviceError):
                    errors.append(data)
                else:
                    answered += 1
                n = len(decoder.names)
                out.append(
                    Values(decoder.names, decoder.units, [None] * n, ts, mono, [data.reason] * n)
                )
                continue
            answered += 1
            values, reasons = decoder(data)
            out.append(
                Values(decoder.names, decoder.units, values, ts, mono, reasons, decoder.storable)
            )
        self._plan = plan
        if answered == 0 and errors:
            raise errors[0]
        if self._deadbands:
            return [v for v in map(self._report, out) if v is not None]
        return out

    async def _request(
        self, req: ReadRequest, due: Due | None = None
    ) -> bytes | list[bool] | ExceptionReply:
        """One read, asked again up to ``retries`` times on no answer or a garbled one.
        ``due``: the first attempt goes at ``due.when``."""
        link = self._link
        assert link is not None
        cfg = self.config
        st = self.link_stats
        loop = asyncio.get_running_loop()
        tcp = link.transactions
        for attempt in range(cfg.retries + 1):
            st.requests += 1
            if attempt:
                st.retries += 1
            started = loop.time()
            if due is not None and due.when > started:
                started = due.when  # held until then: its latency starts when it goes
            try:
                # ``link.read_bytes``, inline: a coroutine frame less on each resume, on the
                # hot path of a gateway's 500 polls a second.
                answer = await tcp.transact(
                    cfg.unit,
                    read_pdu(READ_FC[req.table], req.address, req.count),
                    cfg.timeout,
                    cfg.pause,
                    due,
                )
                data = read_answer(link.label, cfg.unit, req.table, req.count, answer)
            except DeviceUnavailable as err:
                due = None
                if err.reason != "timeout":
                    raise
                st.timeouts += 1
                if attempt == cfg.retries:
                    raise
                continue
            except ProtocolError as err:
                due = None
                if err.reason == "crc error":
                    st.crc_errors += 1
                else:
                    st.bad_frames += 1
                if attempt == cfg.retries:
                    raise
                continue
            took = loop.time() - started
            st.answered += 1
            st.latency_total_s += took
            st.latency_max_s = max(st.latency_max_s, took)
            if isinstance(data, ExceptionReply):
                st.exceptions += 1
            return data
        raise AssertionError("unreachable")  # the loop returns or raises

    def protocol_stats(self) -> dict[str, object]:
        out = self.link_stats.as_dict()
        link = self._link
        if link is not None:
            tcp = link.stream_stats
            # The connection's (or serial port's) own counters, shared by every device at its
            # address or on its line: what the stream held besides this device's answers,
            # and how pipelining went.
            out["link"] = {
                "max_outstanding": link.max_outstanding,
                "most_in_flight": tcp.most_in_flight,
                "late_answers": tcp.late_answers,
                "stray_frames": tcp.stray_frames,
                "garbage_bytes": tcp.garbage_bytes,
                "connects": tcp.connects,
                "disconnects": tcp.disconnects,
                "pipelining_fallbacks": tcp.pipelining_fallbacks,
            }
        return out

    async def write(self, name: str, value: Value) -> Value:
        """Write one register marked ``writable``, read it back, and return what it now holds.

        Refused (``WriteRefused``) when the register is not writable, the value is out of its
        ``min``/``max`` or its type's range, the device answers with an exception, or the value
        read back differs. The remote commands of a later issue call this.
        """
        if self._link is None:
            raise RuntimeError("ModbusDriver.write() outside its context")
        cfg = self.config
        reg = self._by_name.get(name)
        if reg is None:
            raise WriteRefused("unknown register", f"{cfg.id} has no register {name!r}")
        if not reg.writable:
            raise WriteRefused(
                "not writable", f"{cfg.id}.{name} is not marked writable: true in the config"
            )
        words = raw_for_write(value, reg)
        wire = reg.address - cfg.address_base
        reply = await self._link.write(
            reg.table, wire, words, cfg.unit, cfg.timeout, pause_s=cfg.pause
        )
        if reply is not None:
            raise WriteRefused("refused by device", f"{cfg.id}.{name}: {reply.reason}")
        back = await self._link.read(
            reg.table, wire, reg.width, cfg.unit, cfg.timeout, pause_s=cfg.pause
        )
        if isinstance(back, ExceptionReply):
            raise WriteRefused("read-back failed", f"{cfg.id}.{name}: {back.reason}")
        if [int(w) for w in back] != [int(w) for w in words]:
            raise WriteRefused(
                "read-back differs", f"{cfg.id}.{name}: wrote {words}, the device holds {back}"
            )
        got, _ = value_of(decode_register(back, reg), reg)
        if got is None:
            raise WriteRefused("read-back failed", f"{cfg.id}.{name}: not a valid value")
        log.info("device %s: wrote %s = %r (read back %r)", cfg.id, name, value, got)
        return got

    def _report(self, polled: Values) -> Values | None:
        """Drop unchanged values of registers with a deadband, until their heartbeat."""
        deadbands = self._deadbands
        keep: list[int] = []
        reasons = polled.reasons
        mono = polled.mono
        heartbeat = self.config.heartbeat
        for i, (name, value) in enumerate(zip(polled.metrics, polled.values, strict=True)):
            band = deadbands.get(name)
            if band is None:
                keep.append(i)
                continue
            reason = None if reasons is None else reasons[i]
            last = self._sent.get(name)
            if (
                last is not None
                and last.reason == reason
                and mono - last.mono < heartbeat
                and not changed(last.value, value, band)
            ):
                continue
            self._sent[name] = _Sent(value, reason, mono)
            keep.append(i)
        if len(keep) == len(polled.values):
            return polled
        if not keep:
            return None
        return Values(
            tuple(polled.metrics[i] for i in keep),
            tuple(polled.units[i] for i in keep),
            [polled.values[i] for i in keep],
            polled.ts,
            mono,
            None if reasons is None else [reasons[i] for i in keep],
        )
