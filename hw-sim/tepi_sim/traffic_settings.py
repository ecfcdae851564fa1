"""The settings of the synthetic traffic scene, and their validation from YAML.

This module needs only the standard library, so :mod:`tepi_sim.model` can validate a
camera's ``traffic:`` mapping without importing numpy or OpenCV; :mod:`tepi_sim.traffic`
builds the scene from a :class:`TrafficSettings`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final

__all__ = ["CLASSES", "TrafficSettings", "traffic_settings"]

CLASSES: Final = ("two_wheeler", "car", "bus_truck")
"""Vehicle classes, in the order of :attr:`TrafficSettings.class_mix`."""

LANE_WIDTH_M: Final = 3.5
MEDIAN_M: Final = 1.0


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """Everything that shapes a traffic scene; the same settings and seed give the same scene.

    Frozen and hashable, so tests can cache scenes by their settings."""

    seed: int = 0
    width: int = 640
    """Frame width in pixels."""
    height: int = 360
    """Frame height in pixels."""
    width_m: float = 48.0
    """Metres of road across the frame: the scale (640 px over 48 m is 13.3 px/m)."""
    duration_s: float = 300.0
    """Scene time simulated; the scene repeats after it (a camera loops it)."""
    lanes_per_direction: int = 2
    """Lanes each way: westbound on the upper half of the road, eastbound on the lower."""
    flow_per_lane_min: float = 15.0
    """Vehicles arriving per lane per minute (a signal and close followers bunch them)."""
    class_mix: tuple[float, float, float] = (0.7, 0.22, 0.08)
    """Shares of two-wheelers, cars and buses/trucks (normalised; need not sum to 1)."""
    speed_mps: tuple[float, float] = (5.0, 12.0)
    """Range of desired speeds, m/s (buses and trucks keep to at most 11)."""
    close_followers: float = 0.3
    """Share of vehicles that arrive right behind the one before and keep a short headway."""
    lane_changes: float = 0.12
    """Share of vehicles that change to the neighbouring lane once in view."""
    noise: int = 4
    """Sensor noise amplitude, grey levels either side (0: none)."""
    shake_px: float = 2.0
    """Camera shake: the whole frame jitters by up to this many pixels each way."""
    lighting_depth: float = 0.3
    """The lighting ramp: brightness falls by this share and comes back (0: constant)."""
    lighting_period_s: float = 600.0
    """One full cycle of the lighting ramp (bright, dim, bright), seconds."""
    brightness_jumps_per_min: float = 0.0
    """Sudden global brightness steps (auto exposure) per minute, each lasting 4-12 s."""
    jump_factor: float = 1.3
    """Gain of a brightness jump (brighter; every second jump is darker, by 1/jump_factor)."""
    rain: float = 0.0
    """Rain speckle, 0..1: share of the maximum density of short bright streaks."""
    occluders: bool = True
    """A tree crown over the upper lanes and a sign gantry across the road."""
    signal: bool = True
    """A stop line and a signal on the eastbound approach."""
    red_s: float = 12.0
    """Red time of the signal cycle, seconds."""
    green_s: float = 33.0
    """Green time of the signal cycle, seconds (the cycle starts with red at t = 0)."""
    vehicles: bool = True
    """False: no vehicles at all (noise, lighting, rain and shake only)."""
    camera_move_at: float | None = None
    """Scene time the view shifts for good (the camera was knocked), or None."""

    @property
    def px_per_m(self) -> float:
        """Pixels per metre, the same everywhere (the view is orthographic)."""
        return self.width / self.width_m

    @property
    def height_m(self) -> float:
        """Metres covered by the frame's height."""
        return self.height / self.px_per_m

    @property
    def road_m(self) -> float:
        """Width of the road: all lanes and the median."""
        return 2 * self.lanes_per_direction * LANE_WIDTH_M + MEDIAN_M


# Field name -> (kind, bounds). Kinds: int, float, bool, pair (two floats, low <= high),
# mix (three shares), opt (a float or null).
_RULES: Final[dict[str, tuple[str, tuple[float, float]]]] = {
    "seed": ("int", (0, 2**63 - 1)),
    "width": ("int", (32, 3840)),
    "height": ("int", (32, 2160)),
    "width_m": ("float", (5.0, 500.0)),
    "duration_s": ("float", (10.0, 3600.0)),
    "lanes_per_direction": ("int", (1, 3)),
    "flow_per_lane_min": ("float", (0.0, 60.0)),
    "class_mix": ("mix", (0.0, 1e6)),
    "speed_mps": ("pair", (1.0, 40.0)),
    "close_followers": ("float", (0.0, 1.0)),
    "lane_changes": ("float", (0.0, 1.0)),
    "noise": ("int", (0, 30)),
    "shake_px": ("float", (0.0, 20.0)),
    "lighting_depth": ("float", (0.0, 0.8)),
    "lighting_period_s": ("float", (1.0, 86400.0)),
    "brightness_jumps_per_min": ("float", (0.0, 10.0)),
    "jump_factor": ("float", (1.0, 3.0)),
    "rain": ("float", (0.0, 1.0)),
    "occluders": ("bool", (0, 0)),
    "signal": ("bool", (0, 0)),
    "red_s": ("float", (1.0, 600.0)),
    "green_s": ("float", (1.0, 600.0)),
    "vehicles": ("bool", (0, 0)),
    "camera_move_at": ("opt", (0.0, 1e9)),
}
assert set(_RULES) == {f.name for f in fields(TrafficSettings)}


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _field(name: str, value: object, path: str) -> tuple[Any, str | None]:
    """``value`` converted for field ``name``, or an error message for ``path``."""
    kind, (lo, hi) = _RULES[name]
    where = f"{path}.{name}"
    span = f"between {lo:g} and {hi:g}"
    if kind == "bool":
        if not isinstance(value, bool):
            return None, f"{where}: must be true or false, got {value!r}"
        return value, None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{where}: must be an integer, got {value!r}"
        if not lo <= value <= hi:
            return None, f"{where}: must be {span}, got {value}"
        return value, None
    if kind == "opt" and value is None:
        return None, None
    if kind in ("float", "opt"):
        if not _is_number(value):
            return None, f"{where}: must be a number, got {value!r}"
        assert isinstance(value, int | float)
        if not lo <= value <= hi:
            return None, f"{where}: must be {span}, got {value:g}"
        return float(value), None
    if kind == "mix" and isinstance(value, Mapping):
        unknown = [k for k in value if k not in CLASSES]
        if unknown:
            return None, f"{where}: unknown class {unknown[0]!r}; classes are {', '.join(CLASSES)}"
        value = [value.get(c, 0.0) for c in CLASSES]
    size = 3 if kind == "mix" else 2
    if not isinstance(value, list | tuple) or len(value) != size:
        shape = "[two_wheeler, car, bus_truck] shares" if kind == "mix" else "[low, high]"
        return None, f"{where}: must be {shape}, got {value!r}"
    if not all(_is_number(x) and lo <= x <= hi for x in value):
        return None, f"{where}: every value must be a number {span}, got {value!r}"
    out = tuple(float(x) for x in value)
    if kind == "mix" and sum(out) <= 0:
        return None, f"{where}: at least one share must be above 0"
    if kind == "pair" and out[0] > out[1]:
        return None, f"{where}: low must not exceed high, got {value!r}"
    return out, None


def traffic_settings(
    raw: object, path: str, base: TrafficSettings | None = None, fixed: tuple[str, ...] = ()
) -> tuple[TrafficSettings, list[str]]:
    """Settings from a YAML mapping, with every problem found (``path.key: message``).

    ``base`` gives the values of keys left out; keys in ``fixed`` are set elsewhere (a
    camera's width, height and seed) and are refused here. The settings returned are
    usable (the defaults stand in for bad values) even when there are problems."""
    settings = base or TrafficSettings()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return settings, [f"{path}: must be a mapping of traffic settings"]
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key)
        if name in fixed:
            problems.append(f"{path}.{name}: set on the camera, not under traffic")
            continue
        if name not in _RULES:
            close = difflib.get_close_matches(name, [n for n in _RULES if n not in fixed], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}.{name}: unknown key{hint}")
            continue
        converted, problem = _field(name, value, path)
        if problem is not None:
            problems.append(problem)
        else:
            changes[name] = converted
    settings = replace(settings, **changes)
    if settings.road_m > settings.height_m - 2.0:
        problems.append(
            f"{path}: {2 * settings.lanes_per_direction} lanes and the median need "
            f"{settings.road_m:g} m plus 2 m of verge, but the frame is "
            f"{settings.height_m:.1f} m high; raise width_m or lower lanes_per_direction"
        )
    move = settings.camera_move_at
    if move is not None and move >= settings.duration_s:
        problems.append(
            f"{path}.camera_move_at: {move:g} s is past the scene's duration_s "
            f"{settings.duration_s:g} s"
        )
    return settings, problems
