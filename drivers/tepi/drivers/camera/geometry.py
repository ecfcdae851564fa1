"""Shared geometry of camera analytics: normalised points, counting lines, detections.

Every position a user draws or the analysis reports is normalised: ``(x, y)`` with each
coordinate from 0 to 1 of the image's width and height, ``(0, 0)`` at the top left and ``y``
growing downwards, as on the picture. A snapshot of any size maps onto the same numbers, so
lines and zones survive a change of resolution or of stream.

**Direction across a line.** A counting line is a segment drawn from ``a`` to ``b``. Looking
along the arrow from ``a`` to ``b`` on the image, an object whose centre passes from the
arrow's left-hand side to its right-hand side crosses ``in``; the other way it crosses
``out``. With ``y`` growing downwards, the right-hand side of an arrow pointing right is
below it: a line drawn left to right counts objects moving down the image as ``in``. Only a
crossing whose intersection lies on the segment counts, so a line drawn across one lane
does not count the next lane's traffic.

The simulator's ground truth (``hw-sim``) uses this module's convention through its own copy
of :func:`side`; tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Point = tuple[float, float]
"""``(x, y)`` in 0..1 of the image's width and height; (0, 0) is the top left."""

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)``, normalised, ``x0 <= x1`` and ``y0 <= y1``."""

Direction = Literal["in", "out"]


def side(a: Point, b: Point, p: Point) -> float:
    """Which side of the arrow ``a`` -> ``b`` the point ``p`` is on: > 0 on its right as seen on
    the image (``y`` down), < 0 on its left, 0 on the line (the 2-D cross product
    ``(b - a) x (p - a)``)."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(a: Point, b: Point, p0: Point, p1: Point) -> Direction | None:
    """How the move from ``p0`` to ``p1`` crosses the segment ``a``-``b``: ``in`` (left to
    right of the arrow), ``out``, or None when it does not cross it.

    The two half-planes are ``side < 0`` (left) and ``side >= 0`` (right, the line itself
    included), so a centre that stops exactly on the line and goes on is counted once. The
    crossing point must lie on the segment, its ends included.
    """
    left0 = side(a, b, p0) < 0
    left1 = side(a, b, p1) < 0
    if left0 == left1:
        return None
    # a and b on opposite sides of the move's own line (or on it): the lines cross within
    # the segment.
    t0 = side(p0, p1, a)
    t1 = side(p0, p1, b)
    if (t0 > 0 and t1 > 0) or (t0 < 0 and t1 < 0):
        return None
    return "in" if left0 else "out"


def box_center(box: Box) -> Point:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def box_iou(p: Box, q: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    iw = min(p[2], q[2]) - max(p[0], q[0])
    ih = min(p[3], q[3]) - max(p[1], q[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def inside(polygon: tuple[Point, ...] | list[Point], p: Point) -> bool:
    """Whether ``p`` lies inside ``polygon`` (even-odd rule; a point on an edge may go either
    way)."""
    x, y = p
    n = len(polygon)
    hit = False
    for i in range(n):
        x0, y0 = polygon[i]
        x1, y1 = polygon[(i + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            hit = not hit
    return hit


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in a frame: where (``box``, normalised), what (``label``: the
    detector's class mapped to tepi's, or None for a blob from background subtraction) and how
    sure (``score``, 0..1)."""

    box: Box
    label: str | None = None
    score: float = 1.0
