"""A UART sensor: frames in, one value per metric out on each poll.

*Streaming* sensors (a PMS5003 in active mode, an SDS011 reporting, a GPS, a text node) push
data whenever they like. The port's bytes go through the protocol's framer as they arrive,
each valid frame is decoded into the :class:`~tepi.drivers.serial.aggregate.Window`, and a poll
takes the window: the mean (or last, min, max, count) of what arrived since the last poll.
*Request/response* sensors (MH-Z19, a PMS or SDS in passive mode) are asked on each poll.

When the port opens (at start and after every replug, which powers the sensor up again) the
driver sends the protocol's set-up commands (wake, mode, working period, ABC) and starts the
warm-up: values in the first ``warmup`` seconds are sent with quality ``uncertain``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from tepi.core.clock import boottime
from tepi.core.errors import DeviceUnavailable, ProtocolError
from tepi.core.records import MetricInfo, Sample, Value, storable
from tepi.drivers.base import SharedResources
from tepi.drivers.serial import codecs
from tepi.drivers.serial.aggregate import Window
from tepi.drivers.serial.config import SerialConfig
from tepi.drivers.serial.protocols import PROTOCOLS
from tepi.drivers.serial.transport import SerialPort

log = logging.getLogger(__name__)

_POSITION = frozenset({"latitude", "longitude", "altitude", "speed", "course"})
WARMING_UP = "warming up"


@dataclass(slots=True)
class SerialStats:
    """What the frames met, beside the framer's own counters, for the health message."""

    data_frames: int = 0
    parse_errors: int = 0
    requests: int = 0
    timeouts: int = 0
    last_frame_mono: float | None = None


def check_values(values: Mapping[str, Value]) -> None:
    """Raise FrameError for a value the buffer cannot keep (an unset uint64 sentinel,
    1e999): counted as a parse error before it reaches the window."""
    for name, v in values.items():
        why = storable(v)
        if why is not None:
            raise codecs.FrameError(f"{name}: {v}: {why}")


class SerialDriver:
    """Reads one UART sensor; see the module docstring and ``tepi.drivers.base.Driver``."""

    # A sensor alone on its port costs nobody bus time when it is dead: never quarantine it,
    # so a replugged sensor is read again on the next poll.
    quarantine = False

    def __init__(self, config: SerialConfig, resources: SharedResources) -> None:
        self.config = config
        # The protocol is picked here, once; from then on the driver only calls it.
        self._protocol = PROTOCOLS[config.protocol](config, resources.gps_time)
        self._decode = self._protocol.decode
        self._framer = self._protocol.framer()
        self._outputs = config.outputs()
        self._window = Window()
        self.stats = SerialStats()
        self._frame = asyncio.Event()
        self._answer: asyncio.Future[Mapping[str, Value]] | None = None
        self._woken_mono = 0.0
        self._noise_mark = 0  # framing noise counted up to the last good poll
        self._port = SerialPort(
            config.port,
            config.baudrate,
            self._on_data,
            on_open=self._on_open,
            name=config.id,
        )

    async def __aenter__(self) -> Self:
        await self._port.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._port.__aexit__(et, e, tb)

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo(name, unit) for name, _, unit, _ in self._outputs]

    def _on_open(self) -> None:
        self._framer.reset()
        self._window.take()
        self._woken_mono = boottime()
        for cmd in self._protocol.setup():
            self._port.write(cmd)

    def _on_data(self, data: bytes, mono: float) -> None:
        for frame in self._framer.feed(data):
            try:
                values = self._decode(frame, mono)
                if values is not None:
                    check_values(values)
            except Exception as err:  # noqa: BLE001 - whatever a device sends is counted,
                # never raised into the event loop (which would lose the rest of the chunk)
                self.stats.parse_errors += 1
                if self.stats.parse_errors == 1:
                    log.warning("device %s: a frame that does not parse: %s", self.config.id, err)
                continue
            if values is None:
                continue
            self.stats.data_frames += 1
            self.stats.last_frame_mono = mono
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(values)
            elif self.config.streaming:
                self._window.add(values, warming=mono - self._woken_mono < self.config.warmup_s)
                self._frame.set()

    def _noise(self) -> int:
        fs = self._framer.stats
        return fs.bad_checksums + fs.garbage_bytes + fs.too_long + self.stats.parse_errors

    def _unavailable(self) -> DeviceUnavailable:
        port = self._port
        down = port.down_for()
        detail = f"{port.path}: {port.stats.last_error or port.state}"
        if down is not None:
            detail += f", for {down:.0f} s"
        return DeviceUnavailable(port.reason or "port missing", detail)

    async def read(self) -> list[Sample]:
        cfg, port = self.config, self._port
        # At start the port is still being opened; once it is known gone, do not wait.
        if not port.is_open and (port.state != "closed" or not await port.wait_open(cfg.timeout)):
            raise self._unavailable()
        if cfg.streaming:
            frames, accs, warming = self._window.take()
            if frames == 0:
                self._frame.clear()
                try:
                    async with asyncio.timeout(cfg.timeout):
                        await self._frame.wait()
                except TimeoutError:
                    raise self._no_data() from None
                frames, accs, warming = self._window.take()
            # A window with any frame from the warm-up is as uncertain as that frame.
            self._noise_mark = self._noise()
            values = dict(accs)
            ts, mono = time.time(), boottime()
            return self._samples(
                {
                    name: acc.result(fn)
                    for name, src, _, fn in self._outputs
                    if (acc := values.get(src))
                },
                ts,
                mono,
                warming,
            )
        answer = await self._ask()
        self._noise_mark = self._noise()
        ts, mono = time.time(), boottime()
        warming = mono - self._woken_mono < cfg.warmup_s
        return self._samples(
            {name: answer.get(src) for name, src, _, _ in self._outputs}, ts, mono, warming
        )

    def _no_data(self) -> DeviceUnavailable | ProtocolError:
        if not self._port.is_open:
            return self._unavailable()
        if self._noise() > self._noise_mark:  # noise since the last good poll, not ever
            return ProtocolError(
                "no valid frame",
                f"{self._port.path}: bytes arrive but no valid frame in "
                f"{self.config.timeout:g} s (wrong baud rate or protocol, or noise on the line?)",
            )
        return DeviceUnavailable(
            "no data", f"{self._port.path}: nothing received in {self.config.timeout:g} s"
        )

    async def _ask(self) -> Mapping[str, Value]:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for _ in range(cfg.retries + 1):
            self.stats.requests += 1
            self._port.discard_input()
            self._framer.reset()
            self._answer = loop.create_future()
            try:
                if not self._port.write(self._protocol.request()):
                    raise self._unavailable()
                async with asyncio.timeout(cfg.timeout):
                    return await self._answer
            except TimeoutError:
                self.stats.timeouts += 1
            finally:
                self._answer = None
        raise self._no_data()

    def _samples(
        self, values: dict[str, Value], ts: float, mono: float, warming: bool
    ) -> list[Sample]:
        out: list[Sample] = []
        for name, src, unit, _ in self._outputs:
            value = values.get(name)
            if value is None:
                why = "no fix" if src in _POSITION else "no data"
                out.append(Sample(name, None, unit, ts, mono, why))
            elif warming:
                out.append(Sample(name, value, unit, ts, mono, WARMING_UP, uncertain=True))
            else:
                out.append(Sample(name, value, unit, ts, mono))
        return out

    def _silent(self) -> bool:
        """Open, but no valid frame for two poll intervals (and two timeouts) since it
        opened: a sensor powered off, or on the wrong pins."""
        cfg = self.config
        quiet = max(2 * cfg.poll_interval, 2 * cfg.timeout)
        last = self.stats.last_frame_mono
        since = self._woken_mono if last is None or last < self._woken_mono else last
        return boottime() - since > quiet

    def protocol_stats(self) -> dict[str, object]:
        """The ``protocol`` part of this device's health."""
        port, st, fs = self._port, self.stats, self._framer.stats
        age = None if st.last_frame_mono is None else round(boottime() - st.last_frame_mono, 1)
        state: str = port.state
        if state == "open" and self._silent():
            state = "no data"
        return {
            "port": port.path,
            "port_state": state,
            "opens": port.stats.opens,
            "losses": port.stats.losses,
            "down_s": None if (d := port.down_for()) is None else round(d, 1),
            "gaps": [g.as_dict() for g in port.stats.gaps],
            "gap_total_s": round(port.stats.gap_total_s, 1),
            "bytes_in": port.stats.bytes_in,
            "frames": st.data_frames,
            "bad_checksums": fs.bad_checksums,
            "garbage_bytes": fs.garbage_bytes,
            "too_long": fs.too_long,
            "parse_errors": st.parse_errors,
            "requests": st.requests,
            "timeouts": st.timeouts,
            "last_frame_age_s": age,
            "warming_up": boottime() - self._woken_mono < self.config.warmup_s and port.is_open,
        }
