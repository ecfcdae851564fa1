"""The tests' own port picking (tests/ports.py)."""

from __future__ import annotations

import random
import socket

import ports
import pytest
from ports import _ephemeral_start, restartable_port

pytestmark = pytest.mark.timeout(30)


def test_a_restartable_port_is_below_the_ephemeral_range_and_picked_at_random() -> None:
    picked = {restartable_port() for _ in range(20)}
    assert len(picked) > 1  # not one fixed port that two test workers would share
    assert all(10000 <= port < _ephemeral_start() for port in picked)


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first port drawn is held by a listener here: the next one drawn is given."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", restartable_port()))
        held.listen()
        busy = int(held.getsockname()[1])
        free = restartable_port()
        draws = iter([busy, free])

        class Draws:
            def randrange(self, lo: int, hi: int) -> int:
                return next(draws)

        monkeypatch.setattr(random, "SystemRandom", Draws)
        assert ports.restartable_port() == free
