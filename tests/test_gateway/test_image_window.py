"""The images' durability window (images.commit_interval): an image the broker acknowledges
in time is never written; one it does not is written when its window ends, when the link
drops, or at a clean stop; seqs stay unique and increasing across restarts whether or not an
image was written; the uplink's order holds over RAM and disk; a kill -9 loses at most the
window's images. Real SQLite files and image files throughout, a real broker for the first
test, and a real process killed for the last (image_window_child.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker, Subscriber

from tepi.buffer.images import ImageStore
from tepi.core.clock import boottime
from tepi.gateway.config import ImagesSection
from tepi.gateway.configload import parse_config
from tepi.gateway.images import ImageHub
from tepi.gateway.runtime import Agent

pytestmark = pytest.mark.timeout(60)

CHILD = Path(__file__).with_name("image_window_child.py")


def hub_in(data: Path, **images: Any) -> ImageHub:
    return ImageHub(
        ImagesSection.model_validate(images),
        data,
        boot_id="boot-w",
        reserve_bytes=lambda: 0,
        sync=False,
    )


def jpeg_like(n: int, tag: int) -> bytes:
    body = hashlib.sha256(str(tag).encode()).digest() * (n // 32 + 1)
    return b"\xff\xd8" + body[: n - 4] + b"\xff\xd9"


async def put(hub: ImageHub, cls: str, tag: int, size: int = 1500) -> int:
    seq, _ = await hub.store(
        "cam-1",
        cls,
        jpeg_like(size, tag),
        reason=f"test-{tag}",
        ts=time.time(),
        mono=boottime(),
        width=64,
        height=48,
        event=json.dumps({"tag": tag}) if cls == "event" else None,
    )
    return seq


def puts(hub: ImageHub) -> int:
    assert hub.store_ is not None
    return hub.store_.stats().puts


def on_disk(data: Path) -> dict[int, bytes]:
    """The images a new store finds in ``data``: seq -> bytes."""
    found: dict[int, bytes] = {}
    with ImageStore(data, 64 * 1024 * 1024) as store:
        exclude: set[int] = set()
        while (meta := store.next(exclude)) is not None:
            found[meta.seq] = store.read(meta.seq)
            exclude.add(meta.seq)
    return found


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition of the hub's own state (no event to wait on from outside)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_images_the_broker_acknowledges_in_time_are_never_written(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    cfg = parse_config(
        json.dumps(
            {
                "gateway": {"id": "gw-win", "data_dir": str(tmp_path / "data")},
                "uplink": {
                    "url": f"mqtt://127.0.0.1:{broker.port}",
                    "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
                },
                "images": {"commit_interval": "5s"},
            }
        ),
        "t.yaml",
        check_files=False,
    )
    agent = Agent(cfg)
    hub = agent.images = agent._image_hub(cfg)  # no camera: the hub made by hand
    agent.uplink.images = hub
    stop = asyncio.Event()
    n = 40
    async with Subscriber(broker.port, "ioc/v1/gw-win/#") as sub:
        run = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: hub.link_up)
            seqs = [await put(hub, "event", i) for i in range(n)]
            await until(lambda: hub.lane.sent == n)
            metas = [json.loads(p) for t, p, _ in sub.messages if "/image_meta/" in t]
            assert [m["seq"] for m in metas] == seqs == sorted(set(seqs))
            assert [json.loads(m["event"])["tag"] if isinstance(m["event"], str)
                    else m["event"]["tag"] for m in metas] == list(range(n))  # fmt: skip
            assert puts(hub) == 0  # not one of them written
            assert list((tmp_path / "data" / "images").iterdir()) == []
            h = agent.health()["images"]
            assert (h["count"], h["in_ram"]) == (0, {"count": 0, "bytes": 0})
        finally:
            stop.set()
            await run
            await broker.stop()


async def test_unacknowledged_images_are_written_when_their_window_ends(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = hub_in(data, commit_interval="300ms")
    await hub.open()
    hub.link(True)  # a lane runs, but its broker never acknowledges
    started = time.monotonic()
    seqs = [await put(hub, "event", i) for i in range(5)]
    h = hub.health()
    assert h is not None
    assert (puts(hub), h["count"], h["in_ram"]["count"]) == (0, 5, 5)
    assert h["by_class"]["event"] == {"count": 5, "bytes": 5 * 1500}
    await until(lambda: puts(hub) == 5)
    assert time.monotonic() - started >= 0.3  # not before the window ended
    h = hub.health()
    assert h is not None
    assert (h["count"], h["in_ram"]["count"], h["bytes"]) == (5, 0, 5 * 1500)
    # Acknowledged now, from disk; the others survive a restart, bytes and all.
    assert await hub.next() is not None
    await hub.ack(seqs[0], 1500)
    await hub.close()
    assert on_disk(data) == {s: jpeg_like(1500, i) for i, s in enumerate(seqs) if i}


async def test_images_are_written_at_once_while_the_link_is_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = hub_in(data, commit_interval="60s")
    await hub.open()
    down = [await put(hub, "event", i) for i in range(3)]  # no lane: written at once
    assert puts(hub) == 3
    hub.link(True)
    held = [await put(hub, "thumbnail", 10 + i) for i in range(3)]
    assert puts(hub) == 3
    hub.link(False)  # the link dropped: what was held is written now, not in 60 s
    await until(lambda: puts(hub) == 6)
    assert hub.ram() == (0, 0)
    await hub.close()
    assert sorted(on_disk(data)) == down + held


async def test_a_clean_stop_writes_the_images_held_in_ram(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = hub_in(data, commit_interval="60s")
    await hub.open()
    hub.link(True)
    seqs = [await put(hub, cls, i) for i, cls in enumerate(["event", "snapshot", "event"])]
    assert puts(hub) == 0
    await hub.close()
    assert on_disk(data) == {s: jpeg_like(1500, i) for i, s in enumerate(seqs)}


async def test_order_holds_over_ram_and_disk(tmp_path: Path) -> None:
    hub = hub_in(tmp_path / "data", commit_interval="60s")
    await hub.open()
    snap_disk = await put(hub, "snapshot", 1)
    event_disk = await put(hub, "event", 2)
    hub.link(True)
    snap_ram = await put(hub, "snapshot", 3)
    event_ram = await put(hub, "event", 4)
    thumb_ram = await put(hub, "thumbnail", 5)
    big_event = await put(hub, "event", 6, size=80 * 1024)  # over 64 KiB: on disk at once
    assert puts(hub) == 3
    order = []
    while (meta := await hub.next()) is not None:
        assert await hub.read(meta.seq) == jpeg_like(meta.size, int(meta.reason[5:]))
        order.append(meta.seq)
        await hub.ack(meta.seq, meta.size)
    assert order == [event_disk, event_ram, big_event, thumb_ram, snap_disk, snap_ram]
    assert hub.ram() == (0, 0)
    await hub.close()


async def test_an_image_acknowledged_while_it_is_written_is_deleted_not_sent_again(
    tmp_path: Path,
) -> None:
    """The broker's acknowledgement comes while the window's write is under way (held in the
    store's put by its disk-reserve check): the image is deleted once written, and never
    offered again."""
    entered, gate = threading.Event(), threading.Event()

    def reserve() -> int:  # called by the store's put, before it writes the file
        entered.set()
        gate.wait(10)
        return 0

    hub = ImageHub(
        ImagesSection.model_validate({"commit_interval": "50ms"}),
        tmp_path / "data",
        boot_id="boot-w",
        reserve_bytes=reserve,
        sync=False,
    )
    await hub.open()
    hub.link(True)
    seq = await put(hub, "event", 1)
    assert await asyncio.to_thread(entered.wait, 10)  # the window ended: being written
    # (the store is locked meanwhile: its put holds the lock across the reserve check)
    assert await hub.read(seq) == jpeg_like(1500, 1)  # from RAM: it is still there
    await hub.ack(seq, 1500)
    assert not gate.is_set()
    gate.set()
    assert hub.store_ is not None
    store = hub.store_
    await until(lambda: store.stats().acks == 1)
    assert store.stats().puts == 1
    assert await hub.next() is None
    h = hub.health()
    assert h is not None
    assert (h["count"], h["sent"]) == (0, 1)
    await hub.close()
    assert on_disk(tmp_path / "data") == {}


async def test_ram_is_bounded_and_the_rest_goes_to_disk(tmp_path: Path) -> None:
    hub = hub_in(tmp_path / "data", commit_interval="60s", ram_bytes=4000)
    await hub.open()
    hub.link(True)
    for i in range(4):
        await put(hub, "event", i)  # 1500 bytes each: two fit in 4000
    assert hub.ram() == (2, 3000)
    assert puts(hub) == 2
    h = hub.health()
    assert h is not None
    assert (h["count"], h["bytes"], h["in_ram"]) == (4, 6000, {"count": 2, "bytes": 3000})
    await hub.close()


async def test_seqs_increase_across_restarts_though_held_images_were_never_written(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    seen: list[int] = []
    for _ in range(3):
        hub = hub_in(data, commit_interval="60s")
        await hub.open()
        hub.link(True)
        for i in range(3):
            seq = await put(hub, "event", i)
            seen.append(seq)
            await hub.ack(seq, 1500)  # in time: never written
        assert puts(hub) == 0
        await hub.close()
    assert seen == sorted(set(seen))
    assert on_disk(data) == {}


def test_a_kill_9_loses_at_most_the_window(tmp_path: Path) -> None:
    """The child stores an image every 20 ms with a lane 'up' whose broker never
    acknowledges, and a 0.5 s window; it is killed after 3 s. Every image stored longer
    than the window before the kill (plus the slack a busy machine needs to run the writer)
    is on disk with its bytes, the ones lost are all within that, and no seq is handed out
    twice."""
    data = tmp_path / "data"
    window = 0.5
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data), str(window)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < 150:  # 3 s of images at 50 a second
            line = proc.stdout.readline()
            assert line, "the child ended"
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        lines += proc.stdout.read().splitlines()  # every store() that returned before it
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    stored = [(int(seq), float(at), int(tag)) for seq, at, tag in map(str.split, lines)]
    found = on_disk(data)
    slack = 1.0
    old = [seq for seq, at, _ in stored if at < killed - window - slack]
    assert len(old) > 10
    assert [s for s in old if s not in found] == []
    assert all(found[s] == jpeg_like(1500, tag) for s, _, tag in stored if s in found)
    lost = [(seq, at) for seq, at, _ in stored if seq not in found]
    assert lost, "every image was written: none was held in RAM"
    assert all(at >= killed - window - slack for _, at in lost)
    with ImageStore(data, 64 * 1024 * 1024) as store:
        assert store.reserve_seq() > max(s for s, _, _ in stored)
