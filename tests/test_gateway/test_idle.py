"""Nothing wakes up on a timer when there is no work (the performance issue's rule).

An idle agent (connected, no devices, keepalive 60 s) is watched from outside, through the
kernel's count of voluntary context switches of every thread: each time a thread blocks and
is woken (an event-loop iteration, a timer, a thread's poll), that count goes up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import AgentProc, Broker, Subscriber, agent_config


def wakeups(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


async def test_an_idle_agent_sleeps(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    cfg = agent_config(tmp_path, broker.port, [], uplink__keepalive="60s")
    agent = AgentProc(cfg, tmp_path / "agent.log")
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-test/#") as sub:
            agent.start()
            assert agent.proc is not None
            await sub.wait_for(lambda s: len(s.on("/health")) >= 1, 30)
            await asyncio.sleep(0.5)  # let the start-up work finish (not a synchronisation)
            before = wakeups(agent.proc.pid)
            await asyncio.sleep(4)  # the window being measured
            woke = wakeups(agent.proc.pid) - before
        # aiomqtt alone used to wake once a second; a blind 1 s timer anywhere would show 4.
        assert woke <= 1, f"an idle agent woke {woke} times in 4 s"
    finally:
        await agent.stop()
        await broker.stop()
