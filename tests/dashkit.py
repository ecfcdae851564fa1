"""What the web console's tests share: the users, an HTTPS client, logging in, a form's token."""

from __future__ import annotations

import re
import ssl

import aiohttp

ADMIN, VIEWER = ("ana", "admin-pass-1"), ("bo", "viewer-pass-2")


def client() -> aiohttp.ClientSession:
    # The console's certificate is self-signed; the fingerprint test checks it instead.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies for an IP address
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def login(s: aiohttp.ClientSession, base: str, user: str, password: str) -> int:
    """Log in through the form; the status of the form's answer (303 when it worked)."""
    async with s.get(f"{base}/login") as r:
        token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert token is not None
    form = {"csrf": token.group(1), "user": user, "password": password, "next": "/devices"}
    async with s.post(f"{base}/login", data=form, allow_redirects=False) as r:
        return r.status


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None, page[:500]
    return m.group(1)
