"""Fixtures for the simulator tests: simulators and pymodbus clients that clean up after
themselves. The clients are the real pymodbus ones, so these tests check the simulator
against an independent Modbus implementation over real ptys and TCP sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from tepi_sim import Simulator

StartSim = Callable[[dict[str, Any]], Awaitable[Simulator]]
RtuClientFactory = Callable[..., Awaitable[AsyncModbusSerialClient]]
TcpClientFactory = Callable[..., Awaitable[AsyncModbusTcpClient]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start a simulator from a config dict; every one started is stopped at teardown."""
    sims: list[Simulator] = []

    async def start(config: dict[str, Any]) -> Simulator:
        sim = Simulator(config)
        await sim.start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def rtu_client() -> AsyncIterator[RtuClientFactory]:
    """Connect a pymodbus RTU client to a pty path (closed at teardown)."""
    clients: list[AsyncModbusSerialClient] = []

    async def connect(path: str, timeout: float = 1.0) -> AsyncModbusSerialClient:
        # reconnect_delay=0: as the agent's client, it never reopens a lost port on its own
        # (test_a_client_that_lost_its_port_leaves_the_replugged_one_alone).
        client = AsyncModbusSerialClient(
            port=path, baudrate=9600, timeout=timeout, retries=0, reconnect_delay=0
        )
        clients.append(client)
        assert await client.connect(), f"cannot open {path}"
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
async def tcp_client() -> AsyncIterator[TcpClientFactory]:
    """Connect a pymodbus TCP client to ``127.0.0.1:PORT`` (closed at teardown)."""
    clients: list[AsyncModbusTcpClient] = []

    async def connect(endpoint: str, timeout: float = 1.0) -> AsyncModbusTcpClient:
        host, _, port = endpoint.rpartition(":")
        client = AsyncModbusTcpClient(host, port=int(port), timeout=timeout, retries=0)
        clients.append(client)
        assert await client.connect(), f"cannot connect to {endpoint}"
        return client

    yield connect
    for client in clients:
        client.close()
