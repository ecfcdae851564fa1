"""``tepi doctor``: check what a gateway needs, and say how to fix each problem found.

Each check prints one line, ``ok``, ``WARN`` or ``FAIL``, and for a problem the fix, e.g.
"user tepi is not in group plugdev: run sudo usermod -aG plugdev tepi". The checks, in
order: the config (every problem, with file:line); each serial port (exists, readable and
writable by the service's user, tepi, with its groups and the unit's SupplementaryGroups=,
not by whoever runs doctor); the MQTT password, read where the service reads it (a relative
password_file from where the unit's LoadCredential= loads it); the broker (DNS, TCP, the
TLS handshake with certificate and host name verification, then an MQTT login with the
configured credentials); the clock (synchronised?); free disk under the data dir; the buffer
file (``PRAGMA quick_check``, read-only); and the service itself (its status socket
answers). It changes nothing, so it is safe while the service runs. Exit code 0 when
nothing failed, 6 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from tepi.gateway.config import PASSWORD_CREDENTIAL, SECRETS_DIR, Config, resolve_credential
from tepi.gateway.configload import empty_password, load_config
from tepi.gateway.mqttlink import UplinkSetupError, _tls_context
from tepi.gateway.status import fetch
from tepi.gateway.sysinfo import free_disk_bytes

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


SERVICE_USER = "tepi"
# The unit's SupplementaryGroups=: the service has these groups whatever the user's own are.
UNIT_GROUPS = ("dialout",)


def _may_read_write(st: os.stat_result, user: pwd.struct_passwd) -> bool:
    """Whether the service, as ``user`` with its groups and the unit's, may open a file
    with this owner, group and mode for reading and writing."""
    if user.pw_uid == 0:
        return True
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for name in UNIT_GROUPS:
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(name).gr_gid)
    if st.st_uid == user.pw_uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & 0o6 == 0o6


def check_ports(cfg: Config, service_user: str = SERVICE_USER) -> list[Finding]:
    """Each serial port: there, and open to the service's user (not to whoever runs doctor,
    which under sudo is root and may open anything)."""
    out: list[Finding] = []
    ports = sorted({p for d in cfg.devices if isinstance(p := getattr(d, "port", None), str)})
    try:
        user: pwd.struct_passwd | None = pwd.getpwnam(service_user)
    except KeyError:
        user = None
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
        st = path.stat()
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        where = f"{port} ({os.path.realpath(path)}, group {group}, mode {st.st_mode & 0o777:o})"
        if user is None:
            out.append(
                Finding(
                    "FAIL",
                    "serial",
                    f"{where}: the service user {service_user} does not exist, so who may "
                    "open it cannot be checked",
                    "install tepi with systemd/install.sh (it creates the user), or name the "
                    "service's user with --service-user",
                )
            )
        elif _may_read_write(st, user):
            out.append(
                Finding("ok", "serial", f"{where} readable and writable by user {service_user}")
            )
        else:
            out.append(
                Finding(
                    "FAIL",
                    "serial",
                    f"{where} is not readable and writable by user {service_user}",
                    f"user {service_user} is not in group {group}: run sudo usermod -aG {group} "
                    f"{service_user} (then restart the service), or give the port group "
                    "dialout and mode 0660 with a udev rule",
                )
            )
    return out


def check_secret(cfg: Config, secrets_dir: Path = SECRETS_DIR) -> tuple[list[Finding], bool]:
    """The MQTT password, read where the service will read it; whether it could be.

    Under the unit a relative ``password_file`` is a credential in $CREDENTIALS_DIRECTORY,
    which systemd fills from the unit's LoadCredential=. Doctor runs outside the unit, so it
    reads the file LoadCredential= loads from (``secrets_dir``), and says which file."""
    up = cfg.uplink
    if up.password_env is not None:
        if up.password_env in os.environ:
            return [Finding("ok", "password", f"from the variable {up.password_env}")], True
        return [
            Finding(
                "FAIL",
                "password",
                f"the variable {up.password_env} is not set here",
                "set it in the service's environment (and here, to check the login)",
            )
        ], False
    name = up.password_file
    if name is None:
        return [], True
    how = ""
    if not name.is_absolute():
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            how = " ($CREDENTIALS_DIRECTORY)"
        else:
            if str(name) != PASSWORD_CREDENTIAL:
                return [
                    Finding(
                        "FAIL",
                        "password",
                        f"uplink.password_file {name} is a credential name, but the unit loads "
                        f"only {PASSWORD_CREDENTIAL} (LoadCredential={PASSWORD_CREDENTIAL}:"
                        f"{SECRETS_DIR / PASSWORD_CREDENTIAL})",
                        f"set uplink.password_file: {PASSWORD_CREDENTIAL}, or an absolute path",
                    )
                ], False
            how = f" (the unit's LoadCredential={PASSWORD_CREDENTIAL}, as the service reads it)"
    file = resolve_credential(name, secrets_dir)
    try:
        password = up.read_password(secrets_dir)
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return [
            Finding(
                "FAIL",
                "password",
                f"cannot read {file}{how}: {why}",
                f"put the password (one line) in {file}: sudo sh -c 'umask 077; cat > {file}'",
            )
        ], False
    if password is None or not password.get_secret_value():
        what, fix = empty_password(file)
        return [Finding("FAIL", "password", f"uplink.password_file: {what}{how}", fix)], False
    return [Finding("ok", "password", f"{file}{how} read")], True


async def check_broker(
    cfg: Config, secrets_dir: Path = SECRETS_DIR, password_ok: bool = True
) -> list[Finding]:
    """Every broker of uplink.url, in the list's order: a failover broker that cannot be
    used is found at the install, not on the day the first one fails."""
    out: list[Finding] = []
    brokers = cfg.uplink.brokers
    for host, port in brokers:
        where = f" by {host}:{port}" if len(brokers) > 1 else ""
        out += await _check_one(cfg, (host, port), where, secrets_dir, password_ok=password_ok)
    return out


async def _check_one(
    cfg: Config, address: tuple[str, int], where: str, secrets_dir: Path, *, password_ok: bool
) -> list[Finding]:
    up = cfg.uplink
    host, port = address
    out: list[Finding] = []
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        return [
            Finding(
                "FAIL",
                "dns",
                f"{host}: {err}",
                "check the uplink.url host name and /etc/resolv.conf",
            )
        ]
    addrs = sorted({str(i[4][0]) for i in infos})
    out.append(Finding("ok", "dns", f"{host} -> {', '.join(addrs)}"))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError) as err:
        out.append(
            Finding(
                "FAIL",
                "tcp",
                f"{host}:{port}: {err or 'timed out'}",
                "the broker is down, or a firewall or the APN blocks the port",
            )
        )
        return out
    out.append(Finding("ok", "tcp", f"{host}:{port} accepts connections"))
    tls: ssl.SSLContext | None = None
    if up.secure:
        try:
            tls = _tls_context(cfg)
            async with asyncio.timeout(TIMEOUT_S):
                _, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
            writer.close()
        except (ssl.SSLError, OSError, TimeoutError, UplinkSetupError) as err:
            out.append(
                Finding(
                    "FAIL",
                    "tls",
                    f"handshake with {host}: {err}",
                    "certificates are always verified: check uplink.tls.ca_file, the broker's "
                    "host name, and the client certificate",
                )
            )
            return out
        out.append(Finding("ok", "tls", f"{host}: certificate and host name verified"))
    if not password_ok:
        out.append(Finding("FAIL", "login", "not tried: the password cannot be read (above)"))
        return out
    password = up.read_password(secrets_dir)
    try:
        async with aiomqtt.Client(
            host,
            port,
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
                f"the broker{where} refused the login: {err}",
                "check uplink.username and the password",
            )
        )
        return out
    who = up.username or "(anonymous)"
    out.append(Finding("ok", "login", f"MQTT login as {who} accepted{where}"))
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


def run_doctor(
    path: Path,
    out: TextIO,
    *,
    service_user: str | None = None,
    secrets_dir: Path | None = None,
) -> int:
    """Run every check, print one line each; 0, or EXIT_PROBLEMS when one failed.
    ``service_user`` (default tepi) is the user whose access to the serial ports counts;
    ``secrets_dir`` (default /etc/tepi/secrets) where the unit's LoadCredential= loads a
    relative password_file from."""
    service_user = service_user or SERVICE_USER
    secrets_dir = secrets_dir or SECRETS_DIR
    try:
        # The files are checked below, where the service will read them: a relative
        # password_file is a credential, not a file in the current directory.
        cfg = load_config(path, check_files=False)
    except ConfigError as err:
        for issue in err.issues:
            out.write(Finding("FAIL", "config", str(issue)).line() + "\n")
        out.write("the config must be fixed first: tepi check --config " + str(path) + "\n")
        return EXIT_PROBLEMS
    findings = [
        Finding("ok", "config", f"{path}: gateway {cfg.gateway.id}, {len(cfg.devices)} devices")
    ]
    findings += check_ports(cfg, service_user)
    secret, password_ok = check_secret(cfg, secrets_dir)
    findings += secret
    findings += asyncio.run(check_broker(cfg, secrets_dir, password_ok))
    findings += check_host(cfg)
    for f in findings:
        out.write(f.line() + "\n")
    failed = [f for f in findings if f.level == "FAIL"]
    out.write(
        f"\n{len(failed)} problem(s), {sum(f.level == 'WARN' for f in findings)} warning(s)\n"
    )
    return EXIT_PROBLEMS if failed else 0
