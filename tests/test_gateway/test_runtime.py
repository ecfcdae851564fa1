"""The runtime's stop path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import run_tepi

from gateway.runtime import Agent, _Stop


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


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    cfg = tmp_path / "t.yaml"
    # data_dir below a regular file: cannot be created, whoever runs the test (even root)
    cfg.write_text(
        f"gateway: {{id: g, data_dir: {ro / 'file' / 'data'}}}\n"
        "uplink: {url: 'mqtt://127.0.0.1:1'}\n"
    )
    out = run_tepi("run", "--config", str(cfg), timeout=60)
    assert out.returncode == 3
    assert "tepi cannot run" in out.stderr
    assert "gateway.data_dir" in out.stderr
    assert "Traceback" not in out.stderr
