"""Camera analytics end to end: ``tepi run`` analysing a simulated camera's H.264 stream of
the traffic scene (tepi-sim, real HTTP, real H.264), a real Mosquitto, the status API.

Counts per line and direction arrive as readings stamped at their intervals' ends; every
object gives one start and one end event image, masked, stored in the image buffer and
delivered across a link outage, each event image once (the IOC drops a resent seq); the
analysis reports its pace in health."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import Broker, FaultProxy, Subscriber, images_received, start_agent, until

from tepi.buffer.images import ImageStore
from tepi.gateway.status import fetch
from tepi_sim import Simulator

pytestmark = [pytest.mark.timeout(240)]

MASK = [[0.0, 0.0], [0.25, 0.0], [0.25, 1.0], [0.0, 1.0]]  # the left quarter, road included


async def test_counts_and_events_through_an_outage(tmp_path: Path) -> None:
    cfg = {
        "cameras": [
            {
                "id": "cam-1",
                "width": 640,
                "height": 360,
                "fps": 5,
                "scene": "traffic",
                "seed": 11,
                "traffic": {"duration_s": 600, "flow_per_lane_min": 20},
            }
        ]
    }
    async with Simulator(cfg) as sim:
        cam = sim.camera("cam-1")
        scene = cam.traffic
        assert scene is not None
        dev: dict[str, Any] = {
            "id": "cam-1",
            "driver": "camera",
            "url": f"{cam.base_url}/stream.ts?preroll=0",
            "source": "stream",
            "poll_interval": "2s",
            "timeout": "3s",
            "snapshot_interval": None,
            "masks": [MASK],
            "analytics": {
                "fps": 5,
                "count_interval": "5s",
                "lines": [{"name": x.name, "points": [list(x.a), list(x.b)]} for x in scene.lines],
                "zones": [
                    {
                        "name": z.name,
                        "polygon": [list(p) for p in z.polygon],
                        "stop_line": [list(p) for p in z.stop_line],
                        "length_m": z.length_m,
                    }
                    for z in scene.zones
                ],
            },
        }
        broker = Broker(tmp_path)
        await broker.start()
        proxy = FaultProxy(broker.port)
        await proxy.__aenter__()
        async with Subscriber(broker.port, "ioc/v1/gw-test/#") as sub:
            agent = await start_agent(tmp_path, proxy.port, [dev])
            try:

                def counted(s: Subscriber) -> bool:  # both ways across the road
                    total = Counter[str]()
                    for r in s.readings():
                        if r["metric"].startswith("count.all-lanes."):
                            total[r["metric"]] += r["value"]
                    return total["count.all-lanes.in"] > 0 and total["count.all-lanes.out"] > 0

                def ended(s: Subscriber) -> bool:
                    return any(
                        m["event"] and m["event"]["type"] == "end"
                        for m, _ in images_received(s.messages)
                    )

                await sub.wait_for(counted, 90)
                await sub.wait_for(ended, 60)
                proxy.blackhole()

                def events_kept(n: int = 6) -> bool:
                    h = fetch(tmp_path / "status.sock", "/health")
                    return int(h["images"]["by_class"].get("event", {}).get("count", 0)) >= n

                await until(events_kept, 60, agent)  # made and kept while the link is down
                proxy.heal()

                def drained() -> bool:
                    h = fetch(tmp_path / "status.sock", "/health")
                    return int(h["images"]["count"]) == 0

                await until(drained, 90, agent)
                health = fetch(tmp_path / "status.sock", "/health")
                devices = fetch(tmp_path / "status.sock", "/devices")
            finally:
                assert await agent.stop() == 0
                await proxy.__aexit__()
                await broker.stop()

    analytics = devices["cam-1"]["protocol"]["analytics"]
    assert analytics["analysed"] > 20
    assert analytics["errors"] == 0, analytics["last_error"]
    assert analytics["events_dropped"] == 0
    assert 3.0 <= float(analytics["fps"]) <= 6.0, analytics  # at the configured pace

    # Readings: counts per line and direction, every interval stamped at its end.
    counts = [r for r in sub.readings() if r["metric"].startswith("count.")]
    metrics = {r["metric"] for r in counts}
    assert {"count.all-lanes.in", "count.all-lanes.out"} <= metrics
    assert sum(r["value"] for r in counts if r["metric"] == "count.all-lanes.in") > 0
    assert sum(r["value"] for r in counts if r["metric"] == "count.all-lanes.out") > 0
    frames = [r for r in sub.readings() if r["metric"] == "frames"]
    assert frames
    assert all(r["quality"] == "good" for r in frames)

    # Events: every event image, from the first to the last, arrived; each once but for a
    # resend of the one in flight when the link went (the IOC drops it by seq).
    received = images_received(sub.messages)
    seqs = [m["seq"] for m, _ in received]
    assert set(seqs) == set(range(min(seqs), max(seqs) + 1))
    assert len(seqs) - len(set(seqs)) <= 2
    assert health["images"]["dropped"] == {}
    once = {m["seq"]: (m, data) for m, data in received}
    kinds: dict[str, Counter[str]] = {}
    for meta, data in once.values():
        assert meta["class"] == "event"
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        ev = meta["event"]
        kinds.setdefault(ev["id"], Counter())[ev["type"]] += 1
        assert_masked(ev, data)
    assert all(c["start"] <= 1 and c["end"] <= 1 for c in kinds.values()), kinds
    whole = [c for c in kinds.values() if c["start"] and c["end"]]
    assert len(whole) >= 3, kinds
    # The agent's stop ended the events still open: no start is left without its end. An end
    # stored in the stop's last moment may not have gone before the uplink stopped (an image
    # the broker has not acknowledged waits in RAM, so storing it no longer takes an fsync's
    # time): the clean stop wrote it to the image buffer, for the next start.
    with ImageStore(tmp_path / "data", 64 * 1024 * 1024) as store:
        exclude: set[int] = set()
        while (left := store.next(exclude)) is not None:
            exclude.add(left.seq)
            if left.seq in once:  # on the wire as the uplink stopped: it did arrive
                continue
            assert left.event is not None
            ev = json.loads(left.event)
            assert ev["type"] == "end", ev
            kinds.setdefault(ev["id"], Counter())[ev["type"]] += 1
    assert all(c["end"] == 1 for c in kinds.values() if c["start"]), kinds
    json.dumps(health)  # the health document stays JSON


def assert_masked(ev: dict[str, Any], jpeg: bytes) -> None:
    """The analysis never sees the masked quarter: no object is found wholly inside it, and
    the part of a crop that covers it is black (the crop starts at the frame's left edge
    when its box reaches into the quarter)."""
    x0, _, x1, _ = ev["box"]
    assert x1 > 0.25, f"an object was found inside the mask: {ev}"
    if x0 < 0.15:  # the crop (box and margin) starts at x = 0: its left columns are masked
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert img is not None
        assert float(img[:, :2].mean()) < 16, ev
