"""The background model of camera analytics: which pixels of a frame differ from the scene.

One :class:`Background` per stream, at the analysis resolution (a few hundred pixels wide,
in colour or grey, slightly blurred so that sensor noise averages out before any
comparison).

- **Light.** The model keeps a background ``B`` and, for every frame ``F``, fits
  ``F ~ g * B + o`` (one gain for all channels) by least squares on a sparse grid of pixels
  that were background in the previous frame, with one robust refit that drops the outliers
  (objects, shadows). Every comparison is made on the normalised frame ``(F - o) / g``, and
  ``B`` learns it: a slow ramp (dusk, a cloud) and a global jump (auto exposure, gain) move
  ``g`` and ``o``, not the pixels, and a queue that covers part of the road keeps its
  background at the right brightness while the light changes round it.
- **Noise, speckle, shake.** A pixel is foreground when, averaged over its channels, it lies
  more than ``threshold`` normalised levels (or four times the noise measured by the fit,
  scaled by the gain, if that is more) outside the range of the background in its ``shake``
  neighbourhood (a grey erosion and dilation of ``B``, recomputed once a second): a camera
  that shakes by a pixel sees the edge of a kerb move onto its neighbour's value, which is
  inside that range. An opening removes isolated specks (rain, noise) and a closing joins
  the parts of one object.
- **Stopped objects.** ``B`` learns with the time constant ``learn_time`` where the frame is
  background and ``hold_time`` (minutes) under foreground and inside the boxes the caller
  gives (tracked objects), so a queue waiting at a red light stays foreground for its whole
  wait, and an object left in the scene for good is eventually absorbed. The caller may
  also :meth:`~Background.absorb` a region at once (a ghost).
- **Global change.** When more than ``global_fraction`` of the analysed area is foreground,
  or the frame as a whole is shifted from the background (phase correlation at half size,
  checked twice a second: a moved road changes only its edges), the frame says nothing
  about objects: it gives no foreground. If that lasts ``relearn_after`` seconds, the
  background is relearned: for ``relearn_time`` seconds the model reports ``relearning``,
  and then takes the median of the frames it saw meanwhile (vehicles passing leave no trace
  in it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["Background", "BackgroundResult", "MotionParams"]

Grey = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

_GRID = 6  # the light fit samples every 6th pixel each way (1,600 of them at 320x180)
_ENVELOPE_AGE = 1.0  # seconds the background's range is kept before it is computed again
_STACK = 12  # frames kept, at most, over a relearning for its median
_GLOBAL_GAP = 0.5  # seconds of normal frames that end a suspected global change
_MOVE_CHECK = 0.5  # seconds between two checks for a camera move
_GAIN_RANGE = (0.2, 5.0)
_MEAN3 = np.full((1, 3), 1 / 3, np.float32)


@dataclass(frozen=True, slots=True)
class MotionParams:
    """The background model's tuning; :class:`~tepi.drivers.camera.analytics.AnalyticsSettings`
    documents each field."""

    threshold: int = 15
    learn_time: float = 20.0
    hold_time: float = 600.0
    shake: int = 1
    global_fraction: float = 0.5
    relearn_after: float = 1.0
    relearn_time: float = 2.0


@dataclass(frozen=True, slots=True)
class BackgroundResult:
    """What one frame gives: ``fg`` (255 on foreground, 0 elsewhere; all 0 while relearning or
    on a global change), the normalised frame (``(F - o) / g``, float32) and the state."""

    fg: Grey
    normalised: Floats
    relearning: bool
    global_change: bool
    changed: float  # the share of the analysed area that differed, before any cleaning


_GHOST_BG_SHARE = 0.3
""":meth:`Background.ghostly`: the least share of the outline that is the background's edge
alone (twice as strong as the frame's there)..."""
_GHOST_FRAME_SHARE = 0.15
"""... and the largest share that is the frame's alone."""
_GHOST_MIN_EDGE = 8.0
"""An edge (the gradient's magnitude, in grey levels) weaker than this is noise."""
_GHOST_RING = 6
"""Pixels around the box whose median is the road around a still object (the second test
of :meth:`Background.ghostly`)..."""
_GHOST_RATIO = 2.0
"""... a hole's background differs from it this many times more than its frame does ..."""
_GHOST_MIN_DIFF = 8.0
"""... and by at least this many levels on average (a vehicle, not the road's texture).
Over the 24 scenes of bench/analytics_accuracy.py (2026-12-05), with ring, ratio and least
difference 6, 2 and 8: the counts' error summed over every line 189 -> 179 crossings, the
scenes with a line over 3 % 5 -> 3 (dry seed 9's lane 1 13.2 -> 2.6 %), the queue moments
off 244 -> 241. Tried on seed 9 alone: a ring of 3 with a ratio of 2 and a least difference
of 15 left lane 1 9.2 % low; a ring of 3, 1.5 and 10, 3.9 %."""


def _like_around(frame: Floats, bg: Floats, fg: Grey, box: tuple[int, int, int, int]) -> bool:
    """Whether the foreground in ``box`` (pixels, end exclusive) looks like the road just
    around the box in the frame and not in the background: the mean distance of its pixels
    to the median of a ring of :data:`_GHOST_RING` pixels around the box (the frame's: the
    road, shared by both), :data:`_GHOST_RATIO` times greater in the background and at
    least :data:`_GHOST_MIN_DIFF` levels."""
    x0, y0, x1, y1 = box
    h, w = frame.shape[:2]
    r = _GHOST_RING
    rx0, ry0, rx1, ry1 = max(0, x0 - r), max(0, y0 - r), min(w, x1 + r), min(h, y1 + r)
    ring = np.ones((ry1 - ry0, rx1 - rx0), bool)
    ring[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = False
    around = frame[ry0:ry1, rx0:rx1][ring]
    inside = fg[y0:y1, x0:x1] > 0
    if len(around) < 8 or np.count_nonzero(inside) < 8:
        return False
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    road = np.median(around.reshape(-1, channels), axis=0)
    in_frame = float(np.mean(np.abs(frame[y0:y1, x0:x1][inside].reshape(-1, channels) - road)))
    in_bg = float(np.mean(np.abs(bg[y0:y1, x0:x1][inside].reshape(-1, channels) - road)))
    return in_bg > _GHOST_RATIO * in_frame and in_bg >= _GHOST_MIN_DIFF


def _edges(image: Floats) -> Floats:
    """The gradient's magnitude (Sobel, 3x3) of ``image``'s grey."""
    grey = image if image.ndim == 2 else cv2.transform(image, _MEAN3)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return _f32(cv2.magnitude(gx, gy))


class Background:
    """The background of one stream at one analysis size (see the module's docstring)."""

    def __init__(self, params: MotionParams) -> None:
        self.params = params
        k = 2 * max(0, params.shake) + 1
        self._shake_kernel = np.ones((k, k), np.uint8)
        # Two frames both shaken: twice the radius apart.
        self._shake2_kernel = np.ones((2 * k - 1, 2 * k - 1), np.uint8)
        self._open = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._grow = np.ones((5, 5), np.uint8)
        self.reset()

    def reset(self) -> None:
        self._bg: Floats | None = None
        self._prev_fg: Grey | None = None
        self._t: float | None = None
        self._relearn_until = -math.inf
        self._global_since: float | None = None
        self._global_last = -math.inf
        self._stack: list[Grey] = []  # frames seen while relearning
        self._stack_t = -math.inf
        self._dt = 0.0
        self._window: Floats | None = None
        self._move_checked = -math.inf
        self._envelope: tuple[Floats, Floats] | None = None
        self._envelope_t = -math.inf

    def apply(self, image: npt.NDArray[np.uint8], valid: Grey, t: float) -> BackgroundResult:
        """Compare ``image`` (the blurred analysis frame, BGR or grey) with the background
        and learn it.

        ``valid`` is 255 where the frame is analysed (outside privacy masks and ignore zones).
        """
        p = self.params
        frame = image.astype(np.float32)
        shape = frame.shape[:2]
        if self._bg is None or self._bg.shape != frame.shape:
            self._start_relearning(frame, t)
        bg = self._bg
        assert bg is not None
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        gain, offset, noise = self._fit_light(frame, bg, valid)
        normalised = frame  # in place: a copy of the image already
        normalised -= np.float32(offset)
        normalised *= np.float32(1.0 / gain)
        empty = np.zeros(shape, np.uint8)

        if t < self._relearn_until:
            self._learn(normalised, None, dt, p.relearn_time / 4)
            if t - self._stack_t >= p.relearn_time / _STACK:
                self._stack.append(np.clip(normalised, 0, 255).astype(np.uint8))
                self._stack_t = t
            self._prev_fg = empty
            return BackgroundResult(empty, normalised, True, False, 0.0)
        if self._stack:
            # Relearnt: the background is the median of the frames seen meanwhile, so that
            # the vehicles passing then leave no trace (a running mean keeps a faint one of
            # each, and the first frame all of them).
            if len(self._stack) >= 3:
                self._bg = np.median(np.stack(self._stack), axis=0).astype(np.float32)
                bg = self._bg
                self._envelope = None
            self._stack.clear()

        # How far each pixel lies outside the range the background spans round it (camera
        # shake), averaged over the channels: a green car as bright as the road differs in
        # its channels, not in its grey.
        if self._envelope is None or t - self._envelope_t >= _ENVELOPE_AGE:
            # The background moves slowly: its range round each pixel can wait a second.
            self._envelope = (
                _f32(cv2.dilate(bg, self._shake_kernel)),
                _f32(cv2.erode(bg, self._shake_kernel)),
            )
            self._envelope_t = t
        hi, lo = self._envelope
        excess = _outside(normalised, hi, lo)
        # The threshold is in normalised levels (an object's contrast scales with the light,
        # and so does the normalisation); the noise does not scale, so dim light raises it.
        thr = max(float(p.threshold), 4.0 * noise / gain)
        raw = _u8(cv2.threshold(excess, thr, 255, cv2.THRESH_BINARY)[1])
        raw = _u8(cv2.bitwise_and(raw, valid))
        n_valid = max(1, cv2.countNonZero(valid))
        changed = cv2.countNonZero(raw) / n_valid

        # The check for a camera move is the dearest part; a move must last relearn_after
        # to count, so it is checked twice a second, and every frame once it is suspected.
        if self._global_since is not None or t - self._move_checked >= _MOVE_CHECK:
            self._move_checked = t
            moved = self._moved(normalised, bg)
        else:
            moved = False
        if changed > p.global_fraction or moved:
            if self._global_since is None:
                self._global_since = t
            self._global_last = t
            if t - self._global_since >= p.relearn_after:
                self._start_relearning(frame, t)
                self._prev_fg = empty
                return BackgroundResult(empty, normalised, True, True, changed)
        if self._global_since is not None:
            # One frame that looks normal does not end a global change (the shift measured
            # on a moved view wavers); half a second of them does.
            if t - self._global_last <= _GLOBAL_GAP:
                return BackgroundResult(empty, normalised, False, True, changed)
            self._global_since = None

        fg = cv2.morphologyEx(raw, cv2.MORPH_OPEN, self._open)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self._close)
        fg = _u8(cv2.bitwise_and(fg, valid))
        self._prev_fg = fg
        self._dt = dt
        return BackgroundResult(fg, normalised, False, False, changed)

    def learn(self, result: BackgroundResult, boxes: list[tuple[int, int, int, int]]) -> None:
        """Learn the frame of ``result`` (from :meth:`apply`), slowly under its foreground,
        round it (the blurred edges of objects must not leak into the background and grow
        them frame by frame) and in ``boxes`` (pixel rectangles ``x0, y0, x1, y1`` of the
        objects being tracked: a low-contrast part of a stopped object that misses the
        threshold now and then must not fade into the background)."""
        if result.relearning or result.global_change:
            return
        hold = cv2.dilate(result.fg, self._grow)
        for x0, y0, x1, y1 in boxes:
            cv2.rectangle(hold, (x0, y0), (x1, y1), 255, -1)
        self._learn(result.normalised, _u8(hold), self._dt, None)

    def _moved(self, frame: Floats, bg: Floats) -> bool:
        """Whether the frame as a whole is shifted from the background by more than shake
        explains (the camera was knocked): phase correlation of the two, grey, at half
        size. A road is mostly flat, so a moved view changes only its edges, far less than
        ``global_fraction`` of it."""
        a = cv2.pyrDown(frame if frame.ndim == 2 else cv2.transform(frame, _MEAN3))
        b = cv2.pyrDown(bg if bg.ndim == 2 else cv2.transform(bg, _MEAN3))
        if self._window is None or self._window.shape != a.shape:
            self._window = np.asarray(
                cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F), dtype=np.float32
            )
        (dx, dy), response = cv2.phaseCorrelate(b, a, self._window)
        # Two half-size pixels beyond the shake allowed (which is in full-size pixels).
        return response > 0.05 and math.hypot(dx, dy) > self.params.shake / 2 + 2

    def excess(self, frame: Floats, ref: Floats, *, frames: bool = False) -> Floats:
        """How far each pixel of ``frame`` lies outside the range ``ref`` spans within the
        shake radius round it, as the mean over the channels (0 inside the range).
        ``frames``: ``ref`` is another frame, not the background (an average of shaken
        frames), so the radius doubles."""
        kernel = self._shake2_kernel if frames else self._shake_kernel
        return _outside(frame, _f32(cv2.dilate(ref, kernel)), _f32(cv2.erode(ref, kernel)))

    def _start_relearning(self, frame: Floats, t: float) -> None:
        self._bg = frame.copy()
        self._stack = [np.clip(frame, 0, 255).astype(np.uint8)]
        self._stack_t = t
        self._envelope = None
        self._relearn_until = t + self.params.relearn_time
        self._global_since = None
        self._prev_fg = None

    def absorb(self, result: BackgroundResult, box: tuple[int, int, int, int]) -> None:
        """Take the frame of ``result`` as the background within ``box`` (pixels ``x0, y0,
        x1, y1``): what is there is the scene, not an object (a ghost)."""
        if self._bg is None or result.normalised.shape != self._bg.shape:
            return
        h, w = self._bg.shape[:2]
        x0, y0 = max(0, box[0]), max(0, box[1])
        x1, y1 = min(w, box[2] + 1), min(h, box[3] + 1)
        self._bg[y0:y1, x0:x1] = result.normalised[y0:y1, x0:x1]
        self._envelope = None

    def ghostly(self, result: BackgroundResult, box: tuple[int, int, int, int]) -> bool:
        """Whether the foreground in ``box`` (pixels ``x0, y0, x1, y1``) is a hole in the
        background rather than an object. Along the outline of that foreground, an object
        has its edges in the frame and not in the (empty) background; a vehicle that was
        learnt into the background and has since left has them in the background and not
        in the frame. A hole is one where a good share of the outline is the background's
        and hardly any is the frame's: with a vehicle passing through the hole, the
        outline is both, and the check waits for a clear view.

        Where the frame has edges of its own along the outline (a lane marking the learnt
        vehicle covered, now in view), the outline does not tell: then inside it, a hole's
        frame looks like the road just around the box and its background does not
        (:func:`_like_around`); a stopped vehicle is the other way round."""
        bg = self._bg
        if bg is None or result.normalised.shape != bg.shape:
            return False
        h, w = bg.shape[:2]
        x0, y0 = max(0, box[0]), max(0, box[1])
        x1, y1 = min(w, box[2] + 1), min(h, box[3] + 1)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return False
        outline = cv2.morphologyEx(result.fg[y0:y1, x0:x1], cv2.MORPH_GRADIENT, self._open)
        at = outline > 0
        n = int(np.count_nonzero(at))
        if n < 8:
            return False
        in_bg = _edges(bg[y0:y1, x0:x1])[at]
        in_frame = _edges(result.normalised[y0:y1, x0:x1])[at]
        strong = _GHOST_MIN_EDGE
        bg_only = int(np.count_nonzero((in_bg > 2 * in_frame) & (in_bg > strong))) / n
        frame_only = int(np.count_nonzero((in_frame > 2 * in_bg) & (in_frame > strong))) / n
        return bg_only >= _GHOST_BG_SHARE and (
            frame_only <= _GHOST_FRAME_SHARE
            or _like_around(result.normalised, bg, result.fg, (x0, y0, x1, y1))
        )

    def _learn(self, normalised: Floats, fg: Grey | None, dt: float, tau: float | None) -> None:
        """Move the background towards the normalised frame: with time constant ``tau``
        everywhere, or ``learn_time`` off ``fg`` and ``hold_time`` on it."""
        bg = self._bg
        assert bg is not None
        p = self.params
        if dt <= 0:
            return
        if tau is not None:
            cv2.accumulateWeighted(normalised, bg, 1.0 - math.exp(-dt / max(tau, 1e-3)))
            return
        assert fg is not None
        fast = 1.0 - math.exp(-dt / p.learn_time)
        slow = 1.0 - math.exp(-dt / p.hold_time)
        cv2.accumulateWeighted(normalised, bg, fast, mask=cv2.bitwise_not(fg))
        cv2.accumulateWeighted(normalised, bg, slow, mask=fg)

    def _fit_light(self, frame: Floats, bg: Floats, valid: Grey) -> tuple[float, float, float]:
        """``(gain, offset, noise)`` of ``frame ~ gain * bg + offset`` on the sparse grid of
        analysed pixels that were background last frame; ``noise`` is the residuals' robust
        standard deviation (MAD), in grey levels."""
        f = np.ascontiguousarray(frame[::_GRID, ::_GRID])
        b = np.ascontiguousarray(bg[::_GRID, ::_GRID])
        if f.ndim == 3:  # one gain for all channels: the light changes them alike
            f = np.asarray(cv2.transform(f, _MEAN3), dtype=np.float32)
            b = np.asarray(cv2.transform(b, _MEAN3), dtype=np.float32)
        f, b = f.ravel(), b.ravel()
        use = valid[::_GRID, ::_GRID].ravel() > 0
        if self._prev_fg is not None and self._prev_fg.shape == frame.shape[:2]:
            use &= self._prev_fg[::_GRID, ::_GRID].ravel() == 0
        f, b = f[use], b[use]
        if f.size < 16:
            return 1.0, 0.0, 0.0
        gain, offset = _line(b, f)
        res = f - (gain * b + offset)
        mad = float(np.median(np.abs(res))) + 1e-3
        keep = np.abs(res) < 3.0 * 1.4826 * mad + 2.0
        if int(keep.sum()) >= 16:
            gain, offset = _line(b[keep], f[keep])
        return gain, offset, 1.4826 * mad


def _outside(frame: Floats, hi: Floats, lo: Floats) -> Floats:
    """How far each pixel of ``frame`` lies above ``hi`` or below ``lo`` (0 between), as the
    mean over the channels."""
    excess = cv2.max(cv2.subtract(frame, hi), cv2.subtract(lo, frame))
    excess = np.maximum(excess, np.float32(0.0))
    if excess.ndim == 3:
        excess = cv2.transform(excess, _MEAN3)
    return np.asarray(excess, dtype=np.float32)


def _f32(a: object) -> Floats:
    return np.asarray(a, dtype=np.float32)


def _u8(a: object) -> Grey:
    return np.asarray(a, dtype=np.uint8)


def _line(x: Floats, y: Floats) -> tuple[float, float]:
    """Least-squares ``y = gain * x + offset``, the gain held to a sane range (a flat
    background has no slope to fit: then it is an offset alone)."""
    mx, my = float(x.mean()), float(y.mean())
    vx = float(((x - mx) ** 2).mean())
    if vx < 4.0:
        return 1.0, my - mx
    gain = float(((x - mx) * (y - my)).mean()) / vx
    gain = min(max(gain, _GAIN_RANGE[0]), _GAIN_RANGE[1])
    return gain, my - gain * mx
