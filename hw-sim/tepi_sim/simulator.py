"""The Simulator: builds devices from a config and runs their transports on the loop.

Devices that share an RTU ``bus`` name share one pty; every other RTU device gets its own.
Each TCP device gets its own port. Everything runs on the caller's running event loop
(``loop.add_reader`` for ptys, ``asyncio.start_server`` for TCP); there are no threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tepi_sim.device import Device
from tepi_sim.model import SimConfig, load_config
from tepi_sim.rtu import RtuBus
from tepi_sim.rtutcp import RtuTcpEndpoint
from tepi_sim.tcp import TcpEndpoint

__all__ = ["Simulator"]

log = logging.getLogger(__name__)


class Simulator:
    """A set of simulated Modbus devices. Use ``async with`` or ``start()``/``stop()``."""

    def __init__(self, config: SimConfig | Mapping[str, Any] | str | Path) -> None:
        self.config = load_config(config)
        self._devices = {d.id: Device(d, self.config.seed) for d in self.config.devices}
        members: dict[str, list[Device]] = {}
        links: dict[str, list[str]] = {}
        self._tcp: dict[str, TcpEndpoint] = {}
        converters: dict[str, tuple[list[Device], int]] = {}
        gateways: dict[str, tuple[list[Device], int]] = {}
        for cfg in self.config.devices:
            if cfg.transport == "rtu":
                name = cfg.bus or cfg.id
                members.setdefault(name, []).append(self._devices[cfg.id])
                if cfg.link is not None and cfg.link not in links.setdefault(name, []):
                    links[name].append(cfg.link)
            elif cfg.transport == "rtu-tcp":
                converters.setdefault(cfg.bus or cfg.id, ([], cfg.port))[0].append(
                    self._devices[cfg.id]
                )
            elif cfg.bus is not None:  # units behind one Modbus TCP gateway
                gateways.setdefault(cfg.bus, ([], cfg.port))[0].append(self._devices[cfg.id])
            else:
                self._tcp[cfg.id] = TcpEndpoint(self._devices[cfg.id], cfg.port)
        for devs, port in gateways.values():
            shared = TcpEndpoint(devs, port)
            for d in devs:
                self._tcp[d.id] = shared
        self._rtu_tcp = {
            name: RtuTcpEndpoint(name, devs, port) for name, (devs, port) in converters.items()
        }
        self._converter_of = {
            d.id: ep for ep in self._rtu_tcp.values() for d in ep.devices.values()
        }
        self._buses = {
            name: RtuBus(name, devs, links.get(name, [])) for name, devs in members.items()
        }
        self._bus_of = {d.id: bus for bus in self._buses.values() for d in bus.devices.values()}
        self._running = False

    @property
    def devices(self) -> Mapping[str, Device]:
        """All devices by id."""
        return self._devices

    @property
    def buses(self) -> Mapping[str, RtuBus]:
        """RTU buses by name (a device without ``bus`` has a bus named after its id)."""
        return self._buses

    def device(self, device_id: str) -> Device:
        """The device with this id; KeyError naming the known ids if there is none."""
        try:
            return self._devices[device_id]
        except KeyError:
            known = ", ".join(self._devices)
            raise KeyError(f"no device {device_id!r}; known devices: {known}") from None

    def endpoint(self, device_id: str) -> str:
        """Where a client connects: the pty slave path or ``127.0.0.1:PORT``."""
        self.device(device_id)
        if device_id in self._tcp:
            return self._tcp[device_id].address
        if device_id in self._converter_of:
            return self._converter_of[device_id].address
        return self._bus_of[device_id].path

    def endpoints(self) -> dict[str, str]:
        """``{device_id: endpoint}`` for every device, in config order."""
        return {device_id: self.endpoint(device_id) for device_id in self._devices}

    def manifest(self) -> dict[str, Any]:
        """What a client needs to connect, as written by ``tepi-sim --manifest``."""
        return {
            "devices": {
                d.id: {
                    "transport": d.config.transport,
                    "unit": d.unit,
                    "endpoint": self.endpoint(d.id),
                }
                for d in self._devices.values()
            }
        }

    async def start(self) -> None:
        """Open every pty and TCP port. On failure, whatever started is stopped again."""
        if self._running:
            raise RuntimeError("simulator already started")
        self._running = True
        try:
            for bus in self._buses.values():
                bus.start()
            for endpoint in dict.fromkeys(self._tcp.values()):
                await endpoint.start()
            for converter in self._rtu_tcp.values():
                await converter.start()
        except BaseException:
            await self.stop()
            raise
        log.info("simulator started: %s", self.endpoints())

    async def stop(self) -> None:
        """Close every transport. Safe to call twice."""
        if not self._running:
            return
        self._running = False
        for endpoint in dict.fromkeys(self._tcp.values()):
            await endpoint.stop()
        for converter in self._rtu_tcp.values():
            await converter.stop()
        for bus in self._buses.values():
            await bus.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
