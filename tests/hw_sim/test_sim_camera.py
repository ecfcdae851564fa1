"""The simulated IP camera over real HTTP on loopback: snapshots, MJPEG, H.264 in MPEG-TS,
Basic and Digest auth (checked with aiohttp's own client middleware), every fault, the
ground truth, the control socket and the config rules."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi_sim import ConfigError, Simulator, load_config
from tepi_sim.camera import SNAPSHOT_PATHS, Camera
from tepi_sim.control import ControlServer, apply_command
from tepi_sim.httpauth import (
    DigestAuth,
    digest_response,
    format_auth_params,
    parse_auth_params,
)
from tepi_sim.scene import Scene

StartCamera = Callable[..., Awaitable[Camera]]
Image = npt.NDArray[np.uint8]


@pytest.fixture
async def start_camera() -> AsyncIterator[StartCamera]:
    """Start a camera from config keys (validated like a file); stopped at teardown."""
    cameras: list[Camera] = []

    async def start(**keys: Any) -> Camera:
        config = load_config({"cameras": [{"id": "cam", **keys}]})
        camera = Camera(config.cameras[0])
        await camera.start()
        cameras.append(camera)
        return camera

    yield start
    for camera in cameras:
        await camera.stop()


def _decode(jpeg: bytes) -> Image | None:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image, dtype=np.uint8)


def _grey(jpeg: bytes) -> Image:
    image = _decode(jpeg)
    assert image is not None, "the JPEG does not decode"
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


def _sharpness(jpeg: bytes) -> float:
    return float(cv2.Laplacian(_grey(jpeg), cv2.CV_64F).var())


async def _get(
    url: str, session: aiohttp.ClientSession | None = None, **kwargs: Any
) -> tuple[int, bytes, dict[str, str]]:
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(url, **kwargs) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


async def _snapshot(camera: Camera) -> bytes:
    status, body, _ = await _get(camera.snapshot_url)
    assert status == 200
    return body


async def _mjpeg_parts(url: str, count: int) -> list[tuple[dict[str, str], bytes]]:
    """Read ``count`` parts of an MJPEG stream, parsing the multipart framing by hand."""
    parts: list[tuple[dict[str, str], bytes]] = []
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        kind, _, boundary = resp.headers["Content-Type"].partition("; boundary=")
        assert kind == "multipart/x-mixed-replace"
        while len(parts) < count:
            assert await resp.content.readline() == f"--{boundary}\r\n".encode()
            headers = {}
            while (line := await resp.content.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await resp.content.readexactly(int(headers["content-length"]))
            assert await resp.content.readexactly(2) == b"\r\n"
            parts.append((headers, body))
    return parts


# -- snapshots, streams ----------------------------------------------------------------------


async def test_snapshot_urls_decode_to_the_configured_size(start_camera: StartCamera) -> None:
    camera = await start_camera(width=320, height=240, quality=60)
    assert camera.port > 0
    assert camera.base_url == f"http://127.0.0.1:{camera.port}"
    bodies = []
    async with aiohttp.ClientSession() as session:
        for path in SNAPSHOT_PATHS:
            query = "?channel=1" if path == "/cgi-bin/snapshot.cgi" else ""
            status, body, headers = await _get(camera.base_url + path + query, session)
            assert status == 200
            assert headers["Content-Type"] == "image/jpeg"
            image = _decode(body)
            assert image is not None
            assert image.shape == (240, 320, 3)
            assert body.endswith(b"\xff\xd9")
            assert abs(parsedate_to_datetime(headers["Date"]).timestamp() - time.time()) < 5
            assert float(headers["X-Sim-Time"]) == pytest.approx(time.time(), abs=5)
            bodies.append(body)
        status, _, _ = await _get(f"{camera.base_url}/cgi-bin/snapshot.cgi?channel=2", session)
        assert status == 400
    assert len(set(bodies)) == len(bodies), "sensor noise: no two frames are the same"
    counters = camera.counters()
    assert counters["frames_served"] == 4
    assert counters["requests"]["/snapshot.jpg"] == 1
    assert counters["requests"]["/cgi-bin/snapshot.cgi"] == 2


async def test_nothing_is_rendered_until_a_client_asks(start_camera: StartCamera) -> None:
    camera = await start_camera()
    await asyncio.sleep(0)
    assert not camera.frames
    await _snapshot(camera)
    assert len(camera.frames) == 1


async def test_mjpeg_parts_parse_and_differ(start_camera: StartCamera) -> None:
    camera = await start_camera(width=320, height=180, fps=20)
    parts = await _mjpeg_parts(f"{camera.base_url}/mjpeg", 4)
    for headers, body in parts:
        assert headers["content-type"] == "image/jpeg"
        image = _decode(body)
        assert image is not None
        assert image.shape == (180, 320, 3)
    assert len({body for _, body in parts}) == 4
    times = [float(h["x-sim-time"]) for h, _ in parts]
    assert times == sorted(times)
    assert camera.counters()["frames_served"] >= 4


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the camera reaches by itself (no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_streams_end_when_their_clients_go(start_camera: StartCamera) -> None:
    camera = await start_camera(width=320, height=180, fps=20)
    await _mjpeg_parts(f"{camera.base_url}/mjpeg", 2)
    async with aiohttp.ClientSession() as session, session.get(f"{camera.base_url}/stream.ts") as r:
        assert r.headers["Content-Type"] == "video/mp2t"
        assert (await r.content.readexactly(188))[0] == 0x47  # an MPEG-TS sync byte
        assert camera.streams == 1
        assert camera.producing
    await _until(lambda: camera.counters()["streams"] == 0)
    await _until(lambda: camera.counters()["clients_connected"] == 0)
    await _until(lambda: not camera.producing)
    rendered = len(camera.frames)
    assert await _snapshot(camera)
    assert len(camera.frames) == rendered + 1, "no frame producer left running"


async def test_stream_ts_decodes_with_pyav(start_camera: StartCamera) -> None:
    camera = await start_camera()

    def read_frames(url: str, count: int) -> list[tuple[int, int]]:
        sizes = []
        with av.open(url, timeout=5.0) as container:
            for frame in container.decode(video=0):
                sizes.append((frame.width, frame.height))
                if len(sizes) == count:
                    break
        return sizes

    sizes = await asyncio.to_thread(read_frames, f"{camera.base_url}/stream.ts", 25)
    assert sizes == [(640, 360)] * 25
    assert camera.counters()["requests"]["/stream.ts"] == 1


async def test_stream_without_preroll_starts_live(start_camera: StartCamera) -> None:
    camera = await start_camera(width=320, height=180, fps=30)

    def first_frames(url: str) -> int:
        with av.open(url, timeout=5.0) as container:
            for k, _ in enumerate(container.decode(video=0)):
                if k == 2:
                    return k + 1
        return 0

    started = time.time()
    assert await asyncio.to_thread(first_frames, f"{camera.base_url}/stream.ts?preroll=0") == 3
    assert camera.frames[0][1] >= started, "no frame from before the client came"


async def test_stream_with_digest_auth_in_the_url(start_camera: StartCamera) -> None:
    camera = await start_camera(
        auth="digest", username="tepi", password="pw", width=320, height=180
    )

    def first_frame(url: str) -> tuple[int, int]:
        with av.open(url, timeout=5.0) as container:
            frame = next(container.decode(video=0))
            return frame.width, frame.height

    url = f"http://tepi:pw@127.0.0.1:{camera.port}/stream.ts"
    assert await asyncio.to_thread(first_frame, url) == (320, 180)


# -- auth --------------------------------------------------------------------------------------


async def test_digest_auth_right_password_and_wrong(start_camera: StartCamera) -> None:
    camera = await start_camera(auth="digest", username="tepi", password="demo-camera")
    status, _, headers = await _get(camera.snapshot_url)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Digest ")
    params = parse_auth_params(challenge.removeprefix("Digest "))
    assert (params["qop"], params["algorithm"], params["realm"]) == ("auth", "MD5", "tepi-sim cam")
    assert camera.auth_failures == 0

    right = aiohttp.DigestAuthMiddleware("tepi", "demo-camera")
    async with aiohttp.ClientSession(middlewares=(right,)) as session:
        for _ in range(3):  # the nonce is reused with a growing nc
            status, body, _ = await _get(camera.snapshot_url, session)
            assert status == 200
            assert _decode(body) is not None
    assert camera.auth_failures == 0

    wrong = aiohttp.DigestAuthMiddleware("tepi", "guess")
    async with aiohttp.ClientSession(middlewares=(wrong,)) as session:
        for _ in range(5):
            status, _, _ = await _get(camera.snapshot_url, session)
            assert status == 401
    # Every request that carries wrong credentials counts: the middleware sends the first
    # unauthenticated (a challenge, not a failure), later ones pre-emptively and once more
    # on each 401, so 5 calls make 1 + 2 * 4 failed attempts.
    assert camera.auth_failures == 9
    assert camera.counters()["auth_failures"] == 9


async def test_digest_unknown_nonce_is_stale_and_a_bad_uri_fails(
    start_camera: StartCamera,
) -> None:
    camera = await start_camera(auth="digest", username="tepi", password="pw")

    def header(nonce: str, uri: str) -> str:
        params = {
            "username": "tepi",
            "realm": "tepi-sim cam",
            "nonce": nonce,
            "uri": uri,
            "qop": "auth",
            "nc": "00000001",
            "cnonce": "abc",
            "response": digest_response(
                username="tepi",
                realm="tepi-sim cam",
                password="pw",
                method="GET",
                uri=uri,
                nonce=nonce,
                nc="00000001",
                cnonce="abc",
            ),
        }
        return "Digest " + format_auth_params(params, unquoted=("qop", "nc"))

    status, _, headers = await _get(
        camera.snapshot_url, headers={"Authorization": header("made-up", "/snapshot.jpg")}
    )
    assert status == 401
    assert "stale=true" in headers["WWW-Authenticate"]
    assert camera.auth_failures == 0  # right password, old nonce: not a failure
    nonce = parse_auth_params(headers["WWW-Authenticate"].removeprefix("Digest "))["nonce"]
    status, _, _ = await _get(
        camera.snapshot_url, headers={"Authorization": header(nonce, "/snapshot.jpg")}
    )
    assert status == 200
    status, _, _ = await _get(camera.snapshot_url, headers={"Authorization": header(nonce, "/x")})
    assert status == 401
    assert camera.auth_failures == 1


async def test_basic_auth(start_camera: StartCamera) -> None:
    camera = await start_camera(auth="basic", username="admin", password="secret")
    status, _, headers = await _get(camera.snapshot_url)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    for password, expected in (("secret", 200), ("nope", 401)):
        authorization = aiohttp.encode_basic_auth("admin", password)
        status, _, _ = await _get(camera.snapshot_url, headers={"Authorization": authorization})
        assert status == expected
    assert (camera.auth_failures, camera.auth_challenges) == (1, 1)


_TEXT = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=20
)
_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


@given(st.dictionaries(_NAMES, _TEXT, max_size=8))
def test_auth_params_round_trip(params: dict[str, str]) -> None:
    assert parse_auth_params(format_auth_params(params)) == params


@given(st.dictionaries(_NAMES, st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), max_size=6))
def test_auth_params_unquoted_tokens(params: dict[str, str]) -> None:
    text = format_auth_params(params, unquoted=tuple(params))
    assert parse_auth_params(text.replace(", ", " ,  ")) == params


@given(st.text(max_size=40))
def test_auth_params_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_auth_params(text)


@given(user=_TEXT.filter(lambda u: ":" not in u), password=_TEXT, uri=_TEXT)
def test_digest_check_agrees_with_digest_response(user: str, password: str, uri: str) -> None:
    auth = DigestAuth(user, password, "realm")
    nonce = parse_auth_params(auth.challenge().removeprefix("Digest "))["nonce"]
    args = {"username": user, "realm": "realm", "nonce": nonce, "uri": uri}
    good = digest_response(**args, password=password, method="GET", nc="00000001", cnonce="c")
    params = {**args, "qop": "auth", "nc": "00000001", "cnonce": "c", "response": good}
    header = "Digest " + format_auth_params(params, unquoted=("qop", "nc"))
    assert auth.check(header, "GET", uri) == "ok"
    assert auth.check(header, "POST", uri) == "failed"
    params["response"] = digest_response(
        **args, password=password + "x", method="GET", nc="00000001", cnonce="c"
    )
    assert auth.check("Digest " + format_auth_params(params), "GET", uri) == "failed"


def test_digest_response_matches_rfc_2617_example() -> None:
    # RFC 2617 section 3.5 (MD5, qop=auth), the worked example.
    assert (
        digest_response(
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


# -- faults ------------------------------------------------------------------------------------


async def test_image_faults(start_camera: StartCamera) -> None:
    camera = await start_camera()
    normal = await _snapshot(camera)
    normal_grey = _grey(normal)
    assert 60 < normal_grey.mean() < 200
    assert _sharpness(normal) > 100

    camera.set_fault("black")
    black = _grey(await _snapshot(camera))
    assert black.mean() < 10

    camera.set_fault("covered")
    covered = _grey(await _snapshot(camera))
    assert 15 < covered.mean() < 70, "dim, but not black"
    assert covered.std() < 5, "nearly uniform"

    camera.set_fault("blur")
    blurred = await _snapshot(camera)
    assert _sharpness(blurred) < _sharpness(normal) / 20

    camera.set_fault("moved")
    moved = _grey(await _snapshot(camera))
    camera.set_fault("none")
    again = _grey(await _snapshot(camera))
    diff_moved = cv2.absdiff(moved, normal_grey).mean()
    diff_again = cv2.absdiff(again, normal_grey).mean()
    assert diff_moved > 15
    assert diff_moved > 4 * diff_again


async def test_frozen_serves_the_same_bytes(start_camera: StartCamera) -> None:
    camera = await start_camera(width=320, height=180, fps=20)
    camera.set_fault("frozen")
    snaps = [await _snapshot(camera) for _ in range(3)]
    assert snaps[0] == snaps[1] == snaps[2]
    parts = await _mjpeg_parts(f"{camera.base_url}/mjpeg", 3)
    assert {body for _, body in parts} == {snaps[0]}
    assert len({h["x-sim-frame"] for h, _ in parts}) == 3, "three deliveries of one frame"
    camera.set_fault("none")
    assert await _snapshot(camera) != snaps[0]


async def test_truncated_jpeg(start_camera: StartCamera) -> None:
    camera = await start_camera()
    whole = await _snapshot(camera)
    camera.set_fault("truncated")
    cut = await _snapshot(camera)
    assert not cut.endswith(b"\xff\xd9")
    assert len(cut) < len(whole) * 0.7
    parts = await _mjpeg_parts(f"{camera.base_url}/mjpeg", 2)
    assert all(not body.endswith(b"\xff\xd9") for _, body in parts)


async def test_unauthorized_rejects_even_the_right_password(start_camera: StartCamera) -> None:
    camera = await start_camera(auth="digest", username="tepi", password="pw")
    camera.set_fault("unauthorized")
    async with aiohttp.ClientSession(
        middlewares=(aiohttp.DigestAuthMiddleware("tepi", "pw"),)
    ) as session:
        status, _, _ = await _get(camera.snapshot_url, session)
        assert status == 401
        camera.set_fault("none")
        status, _, _ = await _get(camera.snapshot_url, session)
        assert status == 200


async def test_hang_times_out_the_client(start_camera: StartCamera) -> None:
    camera = await start_camera()
    camera.set_fault("hang")
    with pytest.raises(TimeoutError):
        await _get(camera.snapshot_url, timeout=aiohttp.ClientTimeout(total=0.3))
    assert camera.counters()["requests"]["/snapshot.jpg"] == 1, "accepted, never answered"
    camera.set_fault("none")
    await _snapshot(camera)


async def test_slow_answers_after_the_delay(start_camera: StartCamera) -> None:
    camera = await start_camera()
    camera.set_fault("slow", delay_s=0.3)
    started = time.monotonic()
    await _snapshot(camera)
    assert time.monotonic() - started >= 0.3


async def test_reboot_refuses_then_comes_back_by_itself(start_camera: StartCamera) -> None:
    camera = await start_camera(fps=20)
    port = camera.port
    async with aiohttp.ClientSession() as session:
        stream = await session.get(f"{camera.base_url}/mjpeg")
        assert stream.status == 200
        await stream.content.readline()
        camera.set_fault("reboot", delay_s=0.5)
        await camera.wait_listening(False)
        with pytest.raises(aiohttp.ClientConnectorError):
            await _get(camera.snapshot_url)
        with pytest.raises(aiohttp.ClientError):  # the open stream was dropped
            await asyncio.wait_for(stream.content.read(), 5)
        stream.release()
        async with asyncio.timeout(5):
            await camera.wait_listening()
    assert camera.port == port
    assert camera.fault == "none"
    assert camera.counters()["reboots"] == 1
    await _snapshot(camera)


async def test_clock_offset_shows_in_date_and_combines(start_camera: StartCamera) -> None:
    camera = await start_camera()
    camera.set_fault("black")
    camera.set_fault("clock", delay_s=-3600)
    status, body, headers = await _get(camera.snapshot_url)
    assert status == 200
    offset = parsedate_to_datetime(headers["Date"]).timestamp() - time.time()
    assert offset == pytest.approx(-3600, abs=5)
    assert _grey(body).mean() < 10, "still black"
    assert camera.status()["clock_offset_s"] == -3600
    status, _, headers = await _get(f"{camera.base_url}/nowhere")
    assert status == 404
    assert parsedate_to_datetime(headers["Date"]).timestamp() - time.time() < -3000
    assert camera.counters()["requests"]["other"] == 1
    camera.set_fault("none")
    _, _, headers = await _get(camera.snapshot_url)
    assert abs(parsedate_to_datetime(headers["Date"]).timestamp() - time.time()) < 5


async def test_fault_arguments_are_checked(start_camera: StartCamera) -> None:
    camera = await start_camera()
    with pytest.raises(ValueError, match="unknown fault mode 'smoke'"):
        camera.set_fault("smoke")
    with pytest.raises(ValueError, match="delay_s applies"):
        camera.set_fault("black", delay_s=1)
    with pytest.raises(ValueError, match="must not be negative"):
        camera.set_fault("slow", delay_s=-1)


# -- ground truth ------------------------------------------------------------------------------


async def test_ground_truth_moves_and_matches_the_image(start_camera: StartCamera) -> None:
    camera = await start_camera(objects=1, seed=3)
    t = camera.epoch + 10.0
    while not camera.truth(t) or not 0.2 < camera.truth(t)[0].center[0] < 0.8:
        t += 0.5  # a moment when the object is well inside the frame
    (obj,) = camera.truth(t)
    (later,) = camera.truth(t + 0.5)
    assert obj.id == later.id == 1
    assert obj.box != later.box
    assert all(0.0 <= v <= 1.0 for v in obj.box)
    x0, y0, x1, y1 = obj.box
    assert obj.center == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2))
    shot = await asyncio.to_thread(camera.shoot, t)
    grey = cv2.cvtColor(shot.image, cv2.COLOR_BGR2GRAY)
    cx, cy = round(obj.center[0] * 640), round(obj.center[1] * 360)
    assert grey[cy, cx] > 220 if obj.bright else grey[cy, cx] < 40
    assert camera.frames[-1] == (shot.seq, t)
    assert camera.truth(t) == camera.truth(t), "deterministic"


def test_consecutive_frames_differ_even_in_a_still_scene() -> None:
    scene = Scene(64, 36, objects=0, seed=1)
    frames = (scene.render(1.0) for _ in range(5000))  # past the noise offsets' cycle
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))


def test_scene_is_deterministic_from_the_seed() -> None:
    config = load_config({"cameras": [{"id": "a", "seed": 5}, {"id": "b", "seed": 5}]})
    a, b = (Camera(c, epoch=0.0) for c in config.cameras)
    assert a.truth(12.5) == b.truth(12.5)
    assert np.array_equal(a.scene.background, b.scene.background)
    c = Camera(load_config({"cameras": [{"id": "c", "seed": 6}]}).cameras[0], epoch=0.0)
    assert not np.array_equal(a.scene.background, c.scene.background)


# -- simulator, control socket, config ------------------------------------------------------------


async def test_simulator_runs_cameras_and_the_control_socket(tmp_path: Path) -> None:
    config = {
        "devices": [
            {
                "id": "gauge",
                "transport": "tcp",
                "unit": 1,
                "registers": [{"address": 0, "kind": "counter"}],
            }
        ],
        "cameras": [{"id": "cam-1", "auth": "digest", "username": "tepi", "password": "pw"}],
    }
    async with Simulator(config) as sim:
        camera = sim.camera("cam-1")
        assert sim.camera_urls() == {"cam-1": camera.base_url}
        assert sim.endpoint("cam-1") == camera.base_url
        assert list(sim.endpoints()) == ["gauge"]
        manifest = sim.manifest()
        assert manifest["cameras"]["cam-1"]["snapshot"] == f"{camera.base_url}/snapshot.jpg"
        assert manifest["cameras"]["cam-1"]["auth"] == "digest"
        sim.set_fault("cam-1", "slow", delay_s=1.5)
        assert (camera.fault, camera.delay_s) == ("slow", 1.5)
        with pytest.raises(KeyError, match="no camera 'nope'"):
            sim.camera("nope")

        control = ControlServer(sim, tmp_path / "ctl.sock")
        await control.start()
        try:
            reader, writer = await asyncio.open_unix_connection(tmp_path / "ctl.sock")

            async def ask(cmd: dict[str, Any]) -> dict[str, Any]:
                writer.write(json.dumps(cmd).encode() + b"\n")
                answer: dict[str, Any] = json.loads(await reader.readline())
                return answer

            assert await ask({"camera": "cam-1", "fault": "black"}) == {"ok": True}
            assert camera.fault == "black"
            assert await ask({"camera": "cam-1", "fault": "clock", "delay_s": 90}) == {"ok": True}
            answer = await ask({"query": "cameras"})
            status = answer["cameras"]["cam-1"]
            assert status["url"] == camera.base_url
            assert (status["fault"], status["clock_offset_s"]) == ("black", 90)
            assert status["counters"]["auth_failures"] == 0
            bad = await ask({"camera": "cam-9", "fault": "black"})
            assert "no camera 'cam-9'" in bad["error"]
            bad = await ask({"camera": "cam-1", "fault": "smoky"})
            assert "unknown fault mode 'smoky'" in bad["error"]
            bad = await ask({"camera": "cam-1", "fault": "slow", "fault_code": 3})
            assert "unknown keys for a camera: fault_code" in bad["error"]
            assert await ask({"device": "gauge", "fault": "no_reply"}) == {"ok": True}
            assert await ask({"query": "counters"}) == {
                "ok": True,
                "counters": {"gauge": {"holding/0": 0}},
            }
            writer.close()
        finally:
            await control.stop()
    assert not camera.listening


def test_apply_command_reboot_needs_a_running_camera() -> None:
    sim = Simulator({"cameras": [{"id": "c"}]})
    answer = apply_command(sim, b'{"camera": "c", "fault": "reboot"}')
    assert answer["ok"] is False
    assert "not running" in answer["error"]


async def test_a_taken_port_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sim = Simulator({"cameras": [{"id": "c", "port": port}]})
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
            await sim.start()
        assert not sim.camera("c").listening


def test_camera_config_defaults() -> None:
    config = load_config({"cameras": [{"id": "cam-1"}]})
    assert config.devices == ()
    (cam,) = config.cameras
    assert (cam.port, cam.width, cam.height, cam.fps, cam.quality) == (0, 640, 360, 5, 80)
    assert (cam.auth, cam.username, cam.password, cam.objects, cam.seed) == ("none", "", "", 3, 0)


def _errors(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return info.value.errors


def test_camera_config_errors_name_key_paths() -> None:
    device = {"id": "cam-1", "transport": "tcp", "unit": 1, "port": 8554,
              "registers": [{"address": 0, "kind": "counter"}]}  # fmt: skip
    errors = _errors(
        {
            "devices": [device],
            "cameras": [
                {"id": "cam-1", "auht": "digest"},
                {"id": "cam-2", "auth": "digest", "username": "u", "width": 641, "fps": 0},
                {"id": "cam-3", "auth": "diggest", "port": 8554, "username": "a:b"},
                {"id": "cam-4", "password": "x", "quality": 101},
                {"id": "cam 5", "auth": "basic", "username": "a:b", "password": "p"},
                "cam-6",
            ],
        }
    )
    assert errors == [
        "cameras[0].auht: unknown key (did you mean 'auth'?)",
        "cameras[1].width: must be even (H.264 4:2:0 needs it), got 641",
        "cameras[1].fps: must be between 1 and 30, got 0",
        "cameras[1].password: required with auth digest",
        "cameras[2].auth: unknown auth 'diggest' (did you mean 'digest'?)",
        "cameras[3].quality: must be between 1 and 100, got 101",
        "cameras[3].password: only used with auth basic or digest",
        "cameras[4].id: required, a non-empty string without spaces",
        "cameras[4].username: must not contain ':'",
        "cameras[5]: must be a mapping",
        "cameras[0].id: duplicate id 'cam-1' (also devices[0])",
        "cameras[2].port: port 8554 is already used by 'cam-1'",
    ]


def test_cameras_must_be_a_list_and_devices_stay_required_without_them() -> None:
    assert _errors({"cameras": {"id": "c"}}) == [
        "cameras: must be a list of cameras",
        "devices: must be a non-empty list of devices",
    ]
    assert _errors({"cameras": []}) == ["devices: must be a non-empty list of devices"]
    assert _errors({"cameras": [{"id": "c"}, {"id": "c"}]}) == [
        "cameras[1].id: duplicate id 'c' (also cameras[0])"
    ]
