"""The runtime's stop path."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from helpers import AgentProc

from tepi.gateway.runtime import Agent, _Stop


async def test_stop_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's wait_for can lose a cancellation; the agent must still stop."""
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # swallowed, as a racing wait_for would
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(_Stop):
        await Agent._until(stop, [task])
    task.cancel()  # the TaskGroup's one cancel, which the task swallows
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert cancels == 2


async def test_an_impossible_data_dir_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    """A data dir that cannot be created (below a regular file, whoever runs the test, even
    root): the agent says so with the path, runs on from memory, and stops cleanly, rather
    than exiting for systemd to restart it into the same problem."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        f"gateway: {{id: g, data_dir: {ro / 'file' / 'data'}}}\n"
        "uplink: {url: 'mqtt://127.0.0.1:1'}\n"
    )
    agent = AgentProc(cfg, tmp_path / "agent.log")
    agent.start()
    async with asyncio.timeout(30):
        while "readings are kept in memory only" not in agent.log_text():
            await asyncio.sleep(0.1)
    assert await agent.stop() == 0
    log = agent.log_text()
    assert f"data dir {ro / 'file' / 'data'}: Not a directory" in log, log
    assert "Traceback" not in log


async def test_a_socket_closed_before_the_loop_watches_it_is_one_quiet_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt's call_soon_threadsafe(add_writer, fd) racing a dropped connection."""
    import socket

    from tepi.gateway.runtime import loop_exception

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception)
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with caplog.at_level(logging.DEBUG):
        loop.call_soon(loop.add_writer, fd, lambda: None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert "ignored" in caplog.text
    assert "Traceback" not in caplog.text
    assert "Exception in callback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG):  # closed already when its number was asked: -1
        loop.call_soon(loop.add_writer, a.fileno(), lambda: None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert a.fileno() == -1
    assert "ignored" in caplog.text
    assert "Exception in callback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG):  # any other error still gets the full report

        def boom() -> None:
            raise ValueError("other")

        loop.call_soon(boom)
        await asyncio.sleep(0)
    assert "Exception in callback" in caplog.text
    loop.set_exception_handler(None)
