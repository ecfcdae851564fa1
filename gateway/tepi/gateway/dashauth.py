"""The web console's security parts that need no HTTP library: passwords, users, sessions,
the login limiter, the Host check and the self-signed certificate (docs/dashboard.md).

- Passwords are scrypt hashes (``hashlib.scrypt``: N=2^14, r=8, p=1, 16 MiB and about 50 ms
  on a Pi 4), one line per user in the users file (``user:role:hash``, mode 0600), written by
  ``tepi dashboard passwd``. A wrong user costs the same hash as a wrong password.
- Sessions live in RAM only (a restart logs everyone out): a random token in an HttpOnly,
  Secure, SameSite=Strict cookie, a CSRF token of its own, an expiry; at most
  :data:`MAX_SESSIONS`, the oldest dropped first.
- Login attempts are counted per client address; past the limit the client is refused
  until its lockout ends by itself. At most :data:`MAX_CLIENTS` addresses are remembered.
- The Host check refuses a Host header that names a host the box does not answer to (a DNS
  rebinding page would send its own name): IP literals, localhost, the box's host name and
  the configured names pass.

This module imports only the standard library; the certificate is made with
``cryptography`` (a dependency already, for signed commands), imported when one is made.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "ROLES",
    "LoginLimiter",
    "Session",
    "Sessions",
    "Users",
    "certificate",
    "fingerprint",
    "hash_password",
    "host_allowed",
    "verify_password",
]

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
MAX_SESSIONS = 64
MAX_CLIENTS = 1024
MAX_USERS = 100
_N, _R, _P, _SALT, _LEN = 2**14, 8, 1, 16, 32
_MAXMEM = 64 * 1024 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``."""
    salt = os.urandom(_SALT)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_LEN
    )
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a :func:`hash_password` line)."""
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(base64.b64decode(want)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(want))


@functools.cache
def _dummy() -> str:
    """The hash a login for an unknown user is checked against: the same work as a real one.
    Made at the first login, not at import (16 MiB of scrypt, for every ``tepi dashboard``
    command and every start of the console otherwise)."""
    return hash_password(secrets.token_hex(8))


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hash: str


class Users:
    """The users file: ``name:role:hash`` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, User]:
        """Every user; an empty dict when the file is missing (nobody can log in)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        out: dict[str, User] = {}
        for line in text.splitlines()[:MAX_USERS]:
            name, _, rest = line.partition(":")
            role, _, hashed = rest.partition(":")
            if name and role in ROLES and hashed.startswith("scrypt$"):
                out[name] = User(name, role, hashed)
        return out

    def check(self, name: str, password: str) -> User | None:
        """The user, if ``password`` is theirs (the same work whether or not they exist)."""
        user = self.load().get(name)
        ok = verify_password(password, user.hash if user is not None else _dummy())
        return user if ok and user is not None else None

    def set(self, name: str, role: Role, password: str) -> bool:
        """Add the user or change their password and role; whether they were new. The file
        is replaced atomically, mode 0600."""
        if not valid_user(name):
            raise ValueError(f"{name!r}: a user name is 1-32 letters, digits, . _ or -")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        users = self.load()
        new = name not in users
        users[name] = User(name, role, hash_password(password))
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        return new


def valid_user(name: str) -> bool:
    return 1 <= len(name) <= 32 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


@dataclass
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    expires: float  # time.monotonic()


class Sessions:
    """The logged-in sessions, in RAM, bounded."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, role: Role) -> Session:
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.popitem(last=False)
        s = Session(
            secrets.token_urlsafe(32),
            user,
            role,
            secrets.token_urlsafe(32),
            self._clock() + self.ttl,
        )
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is not None and s.expires <= self._clock():
            del self._by_token[token]
            return None
        return s

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)


@dataclass
class _Client:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginLimiter:
    """``attempts`` failed logins from one client within ``lockout`` lock it out for
    ``lockout`` seconds, after which it may try again (the count starts afresh)."""

    def __init__(
        self, attempts: int, lockout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts = attempts
        self.lockout = lockout
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def locked(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        c = self._clients.get(client)
        if c is None:
            return 0.0
        left = c.locked_until - self._clock()
        if left <= 0 and c.locked_until:
            del self._clients[client]  # the lockout ended: a fresh count
            return 0.0
        return max(left, 0.0)

    def failed(self, client: str) -> bool:
        """Count a failure; whether the client is now locked out."""
        now = self._clock()
        c = self._clients.pop(client, None) or _Client()
        self._clients[client] = c  # most recent last: the oldest is forgotten first
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        c.failures = [t for t in c.failures if now - t < self.lockout] + [now]
        if len(c.failures) >= self.attempts:
            c.locked_until = now + self.lockout
            return True
        return False

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _host_name(header: str) -> str:
    """The host of a Host header, lower case, without its port or brackets."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    if h.count(":") == 1:
        h = h.partition(":")[0]
    return h


def host_allowed(header: str | None, names: Iterable[str], *, any_ip: bool) -> bool:
    """Whether a request's Host header names this box: one of ``names``, or with ``any_ip``
    any IP address (an address cannot be rebound to another host). No header: refused."""
    if not header:
        return False
    host = _host_name(header)
    if host in names:
        return True
    if not any_ip:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def box_names(extra: Iterable[str]) -> frozenset[str]:
    """The names the console answers to: localhost, the box's host name (and its name in
    the local domain), and the configured ones."""
    names = set(LOOPBACK_HOSTS) | {h.lower() for h in extra}
    host = socket.gethostname().lower()
    if host:
        names |= {host, f"{host}.local"}
    return frozenset(names)


def certificate(directory: Path) -> tuple[Path, Path]:
    """The self-signed certificate and key in ``directory``, made the first time (EC P-256,
    10 years, the box's host name as its subject). The key is 0600."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pkey = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname() or "tepi"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tepi {host}")])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    made = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    key_pem = pkey.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = made.public_bytes(serialization.Encoding.PEM)
    for path, data, mode in ((key, key_pem, 0o600), (cert, cert_pem, 0o644)):
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    return cert, key


def fingerprint(cert: Path) -> str:
    """The SHA-256 fingerprint of the certificate's first PEM block, ``AB:CD:...`` as
    browsers show it."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def read_password(prompt: str = "Password: ") -> str:
    """A new password from the terminal (asked twice), or one line of stdin when it is not
    a terminal. Never from argv. ValueError when empty or the two differ."""
    import getpass
    import sys

    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if first != getpass.getpass("Again: "):
            raise ValueError("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        raise ValueError("a password has at least 8 characters")
    return first


if __name__ == "__main__":  # the agent makes its certificate this way (tepi.gateway.dashboard)
    import sys

    certificate(Path(sys.argv[1]))
