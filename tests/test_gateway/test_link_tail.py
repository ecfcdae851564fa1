"""IOC commands that come in the same read as the link's end are run and answered.

paho acknowledges a QoS 1 message (PUBACK) as it reads it, and puts it in aiomqtt's queue; at
the link's loss, aiomqtt's message iterator still hands over what that queue holds (its
``queue.get`` task runs before the wait sees the loss). A command lost there would be one the
broker had been told was delivered: never sent again, never answered. No real broker sends
messages and ends the link on cue, so a scripted server does (tests/mqttscript.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from helpers import in_process_agent
from mqttscript import PUBLISH, SUBSCRIBE, Link, ScriptedBroker, publish

from tepi.core.records import Reading

pytestmark = pytest.mark.timeout(60)

IN_FLIGHT = 3  # paho reads as many packets at once: both commands and the link's end


def request(request_id: str) -> bytes:
    now = time.time()
    return json.dumps(
        {"id": request_id, "issued_at": now, "expires_at": now + 60, "args": {}}
    ).encode()


async def test_commands_that_come_with_the_links_end_are_run_and_answered(
    tmp_path: Path,
) -> None:
    """Two pings in the write that ends the link. The agent's publishes but its status get no
    PUBACK, so paho reads the commands and the end in one call (it reads as many packets as it
    has messages in flight), as on a busy link. Both are run, and answered on the next link."""
    gateway, ids = "gw-tail", ["tail-1", "tail-2"]
    base = f"ioc/v1/{gateway}"

    def subscribed_and_busy(link: Link) -> bool:
        subs = [f for p in link.of(SUBSCRIBE) for f in p.filters]
        return f"{base}/cmd/+" in subs and len(link.of(PUBLISH)) >= IN_FLIGHT + 1

    async def script(index: int, link: Link) -> None:
        if index == 0:
            link.ack = lambda p: p.topic == f"{base}/status"  # the rest stays in flight
            if await link.serve(subscribed_and_busy):
                link.send_and_end(
                    *(publish(f"{base}/cmd/ping", request(r), n + 1) for n, r in enumerate(ids))
                )
        await link.serve()

    def answered() -> dict[str, str]:
        out = {}
        for link in broker.links[1:]:
            for p in link.of(PUBLISH):
                if p.topic == f"{base}/cmd_result":
                    result = json.loads(p.payload)
                    out[result["id"]] = result["status"]
        return out

    async with ScriptedBroker(script) as broker:
        agent = in_process_agent(tmp_path, broker.port, gateway)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            await agent.ready.wait()
            await broker.wait_for(lambda: bool(broker.links and broker.links[0].of(SUBSCRIBE)), 10)
            first = broker.links[0]
            # Three messages in flight on the first link (the status is acknowledged): the
            # health and readings, a reading at a time, each its own message.
            n = 0
            while len(first.of(PUBLISH)) < IN_FLIGHT + 1:
                sent = len(first.of(PUBLISH))
                agent.buffer.put(Reading("d", "counter", n, None, 1.0, 1.0))
                await broker.wait_for(lambda: len(first.of(PUBLISH)) > sent, 10)  # noqa: B023
                n += 1
            await broker.wait_for(lambda: answered() == dict.fromkeys(ids, "done"), 30)
        finally:
            stop.set()
            await run
    assert agent.commands is not None
    assert agent.commands.counts["done"] == 2
