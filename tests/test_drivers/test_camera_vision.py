"""The cameras' image processing: JPEG decoding and its refusals, privacy masks that never
leak a pixel, the health checks on synthetic scenes (each fires for its fault, none for
noise, a passing object, auto exposure or dusk), re-encoding under a byte cap, the hash."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.drivers.camera.vision import (
    HealthChecker,
    HealthResult,
    Image,
    ImageError,
    MaskPlan,
    Thresholds,
    apply_masks,
    compile_masks,
    decode,
    encode_jpeg,
    encode_under,
    fit,
    frame_hash,
    hash_distance,
    jpeg_size,
    thumbnail,
)

pytestmark = pytest.mark.timeout(30)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Floats = npt.NDArray[np.float32]


def jpeg(img: Image, quality: int = 75, **params: int) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for name, value in params.items():
        flags += [getattr(cv2, name), value]
    ok, buf = cv2.imencode(".jpg", img, flags)
    assert ok
    return buf.tobytes()


def noise_image(width: int, height: int, seed: int = 0, color: bool = True) -> Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if color else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


# ---- decode and jpeg_size ------------------------------------------------------------------


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_decode_scales_while_decoding(reduce: int, gray: bool) -> None:
    data = jpeg(noise_image(641, 359))
    assert jpeg_size(data) == (641, 359)
    img = decode(data, reduce=reduce, gray=gray)
    assert img.dtype == np.uint8
    expected = (math.ceil(359 / reduce), math.ceil(641 / reduce))
    assert img.shape == ((*expected,) if gray else (*expected, 3))


def test_decode_refuses_with_a_reason() -> None:
    good = jpeg(noise_image(64, 48))
    _, png = cv2.imencode(".png", noise_image(8, 8))
    cases = {
        b"": "empty",
        b"hello, world": "not a JPEG",
        png.tobytes(): "not a JPEG",
        good[: len(good) // 2]: "truncated JPEG",  # cut in the scan: no end marker
        good[:-2]: "truncated JPEG",
        good[:20]: "truncated JPEG",  # cut before the frame header
        b"\xff\xd8": "truncated JPEG",
        b"\xff\xd8\xff\xd9": "corrupt JPEG",  # an image with no frame
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError) as err:
            decode(data, reduce=4, gray=True)
        assert err.value.reason == reason, data[:16]
        assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="reduce"):
        decode(good, reduce=3)


def test_decode_takes_padding_after_the_end_marker() -> None:
    good = jpeg(noise_image(64, 48))
    assert decode(good + b"\x00" * 16).shape == (48, 64, 3)


def test_a_forged_giant_frame_header_is_refused_before_decoding() -> None:
    good = jpeg(noise_image(64, 48))
    sof = good.index(b"\xff\xc0")
    forged = good[: sof + 5] + struct.pack(">HH", 60000, 60000) + good[sof + 9 :]
    assert jpeg_size(forged) == (60000, 60000)
    with pytest.raises(ImageError) as err:
        decode(forged)
    assert err.value.reason == "too large"


@st.composite
def valid_jpegs(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(1, 600))
    height = draw(st.integers(1, 400))
    gray = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    params = {
        "IMWRITE_JPEG_PROGRESSIVE": int(draw(st.booleans())),
        "IMWRITE_JPEG_OPTIMIZE": int(draw(st.booleans())),
        "IMWRITE_JPEG_RST_INTERVAL": draw(st.sampled_from([0, 1, 7])),
    }
    return jpeg(noise_image(width, height, seed, not gray), draw(st.integers(5, 100)), **params)


@FAST
@given(valid_jpegs(), st.sampled_from([1, 2, 4, 8]))
def test_jpeg_size_agrees_with_opencv(data: bytes, reduce: int) -> None:
    width, height = jpeg_size(data)
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert full is not None
    assert full.shape[:2] == (height, width)
    img = decode(data, reduce=reduce, gray=True)
    assert img.shape == (math.ceil(height / reduce), math.ceil(width / reduce))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_raise_only_image_error(data: bytes, as_jpeg: bool) -> None:
    if as_jpeg:
        data = b"\xff\xd8" + data
    try:
        width, height = jpeg_size(data)
        assert width > 0
        assert height > 0
    except ImageError:
        pass
    try:
        img = decode(data, reduce=8, gray=True)
        assert img.size > 0
    except ImageError:
        pass


@FAST
@given(valid_jpegs(), st.data())
def test_damaged_jpegs_raise_only_image_error(data: bytes, draw: st.DataObject) -> None:
    damaged = bytearray(data)
    cut = draw.draw(st.integers(0, len(damaged)))
    if draw.draw(st.booleans()):
        del damaged[cut:]
    else:
        for _ in range(draw.draw(st.integers(1, 8))):
            damaged[draw.draw(st.integers(0, len(damaged) - 1))] = draw.draw(st.integers(0, 255))
    for reduce in (1, 4):
        try:
            img = decode(bytes(damaged), reduce=reduce)
            assert img is not None
        except ImageError:
            pass


# ---- masks ---------------------------------------------------------------------------------


def inside(poly: list[tuple[float, float]], x: Floats, y: Floats) -> npt.NDArray[np.bool_]:
    """Even-odd point-in-polygon, the reference: crossings of a ray to the right."""
    result = np.zeros(x.shape, bool)
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(all="ignore"):
            x_at = x1 + (y.astype(np.float64) - y1) * (x2 - x1) / (y2 - y1)
        result ^= crosses & (x < x_at)
    return result


def centres(width: int, height: int) -> tuple[Floats, Floats]:
    """Each pixel's centre, in the 0..1 coordinates of a mask."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs + 0.5) / width, (ys + 0.5) / height


points = st.tuples(st.floats(-0.2, 1.2), st.floats(-0.2, 1.2))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(points, min_size=3, max_size=8), min_size=1, max_size=3),
    st.integers(1, 160),
    st.integers(1, 120),
)
def test_every_pixel_whose_centre_is_inside_a_mask_is_filled(
    polys: list[list[tuple[float, float]]], width: int, height: int
) -> None:
    plan = compile_masks(polys, width, height)
    x, y = centres(width, height)
    expected = np.zeros((height, width), bool)
    for poly in polys:
        expected |= inside(poly, x, y)
    leaked = expected & (plan.mask == 0)
    assert not leaked.any(), np.argwhere(leaked)[:5]
    img = np.full((height, width, 3), 255, np.uint8)
    apply_masks(img, plan, fill=7)
    assert (img[expected] == 7).all()


def test_a_mask_is_at_most_a_pixel_wider_than_drawn() -> None:
    plan = compile_masks([[[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]], 100, 80)
    rows, cols = np.nonzero(plan.mask)
    # centres inside: columns 25..74, rows 20..59; one more on each side at most
    assert cols.min() >= 23
    assert cols.max() <= 76
    assert rows.min() >= 18
    assert rows.max() <= 61
    assert plan.mask[20:60, 25:75].all()
    assert 0.25 <= plan.fraction <= 0.29


def test_overlapping_masks_are_a_union_and_the_image_edge_is_covered() -> None:
    a = [[0.0, 0.0], [0.6, 0.0], [0.6, 0.6], [0.0, 0.6]]
    b = [[0.4, 0.4], [1.0, 0.4], [1.0, 1.0], [0.4, 1.0]]
    plan = compile_masks([a, b], 50, 50)
    assert plan.mask[25, 25] == 255  # in both: still masked (one fillPoly call would XOR it)
    assert plan.mask[0, 0] == 255
    assert plan.mask[49, 49] == 255
    assert plan.mask[0, 49] == 0
    whole = compile_masks([[[0, 0], [1, 0], [1, 1], [0, 1]]], 33, 17)
    assert whole.mask.all()


WHITE_MASK = [[0.1, 0.2], [0.45, 0.1], [0.6, 0.55], [0.3, 0.8], [0.12, 0.6]]


@pytest.mark.parametrize("reduce", [1, 4])
def test_masked_area_is_fill_before_and_after_jpeg(reduce: int) -> None:
    """A white 1280x720 picture through the driver's path: decoded at full size or 1/4,
    masked, encoded, decoded again. Before encoding, every pixel whose centre is inside is
    exactly the fill, and none more than 2 px outside is touched; after, all but the mask's
    edge (JPEG rings up to about 10 px in: the 16 px chroma blocks) is still the fill."""
    white = jpeg(np.full((720, 1280, 3), 255, np.uint8), 90)
    img = decode(white, reduce=reduce)
    height, width = img.shape[:2]
    apply_masks(img, [WHITE_MASK], fill=0)
    x, y = centres(width, height)
    inner = inside([(p[0], p[1]) for p in WHITE_MASK], x, y)
    assert (img[inner] == 0).all()
    outside = (~inner).astype(np.uint8)
    far = cv2.erode(outside, np.ones((5, 5), np.uint8)).astype(bool)
    assert (img[far] >= 250).all()  # the mask did not spread beyond its edge
    again = decode(encode_jpeg(img, quality=75), reduce=1)
    depth = cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, 3)
    interior = depth > 12
    assert interior.sum() > 0.3 * inner.sum()
    assert int(again[interior].max()) <= 2


def test_apply_masks_in_place_per_channel_and_by_polygons() -> None:
    img = noise_image(320, 180)
    polys = [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]]
    plan = compile_masks(polys, 320, 180)
    out = apply_masks(img, plan, fill=(10, 20, 30))
    assert out is img
    assert (img[plan.mask > 0] == (10, 20, 30)).all()
    by_polys = apply_masks(noise_image(320, 180), polys, fill=(10, 20, 30))
    assert np.array_equal(by_polys, img)
    gray = noise_image(320, 180, color=False)
    apply_masks(gray, polys, fill=3)
    assert (gray[plan.mask > 0] == 3).all()
    # a view that OpenCV cannot write in place: numpy fills it
    wide = noise_image(640, 180)
    view = wide[:, ::2]
    apply_masks(view, plan, fill=(1, 2, 3))
    assert (wide[:, ::2][plan.mask > 0] == (1, 2, 3)).all()
    untouched = noise_image(320, 180)
    assert np.array_equal(apply_masks(untouched.copy(), []), untouched)


def test_apply_masks_refuses_what_does_not_fit() -> None:
    plan = compile_masks([[[0, 0], [1, 0], [1, 1]]], 100, 100)
    with pytest.raises(ValueError, match="compiled for 100x100"):
        apply_masks(noise_image(50, 50), plan)
    with pytest.raises(ValueError, match="channels"):
        apply_masks(noise_image(100, 100), plan, fill=(1, 2))
    for bad in ([[0, 0], [1, 1]], [[0, 0], [1, "x"], [1, 1]], [[0, 0], [1, math.nan], [1, 1]]):
        with pytest.raises(ValueError, match="mask 0"):
            compile_masks([bad], 10, 10)  # type: ignore[list-item]
    assert isinstance(plan, MaskPlan)


# ---- health checks: synthetic scenes -------------------------------------------------------

W, H = 640, 360


def scene(seed: int) -> Floats:
    """A textured view: a sky-like gradient, then rectangles, discs and lines of many grey
    levels and sizes."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(90, 170, H, dtype=np.float32)[:, None], (1, W))
    for _ in range(60):
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        c = float(rng.integers(20, 235))
        kind = rng.integers(0, 3)
        if kind == 0:
            w, h = int(rng.integers(10, 120)), int(rng.integers(10, 80))
            cv2.rectangle(img, (x, y), (x + w, y + h), c, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(5, 50)), c, -1)
        else:
            end = (int(rng.integers(0, W)), int(rng.integers(0, H)))
            cv2.line(img, (x, y), end, c, int(rng.integers(1, 5)))
    return img


class Camera:
    """A camera on a scene: sensor noise on each frame, then the driver's path (JPEG, then
    decoded in grey at 1/4) or a plain 1/4 resize when ``via_jpeg`` is off (faster)."""

    def __init__(self, seed: int = 0, via_jpeg: bool = False) -> None:
        self.rng = np.random.default_rng(seed + 1000)
        self.base = scene(seed)
        self.via_jpeg = via_jpeg

    def frame(self, base: Floats | None = None, gain: float = 1.0, noise: float = 3.0) -> Image:
        view = self.base if base is None else base
        pixels = np.clip(view * gain + self.rng.normal(0, noise, view.shape), 0, 255)
        img = pixels.astype(np.uint8)
        if self.via_jpeg:
            return decode(jpeg(img), reduce=4, gray=True)
        small = cv2.resize(img, (W // 4, H // 4), interpolation=cv2.INTER_AREA)
        return np.asarray(small, np.uint8)


def blurred(view: Floats, sigma: float) -> Floats:
    return np.asarray(cv2.GaussianBlur(view, (0, 0), sigma), np.float32)


def poll(checker: HealthChecker, frames: Iterator[Image], start: float = 0.0) -> list[HealthResult]:
    return [checker.check(f, start + 10.0 * i) for i, f in enumerate(frames)]


def warmed(cam: Camera, polls: int = 5) -> tuple[HealthChecker, float]:
    """A checker that has learned the normal scene; returns it and the next poll's time."""
    checker = HealthChecker()
    for i in range(polls):
        assert checker.check(cam.frame(), 10.0 * i).reason is None
    return checker, 10.0 * polls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_life_flags_nothing(seed: int) -> None:
    """Noise, objects passing (up to about 30% of the picture, brighter or darker than the
    scene, or textured and standing for a while), auto exposure jumping by +-40%, then a
    dusk over 50 minutes down to a quarter of the light: no flag on any poll."""
    cam = Camera(seed)
    checker, t = warmed(cam)
    results = []

    def step(img: Image) -> None:
        nonlocal t
        results.append(checker.check(img, t))
        t += 10.0

    rng = np.random.default_rng(seed)
    for i in range(20):  # a car or a person crossing, one pose per poll
        view = cam.base.copy()
        w, h = int(W * 0.55), int(H * 0.55)  # 30% of the frame
        x = int((W - w) * i / 19)
        cv2.rectangle(view, (x, 40), (x + w, 40 + h), float(rng.choice([30.0, 230.0])), -1)
        step(cam.frame(view))
    other = scene(seed + 50)
    for i in range(5):  # a textured object (a lorry) standing in front for 5 polls: 30%
        view = cam.base.copy()
        w, h = int(W * 0.55), int(H * 0.55)
        view[60 : 60 + h, 80 + i : 80 + i + w] = other[60 : 60 + h, 80 + i : 80 + i + w]
        step(cam.frame(view))
    for gain in (1.4, 1.4, 1.4, 1.4, 0.6, 0.6, 0.6, 0.6, 1.0, 1.0):  # auto exposure
        step(cam.frame(gain=gain))
    for i in range(300):  # dusk: every 10 s for 50 minutes, to 25% of the light
        step(cam.frame(gain=1.0 - 0.75 * i / 299))
    assert [r.reason for r in results] == [None] * len(results), [
        (i, r) for i, r in enumerate(results) if r.reason
    ][:3]
    assert all(r.similarity is not None and r.similarity > 0.5 for r in results)


def test_through_jpeg_and_at_any_scale() -> None:
    """The driver's path (JPEG, decoded at 1/4) reads a normal scene as normal, and the
    sharpness of one scene is about the same from a 640 and a 1920 camera, decoded at 1/4
    or 1/8: it is measured at a fixed width."""
    cam = Camera(3, via_jpeg=True)
    checker = HealthChecker()
    results = poll(checker, iter([cam.frame() for _ in range(6)]))
    assert [r.reason for r in results] == [None] * 6
    assert results[-1].difference is not None
    assert results[-1].difference > 0.3  # the noise: a live camera is never frozen
    big = cv2.resize(cam.base, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    data = jpeg(np.clip(big, 0, 255).astype(np.uint8), 90)
    sharp = [HealthChecker().check(decode(data, reduce=r, gray=True), 0).sharpness for r in (4, 8)]
    sharp.append(results[-1].sharpness)
    assert max(sharp) < 1.6 * min(sharp), sharp


def test_black() -> None:
    cam = Camera(0)
    checker, t = warmed(cam)
    r = checker.check(cam.frame(np.full((H, W), 4.0, np.float32), noise=2.0), t)
    assert r.black
    assert r.reason == "black"
    assert r.brightness < 16
    night_with_lights = np.full((H, W), 4.0, np.float32)
    cv2.circle(night_with_lights, (300, 100), 40, 250.0, -1)
    assert not HealthChecker().check(cam.frame(night_with_lights), 0).black


def test_frozen_after_three_identical_polls_and_a_burnt_in_clock_does_not_hide_it() -> None:
    cam = Camera(1)
    checker, t = warmed(cam)
    still = cam.frame()
    flags = []
    for i in range(5):
        img = still.copy()
        cv2.putText(img, f"{i:02d}", (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, 255)  # the OSD clock
        flags.append(checker.check(img, t + 10 * i).frozen)
    # the first still frame differs from the live one before it; then 3 unchanged polls
    assert flags == [False, False, False, True, True]
    assert checker.check(still, t + 50).reason == "frozen"
    assert checker.check(cam.frame(), t + 60).reason is None  # live again


def test_a_covered_lens_is_flagged_after_three_polls_and_never_learned() -> None:
    cam = Camera(2)
    checker, t = warmed(cam)
    cover = np.full((H, W), 60.0, np.float32) + np.linspace(0, 25, W, dtype=np.float32)[None, :]
    results = [checker.check(cam.frame(cover, noise=5.0), t + 10 * i) for i in range(80)]
    assert [r.covered_or_moved for r in results[:3]] == [False, False, True]
    assert all(r.reason == "covered_or_moved" for r in results[2:])  # 800 s: still flagged
    assert not any(r.blurred for r in results)
    after = [checker.check(cam.frame(), t + 1000 + 10 * i) for i in range(2)]
    assert [r.reason for r in after] == [None, None]


def test_a_camera_that_starts_covered_is_flagged() -> None:
    cam = Camera(0)
    checker = HealthChecker()
    cover = np.full((H, W), 90.0, np.float32)
    results = poll(checker, iter([cam.frame(cover) for _ in range(4)]))
    assert [r.reason for r in results] == [None, None, "covered_or_moved", "covered_or_moved"]


@pytest.mark.parametrize("change", ["shifted", "other scene"])
def test_a_moved_camera_is_flagged_then_relearned(change: str) -> None:
    cam = Camera(0)
    checker, t = warmed(cam)
    view = np.roll(cam.base, W // 8, axis=1) if change == "shifted" else scene(99)
    results = [checker.check(cam.frame(view), t + 10 * i) for i in range(70)]
    assert [r.covered_or_moved for r in results[:3]] == [False, False, True]
    # flagged until the new view has lasted tamper_relearn (600 s), then it is the scene
    relearned = next(i for i, r in enumerate(results) if i > 2 and not r.covered_or_moved)
    assert relearned == 60
    assert all(r.reason is None for r in results[60:])


def test_blurred_relative_to_the_learned_normal() -> None:
    cam = Camera(1)
    checker, t = warmed(cam)
    soft = blurred(cam.base, 6)
    results = [checker.check(cam.frame(soft), t + 10 * i) for i in range(6)]
    assert [r.blurred for r in results] == [False, False, True, True, True, True]
    assert results[-1].reason == "blurred"
    assert not results[-1].covered_or_moved
    assert checker.check(cam.frame(), t + 60).reason is None


def test_a_camera_that_starts_blurred_is_flagged_by_the_absolute_floor() -> None:
    cam = Camera(2)
    soft = blurred(cam.base, 12)
    results = poll(HealthChecker(), iter([cam.frame(soft) for _ in range(3)]))
    assert [r.reason for r in results] == [None, None, "blurred"]
    relaxed = HealthChecker(Thresholds(blur_floor=0))
    assert poll(relaxed, iter([cam.frame(soft) for _ in range(3)]))[-1].reason is None


def test_reason_priority_and_thresholds() -> None:
    checker = HealthChecker(Thresholds(frozen_polls=1))
    dark = np.full((90, 160), 3, np.uint8)
    results = poll(checker, iter([dark, dark, dark]))
    assert results[-1].black
    assert results[-1].frozen
    assert results[-1].covered_or_moved
    assert results[-1].reason == "black"
    with pytest.raises(ValueError, match="polls"):
        Thresholds(tamper_polls=0)
    with pytest.raises(ValueError, match="2-D uint8"):
        checker.check(np.zeros((90, 160, 3), np.uint8), 0)
    r = HealthChecker().check(np.full((90, 160), 128, np.uint8), 0)
    assert (r.brightness, r.similarity, r.difference) == (128.0, None, None)


def test_a_new_image_size_starts_afresh() -> None:
    cam = Camera(0)
    checker, t = warmed(cam)
    bigger = cv2.resize(cam.frame(), (320, 180))
    r = checker.check(np.asarray(bigger, np.uint8), t)
    assert (r.similarity, r.difference) == (None, None)


# ---- encoding and hash ---------------------------------------------------------------------


def test_fit_never_upscales_and_keeps_the_aspect() -> None:
    img = noise_image(1280, 720)
    assert fit(img, max_width=2000, max_height=2000) is img
    assert fit(img, max_width=640, max_height=640).shape == (360, 640, 3)
    assert fit(img, max_width=1280, max_height=180).shape == (180, 320, 3)
    assert fit(img, max_width=1, max_height=1).shape == (1, 1, 3)


def test_encode_under_a_cap() -> None:
    img = np.clip(Camera(0).base + np.random.default_rng(0).normal(0, 6, (H, W)), 0, 255)
    big = np.asarray(cv2.resize(img.astype(np.uint8), (1280, 720)), np.uint8)
    at_q = encode_jpeg(big, quality=80)
    assert encode_under(big, max_bytes=len(at_q), quality=80) == at_q  # fits: untouched
    for cap in (60_000, 20_000, 4_000):
        out = encode_under(big, max_bytes=cap, quality=80)
        assert len(out) <= cap
        assert decode(out).ndim == 3
    assert jpeg_size(encode_under(big, max_bytes=4_000, quality=80))[0] < 1280  # scaled
    at_55 = encode_jpeg(big, quality=55)
    lower = encode_under(big, max_bytes=len(at_55), quality=80)  # 80, 70, 60, 50: fits
    assert lower == encode_jpeg(big, quality=50)
    assert jpeg_size(lower) == (1280, 720)
    tiny = np.asarray(big[:10, :10], np.uint8)
    with pytest.raises(ImageError):
        encode_under(tiny, max_bytes=100, quality=80)
    with pytest.raises(ImageError) as err:
        encode_under(big, max_bytes=200, quality=80)
    assert err.value.reason == "too big"
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(big, quality=0)


def test_thumbnail() -> None:
    assert jpeg_size(thumbnail(noise_image(1280, 720))) == (320, 180)
    assert jpeg_size(thumbnail(noise_image(200, 100), width=320)) == (200, 100)


def test_frame_hash() -> None:
    cam = Camera(0)
    a, b = frame_hash(cam.frame()), frame_hash(cam.frame())
    assert 0 <= a < 2**64
    assert hash_distance(a, b) <= 4
    assert hash_distance(a, frame_hash(Camera(5).frame())) >= 16
    color = cv2.cvtColor(cam.frame(), cv2.COLOR_GRAY2BGR)
    assert hash_distance(frame_hash(np.asarray(color, np.uint8)), a) <= 4


def test_worker_threads_get_what_one_thread_gets() -> None:
    """The driver runs these in asyncio.to_thread, several cameras at once: the same
    frames through decode, masks, check and encode in 4 threads give the same results as
    in one."""
    cams = [Camera(seed) for seed in range(4)]
    rng = np.random.default_rng(7)

    def full(c: Camera) -> bytes:  # a 640x360 colour frame
        grey = np.clip(c.base + rng.normal(0, 3, c.base.shape), 0, 255).astype(np.uint8)
        return jpeg(np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), np.uint8))

    frames = [[full(c) for _ in range(4)] for c in cams]

    def one_camera(data: list[bytes]) -> list[tuple[HealthResult, bytes]]:
        checker = HealthChecker()
        out = []
        for i, d in enumerate(data):
            img = apply_masks(decode(d), [WHITE_MASK], fill=(0, 0, 0))
            out.append((checker.check(decode(d, reduce=4, gray=True), 10.0 * i), thumbnail(img)))
        return out

    alone = [one_camera(d) for d in frames]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one_camera, frames))
    assert together == alone
