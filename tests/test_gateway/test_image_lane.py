"""The uplink's image lane, on a real broker: metadata then bytes, acknowledged before the
image leaves the buffer; events before thumbnails before snapshots; telemetry first; the byte
rate and the daily cap. Images are stored straight into the agent's image hub here (the
camera tests in test_cameras.py take them from a simulated camera)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
from helpers import SCHEMA_PATH, Broker, FaultProxy, Subscriber

from tepi.core.clock import boottime
from tepi.core.records import Reading
from tepi.gateway.configload import parse_config
from tepi.gateway.images import Budget
from tepi.gateway.runtime import Agent

SCHEMA = json.loads(SCHEMA_PATH.read_text())
META = jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/image_meta"})
HEALTH = jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/health"})


def agent_with_images(
    tmp: Path, port: int, images: dict[str, Any] | None = None, **up: Any
) -> Agent:
    cfg = parse_config(
        json.dumps(
            {
                "gateway": {"id": "gw-img", "data_dir": str(tmp / "data")},
                "uplink": {
                    "url": f"mqtt://127.0.0.1:{port}",
                    "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
                    **up,
                },
                "images": images or {},
            }
        ),
        "t.yaml",
        check_files=False,
    )
    agent = Agent(cfg)
    # No camera configured: the hub is made by hand, as a camera's config would have.
    agent.images = agent._image_hub(cfg)
    agent.uplink.images = agent.images
    return agent


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition of the agent's own state (no event to wait on from outside)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def jpeg_like(n: int, tag: int) -> bytes:
    """Bytes that look like a JPEG to nobody but the store (it keeps bytes)."""
    body = hashlib.sha256(str(tag).encode()).digest() * (n // 32 + 1)
    return b"\xff\xd8" + body[: n - 4] + b"\xff\xd9"


async def put(agent: Agent, cls: str, size: int, tag: int, camera: str = "cam-1") -> int:
    assert agent.images is not None
    seq, _ = await agent.images.store(
        camera,
        cls,
        jpeg_like(size, tag),
        reason=f"test-{tag}",
        ts=time.time(),
        mono=boottime(),
        width=64,
        height=48,
    )
    return seq


def images_of(sub: Subscriber) -> list[tuple[str, bytes]]:
    return [(t, p) for t, p, _ in sub.messages if "/image/" in t]


def metas_of(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in sub.messages if "/image_meta/" in t]


async def test_images_arrive_meta_first_in_class_order_and_leave_the_buffer(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_with_images(tmp_path, broker.port)
    stop = asyncio.Event()
    # Stored before the agent runs (the broker unknown yet): all wait, then go in class order.
    await agent.images.open()  # type: ignore[union-attr]
    seqs = {
        "snapshot": await put(agent, "snapshot", 3000, 1),
        "thumbnail": await put(agent, "thumbnail", 800, 2),
        "event": await put(agent, "event", 2000, 3),
    }
    async with Subscriber(broker.port, "ioc/v1/gw-img/#") as sub:
        run = asyncio.create_task(agent.run(stop))
        try:
            await sub.wait_for(lambda s: len(images_of(s)) >= 3, 20)
            metas = metas_of(sub)
            for m in metas:
                META.validate(m)
            assert [m["class"] for m in metas] == ["event", "thumbnail", "snapshot"]
            assert [m["seq"] for m in metas] == [
                seqs[c] for c in ("event", "thumbnail", "snapshot")
            ]
            # each image's bytes follow its metadata, and match its sha256 and size
            kinds = [
                ("meta" if "/image_meta/" in t else "image")
                for t, _, _ in sub.messages
                if "/image" in t
            ]
            assert kinds == ["meta", "image"] * 3
            for m, (topic, data) in zip(metas, images_of(sub), strict=True):
                assert topic == "ioc/v1/gw-img/image/cam-1"
                assert hashlib.sha256(data).hexdigest() == m["sha256"]
                assert len(data) == m["size"]
            hub = agent.images
            assert hub is not None
            await until(lambda: hub.lane.sent == 3)  # acked after the broker's PUBACK
            h = agent.health()
            HEALTH.validate(h)
            assert h["images"]["sent"] == 3
            assert h["images"]["count"] == 0  # acknowledged, so deleted
            assert list((tmp_path / "data" / "images").glob("*.jpg")) == []
        finally:
            stop.set()
            await run
            await broker.stop()


async def test_mqtt5_carries_the_metadata_as_user_properties(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_with_images(tmp_path, broker.port, protocol="5")
    stop = asyncio.Event()
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="v5-sub"
    ) as client:
        await client.subscribe("ioc/v1/gw-img/image/#", qos=1)
        run = asyncio.create_task(agent.run(stop))
        try:
            await agent.ready.wait()
            seq = await put(agent, "snapshot", 1500, 7)
            async with asyncio.timeout(20):
                async for msg in client.messages:
                    got.append(msg)
                    break
        finally:
            stop.set()
            await run
            await broker.stop()
    props = got[0].properties
    assert props is not None
    user = dict(getattr(props, "UserProperty", []))
    assert user["seq"] == str(seq)
    assert user["class"] == "snapshot"
    payload = got[0].payload
    assert isinstance(payload, bytes)
    assert user["sha256"] == hashlib.sha256(payload).hexdigest()
    assert getattr(props, "ContentType", None) == "image/jpeg"


async def test_telemetry_backlog_goes_before_any_image(tmp_path: Path) -> None:
    """Readings and images pile up during an outage: after it, every backlog reading is on
    the broker before the first image is sent."""
    broker = Broker(tmp_path)
    await broker.start()
    proxy = FaultProxy(broker.port)
    await proxy.__aenter__()
    proxy.blackhole()
    agent = agent_with_images(tmp_path, proxy.port, keepalive="5s", batch={"max_readings": 200})
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await agent.ready.wait()
        for i in range(3000):
            agent.buffer.put(Reading("d", "backlog", i, None, time.time(), 1.0))
        for i in range(3):
            await put(agent, "snapshot", 5000, i)
        await agent.buffer.flush()
        async with Subscriber(broker.port, "ioc/v1/gw-img/#") as sub:
            proxy.heal()
            await sub.wait_for(lambda s: len(images_of(s)) >= 3, 30)
            topics = [t for t, _, _ in sub.messages]
            first_image = next(i for i, t in enumerate(topics) if "/image" in t)
            before = [
                r
                for t, p, _ in sub.messages[:first_image]
                if t.endswith("/telemetry")
                for r in json.loads(p)["readings"]
            ]
            assert len({r["value"] for r in before if r["metric"] == "backlog"}) == 3000
    finally:
        stop.set()
        await run
        await proxy.__aexit__()
        await broker.stop()


async def test_the_byte_rate_paces_images(tmp_path: Path) -> None:
    """images.rate 8 KiB/s and images of 8 KiB: the first goes at once (a burst of one
    image), each next one a second later: five take 4 s or more (unpaced: milliseconds)."""
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_with_images(
        tmp_path, broker.port, images={"rate": "8KiB", "max_image_bytes": "8KiB"}
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-img/image/#") as sub:
            await agent.ready.wait()
            for i in range(5):
                await put(agent, "snapshot", 8 * 1024, i)
            await sub.wait_for(lambda s: len(s.messages) >= 1, 10)
            first = time.monotonic()
            await sub.wait_for(lambda s: len(s.messages) >= 2, 10)
            h = agent.health()["images"]
            assert h["waiting_for"] in ("budget", None)
            await sub.wait_for(lambda s: len(s.messages) >= 5, 20)
            took = time.monotonic() - first
        assert took >= 3.5, took
    finally:
        stop.set()
        await run
        await broker.stop()


async def test_the_daily_cap_holds_images_and_survives_a_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    images = {"daily_bytes": "10KiB", "max_image_bytes": "8KiB"}
    agent = agent_with_images(tmp_path, broker.port, images=images)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-img/image/#") as sub:
            await agent.ready.wait()
            await put(agent, "snapshot", 6000, 1)
            await put(agent, "snapshot", 6000, 2)
            await sub.wait_for(lambda s: len(s.messages) >= 1, 10)
            hub = agent.images
            assert hub is not None
            # the second does not fit in the day's 10 KiB: it waits, and health says why
            await until(lambda: hub.lane.waiting_for == "daily_cap")
            h = agent.health()["images"]
            HEALTH.validate(agent.health())
            assert h["budget"]["state"] == "daily_cap"
            assert h["budget"]["sent_today"] == 6000
            assert h["count"] == 1
            assert len(sub.messages) == 1
    finally:
        stop.set()
        await run
        await broker.stop()
    # the day's count is kept across a restart
    again = Budget(
        rate=0, daily=10 * 1024, burst=8192, path=tmp_path / "data" / "image_budget.json"
    )
    assert again.sent_today == 6000
    assert again.wait_s(6000)[1] == "daily_cap"


async def test_a_large_image_goes_in_parts_that_join_to_it(tmp_path: Path) -> None:
    """20,000 bytes, part_bytes 8 KiB, on a link whose speed is not known yet: the metadata
    says split, the first part is 8 KiB, the parts come on image_part/{camera}/{seq}/{offset}
    in order, and joined they are the image; an image under 8 KiB goes whole."""
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_with_images(tmp_path, broker.port, images={"part_bytes": "8KiB"})
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-img/#") as sub:
            await agent.ready.wait()
            seq = await put(agent, "snapshot", 20_000, 9)
            small = await put(agent, "snapshot", 3_000, 10)
            await sub.wait_for(lambda s: any("/image/" in t for t, _, _ in s.messages), 20)
    finally:
        stop.set()
        await run
        await broker.stop()
    metas = {m["seq"]: m for m in metas_of(sub)}
    META.validate(metas[seq])
    assert (metas[seq]["split"], metas[small]["split"]) == (True, False)
    parts = [(t, p) for t, p, _ in sub.messages if "/image_part/" in t]
    offsets = [int(t.rsplit("/", 1)[1]) for t, _ in parts]
    assert offsets[0] == 0
    assert len(parts[0][1]) == 8192  # the link's speed unknown: part_bytes
    assert offsets == [sum(len(p) for _, p in parts[:i]) for i in range(len(parts))]
    assert all(t.startswith(f"ioc/v1/gw-img/image_part/cam-1/{seq}/") for t, _ in parts)
    joined = b"".join(p for _, p in parts)
    assert hashlib.sha256(joined).hexdigest() == metas[seq]["sha256"]
    assert joined == jpeg_like(20_000, 9)


def test_parts_are_sized_to_the_links_speed(tmp_path: Path) -> None:
    """About 25 ms on the wire a part, never under part_bytes, never over what is left."""
    up = agent_with_images(tmp_path, 1, images={"part_bytes": "8KiB"}).uplink
    assert up._part_size(100_000) == 8192  # speed unknown
    up._link_bps = 250_000.0  # 2 Mbit/s: 6,250 B in 25 ms, so part_bytes
    assert up._part_size(100_000) == 8192
    up._link_bps = 2_000_000.0  # 16 Mbit/s: 50 kB in 25 ms
    assert up._part_size(100_000) == 50_000
    up._link_bps = 50_000_000.0  # loopback: the whole image
    assert up._part_size(100_000) == 100_000
    whole = agent_with_images(tmp_path / "w", 1, images={"part_bytes": 0}).uplink
    assert whole._part_size(100_000) == 100_000
