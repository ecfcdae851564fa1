"""Server side of HTTP Basic and Digest authentication (RFC 7617, RFC 7616), by hand.

Digest is the MD5 variant with ``qop=auth``, as IP cameras (Hikvision, Dahua) use it. The
server hands out random nonces (it remembers the newest :data:`NONCES` of them); a nonce it
does not know, or one older than ``nonce_ttl_s``, gets a fresh challenge with
``stale=true`` when the response was otherwise right, so a client retries without asking
the user again. Replayed nonce counts are not checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Final

__all__ = [
    "BasicAuth",
    "DigestAuth",
    "digest_response",
    "format_auth_params",
    "parse_auth_params",
]

NONCES: Final = 256

# One auth-param: a token name, '=', then a token or a quoted-string (RFC 7230 3.2.6).
_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*')


def parse_auth_params(text: str) -> dict[str, str]:
    """The ``name=value`` pairs after an auth scheme (``realm="x", nc=00000001, ...``):
    names lower-cased, quoted values unescaped. Raises ValueError if ``text`` is not a
    comma-separated list of auth-params."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None:
            raise ValueError(f"malformed auth-param at {text[pos:]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[name] = value
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"expected ',' at {text[pos:]!r}")
            pos += 1
    return out


def format_auth_params(params: dict[str, str], *, unquoted: tuple[str, ...] = ()) -> str:
    """The inverse of :func:`parse_auth_params`: values quoted (and escaped), except the
    names in ``unquoted`` (``algorithm``, ``stale``, ``qop`` in a response, ``nc``)."""
    parts = []
    for name, value in params.items():
        if name in unquoted:
            parts.append(f"{name}={value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
    return ", ".join(parts)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def digest_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """The ``response`` a client must send (RFC 7616 3.4.1, MD5, qop=auth)."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class BasicAuth:
    """Checks ``Authorization: Basic ...`` against one user."""

    scheme = "Basic"

    def __init__(self, username: str, password: str, realm: str) -> None:
        self.realm = realm
        self._expected = f"{username}:{password}".encode()

    def challenge(self, *, stale: bool = False) -> str:
        """The ``WWW-Authenticate`` value for a 401 (``stale`` is ignored)."""
        del stale
        return f'Basic realm="{self.realm}", charset="UTF-8"'

    def check(self, header: str | None, method: str, uri: str) -> str:
        """``ok``, ``missing`` (no credentials: a plain challenge) or ``failed``."""
        del method, uri
        if not header:
            return "missing"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return "missing"
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "failed"
        return "ok" if hmac.compare_digest(given, self._expected) else "failed"


class DigestAuth:
    """Checks ``Authorization: Digest ...`` (MD5, qop=auth) against one user."""

    scheme = "Digest"

    def __init__(
        self, username: str, password: str, realm: str, *, nonce_ttl_s: float = 300.0
    ) -> None:
        self.username = username
        self.realm = realm
        self.nonce_ttl_s = nonce_ttl_s
        self._password = password
        self._opaque = secrets.token_hex(8)
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def new_nonce(self) -> str:
        """A fresh random nonce, remembered (the oldest is forgotten beyond NONCES)."""
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = time.monotonic()
        while len(self._nonces) > NONCES:
            self._nonces.popitem(last=False)
        return nonce

    def challenge(self, *, stale: bool = False) -> str:
        """The ``WWW-Authenticate`` value for a 401, with a new nonce."""
        params = {
            "realm": self.realm,
            "qop": "auth",
            "algorithm": "MD5",
            "nonce": self.new_nonce(),
            "opaque": self._opaque,
        }
        if stale:
            params["stale"] = "true"
        return "Digest " + format_auth_params(params, unquoted=("algorithm", "stale"))

    def check(self, header: str | None, method: str, uri: str) -> str:
        """``ok``; ``missing`` (no Digest credentials); ``stale`` (right credentials on an
        unknown or expired nonce); or ``failed`` (wrong user, password, realm or uri)."""
        if not header:
            return "missing"
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "digest":
            return "missing"
        try:
            params = parse_auth_params(rest)
        except ValueError:
            return "failed"
        need = ("username", "realm", "nonce", "uri", "response", "nc", "cnonce", "qop")
        if any(k not in params for k in need) or params["qop"] != "auth":
            return "failed"
        if params.get("algorithm", "MD5").upper() != "MD5" or params["uri"] != uri:
            return "failed"
        if params["username"] != self.username or params["realm"] != self.realm:
            return "failed"
        expected = digest_response(
            username=self.username,
            realm=self.realm,
            password=self._password,
            method=method,
            uri=uri,
            nonce=params["nonce"],
            nc=params["nc"],
            cnonce=params["cnonce"],
        )
        if not hmac.compare_digest(expected, params["response"].lower()):
            return "failed"
        issued = self._nonces.get(params["nonce"])
        if issued is None or time.monotonic() - issued > self.nonce_ttl_s:
            return "stale"
        return "ok"
