"""The camera driver against a simulated camera (tepi-sim over real HTTP), with an image sink
that keeps what it is given: snapshots due and on request, the per-message cap, masks,
failure readings, and a refused password tried once per ``auth_retry``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import cv2
import numpy as np
import pytest

from tepi.core.errors import DeviceError
from tepi.drivers.base import SharedResources
from tepi.drivers.camera.config import CameraConfig
from tepi.drivers.camera.driver import CameraDriver
from tepi.drivers.camera.vision import jpeg_size
from tepi_sim import Simulator


class KeepingSink:
    """An image sink that keeps the images in a list (the agent's is the image buffer)."""

    def __init__(self, max_image_bytes: int) -> None:
        self.max_image_bytes = max_image_bytes
        self.images: list[dict[str, Any]] = []

    async def store(
        self,
        camera: str,
        cls: str,
        jpeg: bytes,
        *,
        reason: str,
        ts: float,
        mono: float,
        width: int,
        height: int,
        parent: int | None = None,
    ) -> tuple[int, str]:
        seq = len(self.images) + 1
        self.images.append(
            {
                "seq": seq,
                "camera": camera,
                "cls": cls,
                "jpeg": jpeg,
                "reason": reason,
                "width": width,
                "height": height,
                "parent": parent,
                "ts": ts,
            }
        )
        return seq, f"/mem/{seq}"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    cfg = {
        "cameras": [
            {
                "id": "cam-1",
                "width": 1280,
                "height": 720,
                "auth": "digest",
                "username": "u",
                "password": "right",
            }
        ]
    }
    async with Simulator(cfg) as s:
        yield s


def driver(
    sim: Simulator,
    sink: KeepingSink | None,
    monkeypatch: pytest.MonkeyPatch,
    password: str = "right",
    **over: Any,
) -> CameraDriver:
    monkeypatch.setenv("CAM_PW", password)
    cfg = CameraConfig.model_validate(
        {
            "id": "cam-1",
            "driver": "camera",
            "url": sim.camera("cam-1").snapshot_url,
            "username": "u",
            "password_env": "CAM_PW",
            "timeout": "2s",
            **over,
        }
    )
    resources = SharedResources()
    resources.images = sink
    return CameraDriver(cfg, resources)


async def test_a_snapshot_is_due_at_once_then_every_interval_and_fits_the_cap(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = KeepingSink(max_image_bytes=20_000)  # a 1280x720 scene at q75 is ~100 KB
    d = driver(sim, sink, monkeypatch, snapshot_interval="1h", poll_interval="1s")
    async with d:
        for _ in range(3):
            values = (await d.read())[0]
    got = dict(zip(values.metrics, values.values, strict=True))
    assert (got["online"], got["width"], got["height"]) == (True, 1280, 720)
    assert values.reasons is None
    # the first poll stored one snapshot and its thumbnail; the next two none (1 h interval)
    assert [i["cls"] for i in sink.images] == ["snapshot", "thumbnail"]
    snap, thumb = sink.images
    assert len(snap["jpeg"]) <= 20_000  # re-encoded under the cap, never dropped
    assert jpeg_size(snap["jpeg"]) == (snap["width"], snap["height"])
    assert thumb["parent"] == snap["seq"]
    assert thumb["width"] == 320
    assert snap["reason"] == "periodic"
    # a request takes one now, whatever the interval
    async with d:
        stored = await d.snapshot("request")
    assert stored.seq == 3
    assert sink.images[-2]["reason"] == "request"
    assert stored.data == sink.images[-2]["jpeg"]


async def test_masks_are_filled_before_the_image_is_stored(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = KeepingSink(max_image_bytes=500_000)
    mask = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]
    d = driver(sim, sink, monkeypatch, masks=[mask], snapshot_width=1280)
    async with d:
        await d.read()
    for image in sink.images:
        img = cv2.imdecode(np.frombuffer(image["jpeg"], np.uint8), cv2.IMREAD_GRAYSCALE)
        assert img is not None
        h, w = img.shape
        # 8 px in from the mask's edge: a JPEG block's ringing from the scene next to it
        m = 8
        inner = img[int(h * 0.25) + m : int(h * 0.75) - m, int(w * 0.25) + m : int(w * 0.75) - m]
        assert int(inner.max()) <= 12, (image["cls"], int(inner.max()))
        assert float(img[: int(h * 0.2)].mean()) > 60  # outside the mask: the scene


async def test_a_failed_poll_sends_online_false_and_the_rest_bad(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = driver(sim, None, monkeypatch)
    samples = d.failure_samples("timeout", time.time(), 1.0)
    online = next(s for s in samples if s.metric == "online")
    assert (online.value, online.reason) == (False, None)
    assert all(s.reason == "timeout" and s.value is None for s in samples if s is not online)
    assert {s.metric for s in samples} == {m.name for m in d.metrics()}


async def test_a_refused_password_is_tried_once_per_auth_retry(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    cam = sim.camera("cam-1")
    d = driver(sim, None, monkeypatch, password="wrong", auth_retry="1h")
    async with d:
        for _ in range(5):
            with pytest.raises(DeviceError) as info:
                await d.read()
            assert info.value.reason == "auth_failed"
    assert d.state == "auth_failed"
    # one grab's challenge and answer (aiohttp's Digest tries once more after a 401): the
    # four polls after it asked nothing
    assert cam.counters()["auth_failures"] <= 2
