"""Ports for the tests' servers that stop and start again on the same port (an outage)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from tepi.gateway.localbroker import free_port

_LOWEST = 10000


def _ephemeral_start() -> int:
    """Where the kernel's range of ports for outgoing connections (and for bind to 0)
    starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def restartable_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range.

    A port from ``free_port()`` (bind to 0) is in that range, and so is the local port of
    every outgoing connection on the machine. While a test's broker is stopped for an
    outage, any connection may take its port, and the broker cannot listen there again: CI
    saw mosquitto exit with "Address already in use" after an 8 s outage. Below the range,
    only a process that asks for the port by its number can take it."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:
        return free_port()  # a machine with an unusual range: as before
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(_LOWEST, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {_LOWEST} and {top}")
