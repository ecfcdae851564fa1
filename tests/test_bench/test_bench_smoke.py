"""The benchmarks still run end to end, briefly. Only that they work is checked: each gives
results with readings in them. No figure is ever asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO


def bench(script: str, *args: str, timeout: float) -> list[dict[str, Any]]:
    """Run bench/``script`` and return the JSON objects it printed, one a line."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_pipeline_bench() -> None:
    [result] = bench("pipeline.py", "throughput", "--seconds", "1", timeout=60)
    assert result["mode"] == "throughput"
    assert result["acked"] > 0


# Every workload but two of the cameras': reference-cameras runs the camera code paths
# (snapshots, images, the pixel thread) the others share; the suite stays short. Two suite.py
# runs at once, half the workloads each: a smoke workload mostly waits out its warm-up and its
# window, and no figure is asserted here, so sharing the cores costs nothing the test checks.
SUITE_HALVES = (
    ("reference", "idle", "stress", "backlog"),
    ("modbus-tcp-50", "modbus-tcp-50-pipelined", "throughput", "reference-cameras"),
)


@pytest.mark.timeout(320)
def test_every_workload_of_the_suite() -> None:
    with ThreadPoolExecutor(len(SUITE_HALVES)) as pool:
        runs = pool.map(
            lambda names: bench("suite.py", *names, "--smoke", "--json", timeout=300),
            SUITE_HALVES,
        )
        results = {r["workload"]: r for half in runs for r in half}
    assert set(results) == {
        "reference",
        "idle",
        "stress",
        "modbus-tcp-50",
        "modbus-tcp-50-pipelined",
        "throughput",
        "backlog",
        "reference-cameras",
    }
    assert results["reference"]["readings_per_s"] > 0
    for name in ("modbus-tcp-50", "modbus-tcp-50-pipelined"):
        modbus = results[name]
        assert modbus["polls_per_s"] > 0
        assert modbus["cpu_s_per_1000_polls"] is not None
        assert modbus["lost_checked"] > 0  # the agent's counters were read: "lost" is defined
        assert modbus["wake_floor_percent"] is not None
    assert results["stress"]["readings_per_s"] > 0
    assert results["throughput"]["runs"][0]["readings_per_s"] > 0
    assert results["backlog"]["backlog_readings"] >= 20_000
    assert results["reference-cameras"]["readings_per_s"] > 0


@pytest.mark.timeout(60)
def test_suite_profile(tmp_path: Path) -> None:
    """--profile runs the agent (here through --agent-src) under bench/profiled.py, and
    prints the profile of the window: its top functions by tottime and by cumtime."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "suite.py"),
            "modbus-tcp-50",
            "--smoke",
            "--json",
            "--profile",
            "--profile-dir",
            str(tmp_path),
            "--agent-src",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [result] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert Path(result["profile"]).parent == tmp_path
    assert "top 25 by tottime" in out.stderr
    assert "top 25 by cumtime" in out.stderr
    assert "modbus/driver.py" in out.stderr  # the polls were profiled, not only the loop


def test_modbus_wire_bench() -> None:
    [result] = bench("modbus.py", "--seconds", "1", "--bauds", "115200", timeout=60)
    assert result["baud"] == 115200
    assert result["polls_per_s"] > 0


def test_serial_bench() -> None:
    [result] = bench(
        "serial_sensors.py", "--sensors", "2", "--seconds", "2", "--rate", "5", timeout=90
    )
    assert result["busy"]["sensors"] == 2
    assert result["busy"]["frames"] >= 10
    assert result["cpu_percent_per_sensor"] >= 0
