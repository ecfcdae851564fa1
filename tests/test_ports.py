"""The tests' own port picking (tests/ports.py)."""

from __future__ import annotations

import socket

import pytest
from ports import _ephemeral_start, restartable_port

pytestmark = pytest.mark.timeout(30)


def test_a_restartable_port_is_free_and_below_the_ephemeral_range() -> None:
    ports = {restartable_port() for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one fixed port
    for port in ports:
        assert 10000 <= port < _ephemeral_start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
