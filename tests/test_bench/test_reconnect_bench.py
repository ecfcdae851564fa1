"""bench/reconnect.py still runs end to end, briefly; no figure is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.timeout(120)
def test_reconnect_bench() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "reconnect.py"), "--outage", "1", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [result] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(result["runs_s"]) == 1
    assert result["median_s"] > 0
