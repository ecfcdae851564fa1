"""Image processing for cameras: decode, privacy masks, health checks, re-encoding, a hash.

Everything here is synchronous, pure (the one exception, :class:`HealthChecker`, keeps its
own state behind its own lock) and works on numpy arrays with OpenCV, because the camera
driver runs it in a worker thread (``asyncio.to_thread``): nothing here touches the event
loop or any shared state, and OpenCV releases the GIL in its own code, so two cameras'
frames are processed in parallel.

Decoding dominates the cost (docs/cameras.md): the driver decodes the JPEG once, at 1/4 or
1/8 of its size where only the checks need it (libjpeg scales in the DCT, so the small image
costs less than the full one), and at full size only for an image that leaves the box.

Images are ``uint8`` arrays as OpenCV has them: ``(height, width)`` for grey,
``(height, width, 3)`` in BGR order for colour.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""An 8-bit image: ``(h, w)`` grey or ``(h, w, 3)`` BGR."""

Point = Sequence[float]
"""``[x, y]``, each from 0 to 1 of the image's width and height (0, 0 is the top left)."""

Mask = Sequence[Point]
"""One privacy mask: a polygon, at least 3 points, as a person draws it on the image."""

Reason = Literal["black", "frozen", "covered_or_moved", "blurred"]

MAX_PIXELS = 50_000_000
"""A JPEG whose header claims more pixels than this is refused before it is decoded: no
camera sends more (a 12 MP sensor is 12,000,000), and a forged header must not make the box
allocate gigabytes."""

_EOI_SLACK = 32  # bytes after the end marker that some cameras pad a snapshot with


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is short and fixed ("not a JPEG", ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---- decoding ------------------------------------------------------------------------------

# Start-of-frame markers: baseline, extended, progressive, lossless, hierarchical, arithmetic.
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) sit in that range but are not frames.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
_NO_ROTATE = cv2.IMREAD_IGNORE_ORIENTATION
_FLAGS = {
    (1, False): cv2.IMREAD_COLOR | _NO_ROTATE,
    (2, False): cv2.IMREAD_REDUCED_COLOR_2 | _NO_ROTATE,
    (4, False): cv2.IMREAD_REDUCED_COLOR_4 | _NO_ROTATE,
    (8, False): cv2.IMREAD_REDUCED_COLOR_8 | _NO_ROTATE,
    (1, True): cv2.IMREAD_GRAYSCALE | _NO_ROTATE,
    (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2 | _NO_ROTATE,
    (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4 | _NO_ROTATE,
    (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8 | _NO_ROTATE,
}


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """``(width, height)`` from the JPEG's frame header, without decoding anything.

    Walks the markers from the start (each segment says its length) to the first
    start-of-frame, as libjpeg does: bytes between segments that are not a marker are
    skipped, as libjpeg skips them with a warning. Costs microseconds whatever the size.
    Raises :class:`ImageError` ("empty", "not a JPEG", "truncated JPEG", "corrupt JPEG"),
    and nothing else, whatever the bytes.
    """
    data = bytes(jpeg)
    n = len(data)
    if n == 0:
        raise ImageError("empty")
    if n < 2 or data[0] != 0xFF or data[1] != 0xD8:
        raise ImageError("not a JPEG", "no start-of-image marker")
    i = 2
    while True:
        i = data.find(b"\xff", i)
        if i < 0:
            raise ImageError("truncated JPEG", "no frame header")
        while i < n and data[i] == 0xFF:  # a marker may be preceded by any number of 0xFF
            i += 1
        if i >= n:
            raise ImageError("truncated JPEG", "no frame header")
        marker = data[i]
        i += 1
        if marker == 0x00 or marker in _STANDALONE:  # a stuffed 0xFF, or no length to skip
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise ImageError("corrupt JPEG", f"marker 0x{marker:02X} before the frame header")
        if i + 2 > n:
            raise ImageError("truncated JPEG", "in a segment header")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise ImageError("corrupt JPEG", f"segment length {length}")
        if marker in _SOF:
            if length < 8:
                raise ImageError("corrupt JPEG", "short frame header")
            if i + 7 > n:
                raise ImageError("truncated JPEG", "in the frame header")
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            if width == 0 or height == 0:  # height 0: given later by a DNL marker (never seen)
                raise ImageError("corrupt JPEG", f"frame of {width}x{height}")
            return width, height
        i += length


def decode(jpeg: bytes, *, reduce: int = 1, gray: bool = False) -> Image:
    """Decode a JPEG, scaled down by ``reduce`` (1, 2, 4 or 8) while decoding.

    libjpeg scales in the DCT, so 1/4 costs less than a full decode plus a resize (the
    image is ``ceil(width / reduce)`` by ``ceil(height / reduce)``). ``gray`` decodes only
    the luminance, which the health checks need. EXIF orientation is ignored: masks and
    checks work in the sensor's frame, the one :func:`jpeg_size` reports.

    Raises :class:`ImageError`, never returns None: "empty", "not a JPEG", "truncated JPEG"
    (no end-of-image marker within the last 32 bytes: a snapshot cut short, which libjpeg
    would otherwise pad with grey and return as if whole), "corrupt JPEG", "too large"
    (over :data:`MAX_PIXELS`) or "undecodable JPEG" (libjpeg gave up). Damage inside the
    entropy-coded data that libjpeg recovers from (a warning on stderr) is not detected.
    """
    flags = _FLAGS.get((reduce, bool(gray)))
    if flags is None:
        raise ValueError(f"reduce must be 1, 2, 4 or 8, not {reduce!r}")
    width, height = jpeg_size(jpeg)
    if width * height > MAX_PIXELS:
        raise ImageError("too large", f"{width}x{height}")
    if b"\xff\xd9" not in jpeg[-_EOI_SLACK:]:
        raise ImageError("truncated JPEG", "no end-of-image marker")
    try:
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
    except cv2.error as exc:
        raise ImageError("undecodable JPEG", str(exc).strip().splitlines()[-1]) from None
    if img is None or img.size == 0:
        raise ImageError("undecodable JPEG")
    return np.asarray(img, dtype=np.uint8)


# ---- privacy masks -------------------------------------------------------------------------

_SHIFT = 8  # fillPoly's fixed point: vertices to 1/256 of a pixel
_PAD = 4  # the rasterising canvas's margin; polygons are clipped 1.5 px into it


@dataclass(frozen=True, slots=True, eq=False)
class MaskPlan:
    """Masks compiled for one image size: the same masks apply to every frame, so the
    polygons are rasterised once and each frame costs one masked fill (about 0.3 ms on
    1280x720 here).

    ``mask`` is ``(height, width)`` ``uint8``: 255 where the image is masked, else 0.
    """

    width: int
    height: int
    mask: Image

    @property
    def fraction(self) -> float:
        """The share of the image masked, 0 to 1."""
        return float(np.count_nonzero(self.mask)) / (self.width * self.height)


def compile_masks(masks: Sequence[Mask], width: int, height: int) -> MaskPlan:
    """Rasterise ``masks`` for an image of ``width`` by ``height`` pixels.

    The masked area is conservative, never smaller than drawn: every pixel whose centre is
    inside a polygon is masked, and then every pixel next to one (a 1-pixel dilation), so
    rounding at a reduced scale, or a polygon thinner than a pixel, cannot let a masked
    pixel through; a mask is at most two pixels wider than drawn, at any size. No
    antialiasing: a pixel is masked or not. Each polygon is filled on its own (their union
    is masked; where two overlap stays masked). Inside one self-intersecting polygon, the
    even-odd rule applies (as SVG's ``evenodd``: the centre of a five-pointed star drawn
    as one line stays clear), so draw simple polygons. Points outside 0..1 are allowed:
    the polygon is clipped by the image's edge.

    Raises ``ValueError`` for a polygon of fewer than 3 points or a point that is not two
    finite numbers.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}")
    # Rasterised on a canvas with a margin, each polygon first clipped to a rectangle inside
    # that margin: fillPoly's own clipping at the image's edge moves the edges of a polygon
    # that crosses it (a pixel inside was left out in the property test).
    pad = _PAD
    canvas = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
    scale = np.array([width, height], np.float64)
    box = (1.5, 1.5, width + 2 * pad - 2.5, height + 2 * pad - 2.5)  # in canvas coordinates
    for n, poly in enumerate(masks):
        try:
            pts = np.array(poly, np.float64)
        except (ValueError, TypeError):
            raise ValueError(f"mask {n}: points must be [x, y] pairs of numbers") from None
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"mask {n}: points must be [x, y] pairs of numbers")
        if len(pts) < 3:
            raise ValueError(f"mask {n}: a polygon needs at least 3 points, not {len(pts)}")
        if not np.isfinite(pts).all():
            raise ValueError(f"mask {n}: a point is not a finite number")
        # A pixel's centre (i + 0.5) / width in the drawing is OpenCV's integer coordinate i.
        clipped = _clip_polygon(pts * scale - 0.5 + pad, box)
        if len(clipped) < 3:
            continue  # wholly outside the image
        fixed = np.round(np.array(clipped) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    if masks:
        canvas = np.asarray(cv2.dilate(canvas, np.ones((3, 3), np.uint8)), dtype=np.uint8)
    mask = np.ascontiguousarray(canvas[pad : pad + height, pad : pad + width])
    mask.flags.writeable = False
    return MaskPlan(width, height, mask)


def _clip_polygon(
    pts: npt.NDArray[np.float64], box: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: ``pts`` clipped to the rectangle ``box`` (x0, y0, x1, y1). It keeps
    every point's winding number inside the box, so the even-odd fill there is unchanged;
    the edges it adds run along the box, in the margin that is cut off."""
    out = [(float(x), float(y)) for x, y in pts]
    x0, y0, x1, y1 = box
    for axis, limit, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if not out:
            break
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in = (cur[axis] <= limit) if keep_below else (cur[axis] >= limit)
            prev_in = (prev[axis] <= limit) if keep_below else (prev[axis] >= limit)
            if cur_in != prev_in:
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append((limit, cross[1]) if axis == 0 else (cross[0], limit))
            if cur_in:
                out.append(cur)
    return out


@functools.lru_cache(maxsize=8)
def _cached_plan(
    key: tuple[tuple[tuple[float, ...], ...], ...], width: int, height: int
) -> MaskPlan:
    return compile_masks(key, width, height)


def apply_masks(
    img: Image, masks: MaskPlan | Sequence[Mask], *, fill: int | Sequence[int] = 0
) -> Image:
    """Fill the masked pixels of ``img`` with ``fill``, **in place**, and return ``img``.

    In place because the driver decodes a fresh array for each frame and masks it before
    anything else sees it; pass ``img.copy()`` to keep the original. ``masks`` is a
    :class:`MaskPlan` for this image's size, or the polygons themselves (compiled for the
    size and kept: the last 8 (polygons, size) are cached). ``fill`` is one grey level, or
    one value per channel (B, G, R).

    Masking happens on the pixels before any encoding, so what was under a mask is gone,
    not hidden: after JPEG encoding, ringing reaches up to about 10 px into a mask from its
    edge (one 16 px chroma block), but it only spreads the neighbouring *visible* pixels.
    """
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"not an image: shape {img.shape}")
    height, width = img.shape[:2]
    if isinstance(masks, MaskPlan):
        plan = masks
        if (plan.width, plan.height) != (width, height):
            raise ValueError(
                f"masks compiled for {plan.width}x{plan.height}, image is {width}x{height}"
            )
    else:
        try:
            key = tuple(tuple(tuple(float(c) for c in p) for p in poly) for poly in masks)
        except (TypeError, ValueError):
            raise ValueError("masks: a list of polygons, each a list of [x, y] points") from None
        plan = _cached_plan(key, width, height)
    channels = 1 if img.ndim == 2 else img.shape[2]
    values = [int(fill)] * channels if isinstance(fill, int) else [int(v) for v in fill]
    if len(values) != channels:
        raise ValueError(f"fill has {len(values)} values for {channels} channels")
    if img.dtype == np.uint8 and not all(0 <= v <= 255 for v in values):
        raise ValueError(f"fill {values} is not 0 to 255")
    # OpenCV takes an image of 4 pixels or fewer in a row for a scalar: numpy fills those.
    if img.dtype == np.uint8 and img.flags.c_contiguous and channels <= 4 and width * height > 4:
        # Two masked passes in OpenCV (about 10x faster than numpy's boolean indexing). The
        # scalar is always 4 float64 values: a bare int would fill only the first channel.
        scalar = np.array([*values, *([0] * (4 - channels))], np.float64)
        cv2.bitwise_and(img, np.zeros(4), dst=img, mask=plan.mask)
        if any(values):
            cv2.bitwise_or(img, scalar, dst=img, mask=plan.mask)
    else:
        img[plan.mask.astype(bool)] = values if channels > 1 else values[0]
    return img


# ---- health checks -------------------------------------------------------------------------

_SHARP_WIDTH = 160  # the fixed scale of the sharpness measure
_REF_SIZE = (64, 36)  # the scene reference, width x height
_FROZEN_CAP = 8  # a pixel's difference counts up to this many grey levels


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What the image health checks flag, per camera. The defaults suit a fixed outdoor or
    indoor camera polled every few seconds to a minute; they were tuned on synthetic
    scenes (tests/test_drivers/test_camera_vision.py), not yet on a fleet of real cameras.

    Measures (all on the small grey image the driver decodes, at 1/4 or 1/8):

    - brightness: the mean grey level, 0 to 255;
    - contrast: the standard deviation of the grey levels;
    - sharpness: the variance of the Laplacian of the image scaled to 160 px wide, so it
      does not depend on the camera's resolution or on the decode's reduction;
    - detail: the sharpness of a lightly smoothed copy (a 0.8 px Gaussian takes out sensor
      noise, which would read as detail) divided by its contrast squared, which a global
      change of brightness (auto exposure, dusk) does not change, but defocus does: about
      0.1 for a sharp scene, 0.01 for one blurred by 1% of its width;
    - similarity: the normalised correlation, -1 to 1, of the image's gradients (its edges,
      on a blurred 64x36 copy) with those of the learned reference. Gradients ignore a
      brightness offset and the normalisation ignores a gain, so auto exposure, headlights
      and dusk leave it near 1; a different view brings it near 0.
    """

    black_level: float = 16.0
    """``black`` when brightness is below this *and* contrast below ``black_contrast``: a
    dead sensor, a video loss screen, a night with no light and no infrared."""
    black_contrast: float = 8.0
    """See ``black_level``: a dark scene with lights in it (contrast) is not black."""
    frozen_mad: float = 0.1
    """``frozen`` when the mean absolute difference to the previous poll's image is below
    this many grey levels, for ``frozen_polls`` polls in a row: a camera (or its encoder,
    or a proxy's cache) serving the same picture. A live sensor's noise always changes
    consecutive frames. Each pixel's difference counts up to 8 grey levels, so a burnt-in
    clock, a few pixels changing a lot, does not hide a frozen picture."""
    frozen_polls: int = 3
    """See ``frozen_mad``: how many polls in a row must show no change, each against the
    one before (at 3, the fourth identical picture raises it). Not yet checked against
    cameras whose temporal noise reduction makes a still night scene almost noiseless."""
    tamper_similarity: float = 0.5
    """The scene *differs* when similarity to the reference falls below this: the view
    moved or changed, or the lens is covered. Similarity is the median, over a 6 x 8 grid
    of cells, of each cell's edge correlation with the reference, so objects that pass (a
    bright car, a dark truck, a third of the picture) change only their own cells: the
    simulator's street with its moving objects stays at 0.84 to 1.0. A view turned by an
    eighth of its width, another view, or a covered lens changes every cell and falls
    below it."""
    featureless: float = 0.06
    """The scene also differs when it has almost no edges: a covered or sprayed lens, a
    bag over the camera. Measured as the RMS gradient of the 64x36 reference image divided
    by the brightness, so it does not change with the light: the test scenes measure about
    0.6, the same scenes in thick fog (30% contrast) 0.18, a covered lens with a light
    gradient across it 0.03 to 0.05. A featureless view is never learned as the
    reference, so a covered lens alarms until uncovered, and a camera that starts covered
    alarms too (after ``tamper_polls``), with no reference to compare with."""
    tamper_polls: int = 3
    """``covered_or_moved`` (and ``blurred``) once the condition held for this many polls
    in a row: a person walking up to the camera is one or two polls."""
    tamper_relearn: float = 600.0
    """Seconds: after the scene has differed for this long (and is not featureless), the new
    view becomes the reference and ``covered_or_moved`` clears, so a camera moved or
    re-aimed on purpose stops alarming after 10 minutes; the alarm has been raised (and
    recorded) meanwhile. A covered lens never becomes the reference."""
    blur_sharpness: float = 0.3
    """``blurred`` when detail falls below this fraction of the learned normal detail, for
    ``tamper_polls`` polls: defocus, a smeared or fogged lens, a translucent cover. Being
    relative to the camera's own normal, it suits any scene."""
    blur_floor: float = 0.005
    """``blurred`` also when detail is below this absolute level, for a camera that was
    already blurred when tepi first saw it (it has no sharp normal to compare with). A
    scene with almost no fine texture (a blank wall, fog) can read as blurred; set 0 to
    rely on the relative test only."""
    learn_seconds: float = 300.0
    """Time constant of the reference (scene and detail), learned as a running average
    while the picture is normal: a car that parks becomes part of the scene in a few
    minutes, and dusk is followed. A slower change than this (a camera turned very slowly)
    is learned, not flagged."""

    def __post_init__(self) -> None:
        if self.frozen_polls < 1 or self.tamper_polls < 1:
            raise ValueError("frozen_polls and tamper_polls must be at least 1")
        if self.learn_seconds <= 0 or self.tamper_relearn < 0:
            raise ValueError("learn_seconds must be positive and tamper_relearn not negative")


@dataclass(frozen=True, slots=True)
class HealthResult:
    """One poll's measures and flags; ``reason`` is the first flag in the order black,
    frozen, covered_or_moved, blurred (None: the picture is healthy)."""

    brightness: float
    """Mean grey level, 0 to 255, one decimal."""
    contrast: float
    """Standard deviation of the grey levels."""
    sharpness: float
    """Variance of the Laplacian at 160 px wide (see :class:`Thresholds`)."""
    detail: float
    """Sharpness relative to contrast, which brightness does not change."""
    similarity: float | None
    """Of the scene's edges with the reference's, -1 to 1; None until one is learned."""
    difference: float | None
    """Mean absolute difference to the previous poll (None on the first)."""
    black: bool
    frozen: bool
    covered_or_moved: bool
    blurred: bool
    reason: Reason | None


class HealthChecker:
    """The image checks of one camera: keeps the previous image (frozen), the learned
    reference (covered_or_moved, blurred) and the counts of consecutive polls.

    The reference is the scene's edges on a 64x36 copy, and its normal detail. The first
    picture with any detail becomes it; after that each normal poll (not black, frozen,
    differing or blurred) blends into it with the weight of the time since the previous
    poll over ``learn_seconds``. A poll that differs or is blurred teaches it nothing, so
    a fault cannot become the normal by lasting, except a new view held for
    ``tamper_relearn``, which replaces it.

    :meth:`check` takes its own lock, so the driver may call it from any worker thread; one
    object per camera. A change of the image's size (another camera resolution) starts
    everything afresh.
    """

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the previous image, the reference and the counts."""
        self._shape: tuple[int, ...] | None = None
        self._prev: Image | None = None
        self._last: float | None = None
        self._same = 0
        self._ref: npt.NDArray[np.float32] | None = None
        self._ref_detail = 0.0
        self._differ = 0
        self._differ_since: float | None = None
        self._blurry = 0

    def check(self, gray_small: Image, now: float) -> HealthResult:
        """Measure ``gray_small`` (2-D ``uint8``, at least 160 px wide ideally: a narrower
        image is scaled up for the sharpness, which then reads low) polled at ``now``
        (seconds, monotonic)."""
        if gray_small.ndim != 2 or gray_small.size == 0 or gray_small.dtype != np.uint8:
            raise ValueError(
                f"a 2-D uint8 image is needed, not {gray_small.dtype} {gray_small.shape}"
            )
        with self._lock:
            return self._check(gray_small, now)

    def _check(self, g: Image, now: float) -> HealthResult:
        t = self.thresholds
        if g.shape != self._shape:
            self.reset()
            self._shape = g.shape
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now

        mean, std = cv2.meanStdDev(g)
        brightness, contrast = float(mean[0, 0]), float(std[0, 0])
        fixed = _fixed_width(g)
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(fixed, cv2.CV_32F))
        sharpness = float(lap_std[0, 0]) ** 2
        detail = _detail(fixed)
        black = brightness < t.black_level and contrast < t.black_contrast

        difference = None
        if self._prev is not None:
            diff = np.minimum(cv2.absdiff(g, self._prev), _FROZEN_CAP)
            difference = float(cv2.mean(diff)[0])
            self._same = self._same + 1 if difference < t.frozen_mad else 0
        self._prev = g.copy()  # the caller may reuse its buffer
        frozen = self._same >= t.frozen_polls

        grad = _gradients(g)
        energy = float(np.dot(grad, grad))
        relief = math.sqrt(energy / grad.size) / max(brightness, t.black_level, 1.0)
        featureless = relief < t.featureless
        similarity = None
        if self._ref is not None:
            similarity = _cell_similarity(grad, self._ref)
        differs = featureless or (similarity is not None and similarity < t.tamper_similarity)

        usable = not black and not featureless
        blurry = usable and (
            detail < t.blur_floor
            or (self._ref is not None and detail < t.blur_sharpness * self._ref_detail)
        )
        self._blurry = self._blurry + 1 if blurry else 0

        if differs:
            self._differ += 1
            if self._differ_since is None:
                self._differ_since = now
            elif usable and now - self._differ_since >= t.tamper_relearn:
                self._ref, self._ref_detail = grad, detail  # the new view, on purpose
                self._differ, self._differ_since, self._blurry = 0, None, 0
        else:
            self._differ, self._differ_since = 0, None
            if usable and not frozen and not blurry:
                if self._ref is None:
                    self._ref, self._ref_detail = grad, detail
                else:
                    alpha = 1.0 - math.exp(-dt / t.learn_seconds)
                    self._ref += np.float32(alpha) * (grad - self._ref)
                    self._ref_detail += alpha * (detail - self._ref_detail)

        covered = self._differ >= t.tamper_polls
        blurred = self._blurry >= t.tamper_polls
        reason: Reason | None = None
        if black:
            reason = "black"
        elif frozen:
            reason = "frozen"
        elif covered:
            reason = "covered_or_moved"
        elif blurred:
            reason = "blurred"
        return HealthResult(
            brightness=round(brightness, 1),
            contrast=round(contrast, 1),
            sharpness=round(sharpness, 1),
            detail=round(detail, 4),
            similarity=None if similarity is None else round(similarity, 3),
            difference=None if difference is None else round(difference, 3),
            black=black,
            frozen=frozen,
            covered_or_moved=covered,
            blurred=blurred,
            reason=reason,
        )


def _fixed_width(g: Image) -> Image:
    height, width = g.shape
    if width == _SHARP_WIDTH:
        return g
    new_h = max(1, round(height * _SHARP_WIDTH / width))
    interp = cv2.INTER_AREA if width > _SHARP_WIDTH else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(g, (_SHARP_WIDTH, new_h), interpolation=interp), np.uint8)


def _detail(fixed: Image) -> float:
    """Laplacian variance over variance of the 160 px image smoothed by a 0.8 px Gaussian:
    the smoothing takes out sensor noise (which the Laplacian amplifies, and which would
    read as detail on a blurred picture) and keeps edges."""
    smooth = cv2.GaussianBlur(fixed.astype(np.float32), (0, 0), 0.8)
    _, std = cv2.meanStdDev(smooth)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(smooth, cv2.CV_32F))
    return float(lap_std[0, 0]) ** 2 / max(float(std[0, 0]) ** 2, 1.0)


def _gradients(g: Image) -> npt.NDArray[np.float32]:
    """The x and y gradients of a blurred 64x36 copy, as one flat vector."""
    small = cv2.resize(g, _REF_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    tiny = cv2.GaussianBlur(small, (3, 3), 0.8)
    gx = cv2.Sobel(tiny, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(tiny, cv2.CV_32F, 0, 1, ksize=3)
    return np.concatenate([np.asarray(gx, np.float32).ravel(), np.asarray(gy, np.float32).ravel()])


_CELLS = (6, 8)  # the reference is compared in 6 x 8 cells (rows, columns) of 6 x 8 px


def _cell_similarity(grad: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> float:
    """How well the scene's structure matches the reference, 0 (nothing alike) to 1: the
    median, over the cells of a 6 x 8 grid, of the correlation of their gradients. Cell by
    cell, so that a few strong edges (a bright car, a dark truck: objects a scene has all
    day) change only the cells they are in, not the whole score, while a covered lens or a
    turned camera changes every cell. Cells without structure in the reference (sky, a
    wall) have no say; with too few cells that have, the whole image is compared."""
    w, h = _REF_SIZE
    rows, cols = _CELLS
    cur = grad.reshape(2, rows, h // rows, cols, w // cols)
    old = ref.reshape(2, rows, h // rows, cols, w // cols)
    dot = np.einsum("arbcd,arbcd->rc", cur, old)
    e_cur = np.einsum("arbcd,arbcd->rc", cur, cur)
    e_old = np.einsum("arbcd,arbcd->rc", old, old)
    # A cell speaks when it has a tenth of the reference's mean cell energy or more.
    speaks = e_old > 0.1 * float(e_old.mean())
    if int(np.count_nonzero(speaks)) < 6:
        denom = math.sqrt(float(e_cur.sum()) * float(e_old.sum()))
        return float(dot.sum()) / denom if denom > 1e-6 else 0.0
    corr = dot[speaks] / np.sqrt(np.maximum(e_cur[speaks] * e_old[speaks], 1e-12))
    return float(np.median(corr))


# ---- encoding ------------------------------------------------------------------------------


def encode_jpeg(img: Image, *, quality: int) -> bytes:
    """``img`` as a baseline JPEG at ``quality`` (1 to 100)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1 to 100, not {quality}")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("cannot encode", f"shape {img.shape}")
    return buf.tobytes()


def fit(img: Image, *, max_width: int, max_height: int) -> Image:
    """``img`` scaled down, keeping its aspect, to fit ``max_width`` x ``max_height``
    (INTER_AREA, which averages rather than drops pixels). Never scaled up: an image that
    fits already is returned as it is (the same array)."""
    if max_width < 1 or max_height < 1:
        raise ValueError(f"cannot fit into {max_width}x{max_height}")
    height, width = img.shape[:2]
    scale = min(max_width / width, max_height / height)
    if scale >= 1.0:
        return img
    size = (
        max(1, min(max_width, round(width * scale))),
        max(1, min(max_height, round(height * scale))),
    )
    return np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), np.uint8)


_QUALITY_STEP = 10
_SCALE_STEP = 0.75
_MIN_SIDE = 16


def encode_under(img: Image, *, max_bytes: int, quality: int, min_quality: int = 40) -> bytes:
    """``img`` as a JPEG of at most ``max_bytes`` (a broker's message cap, say 128 KB).

    First at ``quality``, then lower by steps of 10 down to ``min_quality`` (straight to it
    when the JPEG is over 2.5 times the cap: from 75 to 40, quality alone about halves the
    size); if that is still too big, the image is scaled down (at ``min_quality``) by steps
    of 0.75, or at once by the square root of the overshoot when that is smaller (bytes go
    roughly with the pixels), until it fits: a smaller sharp image serves better than a
    blocky full-size one. Raises :class:`ImageError` ("too big") only when even a 16 px
    image does not fit: an image is never silently dropped or cut.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    min_quality = min(min_quality, quality)
    q = quality
    out = encode_jpeg(img, quality=q)
    while len(out) > max_bytes and q > min_quality:
        far = len(out) > 2.5 * max_bytes
        q = min_quality if far else max(min_quality, q - _QUALITY_STEP)
        out = encode_jpeg(img, quality=q)
    height, width = img.shape[:2]
    w, h = width, height
    smallest = min(1.0, _MIN_SIDE / min(width, height))  # the scale of a 16 px short side
    scale = 1.0
    while len(out) > max_bytes:
        if scale <= smallest:
            raise ImageError("too big", f"{len(out)} bytes at {w}x{h}, limit {max_bytes}")
        scale = max(smallest, scale * min(_SCALE_STEP, math.sqrt(max_bytes / len(out))))
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        out = encode_jpeg(fit(img, max_width=w, max_height=h), quality=min_quality)
    return out


def thumbnail(img: Image, width: int = 320, quality: int = 70) -> bytes:
    """A JPEG ``width`` pixels wide (never wider than ``img``), aspect kept: for the
    uplink's metadata-first messages."""
    return encode_jpeg(fit(img, max_width=width, max_height=1 << 16), quality=quality)


# ---- frame hash ----------------------------------------------------------------------------


def frame_hash(gray_small: Image) -> int:
    """A 64-bit difference hash (dHash) of a grey image, for logs and deduplication:
    bit ``8 * row + col`` says whether, on a 9x8 thumbnail, a pixel is brighter than its
    right neighbour. Near-identical frames (noise, recompression) hash alike or differ in
    a few bits; compare with :func:`hash_distance`."""
    if gray_small.ndim == 3:
        gray_small = np.asarray(cv2.cvtColor(gray_small, cv2.COLOR_BGR2GRAY), np.uint8)
    tiny = cv2.resize(gray_small, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (tiny[:, 1:] < tiny[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def hash_distance(a: int, b: int) -> int:
    """How many of the 64 bits differ between two :func:`frame_hash` values."""
    return (a ^ b).bit_count()
