"""A failover list of brokers (``uplink.url`` as a list), end to end: the simulator ->
``tepi run`` -> two Mosquittos, each with its own subscriber.

The first broker stops: readings go on through the second. It comes back: after
``uplink.failover.hold`` the agent returns to it. The completeness checker, fed what both
subscribers received, must find every counter value and no gap in ``seq``; each broker's
stream on its own must keep the devices' order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from completeness import Completeness, format_table
from helpers import AgentProc, Broker, FaultProxy, Subscriber, agent_config, start_tls_broker
from rig import DEVICES, SIM, Rig, agent_devices, validator

from tepi.core.records import Reading
from tepi.gateway.configload import parse_config
from tepi.gateway.runtime import Agent
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(120)

HOLD = 2.0  # uplink.failover.hold, short for the test


def merged(*subs: Subscriber) -> Completeness:
    """The checker fed every message both brokers delivered (the IOC's view of both)."""
    check = Completeness()
    for sub in subs:
        for (topic, payload, _), at in zip(sub.messages, sub.received_at, strict=True):
            check.feed(topic, payload, at)
    return check


def reached(target: dict[str, int]) -> Callable[[Subscriber], bool]:
    def pred(sub: Subscriber) -> bool:
        return all(sub.max_counter.get(d, 0) >= target[d] for d in DEVICES)

    return pred


def broker_of(sub: Subscriber) -> str | None:
    health = sub.on("/health")
    return health[-1]["uplink"]["broker"] if health else None


async def test_the_agent_fails_over_and_returns_losing_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    await first.start()
    await second.start()
    urls = [f"mqtt://127.0.0.1:{first.port}", f"mqtt://127.0.0.1:{second.port}"]
    try:
        async with (
            Simulator(SIM) as sim,
            Subscriber(first.port, "ioc/v1/#") as sub_a,
            Subscriber(second.port, "ioc/v1/#") as sub_b,
        ):
            cfg = agent_config(
                tmp_path,
                first.port,
                agent_devices(sim.endpoints()),
                health_interval="1s",
                uplink__url=urls,
                uplink__failover={"hold": f"{HOLD}s", "probe_interval": "200ms"},
            )
            agent = AgentProc(cfg, tmp_path / "agent.log")
            rig = Rig(tmp_path, first, sim, sub_a, agent)  # for the simulator's counters
            agent.start()
            try:
                await sub_a.wait_for(reached(dict.fromkeys(DEVICES, 5)), 30)
                await sub_a.wait_for(lambda s: broker_of(s) == urls[0], 10)
                assert not sub_b.on("/telemetry"), (
                    "the second broker is not used while the first is"
                )

                # The first broker goes: the readings go on through the second.
                await first.stop()
                target = {d: rig.sim_counter(d) + 10 for d in DEVICES}
                await sub_b.wait_for(reached(target), 30)
                await sub_b.wait_for(lambda s: broker_of(s) == urls[1], 10)
                validator("health").validate(sub_b.on("/health")[-1])

                # It comes back (its subscriber first): the agent returns after the hold.
                connects, onlines = sub_a.connects, len(sub_a.on("/status"))
                await first.start()
                back = time.monotonic()
                await sub_a.wait_for(lambda s: s.connects > connects, 10)
                await sub_a.wait_for(
                    lambda s: any(m["state"] == "online" for m in s.on("/status")[onlines:]), 20
                )
                returned_after = time.monotonic() - back
                await sub_b.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", 10)
                assert sub_b.on("/status")[-1]["reason"] == "failover"
                target = {d: rig.sim_counter(d) + 10 for d in DEVICES}
                await sub_a.wait_for(reached(target), 30)
                await sub_a.wait_for(lambda s: broker_of(s) == urls[0], 10)
            finally:
                await agent.stop()
    finally:
        await first.stop()
        await second.stop()

    print(f"returned {returned_after:.1f} s after the first broker came back (hold {HOLD} s)")
    assert returned_after >= HOLD, "the hold was not kept"
    check = merged(sub_a, sub_b)
    rows = check.table(target)
    print(format_table(rows))
    for row in rows:
        assert row.lost == 0, row
        assert row.out_of_order == 0, row
    assert check.seq_gaps() == [], check.seq_gaps()[:10]
    assert check.undecodable == 0
    for sub in (sub_a, sub_b):  # each broker's stream on its own keeps the order
        assert all(row.out_of_order == 0 for row in sub.completeness().table()), sub.port
    assert sub_b.on("/telemetry"), "nothing went through the second broker"
    log = agent.log_text()
    assert "a later one of the list" in log
    assert "moving back to it" in log
    assert "Traceback" not in log


async def test_what_the_old_broker_did_not_acknowledge_goes_to_the_new_one(
    tmp_path: Path,
) -> None:
    """On the second broker, the link swallows everything (no reset): a batch goes out and
    its PUBACK never comes. The first broker comes back; after the hold the agent moves to it,
    and the batch the second never acknowledged goes there: every reading arrives once
    (the swallowed ones never reached the second broker), in order, and the buffer is empty."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    await second.start()
    try:
        async with (
            FaultProxy(second.port) as proxy,
            Subscriber(second.port, "ioc/v1/gw-fo/telemetry") as sub_b,
        ):
            urls = [f"mqtt://127.0.0.1:{first.port}", f"mqtt://127.0.0.1:{proxy.port}"]
            up = {
                "url": urls,
                "failover": {"hold": f"{HOLD}s", "probe_interval": "100ms"},
                "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
            }
            cfg = parse_config(
                json.dumps(
                    {"gateway": {"id": "gw-fo", "data_dir": str(tmp_path / "data")}, "uplink": up}
                ),
                "t.yaml",
                check_files=False,
            )
            agent = Agent(cfg)
            stop = asyncio.Event()
            run = asyncio.create_task(agent.run(stop))
            try:
                await agent.ready.wait()
                for i in range(50):
                    agent.buffer.put(Reading("d", "counter", i, None, time.time(), 1.0))
                await sub_b.wait_for(lambda s: len(s.readings()) >= 50, 20)
                async with asyncio.timeout(10):
                    await agent.uplink.wait_for(lambda s: s.readings_acked >= 50)
                assert agent.uplink.stats.broker == urls[1]

                proxy.blackhole()
                for i in range(50, 100):
                    agent.buffer.put(Reading("d", "counter", i, None, time.time(), 1.0))
                await proxy.wait_swallowed(1000)  # the batch is out, its PUBACK will not come
                assert agent.uplink.stats.readings_acked == 50

                await first.start()
                async with Subscriber(first.port, "ioc/v1/gw-fo/telemetry") as sub_a:
                    await sub_a.wait_for(lambda s: len(s.readings()) >= 50, 30)
                    async with asyncio.timeout(10):
                        await agent.uplink.wait_for(lambda s: s.readings_acked >= 100)
                assert agent.uplink.stats.broker == urls[0]
                await agent.buffer.flush()
                assert agent.buffer.stats().depth == 0
            finally:
                stop.set()
                await run
    finally:
        await first.stop()
        await second.stop()
    on_b = [(r["seq"], r["value"]) for r in sub_b.readings()]
    on_a = [(r["seq"], r["value"]) for r in sub_a.readings()]
    assert on_b == [(i + 1, i) for i in range(50)]
    assert on_a == [(i + 1, i) for i in range(50, 100)], "the unacknowledged went again, in order"


async def test_each_broker_of_a_tls_list_is_verified_against_its_own_name(
    tmp_path: Path,
) -> None:
    """One Mosquitto with a certificate for ``localhost``, named twice in the list: first
    as 127.0.0.1 (not the certificate's name: refused by TLS, never sent in clear), then as
    localhost (verified: used)."""
    tls, proc = await start_tls_broker(tmp_path, require_cert=False, auth=False)
    urls = [f"mqtts://127.0.0.1:{tls.tls_port}", f"mqtts://localhost:{tls.tls_port}"]
    up = {
        "url": urls,
        "tls": {"ca_file": str(tls.ca)},
        "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
    }
    cfg = parse_config(
        json.dumps({"gateway": {"id": "gw-tls", "data_dir": str(tmp_path / "data")}, "uplink": up}),
        "t.yaml",
    )
    agent = Agent(cfg)
    stop = asyncio.Event()
    try:
        async with Subscriber(tls.plain_port, "ioc/v1/gw-tls/telemetry") as sub:
            run = asyncio.create_task(agent.run(stop))
            try:
                await agent.ready.wait()
                agent.buffer.put(Reading("d", "m", 1.5, "u", time.time(), 1.0))
                await sub.wait_for(lambda s: bool(s.readings()), 15)
                assert agent.uplink.stats.broker == urls[1]
            finally:
                stop.set()
                await run
    finally:
        proc.terminate()
        proc.wait(10)
    assert agent.uplink.stats.errors.get("tls", 0) >= 1, agent.uplink.stats.errors
    assert agent.uplink.stats.connects == 1
    assert agent.uplink.stats.last_error is not None
    assert "tls" in agent.uplink.stats.last_error
