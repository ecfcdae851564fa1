"""``tepi buffer stats|export|purge`` against a real buffer file that a running agent keeps
writing (no broker: every reading is committed): reading it never disturbs the agent,
the export is complete and in order, and purge refuses while the agent runs and without a
confirmation."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest
from helpers import AgentProc, agent_config, read_db, run_tepi

from tepi.gateway.localbroker import free_port

pytestmark = pytest.mark.timeout(90)


def stats(cfg: Path) -> dict[str, object]:
    out = run_tepi("buffer", "stats", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


async def test_stats_export_and_purge_beside_a_running_agent(tmp_path: Path) -> None:
    devices = [{"id": "s1", "driver": "synthetic", "metrics": 4, "poll_interval": "50ms"}]
    cfg = agent_config(tmp_path, free_port(), devices)  # nobody listens: all is committed
    db = tmp_path / "data" / "buffer.db"
    agent = AgentProc(cfg, tmp_path / "agent.log")
    agent.start()
    try:
        async with asyncio.timeout(30):
            while not db.exists() or int(str(stats(cfg)["readings"])) < 200:
                await asyncio.sleep(0.2)
        # exports while the agent writes: complete up to a point, in order, typed
        for _ in range(3):
            out = await asyncio.to_thread(run_tepi, "buffer", "export", "--config", str(cfg))
            assert out.returncode == 0, out.stderr
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            seqs = [r["seq"] for r in rows]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert {r["device"] for r in rows} == {"s1"}
            assert all(isinstance(r["value"], int) and r["quality"] == "good" for r in rows)
        csv_out = await asyncio.to_thread(
            run_tepi, "buffer", "export", "--format", "csv", "--config", str(cfg)
        )
        table = list(csv.DictReader(io.StringIO(csv_out.stdout)))
        assert len(table) >= len(rows)
        assert table[0]["metric"] == "m0"
        # purge is refused while the agent runs
        refused = await asyncio.to_thread(
            run_tepi, "buffer", "purge", "--yes", "--config", str(cfg)
        )
        assert refused.returncode == 7
        assert "stop it first" in refused.stderr
        before = int(str(stats(cfg)["readings"]))
        async with asyncio.timeout(10):  # the agent was not disturbed: it writes on
            while int(str(stats(cfg)["readings"])) <= before:
                await asyncio.sleep(0.1)
    finally:
        assert await agent.stop() == 0
    assert "ERROR buffer" not in agent.log_text()

    unconfirmed = run_tepi("buffer", "purge", "--config", str(cfg))
    assert unconfirmed.returncode == 2
    assert "not confirmed" in unconfirmed.stderr
    assert int(str(stats(cfg)["readings"])) > 0
    done = run_tepi("buffer", "purge", "--yes", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "readings deleted" in done.stderr
    assert stats(cfg)["readings"] == 0
    with read_db(db) as inspect:
        assert list(inspect.query("PRAGMA integrity_check")) == [{"integrity_check": "ok"}]


def test_a_missing_buffer_is_a_clear_error(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, 1, [])
    out = run_tepi("buffer", "stats", "--config", str(cfg))
    assert out.returncode == 4
    assert "no buffer file at" in out.stderr


async def wait_rows(cfg: Path, db: Path, n: int) -> None:
    async with asyncio.timeout(30):
        while not db.exists() or int(str(stats(cfg)["readings"])) < n:
            await asyncio.sleep(0.2)


async def test_the_data_dir_lock_keeps_purge_and_a_second_agent_away(tmp_path: Path) -> None:
    """With the status API off nothing answers on a socket: the agent's lock on the data dir
    alone keeps purge from deleting rows under it, and a second agent from starting on the
    same data dir. A kill -9 releases the lock (the kernel drops a dead process's flock)."""
    devices = [{"id": "s1", "driver": "synthetic", "metrics": 4, "poll_interval": "50ms"}]
    cfg = agent_config(tmp_path, free_port(), devices, status__enabled=False)
    db = tmp_path / "data" / "buffer.db"
    agent = AgentProc(cfg, tmp_path / "agent.log")
    agent.start()
    assert agent.proc is not None
    pid = agent.proc.pid
    try:
        await wait_rows(cfg, db, 50)
        refused = await asyncio.to_thread(
            run_tepi, "buffer", "purge", "--yes", "--config", str(cfg)
        )
        assert refused.returncode == 7, refused.stderr
        assert "stop it first" in refused.stderr
        assert f"process {pid}" in refused.stderr, "names the pid that holds the lock"
        assert int(str(stats(cfg)["readings"])) >= 50, "nothing was deleted"

        second = await asyncio.to_thread(run_tepi, "run", "--config", str(cfg), timeout=30)
        assert second.returncode == 7, second.stderr
        assert f"process {pid}" in second.stderr
        assert "another agent runs on data dir" in second.stderr
        assert agent.proc.poll() is None, "the first agent runs on"
        before = int(str(stats(cfg)["readings"]))
        async with asyncio.timeout(10):  # and keeps writing
            while int(str(stats(cfg)["readings"])) <= before:
                await asyncio.sleep(0.1)
    finally:
        agent.kill9()
    done = run_tepi("buffer", "purge", "--yes", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert stats(cfg)["readings"] == 0
    # once the purge is done (its lock released), an agent starts again on the data dir
    agent.start()
    try:
        await wait_rows(cfg, db, 10)
    finally:
        assert await agent.stop() == 0
