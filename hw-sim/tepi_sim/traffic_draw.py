"""The traffic scene's pictures: the road drawn once, occluders, rain, and the vehicles.

:class:`Painter` draws everything of :mod:`tepi_sim.traffic` that is pixels: the background
on a canvas larger than the frame by a margin each side (room for the shake and the camera
move), the occluders drawn over the vehicles, the rain layers, and each frame's vehicles
with their shadows. What is static is drawn once, when the scene is built, so a frame costs
a copy, the vehicles and a few whole-frame additions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from tepi_sim.traffic_flow import Flow, Lane, stop_line_x
from tepi_sim.traffic_settings import LANE_WIDTH_M, TrafficSettings

__all__ = ["ROAD_GREY", "Occluder", "Painter"]

Frame = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

ROAD_GREY: Final = 95
"""The road's base grey; every vehicle body differs from it by 28 levels or more."""
_RAIN_LAYERS: Final = 8
_SHADOW_M: Final = (0.35, 0.45)  # the sun is up and to the left: shadows fall right and down
_TEXTURE: Final = 6
_SUB: Final = 4  # sub-pixel bits of cv2's drawing calls
_ONE: Final = 1 << _SUB


@dataclass(frozen=True, slots=True)
class Occluder:
    """A picture drawn over the vehicles, in canvas pixels: top-left corner, image, mask."""

    y: int
    x: int
    image: Frame
    mask: npt.NDArray[np.bool_]


class Painter:
    """Draws the scene of ``settings`` with its ``lanes``, on a canvas ``margin`` pixels
    larger than the frame each side."""

    def __init__(self, settings: TrafficSettings, lanes: tuple[Lane, ...], margin: int) -> None:
        self.settings = settings
        self.lanes = lanes
        self.margin = margin
        self.px_per_m = settings.px_per_m

    def _px(self, metres: float) -> int:
        return round(metres * self.px_per_m)

    def background(self, rng: np.random.Generator) -> Frame:
        """The road and its surroundings on a canvas larger than the frame by the margin
        each side (room for shake and the camera move)."""
        s, m = self.settings, self.margin
        h, w = s.height + 2 * m, s.width + 2 * m
        img = np.empty((h, w, 3), np.uint8)
        img[:] = (150, 156, 160)  # pavement
        half = LANE_WIDTH_M / 2
        top = self.lanes[0].y - half
        bottom = self.lanes[-1].y + half

        def y_px(metres: float) -> int:
            return m + self._px(metres)

        def x_px(metres: float) -> int:
            return m + self._px(metres)

        # Roofs of buildings beyond the pavements, 3 m from the kerb.
        for y_lo, y_hi in ((0, y_px(top - 3.0)), (y_px(bottom + 3.0), h)):
            x = 0
            while x < w and y_hi > y_lo:
                bw = int(rng.integers(0, max(1, self._px(8))) + self._px(4) + 2)
                shade = tuple(int(c) for c in rng.integers(70, 200, size=3))
                cv2.rectangle(img, (x, y_lo), (x + bw - 2, y_hi), shade, -1)
                x += bw
        # Pavement slabs every metre.
        for yy in (range(y_px(top - 3.0), y_px(top)), range(y_px(bottom), y_px(bottom + 3.0))):
            if len(yy) == 0:
                continue
            for xm in np.arange(0, (w / self.px_per_m) + 1, 1.0):
                xx = m // 2 + self._px(float(xm))
                cv2.line(img, (xx, yy.start), (xx, yy.stop - 1), (132, 138, 142), 1)
        cv2.rectangle(img, (0, y_px(top)), (w, y_px(bottom)), (ROAD_GREY,) * 3, -1)
        n = s.lanes_per_direction
        median_top = self.lanes[n - 1].y + half
        median_bottom = self.lanes[n].y - half
        cv2.rectangle(img, (0, y_px(median_top)), (w, y_px(median_bottom)), (168, 170, 170), -1)
        mark = (222, 222, 222)
        thick = max(1, self._px(0.15))
        for y_m in (top + 0.3, bottom - 0.3):  # edge lines
            cv2.line(img, (0, y_px(y_m)), (w, y_px(y_m)), mark, thick)
        for y_m in (median_top - 0.25, median_bottom + 0.25):  # lines along the median
            cv2.line(img, (0, y_px(y_m)), (w, y_px(y_m)), (40, 190, 215), thick)
        dash, gap = 3.0, 5.0
        for a, b in itertools.pairwise(self.lanes):
            if a.direction != b.direction:
                continue
            y_m = (a.y + b.y) / 2
            start = -m / self.px_per_m
            for x0 in np.arange(start, w / self.px_per_m, dash + gap):
                xa, xb = x_px(float(x0)), x_px(float(x0) + dash)
                cv2.line(img, (xa, y_px(y_m)), (xb, y_px(y_m)), mark, thick)
        if s.signal:
            xs = stop_line_x(s)
            east = [ln for ln in self.lanes if ln.direction > 0]
            cv2.rectangle(
                img,
                (x_px(xs), y_px(east[0].y - half)),
                (x_px(xs + 0.4), y_px(east[-1].y + half)),
                mark,
                -1,
            )
        # A fine texture everywhere (asphalt grain, dirt), +-_TEXTURE levels.
        grain = rng.integers(-_TEXTURE, _TEXTURE + 1, size=(h, w, 1), dtype=np.int16)
        out: Frame = np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)
        return out

    def occluders(self, rng: np.random.Generator) -> tuple[Occluder, ...]:
        """A tree crown over the upper lane at 30 % of the width (it hides a two-wheeler for
        a few frames) and a sign gantry's 1.6 m walkway across the road at 84 %, between the
        lane lines and the all-lanes line. Neither is over the queue zone, so every occlusion
        is short while traffic flows."""
        s, m = self.settings, self.margin
        half = LANE_WIDTH_M / 2
        top = self.lanes[0].y - half
        bottom = self.lanes[-1].y + half
        out = []
        # Tree crown: an ellipse of foliage, mottled.
        rx, ry = max(1, self._px(3.2)), max(1, self._px(3.0))
        cx, cy = m + self._px(0.3 * s.width_m), m + self._px(top - 0.4)
        crown = np.zeros((2 * ry + 1, 2 * rx + 1, 3), np.uint8)
        mask = np.zeros(crown.shape[:2], np.uint8)
        cv2.ellipse(mask, (rx, ry), (rx, ry), 0, 0, 360, 1, -1)
        crown[:] = (40, 100, 52)
        for _ in range(60):
            px, py = int(rng.integers(0, 2 * rx + 1)), int(rng.integers(0, 2 * ry + 1))
            tone = (30, int(rng.integers(70, 140)), int(rng.integers(30, 70)))
            cv2.circle(crown, (px, py), int(rng.integers(2, max(3, self._px(0.8)))), tone, -1)
        out.append(Occluder(cy - ry, cx - rx, crown, mask.astype(bool)))
        # Gantry walkway: a grating across the whole road.
        gw = max(1, self._px(1.6))
        y0, y1 = m + self._px(top - 1.0), m + self._px(bottom + 1.0)
        walk = np.zeros((y1 - y0, gw, 3), np.uint8)
        walk[:] = (72, 74, 78)
        walk[:, :: max(2, gw // 6)] = (112, 114, 118)
        walk[:: max(1, self._px(0.5))] = (50, 52, 56)
        gx = m + self._px(0.84 * s.width_m)
        out.append(Occluder(y0, gx, walk, np.ones(walk.shape[:2], bool)))
        return tuple(out)

    def rain(self, rng: np.random.Generator) -> tuple[Frame, ...]:
        """Layers of short bright streaks, one picked per tenth of a second."""
        s = self.settings
        count = max(1, round(s.rain * 600 * s.width * s.height / (640 * 360)))
        layers = []
        for _ in range(_RAIN_LAYERS):
            layer = np.zeros((s.height, s.width, 3), np.uint8)
            xs = rng.integers(0, s.width, size=count)
            ys = rng.integers(0, s.height, size=count)
            lengths = rng.integers(5, 14, size=count)
            tones = rng.integers(40, 90, size=count)
            for x, y, ln, tone in zip(xs, ys, lengths, tones, strict=True):
                end = (int(x + ln // 3), int(y + ln))
                cv2.line(layer, (int(x), int(y)), end, (int(tone),) * 3, 1)
            layers.append(layer)
        return tuple(layers)

    def paste(self, frame: Frame, occ: Occluder, ox: int, oy: int) -> None:
        h, w = frame.shape[:2]
        oh, ow = occ.mask.shape
        y0, x0 = occ.y - oy, occ.x - ox
        ya, yb = max(0, y0), min(h, y0 + oh)
        xa, xb = max(0, x0), min(w, x0 + ow)
        if ya >= yb or xa >= xb:
            return
        sub = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        np.copyto(frame[ya:yb, xa:xb], occ.image[sub], where=occ.mask[sub][:, :, None])

    def draw_vehicles(
        self, frame: Frame, flow: Flow, where: tuple[I64, F64, F64], ox: int, oy: int
    ) -> None:
        """Shadows first, then the bodies, in image pixels (``ox``, ``oy``: the view's
        offset from the nominal one). ``where``: the vehicles' ids and world positions."""
        ids, x, y = where
        f, ppm = flow, self.px_per_m
        h, w = frame.shape[:2]
        half_l, half_w = f.length[ids] / 2 * ppm, f.width[ids] / 2 * ppm
        cx = x * ppm - ox
        cy = y * ppm - oy
        seen = (cx + half_l + 8 > 0) & (cx - half_l - 8 < w)
        sdx, sdy = _SHADOW_M[0] * ppm, _SHADOW_M[1] * ppm
        for n in np.flatnonzero(seen):
            xa = max(0, round(cx[n] - half_l[n] + sdx))
            xb = min(w, round(cx[n] + half_l[n] + sdx))
            ya = max(0, round(cy[n] - half_w[n] + sdy))
            yb = min(h, round(cy[n] + half_w[n] + sdy))
            if xa < xb and ya < yb:
                roi = frame[ya:yb, xa:xb]
                np.right_shift(roi, 1, out=roi)
                roi += roi >> 2  # 0.625 of the ground's brightness
        for n in np.flatnonzero(seen):
            i = int(ids[n])
            self._draw_one(
                frame,
                f.cls[i],
                colour=f.colour[i],
                centre=(float(cx[n]), float(cy[n])),
                half=(float(half_l[n]), float(half_w[n])),
                ident=i,
            )

    @staticmethod
    def _draw_one(
        frame: Frame,
        cls: str,
        *,
        colour: npt.NDArray[np.uint8],
        centre: tuple[float, float],
        half: tuple[float, float],
        ident: int,
    ) -> None:
        body = (int(colour[0]), int(colour[1]), int(colour[2]))
        lum = sum(body) / 3
        detail = (40, 40, 46) if lum > 110 else (150, 150, 158)
        cx, cy = centre
        hl, hw = half

        def pt(px: float, py: float) -> tuple[int, int]:
            return (round(px * _ONE), round(py * _ONE))

        if cls == "two_wheeler":
            cv2.ellipse(frame, pt(cx, cy), pt(hl, hw), 0, 0, 360, body, -1, cv2.LINE_8, _SUB)
            helmet = ((40, 40, 40), (230, 230, 230), (40, 40, 200), (200, 120, 40))[ident % 4]
            cv2.circle(frame, pt(cx, cy), round(hw * 0.8 * _ONE), helmet, -1, cv2.LINE_8, _SUB)
            return
        cv2.rectangle(frame, pt(cx - hl, cy - hw), pt(cx + hl, cy + hw), body, -1, cv2.LINE_8, _SUB)
        if cls == "car":
            # Windscreens front and back, whichever way it faces: symmetric from above.
            for sign in (-1, 1):
                a = cx + sign * hl * 0.35
                b = cx + sign * hl * 0.55
                cv2.rectangle(
                    frame,
                    pt(min(a, b), cy - hw * 0.8),
                    pt(max(a, b), cy + hw * 0.8),
                    detail,
                    -1,
                    cv2.LINE_8,
                    _SUB,
                )
        else:  # bus or truck: roof units
            for k in (-0.5, 0.0, 0.5):
                ux = cx + k * hl
                cv2.rectangle(
                    frame,
                    pt(ux - hl * 0.12, cy - hw * 0.5),
                    pt(ux + hl * 0.12, cy + hw * 0.5),
                    detail,
                    -1,
                    cv2.LINE_8,
                    _SUB,
                )
