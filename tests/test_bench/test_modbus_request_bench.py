"""bench/modbus_request.py still runs end to end, briefly; no figure is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.timeout(120)
def test_modbus_request_bench() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "modbus_request.py"),
            *("--requests", "50", "--repeats", "1", "--pipelining", "--seconds", "0.3", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [result] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert set(result["request_path"]) >= {"pymodbus", "pymodbus + hooks", "link.read_bytes"}
    assert [r["max_outstanding"] for r in result["pipelining"]] == [1, 2, 4, 8, 16, 32]
    assert all(r["paced"]["polls_per_s"] > 0 for r in result["pipelining"])
