"""The Simulator: builds devices from a config and runs their transports on the loop.

Devices that share an RTU ``bus`` name share one pty; every other RTU device gets its own.
Each TCP device gets its own port, and each serial sensor (``transport: uart``) its own
pty. Everything runs on the caller's running event loop (``loop.add_reader`` for ptys,
``asyncio.start_server`` for TCP); there are no threads.

Modbus devices are :class:`Device` (``devices``, ``device()``); serial sensors are
:class:`UartDevice` (``uart_devices``, ``uart_device()``); IP cameras are :class:`Camera`
(``cameras``, ``camera()``), each an HTTP server on 127.0.0.1 (the only part that uses
worker threads: it renders and encodes frames in them). ``endpoint()`` and ``set_fault()``
take any kind; ``endpoints()`` lists the devices and sensors, ``camera_urls()`` the
cameras. ``set_script()`` and ``writes()`` are for Modbus devices: a register that follows
a script from now, and the writes each device carried out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tepi_sim.camera import Camera
from tepi_sim.device import Device
from tepi_sim.memory import WriteRecord
from tepi_sim.model import RegisterConfig, SimConfig, load_config
from tepi_sim.rtu import RtuBus
from tepi_sim.rtutcp import RtuTcpEndpoint
from tepi_sim.tcp import TcpEndpoint
from tepi_sim.uart import UartDevice

__all__ = ["Simulator"]

log = logging.getLogger(__name__)


class Simulator:
    """A set of simulated Modbus devices and serial sensors. Use ``async with`` or
    ``start()``/``stop()``."""

    def __init__(
        self,
        config: SimConfig | Mapping[str, Any] | str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) drives the Modbus devices' values: walks, toggles
        and scripts. Tests pass a fake one to step time by hand."""
        self.config = load_config(config)
        self._devices = {d.id: Device(d, self.config.seed, clock) for d in self.config.devices}
        self._uart = {c.id: UartDevice(c, self.config.seed) for c in self.config.uart_devices}
        self._cameras = {c.id: Camera(c) for c in self.config.cameras}
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

    @property
    def uart_devices(self) -> Mapping[str, UartDevice]:
        """Serial sensors (``transport: uart``) by id."""
        return self._uart

    @property
    def cameras(self) -> Mapping[str, Camera]:
        """IP cameras by id."""
        return self._cameras

    def camera(self, camera_id: str) -> Camera:
        """The camera with this id; KeyError naming the known cameras if there is none."""
        try:
            return self._cameras[camera_id]
        except KeyError:
            known = ", ".join(self._cameras) or "none"
            raise KeyError(f"no camera {camera_id!r}; known cameras: {known}") from None

    def camera_urls(self) -> dict[str, str]:
        """``{camera_id: "http://127.0.0.1:PORT"}`` in config order (ports bound once
        started)."""
        return {c.id: c.base_url for c in self._cameras.values()}

    def device(self, device_id: str) -> Device:
        """The Modbus device with this id; KeyError naming the known ids if there is none."""
        try:
            return self._devices[device_id]
        except KeyError:
            if device_id in self._uart:
                raise KeyError(
                    f"{device_id!r} is a uart device: use uart_device({device_id!r})"
                ) from None
            if device_id in self._cameras:
                raise KeyError(f"{device_id!r} is a camera: use camera({device_id!r})") from None
            raise KeyError(f"no device {device_id!r}; known devices: {self._known()}") from None

    def uart_device(self, device_id: str) -> UartDevice:
        """The serial sensor with this id; KeyError naming the known ids if there is none."""
        try:
            return self._uart[device_id]
        except KeyError:
            raise KeyError(
                f"no uart device {device_id!r}; known devices: {self._known()}"
            ) from None

    def _known(self) -> str:
        return ", ".join([*self._devices, *self._uart, *self._cameras])

    def set_fault(
        self,
        device_id: str,
        mode: str,
        *,
        delay_s: float | None = None,
        code: int | None = None,
    ) -> None:
        """Switch the fault mode of any device or camera. ``code`` is Modbus only;
        ``delay_s`` is for Modbus devices and cameras.

        KeyError for an unknown id; ValueError for a mode the device does not have.
        """
        if device_id in self._cameras:
            if code is not None:
                raise ValueError("fault_code applies to Modbus devices only")
            self._cameras[device_id].set_fault(mode, delay_s)
            return
        if device_id in self._uart:
            if delay_s is not None or code is not None:
                raise ValueError("delay_s and fault_code apply to Modbus devices only")
            self._uart[device_id].set_fault(mode)
            return
        self.device(device_id).set_fault(mode, delay_s=delay_s, code=code)

    def set_script(
        self,
        device_id: str,
        address: int,
        points: Sequence[Sequence[float]],
        *,
        table: str | None = None,
        loop: bool = False,
    ) -> RegisterConfig:
        """(Re)start a script on a Modbus device's register, from now: see
        :meth:`Device.set_script`. KeyError for an unknown device; ValueError otherwise."""
        return self.device(device_id).set_script(address, points, table=table, loop=loop)

    def writes(
        self, device_id: str | None = None, since: float | None = None
    ) -> dict[str, list[WriteRecord]]:
        """``{device_id: [WriteRecord, ...]}``, oldest first: every Modbus device's kept
        writes, or one device's; with ``since`` (wall time) only the later ones."""
        devices = [self.device(device_id)] if device_id is not None else self._devices.values()
        return {d.id: list(d.writes) if since is None else d.writes_since(since) for d in devices}

    def endpoint(self, device_id: str) -> str:
        """Where a client connects: the pty slave path, ``127.0.0.1:PORT``, or a camera's
        ``http://127.0.0.1:PORT``. RuntimeError while the device's pty is unplugged."""
        if device_id in self._cameras:
            return self._cameras[device_id].base_url
        if device_id in self._uart:
            return self._uart[device_id].path
        self.device(device_id)
        if device_id in self._tcp:
            return self._tcp[device_id].address
        if device_id in self._converter_of:
            return self._converter_of[device_id].address
        return self._bus_of[device_id].path

    def tcp_endpoint(self, device_id: str) -> TcpEndpoint:
        """The Modbus TCP server (the device's own, or its gateway's) of a ``tcp`` device,
        for its counters (``connections``, ``dropped_frames``)."""
        self.device(device_id)
        return self._tcp[device_id]

    def endpoints(self) -> dict[str, str]:
        """``{device_id: endpoint}`` for every device: the Modbus devices in config order,
        then the serial sensors in config order."""
        return {device_id: self.endpoint(device_id) for device_id in [*self._devices, *self._uart]}

    def manifest(self) -> dict[str, Any]:
        """What a client needs to connect, as written by ``tepi-sim --manifest``. Serial
        sensors have ``protocol`` (and ``link`` when configured) instead of ``unit``, and
        an ``endpoint`` of None while unplugged. Cameras, when there are any, are under
        ``cameras``: base URL, snapshot, MJPEG and H.264 URLs, auth and credentials."""
        devices: dict[str, Any] = {
            d.id: {
                "transport": d.config.transport,
                "unit": d.unit,
                "endpoint": self.endpoint(d.id),
            }
            for d in self._devices.values()
        }
        for u in self._uart.values():
            devices[u.id] = {
                "transport": "uart",
                "protocol": u.protocol,
                "endpoint": u.status()["path"],
            }
            if u.config.link is not None:
                devices[u.id]["link"] = u.config.link
        out: dict[str, Any] = {"devices": devices}
        if self._cameras:
            out["cameras"] = {
                c.id: {
                    "url": c.base_url,
                    "snapshot": c.snapshot_url,
                    "mjpeg": f"{c.base_url}/mjpeg",
                    "stream": f"{c.base_url}/stream.ts",
                    "auth": c.config.auth,
                    "username": c.config.username,
                    "password": c.config.password,
                    "width": c.config.width,
                    "height": c.config.height,
                    "fps": c.config.fps,
                }
                for c in self._cameras.values()
            }
        return out

    async def start(self) -> None:
        """Open every pty and TCP port. On failure, whatever started is stopped again."""
        if self._running:
            raise RuntimeError("simulator already started")
        self._running = True
        for device in self._devices.values():
            device.memory.restart_scripts()  # a script's t = 0 is the simulator's start
        try:
            for bus in self._buses.values():
                bus.start()
            for endpoint in dict.fromkeys(self._tcp.values()):
                await endpoint.start()
            for converter in self._rtu_tcp.values():
                await converter.start()
            for uart in self._uart.values():
                uart.start()
            for camera in self._cameras.values():
                await camera.start()
        except BaseException:
            await self.stop()
            raise
        log.info("simulator started: %s %s", self.endpoints(), self.camera_urls())

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
        for uart in self._uart.values():
            await uart.stop()
        for camera in self._cameras.values():
            await camera.stop()

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
