"""Puts tests/ on sys.path so that test modules can import tests/helpers.py (the real parts:
a Mosquitto broker, a subscriber, the agent as a process, a fault proxy), and bench/ for the
tools the suite shares with the benchmarks (the completeness checker)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent / "bench"))
