"""The technician's web console (docs/dashboard.md): one task of the agent's TaskGroup.

Off unless ``dashboard.listen`` is set; then this task makes or loads the TLS certificate,
imports the HTTP side (`tepi.gateway.dashhttp`, on aiohttp) in a thread so the event loop
keeps polling meanwhile, and serves HTTPS until cancelled. An agent whose console is off
never imports aiohttp for it (tests/test_gateway/test_memory.py). A console that cannot be
served (the port taken, a bad certificate) is logged, not fatal: the agent's work does not
depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepi.gateway.config import DashboardSection, listen_address
from tepi.gateway.dashauth import box_names, fingerprint, server_context
from tepi.gateway.health import Health

if TYPE_CHECKING:
    from tepi.gateway.dashconfig import ConsoleActions
    from tepi.gateway.dashhttp import DashApp
    from tepi.gateway.statusapi import CameraAccess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DashboardAccess:
    """What the console may read and do in the agent."""

    gateway: str
    health: Callable[[], Health]
    devices: Callable[[], dict[str, Any]]
    logs: Callable[[int, str | None], dict[str, Any]]
    link_history: Callable[[], list[tuple[float, bool]]]
    started: float  # the agent's start, epoch seconds (the link strip's grey before it)
    reload: Callable[[], Awaitable[bool]]  # admin: re-read the config file
    actions: ConsoleActions | None = None  # the config and alarm pages (None: not shown)
    cameras: CameraAccess | None = None  # snapshots and stored images (the cameras pages)


class Dashboard:
    """Serves the console for one agent; ``run()`` until cancelled."""

    def __init__(self, section: DashboardSection, data_dir: Path, access: DashboardAccess) -> None:
        assert section.listen is not None
        self.section = section
        self.data_dir = data_dir
        self.access = access
        self.host, self.port = listen_address(section.listen)
        self.fingerprint: str | None = None
        self.listening = asyncio.Event()
        self.app: DashApp | None = None

    def info(self) -> dict[str, Any] | None:
        """For ``tepi status`` (the status API's ``/dashboard``): None until it listens."""
        if self.fingerprint is None or not self.listening.is_set():
            return None
        return {
            "listen": self.section.listen,
            "fingerprint": self.fingerprint,
            "users": str(self.section.users(self.data_dir)),
        }

    async def run(self) -> None:
        try:
            try:
                ctx = await asyncio.to_thread(self._tls)
                app_class = await asyncio.to_thread(_load_http)
                self.app = app_class(
                    self.section,
                    self.access,
                    self.section.users(self.data_dir),
                    box_names(self.section.hosts),
                )
                await self.app.start(self.host, self.port, ctx)
            except (OSError, ssl.SSLError, ValueError) as err:
                log.error("web console not served on %s: %s", self.section.listen, err)
                await asyncio.Event().wait()  # keep the task: the agent runs on without it
            self.listening.set()
            log.info(
                "web console on https://%s (certificate SHA-256 %s)",
                self.section.listen,
                self.fingerprint,
            )
            await asyncio.Event().wait()
        finally:
            if self.app is not None:
                await self.app.stop()

    def _tls(self) -> ssl.SSLContext:
        s = self.section
        if s.cert_file is not None and s.key_file is not None:
            cert, key = s.cert_file, s.key_file
        else:
            cert, key = made_certificate(s.dir(self.data_dir))
        self.fingerprint = fingerprint(cert)
        return server_context(cert, key)


def made_certificate(directory: Path) -> tuple[Path, Path]:
    """The self-signed certificate, made the first time in a child process: making it needs
    ``cryptography`` (about 10 MB of RSS), which the agent would otherwise hold until its
    next restart. OSError when it could not be made."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not (cert.exists() and key.exists()):
        cmd = [sys.executable, "-m", "tepi.gateway.dashauth", str(directory)]
        try:
            done = subprocess.run(  # noqa: S603 - our own module, a fixed argument list
                cmd, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise OSError(f"making the certificate took over {err.timeout:.0f} s") from err
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise OSError(f"cannot make the certificate in {directory}: {last}")
    return cert, key


def _load_http() -> type[DashApp]:
    from tepi.gateway.dashhttp import DashApp

    return DashApp
