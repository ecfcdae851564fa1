"""Puts tests/ on sys.path so that test modules can import tests/helpers.py (the real parts:
a Mosquitto broker, a subscriber, the agent as a process, a fault proxy), and bench/ for the
tools the suite shares with the benchmarks (the completeness checker)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent / "bench"))


# ---- no secret in any log the suite produced --------------------------------------------

import logging
from collections.abc import Iterator

import pytest
from helpers import AGENT_LOGS, TEST_SECRETS, find_secrets


@pytest.fixture(autouse=True, scope="session")
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every log the session produced: the agents' (subprocesses), the brokers', and every
    record logged in this process (INFO and up, DEBUG where a test asks for it), read at
    the end for the test secrets. A leak fails the session's last teardown."""
    base = tmp_path_factory.getbasetemp()
    in_process = base / "in-process.log"
    handler = logging.FileHandler(in_process)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level, logging.INFO))  # as the agent logs by default (caplog may lower it)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    logs = sorted({*AGENT_LOGS, *base.rglob("*.log")})
    found = find_secrets(logs, TEST_SECRETS)
    assert not found, "secrets in logs:\n" + "\n".join(found[:20])
