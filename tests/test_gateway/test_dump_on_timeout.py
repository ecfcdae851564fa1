"""A wait on a running agent that times out fails with that agent's task stacks and log, so
an intermittent failure explains itself (tests/helpers.py: Subscriber.wait_for, AgentProc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RUNNING, AgentProc, Broker, Subscriber, agent_config, run_tepi

from tepi.gateway.localbroker import free_port


async def test_a_wait_that_times_out_dumps_the_agents_task_stacks(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    device = {
        "id": "nobody-home",
        "driver": "modbus-tcp",
        "host": "127.0.0.1",
        "port": free_port(),
        "unit": 1,
        "poll_interval": "1s",
        "timeout": "200ms",
        "registers": [{"name": "v", "address": 0}],
    }
    agent = AgentProc(agent_config(tmp_path, broker.port, [device]), tmp_path / "agent.log")
    try:
        async with Subscriber(broker.port, "ioc/v1/#") as sub:
            agent.start()
            assert agent in RUNNING
            await sub.wait_for(lambda s: bool(s.on("/status")), 20)  # it is up
            with pytest.raises(AssertionError) as failed:
                await sub.wait_for(lambda s: bool(s.on("/never")), 1)
    finally:
        await agent.stop()
        await broker.stop()
    text = str(failed.value)
    assert "timed out after 1 s waiting for" in text, text
    assert f"---- agent {agent.config}" in text, text
    # runtime.dump_tasks: one record per task, with its stack.
    assert "task tepi.uplink" in text, text
    assert "Stack for <Task" in text, text
    assert agent not in RUNNING


def test_a_cli_run_that_does_not_finish_fails_with_what_it_said(tmp_path: Path) -> None:
    """``tepi run`` against a broker that is not there never finishes: run_tepi's timeout
    fails with its log and its task stacks, not a bare TimeoutExpired."""
    device = {"id": "s", "driver": "synthetic", "metrics": 1, "poll_interval": "1s"}
    cfg = agent_config(tmp_path, free_port(), [device])
    with pytest.raises(AssertionError) as failed:
        run_tepi("run", "--config", str(cfg), timeout=4)
    text = str(failed.value)
    assert "did not finish in 4 s" in text, text
    assert "Stack for <Task" in text, text
