"""The local status API: what ``tepi status`` and a local Prometheus read, on the box itself.

It listens on a unix socket (mode 0660: the service's user and group), and, only if the
config asks, on 127.0.0.1. Nothing on the network can reach it by default. Its routes:

- ``GET /health``: the health message, as published over MQTT (docs/payload.md#health);
- ``GET /metrics``: the same figures in the Prometheus text format (prometheus-client);
- ``GET /devices``: per device its state, counters and the latest reading of each metric;
- ``GET /alarms``: every rule's alarm (firing and resolved) as the alarm store keeps it;
  ``POST /alarms/{rule}/ack?by=NAME``: acknowledge it (``tepi alarms``);
- ``POST /cameras/{id}/snapshot``: a camera's snapshot now, stored in the image buffer
  (``tepi snapshot``); ``GET /images/{seq}``: a stored image's bytes, until it is sent;
- ``POST /config/{get,apply,rollback}``: the IOC's config commands, run for a technician on
  the box (``tepi config``): the JSON body is the command's args, the answer its result
  (``{"status": "done" | "failed", "reason", "detail", "output"}``), after the trial;
- ``GET /dashboard``: where the web console listens and its certificate's SHA-256
  fingerprint (``tepi status``), 404 when it is off.

On the loopback TCP port a request must name the box itself in its Host header (127.0.0.1,
localhost or ::1): a web page from elsewhere whose name an attacker re-points at 127.0.0.1
(DNS rebinding) sends its own name, and is refused (403).

Every answer but a snapshot's and an acknowledgement's is built from the agent's counters
at request time; such a request reads, never changes, anything (the health message's rates
are not reset by it).

The sockets are made here, with the standard library, and the HTTP side
(`tepi.gateway.statushttp`, on aiohttp) is imported only when the first connection comes, in a
thread so the event loop keeps polling meanwhile; that connection and every later one are then
served by aiohttp. Most boxes are never asked, and aiohttp costs about 10 MB of RSS
(docs/performance.md#memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepi.gateway.health import Health

if TYPE_CHECKING:
    from tepi.gateway.statushttp import StatusApp

log = logging.getLogger(__name__)

BACKLOG = 128  # connections the kernel queues while the HTTP side is being imported


@dataclass(frozen=True)
class CameraAccess:
    """What the status API may do with cameras: take a snapshot, read a stored image."""

    snapshot: Callable[[str, str], Awaitable[dict[str, Any]]]
    image: Callable[[int], Awaitable[tuple[bytes, str] | None]]


@dataclass(frozen=True)
class AlarmAccess:
    """What the status API may do with alarms: list them; acknowledge one (rule, by). Both
    raise LookupError on a gateway without rules."""

    list: Callable[[], Awaitable[dict[str, Any]]]
    ack: Callable[[str, str], Awaitable[bool]]


# A config command run locally: (action, args) -> its result (tepi.gateway.runtime).
ConfigAccess = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class StatusServer:
    """Serves the routes above for one agent; run() until cancelled."""

    def __init__(  # noqa: PLR0917 - the app's parts, the last ones optional
        self,
        health: Callable[[], Health],
        devices: Callable[[], dict[str, Any]],
        socket_path: Path,
        tcp_port: int | None = None,
        cameras: CameraAccess | None = None,
        alarms: AlarmAccess | None = None,
        config: ConfigAccess | None = None,
        dashboard: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self._config = config
        self._dashboard = dashboard
        self._cameras = cameras
        self._alarms = alarms
        self._health = health
        self._devices = devices
        self.socket_path = socket_path
        self.tcp_port = tcp_port
        self.listening = asyncio.Event()
        self.app: StatusApp | None = None  # the HTTP side, once a connection came

    async def run(self) -> None:
        """Listen until cancelled. A socket that cannot be made is logged, not fatal: the
        agent's work does not depend on it."""
        socks: list[socket.socket] = []
        accepted: list[socket.socket] = []
        try:
            try:
                socks = self._listen()
            except OSError as err:
                log.warning("status API not served: %s", err)
                await asyncio.Event().wait()  # keep the task: the agent runs on without it
            self.listening.set()
            log.info("status API on %s", self.where())
            accepted = await _first_connections(socks)
            app_class = await asyncio.to_thread(_load_http)
            self.app = app_class(
                self._health,
                self._devices,
                self._cameras,
                self._alarms,
                self._config,
                self._dashboard,
            )
            await self.app.start(socks, accepted)  # its transports own them now
            await asyncio.Event().wait()
        finally:
            if self.app is not None:
                await self.app.runner.cleanup()
            else:
                for conn in accepted:
                    conn.close()
            for sock in socks:
                sock.close()  # (a second close of one aiohttp closed does nothing)
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def _listen(self) -> list[socket.socket]:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of an earlier run
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks = [unix]
        try:
            old = os.umask(0o117)  # created 0660: the service's user and group only
            try:
                unix.bind(str(path))
            finally:
                os.umask(old)
            unix.listen(BACKLOG)
            if self.tcp_port is not None:
                socks.append(socket.create_server(("127.0.0.1", self.tcp_port), backlog=BACKLOG))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        for sock in socks:
            sock.setblocking(False)
        return socks

    def where(self) -> str:
        tcp = f" and http://127.0.0.1:{self.tcp_port}" if self.tcp_port else ""
        return f"{self.socket_path}{tcp}"


def _load_http() -> type[StatusApp]:
    from tepi.gateway.statushttp import StatusApp

    return StatusApp


async def _first_connections(socks: list[socket.socket]) -> list[socket.socket]:
    """Wait for a connection on any of ``socks``; the ones accepted (one, or a few that
    came together). Returns with no wait left on the sockets, for aiohttp to take them."""
    loop = asyncio.get_running_loop()
    waits = [asyncio.ensure_future(loop.sock_accept(s)) for s in socks]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        for conn in await _settle(waits):
            conn.close()
        raise
    return await _settle(waits)


async def _settle(
    waits: Sequence[asyncio.Future[tuple[socket.socket, Any]]],
) -> list[socket.socket]:
    """Cancel the accepts still waiting, and wait until they are settled: then no reader of
    ours is left on a socket, and a connection accepted meanwhile is not lost."""
    for w in waits:
        w.cancel()
    done = await asyncio.gather(*waits, return_exceptions=True)
    return [r[0] for r in done if isinstance(r, tuple)]
