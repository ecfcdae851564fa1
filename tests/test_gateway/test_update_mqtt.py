"""The ``update`` command's bundle sent in parts over MQTT (docs/update.md, "Over MQTT";
tepi.gateway.updateparts).

End to end: ``tepi remote --file`` -> a real Mosquitto -> ``tepi run`` stages the bundle and
writes the switch request the switcher reads (the switch itself is test_update.py's, the same
for both transfers). Piece by piece, the :class:`~tepi.gateway.update.Updater` with its
:class:`~tepi.gateway.updateparts.PartSink` and no broker: parts out of order and again,
parts that are dropped, a wrong sha256, a bad signature, a stalled transfer, a size too big.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiomqtt
import pytest
from helpers import (
    Broker,
    FaultProxy,
    Subscriber,
    agent_config,
    agent_running,
    remote,
    remote_keygen,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from updatekit import Keys, keys, make_bundle, until

from tepi.gateway.commands import sign
from tepi.gateway.config import UpdateSection
from tepi.gateway.remote import Call, current
from tepi.gateway.remotecli import read_key
from tepi.gateway.switcher import parse_request
from tepi.gateway.update import Updater, UpdateRefused, read_json
from tepi.gateway.updateparts import PART_SIZE, PartSink, Transfer, parse_part_topic
from tepi.gateway.uplink import Uplink

__all__ = ["keys"]  # a fixture, used by name

NEW = "1.0.0"
TOPIC = "ioc/v1/gw-test/update_part"


def big_bundle(tmp: Path, k: Keys, key: Path | None = None) -> tuple[Path, str]:
    """A bundle of several parts (its payload does not compress)."""
    extra = {"wheels/payload.bin": random.Random(7).randbytes(5 * PART_SIZE + 1234)}
    return make_bundle(tmp, NEW, "good", key or k.private, extra=extra)


def nothing_staged(data: Path) -> None:
    update = data / "update"
    left = sorted(p.name for p in update.iterdir()) if update.exists() else []
    assert left == [], left


# ---- end to end: tepi remote --file -> Mosquitto -> tepi run ---------------------------------


@pytest.mark.timeout(60)
async def test_a_bundle_sent_in_parts_stages_and_requests_the_switch(
    tmp_path: Path, keys: Keys
) -> None:
    ioc_key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, ioc_key)
    tarball, digest = big_bundle(tmp_path, keys)
    broker = Broker(tmp_path)
    await broker.start()
    async with Subscriber(broker.port, "ioc/v1/#") as sub:
        cfg = agent_config(tmp_path, broker.port, [])
        cfg.write_text(
            cfg.read_text()
            + "commands:\n"
            + "  policy: {update: signed}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
            + f"  update: {{public_key_file: '{keys.public}', max_bytes: 4MiB}}\n"
        )
        async with agent_running(
            cfg, sub, broker, lambda s: any(m["state"] == "online" for m in s.on("/status"))
        ):
            code, out, err = await asyncio.to_thread(
                remote, broker.port, "update", f"version={NEW}", "--file", str(tarball),
                "--id", "upd-1", "--inflight", "3", key=ioc_key, timeout=30,
            )  # fmt: skip
            assert code == 0, err
            assert out is not None
            assert out["status"] == "done", out
            res = out["output"]
            assert (res["state"], res["sha256"], res["version"]) == ("staged", digest, NEW)
            assert res["bytes"] == tarball.stat().st_size
            assert res["files_verified"] == 6
            # The IOC was told where to send, then the parts went.
            assert f'"topic": "{TOPIC}/upd-1/{{offset}}"' in err, err
            assert f'"part_size": {PART_SIZE}' in err
            assert f"sent {res['bytes']}/{res['bytes']} bytes" in err
            parts = [t for t, _, _ in sub.messages if t.startswith(f"{TOPIC}/upd-1/")]
            assert len(parts) == 6
            # The switch request, as the switcher reads it (and as an HTTPS download leaves it).
            data = tmp_path / "data/update"
            request = read_json(data / "request.json")
            assert request is not None
            assert (request["sha256"], request["version"]) == (digest, NEW)
            parsed = parse_request((data / "request.json").read_bytes())
            assert (parsed.sha256, parsed.version, parsed.bundle) == (digest, NEW, res["bundle"])
            staged = (data / request["bundle"]).read_bytes()
            assert hashlib.sha256(staged).hexdigest() == digest
            assert not (data / "download.part").exists()

            # Unsubscribed once it is done: a part now does not even reach the agent.
            code, again, err = await asyncio.to_thread(
                remote, broker.port, "update", f"version={NEW}", "--file", str(tarball),
                key=ioc_key, timeout=20,
            )  # fmt: skip
            assert again is not None
            assert code == 6
            assert "already requested" in again["detail"], again


@pytest.mark.timeout(60)
async def test_a_reconnect_in_the_middle_loses_nothing(tmp_path: Path, keys: Keys) -> None:
    """The agent's link drops halfway: the parts sent meanwhile wait in its persistent
    session, the ones sent again are harmless, and the transfer completes."""
    ioc_key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, ioc_key)
    tarball, digest = big_bundle(tmp_path, keys)
    parts = chunks(tarball)
    broker = Broker(tmp_path)
    await broker.start()
    async with (
        FaultProxy(broker.port) as proxy,
        Subscriber(broker.port, "ioc/v1/#") as sub,
    ):
        cfg = agent_config(tmp_path, proxy.port, [])
        cfg.write_text(
            cfg.read_text()
            + "commands:\n  policy: {update: signed}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
            + f"  update: {{public_key_file: '{keys.public}', max_bytes: 4MiB}}\n"
        )
        async with (
            agent_running(
                cfg, sub, broker, lambda s: any(m["state"] == "online" for m in s.on("/status"))
            ) as agent,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="ioc-test") as ioc,
        ):
            code, _, err = await asyncio.to_thread(remote, broker.port, "ping")
            assert code == 0, err  # the agent takes commands: it has subscribed
            now = time.time()
            args = {"transfer": "mqtt", "size": tarball.stat().st_size, "sha256": digest}
            req = sign(
                read_key(ioc_key), "gw-test", "update",
                {"id": "upd-r", "issued_at": now, "expires_at": now + 60,
                 "args": {**args, "version": NEW}},
                "ioc-1",
            )  # fmt: skip
            await ioc.publish("ioc/v1/gw-test/cmd/update", json.dumps(req), qos=1)

            def answers(status: str) -> list[dict[str, Any]]:
                return [
                    r for r in sub.on("/cmd_result") if r["id"] == "upd-r" and r["status"] == status
                ]

            await sub.wait_for(lambda _: bool(answers("accepted") or answers("failed")))
            assert answers("accepted"), answers("failed")
            base = answers("accepted")[0]["output"]["topic"].removesuffix("{offset}")
            for offset, data in parts[:4] + parts[1:2]:
                await ioc.publish(f"{base}{offset}", data, qos=1)
            proxy.drop()  # the agent's link goes down mid-transfer
            for offset, data in parts[2:]:  # again, and the rest, while it is away
                await ioc.publish(f"{base}{offset}", data, qos=1)
            await sub.wait_for(lambda _: bool(answers("done") or answers("failed")))
            assert answers("done"), answers("failed")
            assert answers("done")[0]["output"]["sha256"] == digest
            assert proxy.connections >= 2  # it did reconnect
            assert "parts dropped" not in agent.log_text()  # parts again are not strays
            request = read_json(tmp_path / "data/update/request.json")
            assert request is not None
            assert request["sha256"] == digest


def cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.environ.get("TEPI_UPDATE_MQTT_MB"), reason="a measurement, by hand")
@pytest.mark.timeout(600)
async def test_measure_a_bundle_over_loopback(tmp_path: Path, keys: Keys) -> None:
    """TEPI_UPDATE_MQTT_MB=10 pytest -s -k measure tests/test_gateway/test_update_mqtt.py"""
    mb = float(os.environ["TEPI_UPDATE_MQTT_MB"])
    ioc_key = tmp_path / "ioc-1.key"
    public = await asyncio.to_thread(remote_keygen, ioc_key)
    payload = random.Random(1).randbytes(int(mb * 1024 * 1024))
    tarball, _ = make_bundle(tmp_path, NEW, "good", keys.private, extra={"wheels/p.bin": payload})
    broker = Broker(tmp_path)
    await broker.start()
    async with Subscriber(broker.port, "ioc/v1/+/status") as sub:
        cfg = agent_config(tmp_path, broker.port, [])
        cfg.write_text(
            cfg.read_text()
            + "commands:\n  policy: {update: signed}\n"
            + f"  keys: [{{id: ioc-1, public_key: '{public}'}}]\n"
            + f"  update: {{public_key_file: '{keys.public}', max_bytes: 1GiB}}\n"
        )
        async with agent_running(
            cfg, sub, broker, lambda s: any(m["state"] == "online" for m in s.on("/status"))
        ) as agent:
            assert agent.proc is not None
            cpu0, child0 = cpu_s(agent.proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            code, out, err = await asyncio.to_thread(
                remote, broker.port, "update", f"version={NEW}", "--file", str(tarball),
                key=ioc_key, timeout=300,
            )  # fmt: skip
            wall = time.monotonic() - t0
            agent_cpu = cpu_s(agent.proc.pid) - cpu0
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            assert code == 0, err
            assert out is not None
            res = out["output"]
            remote_cpu = child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime
            print(
                f"measured: {res['bytes'] / 1e6:.1f} MB in {res['bytes'] // PART_SIZE + 1} "
                f"parts: tepi remote {wall:.2f} s wall ({remote_cpu:.2f} s CPU); the agent "
                f"{agent_cpu:.2f} s CPU, transfer+sha256 {res['download_ms'] / 1000:.2f} s, "
                f"verify {res['verify_ms'] / 1000:.2f} s"
            )


# ---- the updater and its part sink, without a broker ---------------------------------------


@dataclass
class Link:
    """The uplink's part of a transfer (its real ``_parts_lane``) on a client that records
    what it is asked to do; the test hands the parts over as ``_watch`` does."""

    sink: PartSink
    granted: int = 1  # the SUBACK's code
    calls: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)

    async def subscribe(self, topic: str, qos: int) -> tuple[int, ...]:
        self.calls.append(f"subscribe {topic} {qos}")
        return (self.granted,)

    async def unsubscribe(self, topic: str) -> None:
        self.calls.append(f"unsubscribe {topic}")

    async def progress(self, output: Any) -> None:
        self.accepted.append(output)


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    lk = Link(PartSink(TOPIC))
    task = asyncio.create_task(Uplink._parts_lane(cast("aiomqtt.Client", lk), lk.sink))
    try:
        yield lk
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not lk.sink.linked


def updater(tmp: Path, k: Keys, sink: PartSink, idle: float = 10.0) -> Updater:
    cfg = UpdateSection(public_key_file=k.public, max_bytes=4 * 1024 * 1024)
    return Updater(cfg, tmp / "data", parts=sink, part_idle=idle)


def start(up: Updater, link: Link, args: dict[str, Any], rid: str) -> asyncio.Task[Any]:
    """The command as the hub runs it: in a task, with its Call."""
    current.set(Call(rid, "update", 0.0, link.progress))
    return asyncio.create_task(up(args))


def chunks(tarball: Path) -> list[tuple[int, bytes]]:
    raw = tarball.read_bytes()
    return [(o, raw[o : o + PART_SIZE]) for o in range(0, len(raw), PART_SIZE)]


@pytest.mark.timeout(30)
async def test_parts_out_of_order_and_again_are_fine_and_strays_are_dropped(
    tmp_path: Path, keys: Keys, link: Link
) -> None:
    tarball, digest = big_bundle(tmp_path, keys)
    size = tarball.stat().st_size
    up = updater(tmp_path, keys, link.sink)
    args = {"transfer": "mqtt", "size": size, "sha256": digest, "version": NEW}
    task = start(up, link, args, "upd-2")
    await until(lambda: bool(link.accepted), 10)
    said = link.accepted[0]
    assert said["topic"] == f"{TOPIC}/upd-2/{{offset}}"
    assert (said["part_size"], said["parts"], said["size"]) == (PART_SIZE, 6, size)
    sink = link.sink
    parts = chunks(tarball)
    # Strays first: another request, beyond the size, not on a part's boundary, not a topic.
    sink.receive(f"other/{0}", parts[0][1])
    sink.receive(f"upd-2/{size}", b"x")
    sink.receive("upd-2/1", parts[0][1])
    sink.receive("upd-2/0", parts[0][1][:-1])  # a part shorter than its slot
    sink.receive("upd-2/-5", b"x")
    sink.receive("upd-2", b"x")
    order = list(reversed(parts)) + parts[1:3]  # out of order, some again
    for offset, data in order[:-1]:
        sink.receive(f"upd-2/{offset}", data)
    assert not task.done()
    sink.receive(f"upd-2/{parts[-1][0]}", b"\0" * len(parts[-1][1]))  # overwritten next
    sink.receive(f"upd-2/{order[-1][0]}", order[-1][1])
    sink.receive(f"upd-2/{parts[-1][0]}", parts[-1][1])
    out = await asyncio.wait_for(task, 20)
    assert (out["state"], out["sha256"], out["bytes"]) == ("staged", digest, size)
    assert dict(sink.dropped) == {
        "unknown_request": 1,
        "out_of_range": 1,
        "misshapen": 2,
        "bad_topic": 2,
    }
    request = read_json(tmp_path / "data/update/request.json")
    assert request is not None
    assert request["sha256"] == digest
    assert sink.transfer is None  # closed: the uplink unsubscribes
    sink.receive("upd-2/0", parts[0][1])
    assert sink.dropped["unknown_request"] == 2
    # The lane's first pass drops what an earlier session may have left; then subscribed
    # only while the transfer was open.
    await until(lambda: len(link.calls) == 3, 5)
    assert link.calls == [
        f"unsubscribe {TOPIC}/+/+",
        f"subscribe {TOPIC}/+/+ 1",
        f"unsubscribe {TOPIC}/+/+",
    ]


@pytest.mark.timeout(30)
async def test_a_subscription_the_broker_refuses_fails_the_update_at_once(
    tmp_path: Path, keys: Keys, link: Link
) -> None:
    link.granted = 0x87  # MQTT 5's "not authorized" (3.1.1's is 0x80): an ACL without it
    tarball, digest = big_bundle(tmp_path, keys)
    up = updater(tmp_path, keys, link.sink)
    args = {"transfer": "mqtt", "size": tarball.stat().st_size, "sha256": digest}
    task = start(up, link, {**args, "version": NEW}, "upd-a")
    refused = r"broker refused the subscription \(135\): .*/update_part/#"
    with pytest.raises(UpdateRefused, match=refused):
        await asyncio.wait_for(task, 10)
    assert not link.accepted  # the IOC was never told to send
    nothing_staged(tmp_path / "data")


@pytest.mark.timeout(30)
async def test_a_wrong_sha256_or_a_bad_signature_after_the_transfer_stages_nothing(
    tmp_path: Path, keys: Keys, link: Link
) -> None:
    tarball, digest = big_bundle(tmp_path / "good", keys)
    other, other_digest = big_bundle(tmp_path / "other", keys, keys.other)
    wrong = hashlib.sha256(b"something else").hexdigest()
    for n, (bundle, asked, says) in enumerate(
        [
            (tarball, wrong, f"sha256 is {digest}, not the {wrong}"),
            (other, other_digest, "signature does not verify"),
        ]
    ):
        up = updater(tmp_path, keys, link.sink)
        args = {"transfer": "mqtt", "size": bundle.stat().st_size, "sha256": asked}
        task = start(up, link, {**args, "version": NEW}, f"upd-{n}")
        await until(link.sink.subscribed.is_set, 10)
        for offset, data in chunks(bundle):
            link.sink.receive(f"upd-{n}/{offset}", data)
        with pytest.raises(UpdateRefused, match=says):
            await asyncio.wait_for(task, 20)
        nothing_staged(tmp_path / "data")
        link.accepted.clear()


@pytest.mark.timeout(30)
async def test_a_stalled_transfer_is_abandoned_and_its_file_removed(
    tmp_path: Path, keys: Keys, link: Link
) -> None:
    tarball, digest = big_bundle(tmp_path, keys)
    up = updater(tmp_path, keys, link.sink, idle=0.5)
    args = {"transfer": "mqtt", "size": tarball.stat().st_size, "sha256": digest}
    task = start(up, link, {**args, "version": NEW}, "upd-s")
    await until(lambda: bool(link.accepted), 10)
    part = tmp_path / "data/update/download.part"
    assert part.exists()
    for offset, data in chunks(tarball)[:2]:
        link.sink.receive(f"upd-s/{offset}", data)
    with pytest.raises(UpdateRefused, match=r"no part came for 0.5 s: 2 of 6 parts came"):
        await asyncio.wait_for(task, 10)
    nothing_staged(tmp_path / "data")
    assert link.sink.transfer is None


@pytest.mark.timeout(30)
async def test_too_big_a_size_is_refused_before_anything_is_written(
    tmp_path: Path, keys: Keys, link: Link
) -> None:
    up = updater(tmp_path, keys, link.sink)
    digest = "0" * 64
    for size, says in [
        (4 * 1024 * 1024 + 1, r"4194305 bytes; commands.update.max_bytes is 4194304"),
        (0, "args.size is required"),
        ("12", "args.size is required"),
    ]:
        task = start(up, link, {"transfer": "mqtt", "size": size, "sha256": digest}, "big")
        with pytest.raises(UpdateRefused, match=says):
            await asyncio.wait_for(task, 10)
    assert not (tmp_path / "data").exists()
    assert not link.accepted
    assert link.sink.transfer is None
    with pytest.raises(UpdateRefused, match=r"transfer is https .* or mqtt"):
        await up({"transfer": "ftp", "sha256": digest, "version": NEW})


# ---- the parser and the part map -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9._:-]{1,8}/[0-9]{1,14}", fullmatch=True))
@pytest.mark.timeout(60)
def test_a_part_topic_parses_or_is_refused_cleanly(rest: str) -> None:
    parsed = parse_part_topic(rest)
    if parsed is not None:
        rid, offset = parsed
        assert f"{rid}/{offset}" == rest  # only the canonical form
        assert 0 <= offset < 10**12


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5000),
    st.integers(1, 700),
    st.randoms(use_true_random=False),
    st.integers(0, 5),
)
@pytest.mark.timeout(60)
def test_parts_in_any_order_and_again_rebuild_the_bytes(
    size: int, part_size: int, rnd: random.Random, again: int
) -> None:
    raw = rnd.randbytes(size)
    slots = [(o, raw[o : o + part_size]) for o in range(0, size, part_size)]
    order = slots + [rnd.choice(slots) for _ in range(again)]
    rnd.shuffle(order)
    with tempfile.TemporaryDirectory() as d:

        async def go() -> bytes:
            t = Transfer("r", Path(d) / "part", size, part_size)
            for n, (offset, data) in enumerate(order):
                assert t.write(offset, data) is None
                assert t.complete.is_set() == (t.missing == 0)
                assert n < len(order) - 1 or t.complete.is_set()
            assert t.write(size, b"x") == "out_of_range"
            t.finish()
            return (Path(d) / "part").read_bytes()

        assert asyncio.run(go()) == raw
        assert [p.name for p in Path(d).iterdir()] == ["part"]
