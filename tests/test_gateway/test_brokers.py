"""tepi against other brokers than the usual Mosquitto with MQTT 3.1.1: Mosquitto with MQTT 5,
nats-server's MQTT listener and RabbitMQ's MQTT plugin (private instances, tests/brokers.py).

For each, the end-to-end completeness check of the fault suite: the simulator -> ``tepi run``
-> the broker (through a fault proxy) -> a subscriber; a broker restart; every counter value
must arrive, with no gap in ``seq``; the retained ``online`` status reaches a subscriber that
comes later; and the last will says ``offline`` when the agent dies. Then what a broker lacks
must be said at connect time: MQTT 5 asked of a broker that speaks 3.1.1 only, and a broker
without retained messages. docs/operations.md has the table of results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import NatsBroker, RabbitBroker
from completeness import format_table
from helpers import TEST_SECRETS, Broker, FaultProxy, Subscriber, in_process_agent
from rig import DEVICES, AnyBroker, running_rig

from tepi.core.records import Reading

pytestmark = pytest.mark.timeout(240)

LATE = itertools.count()


def blocking(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end on a loop of its own in another thread: a module's fixture
    may be set up from inside a test's running loop (``getfixturevalue``)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    """One RabbitMQ node for the module: it takes several seconds to boot."""
    broker = RabbitBroker(tmp_path_factory.mktemp("rabbitmq"), "tepi-test", TEST_SECRETS[0])
    blocking(broker.start())
    yield broker
    blocking(broker.stop())


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsBroker]:
    broker = NatsBroker(tmp_path_factory.mktemp("nats"))
    blocking(broker.start())
    yield broker
    blocking(broker.stop())


async def broker_for(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> AnyBroker:
    """The broker of a test parameter: a module's shared node, or a Mosquitto of its own."""
    if kind.startswith("mosquitto"):
        mosquitto = Broker(tmp_path, persistence=True)
        await mosquitto.start()
        return mosquitto
    broker: AnyBroker = request.getfixturevalue(kind)
    return broker


async def retained_status(port: int, gateway: str) -> dict[str, object]:
    """The status a subscriber that comes now finds retained (on the exact topic: RabbitMQ
    gives retained messages to exact subscriptions only)."""
    # A clean session of a new id: nothing queued for an earlier subscriber comes first.
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier=f"late-{next(LATE)}") as client,
        asyncio.timeout(15),
    ):
        await client.subscribe(f"ioc/v1/{gateway}/status", qos=1)
        async for msg in client.messages:
            assert msg.retain, "the status must come as retained"
            assert isinstance(msg.payload, bytes)
            status: dict[str, object] = json.loads(msg.payload)
            return status
    raise AssertionError("no status came")


@pytest.mark.parametrize(
    ("kind", "protocol"),
    [
        ("mosquitto", "3.1.1"),
        ("mosquitto", "5"),
        ("nats", "3.1.1"),
        ("rabbitmq", "3.1.1"),
    ],
    ids=["mosquitto-3.1.1", "mosquitto-5", "nats", "rabbitmq"],
)
async def test_a_broker_restart_loses_nothing_and_status_and_will_work(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, protocol: str
) -> None:
    broker = await broker_for(request, kind, tmp_path)
    gateway = f"gw-{kind}-{protocol.replace('.', '')}"  # a module's node keeps retained state
    try:
        async with (
            FaultProxy(0) as proxy,
            running_rig(
                tmp_path,
                broker=broker,
                proxy=proxy,
                gateway_id=gateway,
                uplink__protocol=protocol,
            ) as rig,
        ):
            await rig.wait_counters(5)
            status = await retained_status(broker.port, gateway)
            assert status["state"] == "online"

            # The restart. The proxy keeps the agent out until the subscriber is back, so
            # that the subscriber, not the agent, misses nothing.
            proxy.refuse = True
            proxy.drop()
            await broker.stop()
            connects = rig.sub.connects
            await broker.start()
            await rig.sub.wait_for(lambda s: s.connects > connects, 60)
            onlines = sum(m["state"] == "online" for m in rig.sub.on("/status"))
            proxy.refuse = False
            # Readings read after the restart arrive too, then everything up to now.
            after = {d: rig.sim_counter(d) + 10 for d in DEVICES}
            await rig.wait_past(after, 60)
            target = await rig.wait_caught_up(timeout=60)
            rows = rig.assert_complete(target)
            await rig.sub.wait_for(
                lambda s: sum(m["state"] == "online" for m in s.on("/status")) > onlines, 20
            )
            status = await retained_status(broker.port, gateway)
            assert status["state"] == "online", "retained across the restart, then renewed"
            # Each keeps the gateway's session over its restart (docs/operations.md's table).
            assert "did not keep the gateway's session" not in rig.agent.log_text()

            # The last will: the agent dies without a word, the broker says it for it.
            n = len(rig.sub.on("/status"))
            rig.agent.kill9()
            await rig.sub.wait_for(
                lambda s: any(m["state"] == "offline" for m in s.on("/status")[n:]), 20
            )
            will = rig.sub.on("/status")[n:][-1]
            assert will["reason"] == "connection lost"
            status = await retained_status(broker.port, gateway)
            assert status["state"] == "offline", "the will is retained"
    finally:
        if kind == "mosquitto":
            await broker.stop()
    print(kind, protocol)
    print(format_table(rows))
    assert all(r.expected >= after[r.device] for r in rows), rows


@pytest.mark.parametrize("kind", ["nats", "rabbitmq"])
async def test_mqtt_5_asked_of_a_3_1_1_broker_is_refused_with_the_reason(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """nats-server refuses an MQTT 5 CONNECT (unsupported protocol version); RabbitMQ 3.10
    closes the connection unanswered. Either way the agent says the broker speaks 3.1.1 only
    and what to set; it does not fall back by itself (docs/operations.md says why)."""
    broker = await broker_for(request, kind, tmp_path)
    agent = in_process_agent(tmp_path, broker.port, protocol="5")
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="tepi.gateway.uplink"):
        run = asyncio.create_task(agent.run(stop))
        try:
            async with asyncio.timeout(30):
                await agent.uplink.wait_for(lambda s: s.errors.get("protocol", 0) >= 1)
            assert not agent.uplink.stats.connected
            assert agent.uplink.stats.connects == 0
        finally:
            stop.set()
            await run
    said = [r.getMessage() for r in caplog.records if "does not speak MQTT 5" in r.getMessage()]
    assert said, caplog.text
    assert 'set uplink.protocol: "3.1.1"' in said[0]


async def test_a_broker_without_retained_messages_is_said_and_worked_around(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto with ``retain_available false`` refuses an MQTT 5 CONNECT whose will is
    retained (0x9A) and would end a session that publishes a retained message. The agent says
    so once and connects again without retain: the readings go, the status is not retained."""
    broker = Broker(tmp_path, extra="retain_available false")
    await broker.start()
    agent = in_process_agent(tmp_path, broker.port, protocol="5")
    stop = asyncio.Event()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-caps/#") as sub:
            with caplog.at_level(logging.WARNING, logger="tepi.gateway.uplink"):
                run = asyncio.create_task(agent.run(stop))
                try:
                    await agent.ready.wait()
                    agent.buffer.put(Reading("d", "counter", 1, None, 1.0, 1.0))
                    await sub.wait_for(lambda s: len(s.readings()) >= 1, 20)
                    await sub.wait_for(lambda s: bool(s.on("/status")), 10)
                finally:
                    stop.set()
                    await run
        assert [r["value"] for r in sub.readings()] == [1]
        assert not any(retain for t, _, retain in sub.messages if t.endswith("/status"))
        said = [
            r.getMessage() for r in caplog.records if "has no retained messages" in r.getMessage()
        ]
        assert len(said) == 1, caplog.text
        assert agent.uplink.stats.connects >= 1
    finally:
        await broker.stop()


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("max_qos 0", "does not take QoS 1"),
        ("max_packet_size 8000", "takes packets of at most 8000 bytes"),
        ("max_inflight_messages 2", "takes 2 unacknowledged messages at once"),
    ],
)
async def test_what_an_mqtt_5_broker_lacks_is_said_at_connect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, option: str, said: str
) -> None:
    """Mosquitto's limits, as its MQTT 5 CONNACK states them: a broker without QoS 1 is not
    used (readings stay buffered); with the others the readings go, and the line says what
    tepi does instead."""
    broker = Broker(tmp_path, extra=option)
    await broker.start()
    agent = in_process_agent(tmp_path, broker.port, protocol="5", max_inflight=8)
    stop = asyncio.Event()
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-caps/telemetry") as sub:
            with caplog.at_level(logging.WARNING, logger="tepi.gateway.uplink"):
                run = asyncio.create_task(agent.run(stop))
                try:
                    await agent.ready.wait()
                    for i in range(300):
                        agent.buffer.put(Reading("d", "counter", i, "x" * 40, 1.0, 1.0))
                    if option == "max_qos 0":
                        async with asyncio.timeout(20):
                            await agent.uplink.wait_for(lambda s: s.errors.get("qos", 0) >= 1)
                        assert agent.uplink.stats.connects == 0
                    else:
                        await sub.wait_for(lambda s: len(s.readings()) >= 300, 20)
                finally:
                    stop.set()
                    await run
        lines = [r.getMessage() for r in caplog.records if said in r.getMessage()]
        assert len(lines) == 1, caplog.text
        if option.startswith("max_packet_size"):
            assert all(len(p) <= 8000 for t, p, _ in sub.messages), "batches cut to fit"
            assert [r["value"] for r in sub.readings()] == list(range(300))
    finally:
        await broker.stop()


@pytest.mark.parametrize("persistence", [False, True], ids=["forgetful", "persistent"])
async def test_a_session_the_broker_forgot_is_said_at_the_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, persistence: bool
) -> None:
    """A Mosquitto restarted without persistence forgets the gateway's session (its command
    subscription, the commands queued for it): the CONNACK's session-present flag says so,
    and the agent says what it means. One with persistence keeps it: nothing is said."""
    broker = Broker(tmp_path, persistence=persistence)
    await broker.start()
    agent = in_process_agent(tmp_path, broker.port)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="tepi.gateway.uplink"):
        run = asyncio.create_task(agent.run(stop))
        try:
            # A bound, not a wait: the agent runs in this process, and under a loaded CI
            # run its start, a broker's stop and its restart took over 20 s once.
            async with asyncio.timeout(60):
                await agent.uplink.wait_for(lambda s: s.connects >= 1)
                await broker.stop()
                await broker.start()
                await agent.uplink.wait_for(lambda s: s.connects >= 2)
        finally:
            stop.set()
            await run
            await broker.stop()
    said = [r.getMessage() for r in caplog.records if "did not keep" in r.getMessage()]
    assert len(said) == (0 if persistence else 1), caplog.text
