"""systemd's notify protocol, spoken by hand: one datagram per message to ``$NOTIFY_SOCKET``.

The protocol is a few lines of text on a unix datagram socket (sd_notify(3)); no library is
needed. Under ``Type=notify`` the agent sends:

- ``READY=1`` once the config is loaded, the buffer open and every device's poller started;
- ``STATUS=...`` a line for ``systemctl status`` ("online, 1,234 readings/min, buffer 0");
- ``WATCHDOG=1`` every quarter of ``WatchdogSec``, **only while the pipeline is alive**: the
  event loop turns (the ping is sent from it), the buffer's writer is not stuck in one write,
  and the uplink is not wedged with publishes that nobody acknowledges past its own timeout.
  A stuck agent stops pinging, and systemd kills and restarts it;
- ``STOPPING=1`` when a stop begins; ``RELOADING=1`` and ``READY=1`` around a reload.

Without ``$NOTIFY_SOCKET`` (run by hand, in tests) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """The service manager's notify socket, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        path = env.get("NOTIFY_SOCKET")
        if path:
            # "@name" is an abstract socket: a leading NUL byte instead of the "@".
            self._addr = b"\0" + path[1:].encode() if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._failed_logged = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one message; whether it went out."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as err:
            if not self._failed_logged:  # once: a manager that went away is not news each ping
                self._failed_logged = True
                log.warning("cannot notify the service manager (%s): %s", self._addr, err)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
