"""The uplink: payload encoding, batching bounds, pipelining, MQTT 5, backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import SCHEMA_PATH, Broker, FaultProxy, Subscriber
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi.buffer import Batch
from tepi.buffer.records import StoredReading
from tepi.core.records import Reading
from tepi.gateway.configload import parse_config
from tepi.gateway.mqttlink import _Client
from tepi.gateway.payload import encode_telemetry, reading_objs
from tepi.gateway.runtime import Agent

SCHEMA = json.loads(SCHEMA_PATH.read_text())
TELEMETRY = jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/telemetry"})

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
values = st.one_of(
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
readings = st.builds(
    lambda dev, met, val, unit, bad: Reading(
        dev, met, None if bad else val, unit, time.time(), 12.5, bad
    ),
    ids,
    ids,
    values,
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.sampled_from(["timeout", "modbus exception 2 (illegal data address)"])),
)


def batch_of(rs: list[Reading]) -> Batch:
    return Batch.of("boot-1", [StoredReading(i + 1, r) for i, r in enumerate(rs)])


@settings(max_examples=80, deadline=None)
@given(st.lists(readings, min_size=1, max_size=30), st.integers(1024, 8192))
def test_payload_matches_the_schema_and_round_trips(rs: list[Reading], max_bytes: int) -> None:
    payload, n = encode_telemetry(
        "gw-1", batch_of(rs), max_bytes=max_bytes, current_boot="boot-2", clock_synced=False
    )
    assert 1 <= n <= len(rs)
    assert n == len(rs) or len(payload) <= max_bytes
    obj = json.loads(payload)
    TELEMETRY.validate(obj)
    assert obj["boot"] == "boot-1"
    assert obj["clock"]["boot"] == "boot-2"
    for item, r in zip(obj["readings"], rs[:n], strict=True):
        assert (item["device"], item["metric"], item["value"], item["unit"]) == (
            r.device,
            r.metric,
            r.value,
            r.unit,
        )
        assert item["quality"] == ("good" if r.reason is None else "bad")
        assert type(item["value"]) is type(r.value) or (
            isinstance(r.value, float) and isinstance(item["value"], int | float)
        )


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(readings, st.booleans()), min_size=1, max_size=20),
    st.one_of(st.none(), st.floats(-1e6, 1e6)),
)
def test_each_reading_says_its_quality_and_how_its_time_was_found(
    items: list[tuple[Reading, bool]], fix: float | None
) -> None:
    """Every reading's object, whichever of the encoder's paths made it (all good or not,
    clock synced or not): its seq, quality, reason, and ts_status with the time it gives."""
    rs = [dataclasses.replace(r, synced=synced) for r, synced in items]
    objs = reading_objs(batch_of(rs), fix)
    assert len(objs) == len(rs)
    for seq, (obj, r) in enumerate(zip(objs, rs, strict=True), 1):
        if r.synced:
            ts, status = r.ts, None
        elif fix is None:
            ts, status = r.ts, "unsynced"
        else:
            ts, status = r.mono + fix, "corrected"
        want: dict[str, Any] = {
            "seq": seq,
            "device": r.device,
            "metric": r.metric,
            "value": r.value,
            "unit": r.unit,
            "ts": round(ts * 1000) / 1000,
            "mono": round(r.mono * 1000) / 1000,
            "quality": "good" if r.reason is None else "bad",
        }
        if r.reason is not None:
            want["reason"] = r.reason
        if status is not None:
            want["ts_status"] = status
        assert obj == want


def test_batches_are_cut_at_max_bytes_and_a_huge_reading_still_goes() -> None:
    rs = [Reading("d", "m", float(i), "u", 1.0, 1.0) for i in range(100)]
    payload, n = encode_telemetry(
        "gw", batch_of(rs), max_bytes=2048, current_boot="b", clock_synced=True
    )
    assert 5 < n < 100
    assert len(payload) <= 2048
    huge = [Reading("d", "m", "x" * 5000, None, 1.0, 1.0)]
    payload, n = encode_telemetry(
        "gw", batch_of(huge), max_bytes=1024, current_boot="b", clock_synced=True
    )
    assert n == 1
    assert len(payload) > 5000


def agent_for(tmp: Path, port: int, **uplink: Any) -> Agent:
    up = {
        "url": f"mqtt://127.0.0.1:{port}",
        "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
        **uplink,
    }
    cfg = parse_config(
        json.dumps({"gateway": {"id": "gw-up", "data_dir": str(tmp / "data")}, "uplink": up}),
        "t.yaml",
        check_files=False,
    )
    return Agent(cfg)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_backlog_drains_pipelined_exactly_once_in_order(
    tmp_path: Path, protocol: str
) -> None:
    """The broker is down while 3,000 readings pile up; then it comes back over a link with
    4G-like latency (100 ms round trip), where waiting for each PUBACK would be slow."""
    broker = Broker(tmp_path)
    await broker.start()
    proxy = FaultProxy(broker.port, latency_s=0.05)
    await proxy.__aenter__()
    proxy.blackhole()  # down: connections are swallowed
    agent = agent_for(
        tmp_path,
        proxy.port,
        protocol=protocol,
        keepalive="5s",
        publish_timeout="2s",
        batch={"max_readings": 100, "max_wait": "50ms"},
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await agent.ready.wait()
    for i in range(3000):
        agent.buffer.put(Reading("d", "counter", i, None, time.time(), 1.0))
    await agent.buffer.flush()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-up/telemetry") as sub:
            proxy.heal()
            await sub.wait_for(lambda s: len(s.readings()) >= 3000, 30)
            got = sub.readings()
            assert [r["value"] for r in got] == list(range(3000))
            assert [r["seq"] for r in got] == list(range(1, 3001))
            assert all(len(m["readings"]) <= 100 for m in sub.on("/telemetry"))
        assert agent.uplink.stats.peak_inflight > 1, "batches must be pipelined"
        async with asyncio.timeout(10):
            await agent.uplink.wait_for(lambda s: s.readings_acked >= 3000)
        await agent.buffer.flush()
        assert agent.buffer.stats().depth == 0, "acked readings are deleted"
    finally:
        stop.set()
        await run
        await proxy.__aexit__()
        await broker.stop()
    # The stop fails the agent's task group: its task closed the stores after it, and was
    # not left counted as cancelling there (a timeout would have been a CancelledError).
    assert run.cancelling() == 0


async def test_live_readings_do_not_wait_behind_a_long_backlog(tmp_path: Path) -> None:
    """20,000 readings are buffered while the broker is away, over a 100 ms round trip. A
    reading taken after the reconnect arrives long before the backlog is through, and still
    every reading arrives exactly once."""
    broker = Broker(tmp_path)
    await broker.start()
    proxy = FaultProxy(broker.port, latency_s=0.05)
    await proxy.__aenter__()
    proxy.blackhole()
    agent = agent_for(tmp_path, proxy.port, keepalive="5s", publish_timeout="5s")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await agent.ready.wait()
    n = 20_000
    for i in range(n):
        agent.buffer.put(Reading("old", "counter", i, None, time.time(), 1.0))
    await agent.buffer.flush()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-up/telemetry") as sub:
            proxy.heal()
            await sub.wait_for(lambda s: len(s.on("/telemetry")) >= 1, 30)
            assert sub.on("/telemetry")[0]["readings"][0]["seq"] == 1, "the backlog starts first"
            live_seq = agent.buffer.put(Reading("live", "counter", 0, None, time.time(), 1.0))

            def live_arrived(s: Subscriber) -> bool:
                return any(r["seq"] == live_seq for r in s.readings())

            await sub.wait_for(live_arrived, 30)
            backlog_then = sum(1 for r in sub.readings() if r["device"] == "old")
            print(f"the live reading arrived after {backlog_then} of {n} backlog readings")
            assert backlog_then < n // 2, (
                f"the live reading waited for {backlog_then} backlog readings"
            )
            await sub.wait_for(lambda s: len(s.readings()) >= n + 1, 60)
            seqs = sorted(r["seq"] for r in sub.readings())
            assert seqs == list(range(1, n + 2)), "each reading exactly once"
    finally:
        stop.set()
        await run
        await proxy.__aexit__()
        await broker.stop()


async def test_last_will_says_offline_when_the_gateway_vanishes(tmp_path: Path) -> None:
    import subprocess
    import sys

    broker = Broker(tmp_path)
    await broker.start()
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        json.dumps(
            {
                "gateway": {"id": "gw-will", "data_dir": str(tmp_path / "d")},
                "uplink": {"url": f"mqtt://127.0.0.1:{broker.port}"},
            }
        )
    )
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-will/status") as sub:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tepi.gateway.cli", "run", "--config", str(cfg)],
                stderr=subprocess.DEVNULL,
            )
            await sub.wait_for(lambda s: any(m["state"] == "online" for m in s.on("/status")), 20)
            proc.kill()
            proc.wait(10)
            await sub.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", 20)
            assert sub.on("/status")[-1]["reason"] == "connection lost"
    finally:
        await broker.stop()


async def test_mqtt5_refused_publish_is_not_an_ack(tmp_path: Path) -> None:
    """An ACL denies telemetry: the broker's PUBACK says 0x87. Nothing may be deleted; once
    the ACL allows it, every reading arrives."""
    import signal as sig

    acl = tmp_path / "acl"
    acl.write_text(
        "topic read #\ntopic write ioc/v1/gw-up/status\ntopic write ioc/v1/gw-up/health\n"
    )
    broker = Broker(tmp_path, extra=f"acl_file {acl}")
    await broker.start()
    agent = agent_for(tmp_path, broker.port, protocol="5", publish_timeout="1s")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await agent.ready.wait()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-up/telemetry") as sub:
            for i in range(50):
                agent.buffer.put(Reading("d", "counter", i, None, time.time(), 1.0))
            async with asyncio.timeout(15):
                await agent.uplink.wait_for(
                    lambda s: s.errors.get("publish_refused", 0) >= 1 and s.attempts >= 2
                )
            await agent.buffer.flush()
            assert agent.buffer.stats().depth == 50, "refused readings must stay buffered"
            assert sub.readings() == []
            acl.write_text("topic read #\ntopic write ioc/v1/gw-up/#\n")
            assert broker.proc is not None
            broker.proc.send_signal(sig.SIGHUP)  # mosquitto reloads its ACL
            await sub.wait_for(lambda s: len({r["seq"] for r in s.readings()}) >= 50, 20)
            assert sorted({r["value"] for r in sub.readings()}) == list(range(50))
    finally:
        stop.set()
        await run
        await broker.stop()


async def test_a_health_message_that_fails_to_build_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in building health (here: the health source raises twice) leaves one traceback;
    the session, the telemetry and later health messages go on."""
    calls = 0
    real = Agent.health

    def flaky(self: Agent, *, mark: bool = True) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise ZeroDivisionError("a bug in a health field")
        return real(self, mark=mark)

    monkeypatch.setattr(Agent, "health", flaky)
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_for(tmp_path, broker.port, health_interval="1s")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-up/#") as sub:
            await agent.ready.wait()
            await sub.wait_for(lambda s: len(s.on("/health")) >= 3, 20)
            assert calls >= 5, "health was built again after the failures"
            agent.buffer.put(Reading("d", "counter", 7, None, time.time(), 1.0))
            await sub.wait_for(lambda s: [r["value"] for r in s.readings()] == [7], 10)
            assert not run.done(), "the agent runs on"
        assert agent.uplink.stats.connects == 1, "the session was never lost"
        tracebacks = [r for r in caplog.records if r.exc_info and "health" in r.getMessage()]
        assert len(tracebacks) == 1
    finally:
        stop.set()
        await run
        await broker.stop()


async def test_the_mqtt_socket_sends_small_publishes_at_once(tmp_path: Path) -> None:
    """Nagle's algorithm off (paho leaves it on): a PUBLISH never waits for the ACK of the
    one before it, which the broker may delay by up to 40 ms."""
    broker = Broker(tmp_path)
    await broker.start()
    try:
        async with _Client("127.0.0.1", broker.port) as client:
            sock = client._client.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        await broker.stop()


async def test_a_publish_on_the_loop_is_written_at_once_and_a_large_one_in_parts(
    tmp_path: Path,
) -> None:
    """paho queues a PUBLISH and asks for its socket to be watched for writing. On the loop's
    thread the client writes it at once instead: no writer is added for the socket (aiomqtt's
    way: a self-pipe wake-up, add_writer, a turn, remove_writer, for every message). What the
    socket does not take (a message larger than its send buffer) waits for the socket to be
    writable, and every message arrives whole."""
    broker = Broker(tmp_path)
    await broker.start()
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_writer = loop.add_writer

    def spy(fd: Any, callback: Any, *args: Any) -> None:
        watched.append(fd)
        add_writer(fd, callback, *args)

    big = random.Random(7).randbytes(4 * 1024 * 1024)
    try:
        async with Subscriber(broker.port, "t/#") as sub, _Client("127.0.0.1", broker.port) as c:
            sock = c._client.socket()
            assert isinstance(sock, socket.socket)
            fd = sock.fileno()
            # A small send buffer (the kernel makes it at least a few kB): a 4 MB message
            # cannot go in one write, however fast the broker reads.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            loop.add_writer = spy  # type: ignore[method-assign, assignment]  # counts, then adds as asked
            try:
                for i in range(50):
                    await c.publish("t/small", str(i).encode(), qos=1)
                assert fd not in watched, "a small publish waited for a writer"
                await c.publish("t/big", big, qos=1)
                assert fd in watched, "a message larger than the send buffer went in one write"
                for i in range(3):
                    await c.publish("t/small", f"after {i}".encode(), qos=1)
            finally:
                del loop.add_writer
            await sub.wait_for(lambda s: len(s.messages) == 54, 20)
    finally:
        await broker.stop()
    got = [payload for _, payload, _ in sub.messages]
    assert got[:50] == [str(i).encode() for i in range(50)]
    assert got[50] == big
    assert got[51:] == [f"after {i}".encode() for i in range(3)]


async def test_a_link_lost_after_a_connect_was_given_up_on_raises_nothing_in_paho(
    tmp_path: Path,
) -> None:
    """A connect abandoned (its timeout, a stop) cancels the CONNACK future; the link's loss
    reported after that must not raise CancelledError in paho's callback (aiomqtt reads the
    future's ``exception()``), which the loop logs as a traceback."""
    import paho.mqtt.client as mqtt

    client = _Client("127.0.0.1", 1)
    client._connected.cancel()
    await asyncio.sleep(0)
    assert client._connected.cancelled()
    client._on_disconnect(client._client, None, mqtt.DisconnectFlags(False), 7, None)  # type: ignore[arg-type]
    assert not client._disconnected.done()  # nothing to tell: no one awaits this session


async def test_a_returning_broker_is_found_by_a_probe_not_after_the_backoff(
    tmp_path: Path,
) -> None:
    """The backoff is 20 s here (a long outage's); a probe finds the broker back within a
    probe interval, and the agent returns after a part of ``spread``, not of the backoff."""
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_for(
        tmp_path,
        broker.port,
        keepalive="5s",
        reconnect={
            "min_delay": "20s",
            "max_delay": "20s",
            "probe_interval": "200ms",
            "spread": "300ms",
        },
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(10):
            await agent.uplink.wait_for(lambda s: s.connected)
        await broker.stop()
        async with asyncio.timeout(10):
            await agent.uplink.wait_for(lambda s: not s.connected)
        async with asyncio.timeout(10):  # probes refused while it is down
            while agent.uplink.stats.probes < 3:
                await asyncio.sleep(0.05)
        assert agent.uplink.stats.probes_answered == 0
        await broker.start()
        back = time.monotonic()
        async with Subscriber(broker.port, "ioc/v1/gw-up/telemetry") as sub:
            agent.buffer.put(Reading("d", "m", 1, None, time.time(), 1.0))
            await sub.wait_for(lambda s: len(s.readings()) >= 1, 5)
        assert time.monotonic() - back < 3.0
        assert agent.uplink.stats.probes_answered == 1
    finally:
        stop.set()
        await run
        await broker.stop()


async def test_a_session_lost_to_a_restart_comes_back_over_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker restart ends every gateway's session at the same instant and is back before
    their first attempt: that attempt waits a random part of ``spread``, not only of the
    backoff's first cap, so a fleet's reconnects spread over those seconds (bench/fleet.py:
    with the first cap alone, a restart put 100 agents' connects in one second)."""
    monkeypatch.setattr(random, "uniform", lambda a, b: (a + b) / 2)  # every draw its middle
    broker = Broker(tmp_path)
    await broker.start()
    agent = agent_for(
        tmp_path,
        broker.port,
        reconnect={
            "min_delay": "100ms",
            "max_delay": "300ms",
            "probe_interval": "100ms",
            "spread": "2s",
        },
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(10):
            await agent.uplink.wait_for(lambda s: s.connected)
        stopped = time.monotonic()
        await broker.stop()
        await broker.start()  # a restart: back at once
        async with asyncio.timeout(10):
            await agent.uplink.wait_for(lambda s: s.connects >= 2)
        took = time.monotonic() - stopped
        # the middle of spread: 1 s after the session ended; of the first cap alone: 0.05 s
        # (or, with the broker not back yet, a probe 0.1 s later and half the 0.2 s cap)
        assert took >= 0.95, took
    finally:
        stop.set()
        await run
        await broker.stop()


async def test_a_port_that_accepts_but_never_connects_gets_fewer_early_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that accepts TCP and closes at once (overloaded, or still starting): every
    probe finds the port open, but the early attempts it starts fail; each failure doubles
    the wait before probing again, so the attempts thin out instead of looping."""
    # Every random draw at its middle: the backoff's full jitter (0 to 20 s) then never
    # starts an attempt of its own within the test (a draw under a second did, now and
    # then: an attempt no probe started, which the counts below do not expect).
    monkeypatch.setattr(random, "uniform", lambda a, b: (a + b) / 2)

    async def slam(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = agent_for(
        tmp_path,
        port,
        reconnect={
            "min_delay": "20s",
            "max_delay": "20s",
            "probe_interval": "50ms",
            "spread": "100ms",
        },
    )
    stop = asyncio.Event()
    started = time.monotonic()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(20):
            await agent.uplink.wait_for(lambda s: s.attempts >= 5)
        took = time.monotonic() - started
        # The first attempt at once, then early ones after waits of 0.2, 0.4 and 0.8 s (plus
        # probes and spread): at least 1.4 s for five. Probing without the doubling would
        # make five attempts in about half a second.
        assert took >= 1.4, took
        stats = agent.uplink.stats
        assert stats.attempts - 1 <= stats.probes_answered <= stats.attempts
    finally:
        stop.set()
        await run
        server.close()


async def test_backlog_rate_paces_the_backlog_and_never_the_live_readings(tmp_path: Path) -> None:
    """3,000 buffered readings at backlog_rate 2,000/s take at least 1.25 s to send (the
    last batch of 500 is due 2,500 / 2,000 s after the first); a live reading put while the
    backlog drains arrives at once (behind the pacing it would wait up to 1.25 s)."""
    broker = Broker(tmp_path)
    await broker.start()
    proxy = FaultProxy(broker.port)
    await proxy.__aenter__()
    proxy.blackhole()
    agent = agent_for(
        tmp_path, proxy.port, keepalive="5s", backlog_rate=2000, batch={"max_readings": 500}
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await agent.ready.wait()
    for i in range(3000):
        agent.buffer.put(Reading("d", "backlog", i, None, time.time(), 1.0))
    await agent.buffer.flush()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-up/telemetry") as sub:
            proxy.heal()
            await sub.wait_for(lambda s: len(s.readings()) >= 1, 30)
            first = time.monotonic()
            agent.buffer.put(Reading("d", "live", 1, None, time.time(), 1.0))
            await sub.wait_for(lambda s: any(r["metric"] == "live" for r in s.readings()), 5)
            live_took = time.monotonic() - first
            await sub.wait_for(
                lambda s: sum(r["metric"] == "backlog" for r in s.readings()) >= 3000, 30
            )
            drain = time.monotonic() - first
        assert drain >= 1.2, drain  # paced (unpaced, 3,000 readings take milliseconds)
        assert live_took < 0.8, live_took  # the live lane does not wait for the pacing
        backlog = [r["value"] for r in sub.readings() if r["metric"] == "backlog"]
        assert sorted(set(backlog)) == list(range(3000))
    finally:
        stop.set()
        await run
        await proxy.__aexit__()
        await broker.stop()
