"""``tepi doctor``: check what a gateway needs, and say how to fix each problem found.

Each check prints one line, ``ok``, ``WARN`` or ``FAIL``, and for a problem the fix, e.g.
"user pi is not in group dialout: run sudo usermod -aG dialout pi". The checks, in order:
the config (every problem, with file:line); each serial port (exists, readable and writable
by this user, the group to join); the broker (DNS, TCP, the TLS handshake with certificate
and host name verification, then an MQTT login with the configured credentials); the clock
(synchronised?); free disk under the data dir; the buffer file (``PRAGMA quick_check``,
read-only); and the service itself (its status socket answers). It changes nothing, so it is
safe while the service runs. Exit code 0 when nothing failed, 6 otherwise.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import socket
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiomqtt

from tepi.core.clock import clock_synced
from tepi.core.errors import ConfigError
from tepi.gateway.config import Config
from tepi.gateway.configload import load_config
from tepi.gateway.status import fetch
from tepi.gateway.sysinfo import free_disk_bytes
from tepi.gateway.uplink import _tls_context

EXIT_PROBLEMS = 6
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # ok | WARN | FAIL
    check: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.level:<4}  {self.check:<10} {self.message}"
        return f"{text}\n      {'':<10} fix: {self.fix}" if self.fix else text


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def check_ports(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    ports = sorted({p for d in cfg.devices if isinstance(p := getattr(d, "port", None), str)})
    for port in ports:
        path = Path(port)
        if not path.exists():
            out.append(
                Finding(
                    "FAIL",
                    "serial",
                    f"{port} does not exist",
                    "plug the adapter in; list candidates with: ls -l /dev/serial/by-id/",
                )
            )
            continue
        if os.access(path, os.R_OK | os.W_OK):
            out.append(Finding("ok", "serial", f"{port} ({os.path.realpath(path)}) readable"))
            continue
        st = path.stat()
        group = grp.getgrgid(st.st_gid).gr_name
        user = _user()
        out.append(
            Finding(
                "FAIL",
                "serial",
                f"{port} is not readable and writable by user {user}",
                f"user {user} is not in group {group}: run sudo usermod -aG {group} {user} "
                "(then log in again, or restart the service)",
            )
        )
    return out


async def check_broker(cfg: Config) -> list[Finding]:
    up = cfg.uplink
    out: list[Finding] = []
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            up.host, up.port, type=socket.SOCK_STREAM
        )
    except OSError as err:
        return [
            Finding(
                "FAIL",
                "dns",
                f"{up.host}: {err}",
                "check the uplink.url host name and /etc/resolv.conf",
            )
        ]
    addrs = sorted({str(i[4][0]) for i in infos})
    out.append(Finding("ok", "dns", f"{up.host} -> {', '.join(addrs)}"))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            _, writer = await asyncio.open_connection(up.host, up.port)
        writer.close()
    except (OSError, TimeoutError) as err:
        out.append(
            Finding(
                "FAIL",
                "tcp",
                f"{up.host}:{up.port}: {err or 'timed out'}",
                "the broker is down, or a firewall or the APN blocks the port",
            )
        )
        return out
    out.append(Finding("ok", "tcp", f"{up.host}:{up.port} accepts connections"))
    tls: ssl.SSLContext | None = None
    if up.secure:
        try:
            tls = _tls_context(cfg)
            async with asyncio.timeout(TIMEOUT_S):
                _, writer = await asyncio.open_connection(
                    up.host, up.port, ssl=tls, server_hostname=up.host
                )
            writer.close()
        except (ssl.SSLError, OSError, TimeoutError) as err:
            out.append(
                Finding(
                    "FAIL",
                    "tls",
                    f"handshake with {up.host}: {err}",
                    "certificates are always verified: check uplink.tls.ca_file, the broker's "
                    "host name, and the client certificate",
                )
            )
            return out
        out.append(Finding("ok", "tls", f"{up.host}: certificate and host name verified"))
    try:
        password = up.read_password()
    except (OSError, KeyError) as err:
        out.append(
            Finding(
                "FAIL",
                "login",
                f"cannot read the password: {err}",
                "check uplink.password_file / password_env",
            )
        )
        return out
    try:
        async with aiomqtt.Client(
            up.host,
            up.port,
            username=up.username,
            password=password.get_secret_value() if password else None,
            identifier=f"tepi-doctor-{os.getpid()}",
            tls_context=tls,
            timeout=TIMEOUT_S,
        ):
            pass
    except aiomqtt.MqttError as err:
        out.append(
            Finding(
                "FAIL",
                "login",
                f"the broker refused the login: {err}",
                "check uplink.username and the password",
            )
        )
        return out
    out.append(Finding("ok", "login", f"MQTT login as {up.username or '(anonymous)'} accepted"))
    return out


def check_host(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    if clock_synced():
        out.append(Finding("ok", "clock", "the system clock is synchronised"))
    else:
        out.append(
            Finding(
                "WARN",
                "clock",
                "the system clock is not synchronised: readings are flagged",
                "check timedatectl and NTP reachability, or mark a GPS as clock_source",
            )
        )
    data = cfg.gateway.data_dir
    free = free_disk_bytes(data)
    need = cfg.buffer.max_bytes + 16 * 1024 * 1024
    if free is None:
        out.append(
            Finding("WARN", "disk", f"{data} does not exist yet", "it is made at the first start")
        )
    elif free < need:
        out.append(
            Finding(
                "WARN",
                "disk",
                f"{free / 1e6:.0f} MB free under {data}, less than buffer.max_bytes",
                "free space, or lower buffer.max_bytes",
            )
        )
    else:
        out.append(Finding("ok", "disk", f"{free / 1e6:.0f} MB free under {data}"))
    db = data / "buffer.db"
    if db.exists():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT_S)
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as err:
            result = str(err)
        if result == "ok":
            out.append(Finding("ok", "buffer", f"{db}: quick_check ok"))
        else:
            out.append(
                Finding(
                    "FAIL",
                    "buffer",
                    f"{db}: {result}",
                    "the agent moves a damaged file aside at its next start: restart it",
                )
            )
    try:
        health = fetch(cfg.status_socket(), "/health", timeout=2)
    except (OSError, ValueError):
        out.append(
            Finding(
                "WARN",
                "service",
                "the agent does not answer on its status socket",
                "start it: sudo systemctl start tepi; see journalctl -u tepi",
            )
        )
    else:
        link = "online" if health["uplink"]["connected"] else "offline"
        out.append(Finding("ok", "service", f"running {health['uptime_s']:.0f} s, {link}"))
    return out


def run_doctor(path: Path, out: TextIO) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as err:
        for issue in err.issues:
            out.write(Finding("FAIL", "config", str(issue)).line() + "\n")
        out.write("the config must be fixed first: tepi check --config " + str(path) + "\n")
        return EXIT_PROBLEMS
    findings = [
        Finding("ok", "config", f"{path}: gateway {cfg.gateway.id}, {len(cfg.devices)} devices")
    ]
    findings += check_ports(cfg)
    findings += asyncio.run(check_broker(cfg))
    findings += check_host(cfg)
    for f in findings:
        out.write(f.line() + "\n")
    failed = [f for f in findings if f.level == "FAIL"]
    out.write(
        f"\n{len(failed)} problem(s), {sum(f.level == 'WARN' for f in findings)} warning(s)\n"
    )
    return EXIT_PROBLEMS if failed else 0
