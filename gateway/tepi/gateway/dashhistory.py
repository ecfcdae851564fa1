"""The web console's recent values: a small ring per (device, metric), for the sparklines.

Why it is filled the way it is: most readings never touch the disk (the broker acknowledges
them from RAM), so the last hour has to be kept somewhere, and a box with no browser open
should not pay for it. Nothing hooks the poll path. The console's live stream (one per open
page) samples the devices' latest readings, which the agent keeps anyway for the status
API, once a second; a reading whose time the ring already has is skipped, so two pages
record each value once. With no page open nothing runs and nothing is recorded: the plots
begin when the first page opens, and the rings keep what they hold (at most
:data:`POINTS` points of :data:`STEP_S` seconds, an hour; :data:`MAX_SERIES` series) while
no page is open. docs/performance.md has the cost.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["MAX_SERIES", "POINTS", "STEP_S", "History"]

STEP_S = 10.0  # one point per 10 s: the newest value in its step replaces the one before
POINTS = 360  # an hour of steps
MAX_SERIES = 2000  # (device, metric) series kept; more are not recorded

Point = tuple[float, float]


class History:
    """The rings. ``record`` takes the status API's ``/devices`` answer."""

    def __init__(self) -> None:
        self._rings: dict[tuple[str, str], deque[Point]] = {}
        self._seen: dict[tuple[str, str], float] = {}  # the last reading time recorded

    def record(self, devices: dict[str, Any]) -> None:
        for dev, d in devices.items():
            for metric, r in d.get("last", {}).items():
                self.add(dev, metric, r.get("ts"), r.get("value"), r.get("quality"))

    def add(self, dev: str, metric: str, ts: Any, value: Any, quality: Any = "good") -> None:
        """One reading, if numeric, not bad, and newer than the last one recorded."""
        if quality == "bad" or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if not isinstance(ts, int | float):
            return
        key = (dev, metric)
        if self._seen.get(key, -1.0) >= ts:
            return
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= MAX_SERIES:
                return
            ring = self._rings[key] = deque(maxlen=POINTS)
        self._seen[key] = ts
        point = (round(float(ts), 3), float(value))
        if ring and ts // STEP_S == ring[-1][0] // STEP_S:
            ring[-1] = point  # the same step: the newest value stands for it
        else:
            ring.append(point)

    def series(
        self, dev: str, since: float = 0.0, now: float | None = None
    ) -> dict[str, list[Point]]:
        """``dev``'s points newer than ``since`` (and within the hour before ``now``), by metric."""
        floor = since if now is None else max(since, now - POINTS * STEP_S)
        out: dict[str, list[Point]] = {}
        for (d, metric), ring in self._rings.items():
            if d == dev:
                pts = [p for p in ring if p[0] > floor] if ring and ring[-1][0] > floor else []
                if pts:
                    out[metric] = pts
        return out

    def changed_since(self, since: float) -> dict[str, dict[str, list[Point]]]:
        """Every device's points newer than ``since`` (the live stream's delta)."""
        devs = {d for (d, _), ring in self._rings.items() if ring and ring[-1][0] > since}
        return {d: self.series(d, since) for d in sorted(devs)}

    def sizes(self) -> tuple[int, int]:
        """(series, points) kept."""
        return len(self._rings), sum(len(r) for r in self._rings.values())
