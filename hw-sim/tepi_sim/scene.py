"""A synthetic camera scene: a textured background, sensor noise and moving objects.

Everything is deterministic from a seed: the background, the objects (size, shape,
brightness, speed) and where each object is at scene time ``t`` (seconds). Only the sensor
noise changes from render to render (a precomputed noise tile read at a new offset each
time), so two consecutive frames are never byte-identical, even at the same ``t``.

Objects are clearly brighter or darker than any background pixel, so background
subtraction sees them. Each moves at a constant velocity: horizontally it enters at one
edge and leaves at the other, then wraps round (it spends a moment fully outside the
frame); vertically it bounces between the top and bottom edges. :meth:`Scene.truth`
answers where every visible object is at any ``t``, normalised to 0..1.

Image faults are drawn here too (black, covered, blur, moved); the camera decides which.
Rendering is thread-safe: the camera renders in worker threads.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["IMAGE_FAULTS", "ObjectTruth", "Scene", "SceneObject"]

Frame = npt.NDArray[np.uint8]

IMAGE_FAULTS: Final = ("black", "covered", "blur", "moved")
NOISE: Final = 4  # sensor noise amplitude, grey levels either side
_BG_LO, _BG_HI = 70, 180  # background pixels stay in this band; objects stay outside it
_BRIGHT, _DARK = 240, 18
_MARGIN: Final = 64  # the noise tile is this much larger than a frame in each direction
_OFFSETS: Final = 4096


@dataclass(frozen=True, slots=True)
class SceneObject:
    """One moving object, in normalised units: size (w, h), start position of its top-left
    corner (x0, y0) at t=0, and velocity (vx, vy) per second."""

    id: int
    w: float
    h: float
    x0: float
    y0: float
    vx: float
    vy: float
    ellipse: bool
    bright: bool


@dataclass(frozen=True, slots=True)
class ObjectTruth:
    """Where an object is at one instant. ``box`` is (x0, y0, x1, y1), clipped to the frame
    and normalised to 0..1; ``center`` is the centre of the whole object (unclipped, so it
    can lie outside 0..1 while the object enters or leaves)."""

    id: int
    box: tuple[float, float, float, float]
    center: tuple[float, float]
    bright: bool


def _bounce(pos: float, span: float) -> float:
    """A coordinate moving freely, folded back and forth into 0..span (a triangle wave)."""
    if span <= 0:
        return 0.0
    period = 2 * span
    p = pos % period
    return p if p <= span else period - p


class Scene:
    """The scene of one camera: ``width`` x ``height`` BGR frames from ``seed``."""

    def __init__(self, width: int, height: int, *, objects: int = 3, seed: int = 0) -> None:
        self.width = width
        self.height = height
        rng = np.random.default_rng(seed)
        self.background = self._background(rng, width, height)
        # The `moved` view: the same scene seen from elsewhere (shifted by a third of the
        # frame across and a quarter down, and mirrored), so it shares nothing in place.
        self.moved_background = np.ascontiguousarray(
            np.roll(self.background, (height // 4, width // 3), axis=(0, 1))[:, ::-1]
        )
        # Background minus the noise amplitude: adding a 0..2*NOISE tile then gives
        # background +- NOISE in one uint8 add that cannot overflow.
        self._base = self.background - np.uint8(NOISE)
        self._moved_base = self.moved_background - np.uint8(NOISE)
        self._noise = rng.integers(
            0, 2 * NOISE + 1, size=(height + _MARGIN, width + _MARGIN, 3), dtype=np.uint8
        )
        self._dim = (rng.integers(0, 3, size=(height + _MARGIN, width + _MARGIN, 3)) + 38).astype(
            np.uint8
        )
        self._offsets = rng.integers(0, _MARGIN, size=(_OFFSETS, 2))
        for k in range(_OFFSETS):  # consecutive renders never read the same tile window,
            prev, after = self._offsets[k - 1], self._offsets[(k + 1) % _OFFSETS]
            for step in range(_MARGIN):  # not even where the sequence wraps round
                if not (self._offsets[k] == prev).all() and not (self._offsets[k] == after).all():
                    break
                self._offsets[k, 1] = (self._offsets[k, 1] + 1 + step) % _MARGIN
        self._renders = itertools.count()
        self.objects = tuple(self._object(rng, i) for i in range(objects))

    @staticmethod
    def _background(rng: np.random.Generator, width: int, height: int) -> Frame:
        """A street-like backdrop with plenty of edges: a sky gradient, blocks of buildings
        with windows, a road with lane marks, and a fine texture."""
        img = np.empty((height, width, 3), np.uint8)
        sky = np.linspace(_BG_HI - 5, _BG_HI - 40, height // 2, dtype=np.float32)
        img[: height // 2] = sky[:, None, None].astype(np.uint8)
        img[height // 2 :] = 110
        x = 0
        while x < width:
            bw = int(rng.integers(width // 16, width // 6))
            top = int(rng.integers(height // 8, height // 2))
            shade = int(rng.integers(_BG_LO + 15, _BG_HI - 15))
            cv2.rectangle(img, (x, top), (x + bw, height * 3 // 4), (shade,) * 3, -1)
            win = max(2, bw // 8)
            for wy in range(top + win, height * 3 // 4 - win, win * 2):
                for wx in range(x + win, x + bw - win, win * 2):
                    tone = _BG_LO if rng.random() < 0.6 else _BG_HI
                    cv2.rectangle(img, (wx, wy), (wx + win - 1, wy + win - 1), (tone,) * 3, -1)
            x += bw + int(rng.integers(1, max(2, width // 40)))
        road = height * 3 // 4
        img[road:] = 95
        dash = max(4, width // 24)
        for lx in range(0, width, dash * 2):
            cv2.rectangle(
                img,
                (lx, road + (height - road) // 2 - 1),
                (lx + dash, road + 2 + (height - road) // 2),
                (165, 165, 165),
                -1,
            )
        # A little colour and a fine texture so every region has some detail.
        tint = rng.integers(-8, 9, size=3)
        texture = rng.integers(-6, 7, size=(height, width, 1))
        out = img.astype(np.int16) + tint + texture
        clipped: Frame = np.clip(out, _BG_LO, _BG_HI).astype(np.uint8)
        return clipped

    def _object(self, rng: np.random.Generator, i: int) -> SceneObject:
        w = float(rng.uniform(0.06, 0.14))
        h = float(rng.uniform(0.08, 0.2))
        speed = float(rng.uniform(0.08, 0.25))  # frame widths per second
        return SceneObject(
            id=i + 1,
            w=w,
            h=h,
            x0=float(rng.uniform(-w, 1.0)),
            y0=float(rng.uniform(0.0, 1.0 - h)),
            vx=speed if rng.random() < 0.5 else -speed,
            vy=float(rng.uniform(-0.05, 0.05)),
            ellipse=bool(rng.random() < 0.5),
            bright=bool(i % 2 == 0),
        )

    @staticmethod
    def position(obj: SceneObject, t: float) -> tuple[float, float]:
        """The top-left corner of ``obj`` at scene time ``t``: x wraps over -w..1 (the object
        leaves the frame completely before it comes back in), y bounces in 0..1-h."""
        period = 1.0 + obj.w
        x = (obj.x0 + obj.vx * t + obj.w) % period - obj.w
        y = _bounce(obj.y0 + obj.vy * t, 1.0 - obj.h)
        return x, y

    def truth(self, t: float) -> list[ObjectTruth]:
        """Every object at least partly in view at scene time ``t``, by id."""
        out = []
        for obj in self.objects:
            x, y = self.position(obj, t)
            x0, x1 = max(0.0, x), min(1.0, x + obj.w)
            if x1 <= x0:
                continue
            out.append(
                ObjectTruth(
                    id=obj.id,
                    box=(x0, y, x1, y + obj.h),
                    center=(x + obj.w / 2, y + obj.h / 2),
                    bright=obj.bright,
                )
            )
        return out

    def render(self, t: float, fault: str = "none") -> Frame:
        """A new BGR frame of the scene at time ``t``, with an image fault drawn if
        ``fault`` is one of :data:`IMAGE_FAULTS` (any other value draws a normal frame)."""
        n = next(self._renders)
        oy, ox = self._offsets[n % _OFFSETS]
        h, w = self.height, self.width
        if fault == "black":  # no signal: zero plus a trace of noise
            return np.right_shift(self._noise[oy : oy + h, ox : ox + w], 2)
        if fault == "covered":  # lens covered: dim, flat grey with slight noise
            return self._dim[oy : oy + h, ox : ox + w].copy()
        base = self._moved_base if fault == "moved" else self._base
        frame: Frame = np.add(base, self._noise[oy : oy + h, ox : ox + w])
        for obj in self.objects:
            x, y = self.position(obj, t)
            p0 = (math.floor(x * w), math.floor(y * h))
            p1 = (math.floor((x + obj.w) * w), math.floor((y + obj.h) * h))
            colour = (_BRIGHT,) * 3 if obj.bright else (_DARK,) * 3
            if obj.ellipse:
                centre = ((p0[0] + p1[0]) // 2, (p0[1] + p1[1]) // 2)
                axes = ((p1[0] - p0[0]) // 2, (p1[1] - p0[1]) // 2)
                cv2.ellipse(frame, centre, axes, 0, 0, 360, colour, -1)
            else:
                cv2.rectangle(frame, p0, p1, colour, -1)
        if fault == "blur":  # defocused: a strong Gaussian blur, sigma = 1 % of the width
            k = max(2, w // 320)  # blurred at about 320 wide (sigma 3 there), then enlarged
            small = cv2.resize(frame, (w // k, h // k), interpolation=cv2.INTER_AREA)
            blurred = cv2.GaussianBlur(small, (0, 0), 3.2 * k * 320 / w)
            blurred = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
            out: Frame = np.asarray(blurred, dtype=np.uint8)
            return out
        return frame

    def encode_jpeg(self, frame: Frame, quality: int) -> bytes:
        """``frame`` as JPEG bytes at ``quality`` (1..100)."""
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - imencode fails only on invalid input
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()
