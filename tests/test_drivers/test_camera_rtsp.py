"""StreamSource and the camera driver against a real RTSP server: GStreamer's
(tests/rtsp_server.py, run by the system Python), a live H.264 pattern at 5 fps with a key
frame a second, over RTP on TCP and on UDP, behind Basic or Digest auth, killed while
streaming and started again on the same port."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from helpers import TEST_SECRETS

from tepi.core.errors import DeviceUnavailable
from tepi.drivers.base import SharedResources
from tepi.drivers.camera.config import CameraConfig
from tepi.drivers.camera.driver import CameraDriver
from tepi.drivers.camera.sources import CameraAuthFailed, StreamSource
from tepi.drivers.camera.vision import jpeg_size

pytestmark = pytest.mark.timeout(30)

SERVER = Path(__file__).resolve().parent.parent / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # GStreamer's bindings are Debian's, not the venv's
WIDTH, HEIGHT, FPS = 640, 360, 5
USER = "viewer"
PASSWORD = TEST_SECRETS[1]
WRONG = TEST_SECRETS[2]
TIMEOUT = 2.0  # the sources' timeout


@functools.cache
def gst_missing() -> str | None:
    """Why the server cannot run here (what .ci/setup installs is missing), or None."""
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None)\n"
        "print(' '.join(e for e in ('videotestsrc', 'videoconvert', 'x264enc', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None))"
    )
    try:
        res = subprocess.run(
            [SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as err:
        return f"no {SYSTEM_PYTHON} ({type(err).__name__})"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer's RTSP server is missing for {SYSTEM_PYTHON}: {last}"
    if res.stdout.strip():
        return f"GStreamer elements missing for {SYSTEM_PYTHON}: {res.stdout.strip()}"
    return None


class RtspServer:
    """tests/rtsp_server.py as a process: started, killed, started again on its port."""

    def __init__(self, log: Path, args: list[str]) -> None:
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.port = 0

    async def start(self) -> str:
        """Start it (on the port it had, if any) and wait for ``ready``; its URL."""
        assert self.proc is None
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(15):
                line = await asyncio.to_thread(self.proc.stdout.readline)
        except TimeoutError:
            self.kill()
            raise
        if not line.startswith("ready "):
            self.kill()
            pytest.fail(f"rtsp_server.py did not start: {line!r}; {self.log.read_text()[-2000:]}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        return self.url

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def url_with(self, user: str, password: str) -> str:
        return self.url.replace("rtsp://", f"rtsp://{user}:{password}@", 1)


StartServer = Callable[..., Awaitable[RtspServer]]


@pytest.fixture
async def rtsp(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Starts servers (``await rtsp(*args)``); every one is killed at the end, whatever
    happened."""
    missing = gst_missing()
    if missing is not None:
        pytest.skip(missing)
    servers: list[RtspServer] = []

    async def start(*args: str) -> RtspServer:
        size = ["--width", str(WIDTH), "--height", str(HEIGHT), "--fps", str(FPS)]
        server = RtspServer(tmp_path / f"rtsp-server-{len(servers)}.log", [*size, *args])
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
async def rtsp_url(rtsp: StartServer) -> str:
    """The URL of a server without auth (killed at the end by ``rtsp``)."""
    return (await rtsp()).url


def no_secret(err: BaseException) -> None:
    text = f"{err} {err!r} {getattr(err, 'detail', '')}"
    for secret in TEST_SECRETS:
        assert secret not in text, text


async def timed_grab(src: StreamSource) -> tuple[float, Any]:
    """A grab's duration and its frame, or the DeviceUnavailable it raised."""
    t0 = time.monotonic()
    try:
        got: Any = await src.grab()
    except DeviceUnavailable as err:
        got = err
    return time.monotonic() - t0, got


# ---- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_frames_and_fps(rtsp_url: str, transport: Literal["tcp", "udp"]) -> None:
    async with StreamSource(rtsp_url, transport=transport, timeout=TIMEOUT) as src:
        first = time.monotonic()
        frames = [await src.grab()]
        # keyframes: one decoded frame a second; fps counts every packet demuxed
        while time.monotonic() - first < 2.5:
            frames.append(await src.grab())
        counters = src.counters()
    images = []
    for frame in frames:
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert frame.image is not None
        assert frame.image.shape == (HEIGHT, WIDTH, 3)
        assert frame.image.dtype == np.uint8
        assert frame.jpeg is None
        images.append(frame.image)
    assert not np.array_equal(images[0], images[-1])  # the ball moves
    fps = frames[-1].fps
    assert fps is not None
    assert FPS * 0.6 <= fps <= FPS * 1.4, fps
    assert counters["frames"] >= 2 * FPS
    assert counters["decoded"] < counters["frames"] / 2  # only the key frames
    assert (counters["requests"], counters["reconnects"], counters["errors"]) == (1, 0, 0)


# ---- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "digest"])
async def test_auth(rtsp: StartServer, method: str) -> None:
    server = await rtsp("--user", USER, "--password", PASSWORD, "--auth", method)
    async with StreamSource(server.url, username=USER, password=PASSWORD, timeout=TIMEOUT) as src:
        frame = await src.grab()
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    for user, password in ((USER, WRONG), (None, None)):
        async with StreamSource(
            server.url, username=user, password=password, timeout=TIMEOUT
        ) as src:
            with pytest.raises(CameraAuthFailed) as info:
                await src.grab()
            assert info.value.reason == "auth_failed"
            no_secret(info.value)
            # refused: not tried again for AUTH_BACKOFF; each grab says why, at once
            elapsed, again = await timed_grab(src)
            assert isinstance(again, CameraAuthFailed)
            assert elapsed < 0.5
            assert src.counters()["requests"] == 1


# ---- the driver -----------------------------------------------------------------------------


class KeepingSink:
    """An image sink that keeps what it is given (the agent's is the image buffer)."""

    def __init__(self) -> None:
        self.max_image_bytes = 500_000
        self.images: list[dict[str, Any]] = []

    async def store(
        self, camera: str, cls: str, jpeg: bytes, *, width: int, height: int, **kw: Any
    ) -> tuple[int, str]:
        self.images.append({"cls": cls, "jpeg": jpeg, "width": width, "height": height})
        return len(self.images), f"/mem/{len(self.images)}"


async def test_driver_health_from_rtsp(rtsp: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await rtsp("--user", USER, "--password", PASSWORD, "--auth", "digest")
    monkeypatch.setenv("CAM_PW", PASSWORD)
    cfg = CameraConfig.model_validate(
        {
            "id": "cam-rtsp",
            "driver": "camera",
            "url": server.url,
            "username": USER,
            "password_env": "CAM_PW",
            "timeout": "2s",
            "snapshot_interval": "1h",
        }
    )
    assert cfg.kind == "stream"
    resources = SharedResources()
    sink = KeepingSink()
    resources.images = sink
    d = CameraDriver(cfg, resources)
    async with d:
        got: dict[str, Any] = {}
        for _ in range(3):  # fps needs two packets at least
            values = (await d.read())[0]
            got = dict(zip(values.metrics, values.values, strict=True))
            if got["fps"] is not None:
                break
        stats = d.protocol_stats()
    assert (got["online"], got["width"], got["height"]) == (True, WIDTH, HEIGHT)
    # right from the first poll: the rate is taken from the frames' own times, so the
    # frames FFmpeg read ahead while it opened the stream (they come out together) do not
    # read as a burst of 70 fps or more
    assert "fps" in values.metrics
    assert got["fps"] is not None
    assert FPS * 0.6 <= got["fps"] <= FPS * 1.4, got["fps"]
    assert stats["state"] in ("ok", "degraded"), stats
    # the first poll stored a snapshot (and its thumbnail) from the decoded stream
    assert [i["cls"] for i in sink.images] == ["snapshot", "thumbnail"]
    snap = sink.images[0]
    assert jpeg_size(snap["jpeg"]) == (snap["width"], snap["height"]) == (WIDTH, HEIGHT)


# ---- the server goes away and comes back ----------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_server_killed_then_back(rtsp: StartServer, transport: Literal["tcp", "udp"]) -> None:
    server = await rtsp()
    async with StreamSource(server.url, transport=transport, timeout=TIMEOUT) as src:
        assert (await src.grab()).image is not None
        server.kill()
        # a frame decoded before the kill may still be waiting: grab until the error
        errors: list[DeviceUnavailable] = []
        async with asyncio.timeout(TIMEOUT * 3 + 2):
            while len(errors) < 2:
                elapsed, got = await timed_grab(src)
                assert elapsed <= TIMEOUT + 1.0, (elapsed, got)
                if isinstance(got, DeviceUnavailable):
                    errors.append(got)
        reasons = [e.reason for e in errors]
        await server.start()  # the same port
        async with asyncio.timeout(15):  # the reconnect backoff: 1 s, 2 s, 4 s ...
            while True:
                elapsed, got = await timed_grab(src)
                assert elapsed <= TIMEOUT + 1.0, (elapsed, got)
                if not isinstance(got, DeviceUnavailable):
                    break
                await asyncio.sleep(0.1)  # a down stream raises at once: poll, gently
        assert got.image is not None
        assert (got.width, got.height) == (WIDTH, HEIGHT)
        counters = src.counters()
    # FFmpeg sees the RTSP connection closed (over UDP too: it watches the control connection)
    assert set(reasons) <= ({"stream ended"} if transport == "tcp" else {"stream ended", "timeout"})
    assert counters["reconnects"] >= 1
    assert counters["errors"] >= 1
