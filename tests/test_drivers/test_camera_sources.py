"""Camera sources against a small camera served here by aiohttp (real HTTP, no mocks): JPEG
snapshots with Digest (RFC 7616, checked here independently of aiohttp's client) and Basic
auth, faults (hang, truncated, 503, not a JPEG, too large, redirect, TLS), an MJPEG stream that
drops, and a real H.264 MPEG-TS stream encoded with PyAV; plus the multipart parser under
hypothesis (any chunking of a valid stream, garbage) and the light import.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
import trustme
from aiohttp import web
from helpers import TEST_SECRETS
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi.core.errors import DeviceError, DeviceUnavailable, ProtocolError
from tepi.drivers.camera.sources import (
    CameraAuthFailed,
    MjpegSource,
    MultipartParser,
    SnapshotSource,
    StreamSource,
    camera_time,
    make_source,
    redact,
)

pytestmark = pytest.mark.timeout(30)

USER = "viewer"
PASSWORD = TEST_SECRETS[1]
WRONG = TEST_SECRETS[2]
REALM = "IP Camera"
CAMERA_DATE = 1_796_212_800.0  # 2026-12-02 12:00:00 UTC, the camera's (wrong) clock


def jpeg_of(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    w, h = size
    img = np.full((h, w, 3), value, dtype=np.uint8)
    cv2.putText(img, str(value), (2, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 0, 0), 1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(buf.tobytes())


JPEG = jpeg_of(90)
FRAMES = [jpeg_of(v) for v in range(10, 250, 24)]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Camera:
    """The test camera's state: requests seen per path, auth headers seen, nonces issued."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.auth_headers: list[str] = []
        self.nonces: set[str] = set()
        self.closing = asyncio.Event()
        self.mjpeg_connections = 0
        self.ts: Path | None = None
        self.slow_gop: Path | None = None
        self.port = 0

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def seen(self, request: web.Request) -> None:
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        if "Authorization" in request.headers:
            self.auth_headers.append(request.headers["Authorization"])

    def digest_ok(self, request: web.Request, once: bool = False) -> bool:
        """RFC 7616 MD5, qop=auth, written from the RFC; ``once``: a nonce is good for one
        request (as some cameras do), so a kept challenge is always stale."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        p = {
            m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header[7:])
        }
        if p.get("username") != USER or p.get("nonce") not in self.nonces:
            return False
        if p.get("uri") != request.path_qs or p.get("qop") != "auth":
            return False
        ha1 = md5(f"{USER}:{REALM}:{PASSWORD}")
        ha2 = md5(f"{request.method}:{p['uri']}")
        want = md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        if once:
            self.nonces.discard(p["nonce"])
        return hmac.compare_digest(want, p.get("response", ""))

    def digest_challenge(self) -> str:
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        return f'Digest realm="{REALM}", qop="auth", algorithm=MD5, nonce="{nonce}", opaque="x1"'

    def basic_ok(self, request: web.Request) -> bool:
        want = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return request.headers.get("Authorization", "") == f"Basic {want}"


def jpeg_response(body: bytes = JPEG) -> web.Response:
    return web.Response(
        body=body,
        content_type="image/jpeg",
        headers={"Date": format_datetime(_utc(CAMERA_DATE), usegmt=True)},
    )


def _utc(t: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC)


def make_app(cam: Camera) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/snapshot.jpg")
    async def snapshot(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return jpeg_response()

    @routes.get("/digest.jpg")
    async def digest(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if cam.digest_ok(request):
            return jpeg_response()
        return web.Response(status=401, headers={"WWW-Authenticate": cam.digest_challenge()})

    @routes.get("/digest-once.jpg")
    async def digest_once(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if cam.digest_ok(request, once=True):
            return jpeg_response()
        challenge = cam.digest_challenge() + ", stale=true"
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    @routes.get("/basic.jpg")
    async def basic(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if cam.basic_ok(request):
            return jpeg_response()
        return web.Response(status=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})

    @routes.get("/both.jpg")
    async def both(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if cam.digest_ok(request) or cam.basic_ok(request):
            return jpeg_response()
        resp = web.Response(status=401)
        resp.headers.add("WWW-Authenticate", cam.digest_challenge())
        resp.headers.add("WWW-Authenticate", f'Basic realm="{REALM}"')
        return resp

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        await cam.closing.wait()
        return web.Response(status=204)

    @routes.get("/truncated.jpg")
    async def truncated(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(JPEG)
        await resp.prepare(request)
        await resp.write(JPEG[: len(JPEG) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    @routes.get("/cut.jpg")  # a whole HTTP body, but the JPEG has no end
    async def cut(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return jpeg_response(JPEG[:-100])

    @routes.get("/busy.jpg")
    async def busy(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return web.Response(status=503, text="busy")

    @routes.get("/page.jpg")
    async def page(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return web.Response(text="<html>login</html>", content_type="text/html")

    @routes.get("/notjpeg.jpg")  # says image/jpeg, sends something else
    async def notjpeg(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return web.Response(body=b"GIF89a" + bytes(100), content_type="image/jpeg")

    @routes.get("/big.jpg")
    async def big(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        return jpeg_response(JPEG[:-2] + bytes(300_000) + b"\xff\xd9")

    @routes.get("/big-chunked.jpg")  # no Content-Length: the limit holds while reading
    async def big_chunked(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(JPEG[:-2])
        for _ in range(40):
            if cam.closing.is_set():
                break
            await resp.write(bytes(16_384))
        return resp

    @routes.get("/moved.jpg")
    async def moved(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere.jpg")

    @routes.get("/mjpeg")
    async def mjpeg(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if "auth" in request.query and not cam.digest_ok(request):
            return web.Response(status=401, headers={"WWW-Authenticate": cam.digest_challenge()})
        drop = int(request.query.get("drop", "0"))
        cam.mjpeg_connections += 1
        resp = web.StreamResponse(
            headers={
                "Content-Type": "multipart/x-mixed-replace; boundary=frame",
                "Date": format_datetime(_utc(CAMERA_DATE), usegmt=True),
            }
        )
        await resp.prepare(request)
        n = 0
        with contextlib.suppress(ConnectionError):  # the source went away
            while not cam.closing.is_set():
                jpeg = FRAMES[n % len(FRAMES)]
                head = b"--frame\r\nContent-Type: image/jpeg\r\n"
                if n % 2 == 0:  # parts with and without Content-Length
                    head += f"Content-Length: {len(jpeg)}\r\n".encode()
                await resp.write(head + b"\r\n" + jpeg + b"\r\n")
                n += 1
                if drop and n >= drop:
                    break
                await asyncio.sleep(0.05)  # the camera's pace: 20 fps
        return resp

    @routes.get("/x.ts")
    async def ts(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        assert cam.ts is not None
        return web.FileResponse(cam.ts, headers={"Content-Type": "video/mp2t"})

    @routes.get("/slow-gop.ts")  # live-paced: a quarter at once, the rest over 3 s
    async def slow_gop(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        assert cam.slow_gop is not None
        data = cam.slow_gop.read_bytes()
        resp = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        step = len(data) // 40
        with contextlib.suppress(ConnectionError):  # the source went away
            await resp.write(data[: len(data) // 4])
            for at in range(len(data) // 4, len(data), step):
                if cam.closing.is_set():
                    break
                await asyncio.sleep(0.1)
                await resp.write(data[at : at + step])
        return resp

    @routes.get("/basic.ts")
    async def basic_ts(request: web.Request) -> web.StreamResponse:
        cam.seen(request)
        if not cam.basic_ok(request):
            return web.Response(status=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        assert cam.ts is not None
        return web.FileResponse(cam.ts, headers={"Content-Type": "video/mp2t"})

    app = web.Application()
    app.add_routes(routes)
    return app


def encode_ts(path: Path, gop: int) -> Path:
    """3 s of 320x240 H.264 at 10 fps, a keyframe every ``gop`` frames, in MPEG-TS."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.gop_size = gop
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "sc_threshold": "0"}
        for i in range(30):
            img = np.full((240, 320, 3), (i * 8) % 256, dtype=np.uint8)
            cv2.rectangle(img, (i * 8, 60), (i * 8 + 40, 120), (255, 255, 255), -1)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def ts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_ts(tmp_path_factory.mktemp("camera") / "x.ts", 10)


@pytest.fixture(scope="session")
def slow_gop_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_ts(tmp_path_factory.mktemp("camera") / "slow-gop.ts", 1000)


async def _serve(cam: Camera, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Camera]:
    # access_log=None: the camera's own log would show the query of the test that puts a
    # password in it (to check that tepi's messages do not); tepi logs no URL with one.
    runner = web.AppRunner(make_app(cam), shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
    await site.start()
    cam.port = runner.addresses[0][1]
    try:
        yield cam
    finally:
        cam.closing.set()
        await runner.cleanup()


@pytest.fixture
async def camera(ts_file: Path, slow_gop_file: Path) -> AsyncIterator[Camera]:
    cam = Camera()
    cam.ts = ts_file
    cam.slow_gop = slow_gop_file
    async for c in _serve(cam):
        yield c


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_camera(tls_ca: trustme.CA, ts_file: Path) -> AsyncIterator[Camera]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(ctx)
    cam = Camera()
    cam.ts = ts_file
    async for c in _serve(cam, ctx):
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Callable[[], bool]) -> None:
    """Wait until ``cond()`` holds (the test's timeout bounds it)."""
    while not cond():
        await asyncio.sleep(0.01)


def no_secret(err: BaseException) -> None:
    text = f"{err} {err!r} {getattr(err, 'detail', '')}"
    for secret in TEST_SECRETS:
        assert secret not in text


# ---- snapshots ---------------------------------------------------------------------------


async def test_snapshot_frame_and_camera_clock(camera: Camera) -> None:
    async with SnapshotSource(camera.url("/snapshot.jpg")) as src:
        frame = await src.grab()
        await src.grab()
    assert frame.jpeg == JPEG
    assert frame.image is None
    assert frame.width is None
    assert frame.fps is None
    assert frame.camera_time == CAMERA_DATE
    assert 0 < frame.fetch_ms < 5000
    assert abs(frame.received - time.time()) < 10
    c = src.counters()
    assert (c["requests"], c["frames"], c["bytes"]) == (2, 2, 2 * len(JPEG))
    assert c["last_error"] == 0.0


def test_camera_time_parsing() -> None:
    assert camera_time("Wed, 02 Dec 2026 12:00:00 GMT") == CAMERA_DATE
    assert camera_time("Wed, 02 Dec 2026 12:00:00 -0000") == CAMERA_DATE
    assert camera_time("Wed, 02 Dec 2026 13:00:00 +0100") == CAMERA_DATE
    for bad in (None, "", "yesterday", "Wed, 99 Foo 2026 12:00:00 GMT"):
        assert camera_time(bad) is None


@pytest.mark.parametrize(
    ("path", "kind", "reason"),
    [
        ("/busy.jpg", DeviceUnavailable, "http 503"),
        ("/page.jpg", ProtocolError, "not a JPEG"),
        ("/notjpeg.jpg", ProtocolError, "not a JPEG"),
        ("/truncated.jpg", ProtocolError, "truncated JPEG"),
        ("/cut.jpg", ProtocolError, "truncated JPEG"),
        ("/big.jpg", ProtocolError, "too large"),
        ("/big-chunked.jpg", ProtocolError, "too large"),
        ("/moved.jpg", DeviceUnavailable, "http 302"),
    ],
)
async def test_snapshot_faults(
    camera: Camera, path: str, kind: type[DeviceError], reason: str
) -> None:
    async with SnapshotSource(camera.url(path), max_bytes=200_000, timeout=3) as src:
        with pytest.raises(kind) as info:
            await src.grab()
        assert type(info.value) is kind
        assert info.value.reason == reason
        assert src.counters()["errors"] == 1
        assert src.last_reason == reason
        # the source keeps working afterwards
        src2 = SnapshotSource(camera.url("/snapshot.jpg"))
        async with src2:
            assert (await src2.grab()).jpeg == JPEG


async def test_snapshot_hang_is_bounded_and_secrets_stay_out(camera: Camera) -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{camera.port}/hang?user={USER}&pwd={PASSWORD}"
    async with SnapshotSource(url, timeout=0.5) as src:
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
        assert time.monotonic() - t0 < 2.5
    assert info.value.reason == "timeout"
    no_secret(info.value)
    assert "127.0.0.1" in str(info.value)
    assert PASSWORD not in src.url
    assert USER not in src.url
    assert camera.auth_headers == []  # userinfo is never sent as Basic by itself


async def test_connection_refused() -> None:
    async with SnapshotSource(f"http://127.0.0.1:{free_port()}/snapshot.jpg") as src:
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
    assert info.value.reason == "connection refused"


async def test_dns_failure() -> None:
    async with SnapshotSource("http://camera.invalid/snapshot.jpg", timeout=3) as src:
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
    assert info.value.reason == "dns"


async def test_tls_verified_always(tls_camera: Camera, tls_ca: trustme.CA, tmp_path: Path) -> None:
    url = tls_camera.url("/snapshot.jpg", "https")
    async with SnapshotSource(url) as src:  # the system CAs do not know this camera
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
    assert info.value.reason == "tls"
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    async with SnapshotSource(url, ca_file=str(ca)) as src:
        assert (await src.grab()).jpeg == JPEG
    with pytest.raises(ValueError, match="https"):
        SnapshotSource(tls_camera.url("/snapshot.jpg"), ca_file=str(ca))


# ---- authentication ------------------------------------------------------------------------


async def test_digest_auto_then_preemptive(camera: Camera) -> None:
    async with SnapshotSource(camera.url("/digest.jpg"), username=USER, password=PASSWORD) as src:
        assert (await src.grab()).jpeg == JPEG
        assert camera.requests["/digest.jpg"] == 2  # challenge, answer
        assert (await src.grab()).jpeg == JPEG
        assert camera.requests["/digest.jpg"] == 3  # the challenge kept: one request
    assert src.counters()["requests"] == 3
    assert all(h.startswith("Digest ") for h in camera.auth_headers)


async def test_digest_stale_nonce_is_not_a_failure(camera: Camera) -> None:
    url = camera.url("/digest-once.jpg")
    async with SnapshotSource(url, username=USER, password=PASSWORD) as src:
        for grab in (1, 2, 3):  # the kept challenge is stale: 401, then a fresh answer
            assert (await src.grab()).jpeg == JPEG
            assert camera.requests["/digest-once.jpg"] == 2 * grab
    assert src.counters()["auth_failures"] == 0


async def test_wrong_digest_password_one_try_per_grab(camera: Camera) -> None:
    async with SnapshotSource(camera.url("/digest.jpg"), username=USER, password=WRONG) as src:
        for grab in (1, 2, 3):
            with pytest.raises(CameraAuthFailed) as info:
                await src.grab()
            assert info.value.reason == "auth_failed"
            no_secret(info.value)
            assert camera.requests["/digest.jpg"] == 2 * grab  # challenge + one wrong answer
    assert len(camera.auth_headers) == 3  # one failed login per grab, no retry loop
    assert src.counters()["auth_failures"] == 3


async def test_auto_prefers_digest_and_never_sends_basic_unasked(camera: Camera) -> None:
    async with SnapshotSource(camera.url("/both.jpg"), username=USER, password=PASSWORD) as src:
        assert (await src.grab()).jpeg == JPEG
    assert camera.auth_headers
    assert all(h.startswith("Digest ") for h in camera.auth_headers)
    # A camera that asks for Basic over plain http: auto does not send the password in clear.
    async with SnapshotSource(camera.url("/basic.jpg"), username=USER, password=PASSWORD) as src:
        with pytest.raises(CameraAuthFailed, match="plain http"):
            await src.grab()
    # Digest only: a Basic-only camera gets nothing either.
    async with SnapshotSource(
        camera.url("/basic.jpg"), username=USER, password=PASSWORD, auth="digest"
    ) as src:
        with pytest.raises(CameraAuthFailed):
            await src.grab()
    assert not any(h.startswith("Basic ") for h in camera.auth_headers)
    # No credentials configured: a 401 is auth_failed, and nothing is sent.
    async with SnapshotSource(camera.url("/digest.jpg")) as src:
        with pytest.raises(CameraAuthFailed, match="asks for credentials"):
            await src.grab()
    assert not any(h.startswith("Basic ") for h in camera.auth_headers)


async def test_basic_when_asked_for(camera: Camera, tmp_path: Path) -> None:
    async with SnapshotSource(
        camera.url("/basic.jpg"), username=USER, password=PASSWORD, auth="basic"
    ) as src:
        assert (await src.grab()).jpeg == JPEG
        assert (await src.grab()).jpeg == JPEG
    assert camera.requests["/basic.jpg"] == 2  # sent with the request: no challenge first
    async with SnapshotSource(
        camera.url("/basic.jpg"), username=USER, password=WRONG, auth="basic"
    ) as src:
        with pytest.raises(CameraAuthFailed) as info:
            await src.grab()
    no_secret(info.value)


async def test_auto_basic_over_https(
    tls_camera: Camera, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    url = tls_camera.url("/basic.jpg", "https")
    async with SnapshotSource(url, username=USER, password=PASSWORD, ca_file=str(ca)) as src:
        assert (await src.grab()).jpeg == JPEG  # asked for Basic, over TLS: sent
        assert tls_camera.requests["/basic.jpg"] == 2
        assert (await src.grab()).jpeg == JPEG  # the choice is kept
        assert tls_camera.requests["/basic.jpg"] == 3


# ---- MJPEG ---------------------------------------------------------------------------------


async def test_mjpeg_latest_frames_fps_and_clock(camera: Camera) -> None:
    async with MjpegSource(camera.url("/mjpeg"), timeout=3) as src:
        seen = [await src.grab() for _ in range(8)]
    assert all(f.jpeg in FRAMES for f in seen)
    assert len({f.jpeg for f in seen}) > 1  # the frames change
    assert all(f.camera_time is not None and abs(f.camera_time - CAMERA_DATE) < 60 for f in seen)
    fps = seen[-1].fps
    assert fps is not None
    assert 5 < fps < 40
    assert all(0 <= f.fetch_ms < 3000 for f in seen)
    assert src.counters()["frames"] >= 8


async def test_mjpeg_grab_returns_each_frame_once(camera: Camera) -> None:
    async with MjpegSource(camera.url("/mjpeg?drop=3"), timeout=3) as src:
        got, reasons = await grab_until_error(src, 5)
        assert reasons == ["stream ended"]
        assert 1 <= len(got) <= 3
        assert got[-1] == FRAMES[2]


async def test_mjpeg_reconnects_after_drop(camera: Camera) -> None:
    async with MjpegSource(camera.url("/mjpeg?drop=4"), timeout=4) as src:
        _, reasons = await grab_until_error(src, 10)
        assert reasons == ["stream ended"]
        # down, waiting out its backoff: a grab says why at once, it does not wait
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="stream ended"):
            await src.grab()
        assert time.monotonic() - t0 < 0.5
        await until(lambda: src.counters()["reconnects"] >= 1)
        frame = await src.grab()  # from the second connection
        assert frame.jpeg in FRAMES
    assert camera.mjpeg_connections >= 2


async def test_mjpeg_no_frame_times_out(camera: Camera) -> None:
    async with MjpegSource(camera.url("/hang"), timeout=0.5) as src:
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
        assert time.monotonic() - t0 < 2.5
    assert info.value.reason == "timeout"


async def test_mjpeg_wrong_password_is_not_retried(camera: Camera) -> None:
    url = camera.url("/mjpeg?auth=1")
    async with MjpegSource(url, username=USER, password=WRONG, timeout=3) as src:
        for _ in range(3):  # every poll says auth_failed; the camera saw one failed login
            with pytest.raises(CameraAuthFailed):
                await src.grab()
        assert camera.requests["/mjpeg"] == 2
        assert src.counters()["auth_failures"] == 1


async def test_mjpeg_digest_and_not_mjpeg(camera: Camera) -> None:
    url = camera.url("/mjpeg?auth=1")
    async with MjpegSource(url, username=USER, password=PASSWORD, timeout=3) as src:
        assert (await src.grab()).jpeg in FRAMES
    async with MjpegSource(camera.url("/snapshot.jpg"), timeout=3) as src:
        with pytest.raises(ProtocolError) as info:
            await src.grab()
    assert info.value.reason == "not MJPEG"


async def test_mjpeg_aclose_ends_the_task(camera: Camera) -> None:
    src = MjpegSource(camera.url("/mjpeg"), timeout=3)
    await src.open()
    await src.grab()
    task = src._task
    assert task is not None
    await src.aclose()
    assert task.done()


async def grab_until_error(src: MjpegSource, n: int) -> tuple[list[bytes | None], list[str]]:
    """Up to ``n`` grabs; the JPEGs got and the reason of the error that stopped them."""
    got: list[bytes | None] = []
    for _ in range(n):
        try:
            got.append((await src.grab()).jpeg)
        except DeviceUnavailable as err:
            return got, [err.reason]
    return got, []


# ---- the multipart parser ------------------------------------------------------------------

BODIES = st.binary(max_size=300).map(lambda b: b"\xff\xd8" + b + b"\xff\xd9")


def multipart(
    parts: list[tuple[bytes, bool]], boundary: bytes, preamble: bytes, nl: bytes = b"\r\n"
) -> bytes:
    out = [preamble]
    for body, with_length in parts:
        out.append(boundary + nl + b"Content-Type: image/jpeg" + nl)
        if with_length:
            out.append(f"Content-Length: {len(body)}".encode() + nl)
        out.append(nl + body + nl)
    out.append(boundary + b"--" + nl)
    return b"".join(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(BODIES, st.booleans()), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    quirk=st.booleans(),
    preamble=st.sampled_from([b"", b"\r\n", b"junk before\r\n"]),
    nl=st.sampled_from([b"\r\n", b"\n"]),
)
def test_parser_any_chunking_same_parts(
    parts: list[tuple[bytes, bool]], cuts: list[int], quirk: bool, preamble: bytes, nl: bytes
) -> None:
    # the boundary as the header gives it; the quirk: "--frame" given, "--frame" lines
    given_boundary, line = ("--frame", b"--frame") if quirk else ("frame", b"--frame")
    bodies = [b for b, _ in parts]
    if any(b"--frame" in b for b in bodies):
        return
    data = multipart(parts, line, preamble, nl)
    parser = MultipartParser(given_boundary, max_part=400)
    got: list[bytes] = []
    for chunk in split(data, cuts):
        got += parser.feed(chunk)
        assert parser.buffered <= parser.bound
    assert got == bodies


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"--frame\r\n",
                    b"Content-Length: 10\r\n\r\n",
                    b"Content-Length: 99999999\r\n",
                    b"Content-Length: -1\r\n",
                    b"\r\n\r\n",
                    b"\xff\xd8",
                    b"X: y\r\n",
                    b"--frame--\r\n",
                ]
            ),
        ),
        max_size=40,
    )
)
def test_parser_garbage_bounded(chunks: list[bytes]) -> None:
    parser = MultipartParser("frame", max_part=300, max_headers=200)
    reason = None
    try:
        for chunk in chunks:
            for part in parser.feed(chunk):
                assert len(part) <= 300
            assert parser.buffered <= parser.bound
    except ProtocolError as err:
        reason = err.reason
    assert reason in (None, "bad multipart", "too large")


def test_parser_garbage_without_boundary_is_an_error() -> None:
    parser = MultipartParser("frame", max_part=1000)
    for _ in range(10):
        parser.feed(bytes(100))
        assert parser.buffered <= parser.bound
    with pytest.raises(ProtocolError, match="no boundary"):
        parser.feed(bytes(100))


# ---- H.264 streams -------------------------------------------------------------------------


async def _until_ended(src: StreamSource) -> list[npt.NDArray[np.uint8]]:
    """Grab until the (finite) stream ended; the images grabbed."""
    images = []
    while True:
        try:
            frame = await src.grab()
        except DeviceUnavailable as err:
            reason = err.reason
            break
        assert frame.image is not None
        assert (frame.width, frame.height) == (320, 240)
        assert frame.image.shape == (240, 320, 3)
        assert frame.image.dtype == np.uint8
        assert frame.jpeg is None
        images.append(frame.image)
    assert reason == "stream ended"
    return images


async def test_stream_keyframes_and_all(camera: Camera) -> None:
    url = camera.url("/x.ts")
    async with StreamSource(url, timeout=5) as keys:
        assert await _until_ended(keys)
        k = keys.counters()
        thread = keys.thread
        assert thread is not None
        assert thread.is_alive()
    assert not thread.is_alive()  # aclose() ended the worker
    async with StreamSource(url, timeout=5, decode="all") as every:
        assert await _until_ended(every)
        a = every.counters()
    assert k["frames"] == a["frames"] == 30  # every packet demuxed
    assert k["decoded"] == 3  # one keyframe every 10 frames
    assert a["decoded"] == 30
    assert k["bytes"] > 0
    assert k["requests"] == 1
    assert k["reconnects"] == 0


async def test_stream_keyframes_slower_than_the_timeout(camera: Camera) -> None:
    """One keyframe in the file: once it is grabbed, packets go on arriving with nothing to
    decode, and the grab says so (not a plain timeout)."""
    async with StreamSource(camera.url("/slow-gop.ts"), timeout=1) as src:
        assert (await src.grab()).image is not None
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
    assert info.value.reason == "no keyframe"


async def test_stream_reconnects_and_stops(camera: Camera) -> None:
    async with StreamSource(camera.url("/x.ts"), timeout=5) as src:
        await _until_ended(src)
        await until(lambda: src.counters()["reconnects"] >= 1)
        await src.grab()  # the second connection, after a backoff of 1 s
        assert src.counters()["reconnects"] == 1
        assert src.counters()["requests"] == 2  # connections (FFmpeg's HTTP sends ranges)


async def test_stream_aclose_with_a_hung_server(camera: Camera) -> None:
    src = StreamSource(camera.url("/hang"), timeout=1)
    await src.open()
    thread = src.thread
    assert thread is not None
    while "/hang" not in camera.requests:  # the worker is blocked in av.open
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await src.aclose()
    assert time.monotonic() - t0 < 2.5
    assert not thread.is_alive()
    assert not src.stuck


async def test_stream_errors(camera: Camera) -> None:
    async with StreamSource(camera.url("/hang"), timeout=0.5) as src:
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
        assert info.value.reason == "timeout"
    url = camera.url("/basic.ts")
    async with StreamSource(url, username=USER, password=WRONG, timeout=3) as src:
        with pytest.raises(CameraAuthFailed) as auth:
            await src.grab()
        no_secret(auth.value)
    async with StreamSource(url, username=USER, password=PASSWORD, timeout=3) as src:
        frame = await src.grab()
        assert frame.image is not None
    async with StreamSource(f"http://127.0.0.1:{free_port()}/x.ts", timeout=3) as src:
        with pytest.raises(DeviceUnavailable) as refused:
            await src.grab()
        assert refused.value.reason == "connection refused"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_rtsp_refused_and_silent(transport: Literal["tcp", "udp"]) -> None:
    """No RTSP server here (the simulator has one): what an RTSP URL does when the camera
    refuses or accepts and says nothing, with the RTSP options set."""
    url = f"rtsp://127.0.0.1:{free_port()}/Streaming/Channels/102"
    async with StreamSource(url, timeout=1, transport=transport) as src:
        with pytest.raises(DeviceUnavailable) as info:
            await src.grab()
    assert info.value.reason == "connection refused"
    quiet = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await quiet.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{port}/s"
        async with StreamSource(url, timeout=1, transport=transport) as src:
            for _ in range(2):  # the grab's own wait, then the worker's open timeout
                with pytest.raises(DeviceUnavailable) as info:
                    await src.grab()
                assert info.value.reason == "timeout"
                no_secret(info.value)
            thread = src.thread
        assert thread is not None
        assert not thread.is_alive()
    finally:
        quiet.set()
        server.close()
        await server.wait_closed()


async def test_stream_https_verified(
    tls_camera: Camera, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    url = tls_camera.url("/x.ts", "https")
    async with StreamSource(url, timeout=3) as src:
        with pytest.raises(DeviceUnavailable):
            await src.grab()
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    async with StreamSource(url, timeout=3, ca_file=str(ca)) as src:
        assert (await src.grab()).image is not None


# ---- the module ----------------------------------------------------------------------------


def test_import_is_light() -> None:
    code = (
        "import sys, tepi.drivers.camera.sources as s; "
        "print(sorted(m for m in ('av', 'cv2', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_redact_and_factory() -> None:
    assert redact("rtsp://u:p@cam:554/s?pwd=x") == "rtsp://cam:554/s?..."
    assert redact("not a url") == "<url>"
    assert isinstance(make_source("snapshot", "http://cam/a.jpg"), SnapshotSource)
    assert isinstance(make_source("mjpeg", "http://cam/m", timeout=2), MjpegSource)
    assert isinstance(make_source("stream", "rtsp://cam/s", decode="all"), StreamSource)
    with pytest.raises(ValueError, match="source"):
        make_source("onvif", "http://cam/")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http"):
        SnapshotSource("rtsp://cam/s")
    with pytest.raises(ValueError, match="credentials"):
        SnapshotSource("http://a:b@cam/s", username="c")
    stream = StreamSource("rtsp://[fe80::1]:554/S/102?a=%2F", username="a@b", password=PASSWORD)
    assert stream.url == "rtsp://[fe80::1]:554/S/102?..."
    assert stream._url == f"rtsp://a%40b:{PASSWORD}@[fe80::1]:554/S/102?a=%2F"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    import threading

    before = {t for t in threading.enumerate() if t.name.startswith("camera-stream")}
    yield
    after = {t for t in threading.enumerate() if t.name.startswith("camera-stream")}
    assert after <= before
