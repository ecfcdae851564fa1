"""bench/fleet.py still runs end to end with a small fleet, and the fleet loses nothing through a
broker restart and a short outage. No figure (times, rates) is asserted: only completeness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.timeout(60)
def test_fleet_bench_loses_nothing() -> None:
    args = ["--agents", "3", "--outage", "3", "--settings", "probes", "--warmup", "1"]
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fleet.py"), *args, "--settle", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in results] == ["restart", "outage"]
    for r in results:
        assert r["agents_drained"] == 3, r
        assert r["readings"] > 0, r
        assert r["lost"] == 0, r
    assert results[1]["backlog_readings"] > 0, "the outage left a backlog to drain"
