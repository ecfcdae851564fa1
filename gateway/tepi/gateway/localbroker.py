"""A Mosquitto on loopback, for the demo, the benchmarks and the tests.

It only finds the program, picks a free port, writes a config and waits until the broker
listens. Starting and stopping the process is the caller's, since the demo (asyncio), the
tests and the benchmark each hold their processes differently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """The mosquitto program, also where Debian puts it outside a normal user's PATH."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


def keep_user_line() -> str:
    """Started as root, mosquitto drops to user mosquitto, which cannot write in our scratch
    directories: tell it to stay."""
    return "user root" if os.geteuid() == 0 else ""


def mosquitto_conf(
    port: int, *, persistence_dir: Path | None = None, extra: Iterable[str] = ()
) -> str:
    """A config for an anonymous listener on 127.0.0.1:``port``."""
    lines = [keep_user_line(), f"listener {port} 127.0.0.1", "allow_anonymous true"]
    if persistence_dir is None:
        lines.append("persistence false")
    else:
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    lines += list(extra)
    return "\n".join(line for line in lines if line) + "\n"


async def wait_port(
    port: int, *, timeout_s: float = 10.0, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    ``alive`` says whether the process that should listen is still running, so that a broker
    that exits at once (a bad config, a port in use) fails fast instead of at the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"the process that should listen on port {port} has exited")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
