"""bench/detector.py still runs end to end, briefly; no figure is asserted, only that the
models it builds have the sizes it says and that every frame went through the detector."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.timeout(120)
def test_detector_bench() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "detector.py"),
            *("--seconds", "0.5", "--fps", "4", "--widths", "0.25", "0.5", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    small, large = res["models"]
    # FLOPs grow with the square of the width (channels rounded to multiples of 8).
    assert 2.5 < large["gflop"] / small["gflop"] < 5
    for m in res["models"]:
        assert m["frames"] >= 1
        assert m["cpu_ms_median"] > 0
