"""Cameras end to end: ``tepi run`` polling a simulated camera (tepi-sim, real HTTP, real
JPEG and H.264), a real Mosquitto broker, the status API and ``tepi snapshot``.

Every fault of the simulator ends in the right state and reason and recovers by itself;
masks hold on what is stored and what is sent; images survive an outage and arrive once;
``kill -9`` while images are written leaves a store that opens clean."""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import (
    TEST_SECRETS,
    AgentProc,
    Broker,
    FaultProxy,
    Subscriber,
    agent_config,
    compile_shim,
    images_received,
    remote,
    start_agent,
    until,
)
from rig import validator

from tepi.gateway.status import EXIT_DEGRADED, fetch, run_status
from tepi_sim import Simulator

CAMERA_PASSWORD = TEST_SECRETS[1]  # never in any log (conftest checks every agent's log)
MASK = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]  # the left half


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    cfg = {
        "cameras": [
            {"id": "cam-1", "auth": "digest", "username": "tepi", "password": CAMERA_PASSWORD}
        ]
    }
    async with Simulator(cfg) as s:
        yield s


def camera_device(sim: Simulator, tmp: Path, **over: Any) -> dict[str, Any]:
    secret = tmp / "cam-password"
    secret.write_text(CAMERA_PASSWORD + "\n")
    secret.chmod(0o600)
    return {
        "id": "cam-1",
        "driver": "camera",
        "url": sim.camera("cam-1").snapshot_url,
        "username": "tepi",
        "password_file": str(secret),
        "poll_interval": "300ms",
        "timeout": "1s",
        "snapshot_interval": None,
        "auth_retry": "1s",
        "checks": {"frozen_polls": 2, "tamper_polls": 2},
        **over,
    }


def camera_state(tmp: Path) -> tuple[str | None, str | None]:
    try:
        dev = fetch(tmp / "status.sock", "/devices")["cam-1"]
    except (OSError, KeyError, ValueError):
        return None, None
    proto = dev.get("protocol") or {}
    return proto.get("state"), proto.get("reason")


FAULTS = [
    # (simulator fault, delay_s, state the camera must reach, its reason)
    ("black", None, "degraded", "black"),
    ("frozen", None, "degraded", "frozen"),
    ("blur", None, "degraded", "blurred"),
    ("covered", None, "degraded", "covered_or_moved"),
    ("moved", None, "degraded", "covered_or_moved"),
    ("clock", 60.0, "degraded", "clock_drift"),
    ("truncated", None, "offline", "truncated JPEG"),
    ("hang", None, "offline", "timeout"),
    ("slow", 3.0, "offline", "timeout"),
    ("unauthorized", None, "auth_failed", None),
    ("reboot", 2.0, "offline", None),
]


async def test_every_camera_fault_ends_in_its_state_and_recovers(
    tmp_path: Path, sim: Simulator
) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    cam = sim.camera("cam-1")
    # A camera's clock is judged only against a synced clock of the gateway's own: the
    # fakeclock shim says the kernel's is (the machine's may not be), at the real time.
    clock = tmp_path / "clock"
    clock.write_text("0 1")
    env = {"LD_PRELOAD": str(compile_shim("fakeclock", tmp_path)), "FAKECLOCK_FILE": str(clock)}
    agent = await start_agent(tmp_path, broker.port, [camera_device(sim, tmp_path)], env=env)
    try:
        await until(lambda: camera_state(tmp_path) == ("ok", None), 20, agent)
        for fault, delay, state, reason in FAULTS:
            cam.set_fault(fault, delay_s=delay)

            def reached(state: str = state, reason: str | None = reason) -> bool:
                got = camera_state(tmp_path)
                return got[0] == state and (reason is None or got[1] == reason)

            reached.__qualname__ = f"{fault} -> {state} ({reason})"
            await until(reached, 20, agent)
            if fault == "black":  # what the technician's tepi status says
                out = io.StringIO()
                code = run_status(tmp_path / "status.sock", as_json=False, out=out)
                assert code == EXIT_DEGRADED, out.getvalue()
                assert "! camera cam-1 is degraded (black)" in out.getvalue()
                assert "camera degraded: black" in out.getvalue()
                assert "images  0 waiting" in out.getvalue()
            cam.set_fault("none")
            if fault == "reboot":
                await cam.wait_listening()

            def ok() -> bool:
                return camera_state(tmp_path) == ("ok", None)

            ok.__qualname__ = f"recovery from {fault}"
            await until(ok, 20, agent)
        health = fetch(tmp_path / "status.sock", "/health")
        assert health["devices"]["cam-1"]["internal_errors"] == 0
        # the wrong password was tried once per auth_retry, not every poll
        assert cam.counters()["auth_failures"] <= 6
        assert await agent.stop() == 0
        log = agent.log_text()
        assert "Traceback" not in log, log[-3000:]
        for word in ("degraded: black", "degraded: frozen", "refused the user name or password"):
            assert word in log, log[-3000:]
        assert CAMERA_PASSWORD not in log
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            await agent.stop()
        await broker.stop()


async def tepi_snapshot(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``tepi snapshot cam-1 ARGS`` against the agent in ``tmp``."""
    return await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tepi.gateway.cli",
            "snapshot",
            "cam-1",
            *args,
            "--socket",
            str(tmp / "status.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_tepi_snapshot_during_an_outage_says_where_the_file_is(
    tmp_path: Path, sim: Simulator
) -> None:
    """No broker: the image is written at once (nothing could acknowledge it), and the
    command names the file, which exists."""
    broker = Broker(tmp_path)  # never started: its port refuses
    dev = camera_device(sim, tmp_path, snapshot_interval=None, poll_interval="1s")
    agent = await start_agent(tmp_path, broker.port, [dev])
    try:
        run = await tepi_snapshot(tmp_path)
        assert run.returncode == 0, run.stderr
        assert "held in RAM" not in run.stdout
        path = run.stdout.split(" stored at ", 1)[1].split(";", 1)[0]
        assert Path(path).parent == tmp_path / "data" / "images"
        assert Path(path).stat().st_size > 0
    finally:
        assert await agent.stop() == 0


def decode(data: bytes) -> Any:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def assert_masked(data: bytes) -> None:
    """The left half (the mask) is black, bar JPEG ringing within a block (8 px) of its
    edge; the right is not."""
    img = decode(data)
    w = img.shape[1]
    left = img[:, : int(w * 0.5) - 8]
    right = img[:, int(w * 0.5) + 8 :]
    assert float(left.max()) <= 12, float(left.max())
    assert float(right.mean()) > 60, float(right.mean())


async def test_masks_hold_on_stored_and_sent_images_and_tepi_snapshot(
    tmp_path: Path, sim: Simulator
) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    dev = camera_device(sim, tmp_path, masks=[MASK], snapshot_interval="1s", poll_interval="1s")
    async with Subscriber(broker.port, "ioc/v1/gw-test/#") as sub:
        agent = await start_agent(tmp_path, broker.port, [dev])
        try:
            await sub.wait_for(lambda s: len(images_received(s.messages)) >= 2, 30)
            # what the agent holds, through tepi snapshot -o: with the link up, a small image
            # is held in RAM within the image window, and the command says so
            out = tmp_path / "snap.jpg"
            run = await tepi_snapshot(tmp_path, "-o", str(out))
            assert run.returncode == 0, run.stderr
            assert "held in RAM" in run.stdout, run.stdout
            assert "stored at" not in run.stdout
            assert f"written to {tmp_path / 'data' / 'images'}" in run.stdout
            assert "within 2 s" in run.stdout
            assert_masked(out.read_bytes())
            # the IOC's snapshot command: the image, not where the box keeps it
            code, result, err = await asyncio.to_thread(
                remote, broker.port, "snapshot", "camera=cam-1"
            )
            assert code == 0, err
            assert result is not None, err
            validator("command_result").validate(result)
            assert set(result["output"]) == {
                "camera",
                "seq",
                "thumbnail",
                "width",
                "height",
                "size",
            }
            await sub.wait_for(lambda s: len(images_received(s.messages)) >= 4, 30)
        finally:
            assert await agent.stop() == 0
            await broker.stop()
    sent = images_received(sub.messages)
    assert sent
    for meta, data in sent:  # as sent, whole or in parts
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert meta["camera"] == "cam-1"
        assert_masked(data)
    assert {m["class"] for m, _ in sent} >= {"snapshot", "thumbnail"}
    # and every image file left in the store, as it is on disk
    for f in (tmp_path / "data" / "images").glob("*.jpg"):
        assert_masked(f.read_bytes())


async def test_every_image_arrives_once_after_a_30_s_outage(tmp_path: Path, sim: Simulator) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    proxy = FaultProxy(broker.port)
    await proxy.__aenter__()
    dev = camera_device(sim, tmp_path, snapshot_interval="500ms", poll_interval="500ms")
    async with Subscriber(broker.port, "ioc/v1/gw-test/#") as sub:
        agent = await start_agent(tmp_path, proxy.port, [dev])
        try:
            await sub.wait_for(lambda s: len(images_received(s.messages)) >= 1, 30)
            proxy.blackhole()
            await asyncio.sleep(30)  # the outage itself is what is tested: 30 s of it
            stored = fetch(tmp_path / "status.sock", "/health")["images"]
            assert stored["count"] >= 40, stored  # a snapshot and a thumbnail every 0.5 s
            proxy.heal()

            def drained() -> bool:
                h = fetch(tmp_path / "status.sock", "/health")["images"]
                return bool(h["count"] == 0)

            await until(drained, 60, agent)
            health = fetch(tmp_path / "status.sock", "/health")
        finally:
            assert await agent.stop() == 0
            await proxy.__aexit__()
            await broker.stop()
    received = images_received(sub.messages)
    seqs = [m["seq"] for m, _ in received]
    for meta, data in received:
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    assert health["images"]["dropped"] == {}
    # every image stored, from the first to the last, arrived; a resend of the one in
    # flight when the link went is the only duplicate there may be (the IOC drops it by seq)
    assert set(seqs) == set(range(min(seqs), max(seqs) + 1))
    assert len(seqs) - len(set(seqs)) <= 2
    assert health["images"]["sent"] >= len(set(seqs))


async def test_kill_9_while_images_are_written_leaves_a_clean_store(
    tmp_path: Path, sim: Simulator
) -> None:
    broker = Broker(tmp_path)
    dev = camera_device(sim, tmp_path, snapshot_interval="100ms", poll_interval="100ms")
    images = tmp_path / "data" / "images"
    agent: AgentProc | None = None
    try:
        for round_ in range(3):
            agent = await start_agent(tmp_path, broker.port, [dev])  # no broker: all kept

            def some_written(n: int = 6 * (round_ + 1)) -> bool:
                return images.is_dir() and len(list(images.glob("*.jpg"))) >= n

            await until(some_written, 30, agent)
            agent.kill9()
            agent = None
        # reopened: the index is sound and matches the files, temp files are gone
        # (its status API answers only after the image store has opened and reconciled)
        agent = await start_agent(tmp_path, broker.port, [dev])
        health = fetch(tmp_path / "status.sock", "/health")
        assert await agent.stop() == 0
        agent = None
    finally:  # an agent left running by a failure here would poll the camera for ever
        if agent is not None and agent.proc is not None and agent.proc.poll() is None:
            agent.kill9()
    db = sqlite3.connect(tmp_path / "data" / "images.db")
    try:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        names = {r[0] for r in db.execute("SELECT name FROM images")}
    finally:
        db.close()
    files = {f.name for f in images.iterdir()}
    assert files == names, (files - names, names - files)
    assert names
    # (the reopened agent went on storing snapshots between its health and its stop)
    assert 0 < health["images"]["count"] <= len(names)


async def test_an_agent_without_cameras_imports_no_opencv_nor_pyav(tmp_path: Path) -> None:
    """Its memory stays where it was: a synthetic device polled and sent, and neither cv2,
    av nor numpy loaded, nor an image database made."""
    broker = Broker(tmp_path)
    await broker.start()
    cfg = agent_config(
        tmp_path, broker.port, [{"id": "s", "driver": "synthetic", "poll_interval": "100ms"}]
    )
    script = (
        "import asyncio, sys\n"
        "from tepi.gateway.configload import load_config\n"
        "from tepi.gateway.runtime import Agent\n"
        "async def main():\n"
        f"    agent = Agent(load_config({str(cfg)!r}))\n"
        "    stop = asyncio.Event()\n"
        "    run = asyncio.create_task(agent.run(stop))\n"
        "    await agent.uplink.wait_for(lambda st: st.readings_acked >= 20)\n"
        "    stop.set(); await run\n"
        "    print(sorted(m for m in ('cv2', 'av', 'numpy', 'sqlite_utils') if m in sys.modules))\n"
        "asyncio.run(main())\n"
    )
    try:
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        await broker.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    assert not (tmp_path / "data" / "images.db").exists()
