"""The local broker helpers that the demo, the bench and the tests share."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, mosquitto_bin

from gateway.localbroker import free_port, mosquitto_conf, wait_port


async def test_a_broker_that_exits_fails_fast_not_at_the_timeout(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "bad.conf"
    conf.write_text(mosquitto_conf(port, extra=["no_such_option 1"]))
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="has exited"):
        await wait_port(port, timeout_s=30, alive=lambda: proc.poll() is None)
    assert time.monotonic() - started < 10


async def test_config_starts_a_broker_that_listens(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(mosquitto_conf(port, persistence_dir=tmp_path))
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        await wait_port(port, alive=lambda: proc.poll() is None)
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "mosquitto.db").exists(), "persistence writes into the scratch dir"


def test_bench_smoke() -> None:
    """The benchmark still runs end to end (figures are never asserted)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "pipeline.py"), "throughput", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mode"] == "throughput"
    assert result["acked"] > 0


@pytest.mark.timeout(240)
def test_bench_suite_smoke() -> None:
    """Every workload of the suite runs against the real agent, briefly. Only that it works
    is checked: each workload gives a result with readings in it. No figure is asserted."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "suite.py"), "--smoke", "--json"],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = {
        r["workload"]: r
        for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
    }
    assert set(results) == {"reference", "idle", "stress", "throughput", "backlog"}
    assert results["reference"]["readings_per_s"] > 0
    assert results["stress"]["readings_per_s"] > 0
    assert results["throughput"]["runs"][0]["readings_per_s"] > 0
    assert results["backlog"]["backlog_readings"] >= 20_000


def test_modbus_wire_bench_smoke() -> None:
    """bench/modbus.py runs (polls on the emulated wire); its figures are not asserted."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "modbus.py"), "--seconds", "1", "--bauds", "115200"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["baud"] == 115200
    assert result["polls_per_s"] > 0
