"""The agent's time sources: the kernel's clock when it is synced, else a GPS receiver's.

A Pi has no real-time clock. Until NTP syncs it, its wall clock can be years off, and on a
closed 4G APN NTP may never be reachable. A GPS receiver with a fix knows UTC to well under a
microsecond; what reaches the agent is an NMEA sentence that left the receiver a few hundred
milliseconds after the second it names. An ``nmea`` device marked ``clock_source: true``
feeds each valid RMC time here.

From each sentence the clock keeps ``utc - mono`` (``mono`` = CLOCK_BOOTTIME when the line was
read). A sentence can only arrive *late*, never early, so the largest of the recent
differences is the least delayed one: the offset is the maximum over the last
``WINDOW`` fixes. While the kernel clock is not synced, readings are dated ``mono + offset``
and flagged ``gps_time`` (``ts_status: gps`` in the payload), as long as the last fix is
younger than ``max_age_s`` (CLOCK_BOOTTIME drifts by some ppm with no time source at all).
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 16
_TIME_ERROR = 5
_libc: ctypes.CDLL | None = None


def boottime() -> float:
    """Seconds since boot, counting suspend: the monotonic clock readings carry."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def clock_synced() -> bool:
    """Whether the kernel believes the wall clock is synchronised (adjtimex != TIME_ERROR)."""
    global _libc  # noqa: PLW0603 - loaded once, lazily
    try:
        if _libc is None:
            # The process's own symbols (libc's adjtimex, or a preloaded one): not a second
            # handle on libc, which would bypass LD_PRELOAD.
            _libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0, read only
        state = _libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return bool(state != _TIME_ERROR and state >= 0)


GPS_MAX_AGE_S = 3600.0


@dataclass(slots=True, frozen=True)
class Stamp:
    """How to date the readings of one poll."""

    synced: bool  # the kernel's wall clock is synchronised: use the samples' own ts
    gps_fix: float | None  # not synced, but ts = mono + gps_fix (a fresh GPS time)


_SYNCED = Stamp(True, None)


class WallClock:
    """See the module docstring. One per agent, shared by the pollers and GPS devices."""

    def __init__(
        self,
        synced: Callable[[], bool] = clock_synced,
        *,
        max_age_s: float = GPS_MAX_AGE_S,
    ) -> None:
        self._synced = synced
        self.max_age_s = max_age_s
        self._fixes: deque[float] = deque(maxlen=WINDOW)
        self._last_mono: float | None = None
        self.source_device: str | None = None
        self._tick: tuple[float, Stamp] | None = None  # stamp_for's last tick and its stamp

    def gps_update(self, utc: float, mono: float, device: str) -> None:
        """A valid GPS time ``utc`` read at boot time ``mono``, from ``device``."""
        self._fixes.append(utc - mono)
        self._last_mono = mono
        self.source_device = device

    def gps_fix(self, now_mono: float | None = None) -> float | None:
        """``utc - mono`` from GPS, if a fix is fresh enough to date readings by."""
        if self._last_mono is None:
            return None
        now = boottime() if now_mono is None else now_mono
        if now - self._last_mono > self.max_age_s:
            return None
        return max(self._fixes)

    def stamp(self) -> Stamp:
        """Asked before each poll: how its readings are to be dated."""
        if self._synced():
            return _SYNCED
        return Stamp(False, self.gps_fix())

    def stamp_for(self, tick: float) -> Stamp:
        """``stamp()``, asked once for the polls of one tick of the poll grid (the devices
        with one interval poll at the same instants): asking the kernel is a system call
        through ctypes, once a tick rather than once a device."""
        last = self._tick
        if last is not None and last[0] == tick:
            return last[1]
        stamp = self.stamp()
        self._tick = (tick, stamp)
        return stamp

    def health(self) -> dict[str, object]:
        """The ``clock`` part of the health message."""
        mono = boottime()
        fix = self.gps_fix(mono)
        age = None if self._last_mono is None else round(mono - self._last_mono, 1)
        synced = self._synced()
        return {
            "synced": synced,
            "source": "system" if synced else "gps" if fix is not None else None,
            "gps_device": self.source_device,
            "gps_fix_age_s": age,
            # GPS time minus the system clock: how far off the system clock is, by GPS.
            "gps_offset_s": None
            if not self._fixes
            else round(max(self._fixes) + mono - time.time(), 3),
        }
