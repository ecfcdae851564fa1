"""The driver interface that every device family implements (Modbus, serial, cameras).

The agent owns scheduling: it enters a driver's context once, then calls ``read()`` every
``poll_interval``. ``read()`` returns one :class:`Sample` per metric it could read, stamped
when the value was read (not when it was converted or sent), or, for values read at one
instant (a Modbus request), one :class:`Values` for all of them: the fast path. A register
the device refused comes back as a bad sample (or value) with a reason; a device that did
not answer at all raises :class:`tepi.core.errors.DeviceUnavailable`, and a garbled answer
:class:`tepi.core.errors.ProtocolError`.

A driver whose transport can send a request at a given instant may say so: ``schedules()``
(asked once the driver is open) true, and ``read(due)`` then takes a
:class:`tepi.core.due.Due`. The agent hands it the next tick instead of sleeping to it, and
the read raises :class:`tepi.core.due.CalledOff` when the agent calls it off before then (a
poll asked for now, a new interval, the stop). Modbus TCP does; a driver that does not is
polled as before.

Devices that share a transport (several Modbus slaves on one RS-485 port, several unit ids
behind one TCP gateway) share it through :class:`SharedResources`: the first user opens it,
the last one closes it, and each transport serialises its own requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

from tepi.core.records import MetricInfo, Sample, Values
from tepi.core.units import Duration

__all__ = [
    "Driver",
    "DriverConfig",
    "MetricInfo",
    "Sample",
    "SharedResource",
    "SharedResources",
    "Values",
]


class DriverConfig(BaseModel):
    """Keys common to every device. Each driver family extends it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Unique device id: letters, digits, '.', '_' or '-'. Goes into every reading.",
    )
    poll_interval: Duration = Field(
        default=10.0, gt=0, description="How often the agent reads the device, e.g. 1s, 10s, 5m."
    )
    timeout: Duration = Field(
        default=1.0,
        gt=0,
        description="How long to wait for one answer before it counts as a timeout.",
    )
    quarantine_after: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="After this many failed polls in a row, poll the device only now and then "
        "(backing off to quarantine_max) until it answers, so it does not take the bus time of "
        "the devices that work.",
    )
    quarantine_max: Duration = Field(
        default=300.0,
        gt=0,
        description="The longest wait between two probes of a quarantined device.",
    )
    bad_heartbeat: Duration = Field(
        default=300.0,
        gt=0,
        description="A metric that stays bad for the same reason (a register refused every "
        "poll) is sent once, then again only this often; the polls between are counted.",
    )


class Driver(Protocol):
    """What the agent needs from a driver."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def read(self) -> Sequence[Sample | Values]: ...

    def metrics(self) -> list[MetricInfo]: ...


class SharedResource(Protocol):
    async def aclose(self) -> None: ...


class SharedResources:
    """Reference-counted transports shared by the devices that use the same port or host."""

    def __init__(self, gps_time: Callable[[float, float, str], None] | None = None) -> None:
        self._items: dict[tuple[Any, ...], tuple[SharedResource, int]] = {}
        # Where a GPS device marked as the clock source reports each valid time:
        # (UTC seconds, CLOCK_BOOTTIME when read, device id). None: nobody listens.
        self.gps_time = gps_time
        # Where cameras store their images (the agent's image buffer; an ImageSink, see
        # tepi.drivers.camera.driver). None: images are not kept.
        self.images: Any = None
        self._lock = asyncio.Lock()

    async def acquire(
        self, key: tuple[Any, ...], factory: Callable[[], Awaitable[SharedResource]]
    ) -> SharedResource:
        async with self._lock:
            if key in self._items:
                res, n = self._items[key]
                self._items[key] = (res, n + 1)
                return res
            res = await factory()
            self._items[key] = (res, 1)
            return res

    async def release(self, key: tuple[Any, ...]) -> None:
        async with self._lock:
            res, n = self._items[key]
            if n > 1:
                self._items[key] = (res, n - 1)
                return
            del self._items[key]
        await res.aclose()
