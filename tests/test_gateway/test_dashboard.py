"""The web console's guards, over HTTPS against a real ``tepi run`` (no broker: the link is
down, which the console shows like any other state).

Every route of the console's router is asked without a session (so a route added later
cannot slip through unguarded); POSTs without the CSRF token; a viewer at an admin action;
the login's lockout and its end; the Host check on the console and on the loopback status
port; the cookie's and every answer's security headers; ``tepi status`` showing the
certificate's fingerprint, and the certificate kept across a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashkit import ADMIN, VIEWER, client, csrf_of, login
from helpers import AgentProc, agent_config, run_tepi, until, wait_listening
from ports import restartable_port
from yarl import URL

from tepi.gateway.config import DashboardSection
from tepi.gateway.dashauth import Users
from tepi.gateway.dashboard import DashboardAccess
from tepi.gateway.dashhttp import CSP, PUBLIC, DashApp
from tepi.gateway.localbroker import free_port
from tepi.gateway.status import fetch

pytestmark = pytest.mark.timeout(90)

LOCKOUT_S = 2.0


@dataclass
class Console:
    base: str
    status_port: int
    agent: AgentProc
    config: Path
    data: Path


async def start_console(tmp: Path, devices: list[dict[str, Any]], **over: Any) -> Console:
    # Listened on again after a restart: below the ephemeral range (tests/ports.py).
    port, status_port = restartable_port(), restartable_port()
    config = agent_config(
        tmp,
        free_port(),  # nothing listens there: the uplink stays down
        devices,
        status__socket=str(tmp / "status.sock"),
        status__tcp_port=status_port,
        dashboard__listen=f"127.0.0.1:{port}",
        **over,
    )
    users = Users(tmp / "data" / "dashboard" / "users")
    users.set(ADMIN[0], "admin", ADMIN[1])
    users.set(VIEWER[0], "viewer", VIEWER[1])
    agent = AgentProc(config, tmp / "agent.log")
    agent.start()
    await wait_listening(port, agent)
    return Console(f"https://127.0.0.1:{port}", status_port, agent, config, tmp / "data")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    c = await start_console(
        tmp_path,
        [{"id": "aq-1", "driver": "synthetic", "metrics": 2, "poll_interval": "500ms"}],
        dashboard__login_attempts=3,
        dashboard__lockout=f"{LOCKOUT_S}s",
    )
    try:
        yield c
    finally:
        assert await c.agent.stop() == 0
    assert "Traceback" not in c.agent.log_text(), c.agent.log_text()


def router_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the console's router has (the app is built for its
    router only: nothing of it is called)."""

    async def never() -> bool:
        raise AssertionError("not called")

    access = DashboardAccess(
        gateway="gw",
        health=lambda: (_ for _ in ()).throw(AssertionError("not called")),
        devices=dict,
        logs=lambda n, level: {},
        link_history=list,
        started=0.0,
        reload=never,
    )
    app = DashApp(DashboardSection(), access, Path("/nonexistent"), frozenset())
    out = set()
    for route in app.app.router.routes():
        info = route.resource.canonical if route.resource is not None else None
        assert info is not None
        out.add((route.method, info))
    return out


def concrete(path: str) -> str:
    values = (("device", "aq-1"), ("name", "app.css"), ("rule", "r1"), ("camera", "c1"))
    for name, value in (*values, ("code", "vi")):
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path  # a new route's placeholder: give it a value above
    return path


async def test_every_route_without_a_session_is_refused_or_sent_to_login(
    console: Console,
) -> None:
    routes = router_routes()
    assert {
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/static/{name}"),
        ("GET", "/lang/{code}"),
    } == PUBLIC
    assert routes >= PUBLIC
    guarded = sorted(r for r in routes if r not in PUBLIC and ("GET", r[1]) not in PUBLIC)
    assert len(guarded) >= 7, guarded
    async with client() as s:
        for method, path in guarded:
            url = console.base + concrete(path)
            async with s.request(method, url, allow_redirects=False) as r:
                if method in ("GET", "HEAD") and path != "/events":
                    assert r.status == 303, (method, path, r.status)
                    assert r.headers["Location"].startswith("/login?next="), r.headers
                else:
                    assert r.status == 401, (method, path, r.status)
                assert r.headers["Content-Security-Policy"] == CSP
        # A path no route has: the same answer, so the router's contents are not shown.
        async with s.get(console.base + "/nothing-here", allow_redirects=False) as r:
            assert r.status == 303
        # The public ones answer without a session.
        async with s.get(console.base + "/static/app.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/javascript")
        async with s.get(console.base + "/login") as r:
            assert r.status == 200
    assert "unsafe-inline" not in CSP
    assert "script-src 'self'" in CSP
    assert "style-src 'self'" in CSP


async def test_login_sets_a_strict_cookie_and_post_needs_the_csrf_token(console: Console) -> None:
    async with client() as s:
        async with s.get(f"{console.base}/login") as r:
            token = csrf_of(await r.text())
        form = {"csrf": token, "user": ADMIN[0], "password": ADMIN[1], "next": "/logs"}
        async with s.post(f"{console.base}/login", data=form, allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/logs"
            cookie = next(
                v for v in r.headers.getall("Set-Cookie") if v.startswith("tepi_session=")
            )
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "secure", "samesite", "path"} <= attrs, cookie
        assert "SameSite=Strict" in cookie
        async with s.get(f"{console.base}/") as r:
            assert r.status == 200
            page = await r.text()
        assert "Reload the config" in page  # an admin's page
        assert "<script>" not in page  # no inline script
        assert "style=" not in page  # no inline style
        csrf = csrf_of(page)
        # A change without the token, or with a wrong one: refused, nothing done.
        reload_url = f"{console.base}/admin/reload"
        async with s.post(reload_url, allow_redirects=False) as r:
            assert r.status == 403
        async with s.post(reload_url, data={"csrf": "x" + csrf}, allow_redirects=False) as r:
            assert r.status == 403
        async with s.post(reload_url, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/?reloaded=1"
        async with s.post(reload_url, headers={"X-CSRF-Token": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        await until(lambda: console.agent.log_text().count("reload: config applied") == 2, 10)
        # Logging out ends the session: the same cookie no longer opens a page.
        jar_cookie = s.cookie_jar.filter_cookies(URL(console.base))["tepi_session"].value
        async with s.post(f"{console.base}/logout", allow_redirects=False) as r:
            assert r.status == 403  # logging out is a POST like the others: it needs the token
        async with s.post(
            f"{console.base}/logout", data={"csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
    async with client() as s2:
        s2.cookie_jar.update_cookies({"tepi_session": jar_cookie}, URL(console.base))
        async with s2.get(f"{console.base}/", allow_redirects=False) as r:
            assert r.status == 303
    # A login form's token must be the one its cookie carries (no session to hold it yet).
    async with client() as s3:
        form = {"csrf": "made-up", "user": ADMIN[0], "password": ADMIN[1]}
        async with s3.post(f"{console.base}/login", data=form, allow_redirects=False) as r:
            assert r.status == 403


async def test_a_viewer_sees_pages_but_cannot_reach_an_admin_action(console: Console) -> None:
    async with client() as s:
        assert await login(s, console.base, *VIEWER) == 303
        async with s.get(f"{console.base}/") as r:
            page = await r.text()
        assert r.status == 200
        assert "Reload the config" not in page
        csrf = csrf_of(page)
        for path in ("/devices", "/devices/aq-1", "/logs"):
            async with s.get(console.base + path) as r:
                assert r.status == 200, path
        async with s.post(
            f"{console.base}/admin/reload", data={"csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 403
    assert "reload: config applied" not in console.agent.log_text()


async def test_login_is_rate_limited_and_the_lockout_ends_by_itself(console: Console) -> None:
    async with client() as s:
        assert await login(s, console.base, ADMIN[0], "wrong-1") == 401
        assert await login(s, console.base, "nobody", "wrong-2") == 401
        assert await login(s, console.base, ADMIN[0], "wrong-3") == 429  # locked out now
        # The right password is refused too while locked out.
        assert await login(s, console.base, *ADMIN) == 429
        locked_at = asyncio.get_running_loop().time()

        async def accepted() -> bool:
            return await login(s, console.base, *ADMIN) == 303

        async with asyncio.timeout(LOCKOUT_S + 10):
            while not await accepted():
                await asyncio.sleep(0.2)
        waited = asyncio.get_running_loop().time() - locked_at
        assert waited >= LOCKOUT_S - 0.5, waited
    assert "locked out after failed logins" in console.agent.log_text()


async def test_a_foreign_host_header_is_refused_on_the_console_and_the_status_port(
    console: Console,
) -> None:
    async with client() as s:
        for host, want in (("evil.example", 421), ("evil.example:8443", 421), ("localhost", 303)):
            async with s.get(
                console.base + "/", headers={"Host": host}, allow_redirects=False
            ) as r:
                assert r.status == want, (host, r.status)
        status = f"http://127.0.0.1:{console.status_port}/health"
        for host, want in (
            ("evil.example", 403),
            (f"rebind.example:{console.status_port}", 403),
            (f"127.0.0.1:{console.status_port}", 200),
            ("localhost", 200),
        ):
            async with s.get(status, headers={"Host": host}) as r:
                assert r.status == want, (host, r.status)
    # The unix socket is not a network: tepi status works as before.
    out = await asyncio.to_thread(
        run_tepi, "status", "--socket", str(console.config.parent / "status.sock")
    )
    assert "aq-1" in out.stdout, out.stderr


async def test_tepi_status_shows_the_fingerprint_and_the_certificate_is_kept(
    console: Console,
) -> None:
    port = int(console.base.rsplit(":", 1)[1])
    pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
    der = ssl.PEM_cert_to_DER_cert(pem)
    served = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    sock = str(console.config.parent / "status.sock")
    out = await asyncio.to_thread(run_tepi, "status", "--socket", sock)
    assert f"certificate SHA-256 {served}" in out.stdout, out.stdout
    assert console.base.removeprefix("https://") in out.stdout
    cert = console.data / "dashboard" / "cert.pem"
    before = cert.read_bytes()
    # It was made in a child process: the agent does not hold cryptography for it.
    assert console.agent.proc is not None
    assert "cryptography" not in Path(f"/proc/{console.agent.proc.pid}/maps").read_text()
    assert await console.agent.stop() == 0
    console.agent.start()
    await wait_listening(port, console.agent)
    await until(lambda: console.agent.log_text().count("web console on") == 2, 20, console.agent)
    assert cert.read_bytes() == before
    assert console.agent.log_text().count(served) == 2  # logged at each start, the same


async def test_the_live_stream_sends_values_and_the_agent_stops_with_one_open(
    console: Console,
) -> None:
    async with client() as s:
        assert await login(s, console.base, *VIEWER) == 303
        async with s.get(f"{console.base}/events?page=devices") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream"
            msgs = []
            async for line in r.content:
                if line.startswith(b"data: "):
                    msgs.append(json.loads(line[6:]))
                    if len(msgs) == 3:
                        break
            assert msgs[-1]["state"] == {"aq-1": "ok"}
            assert set(msgs[-1]["v"]) == {"aq-1/m0", "aq-1/m1"}
            assert msgs[0]["t"] < msgs[1]["t"] < msgs[2]["t"]
            # Each message carries only the points newer than the one before.
            seen = [p[0] for m in msgs for p in m["points"].get("aq-1", {}).get("m0", [])]
            assert seen == sorted(set(seen)), seen
            assert seen  # the ring had the device's values
            # The stream is still open: the agent stops anyway, cleanly and soon.
            started = asyncio.get_running_loop().time()
            assert await console.agent.stop(timeout=8) == 0
            assert asyncio.get_running_loop().time() - started < 6
            # The stream was ended by the agent, whole (its last chunk sent), not cut: a
            # request left in flight for aiohttp's shutdown raced it (a traceback in the log).
            async for _ in r.content:
                pass
            assert r.content.at_eof()
            assert "Traceback" not in console.agent.log_text()
    console.agent.start()  # (the fixture stops it again)
    await wait_listening(int(console.base.rsplit(":", 1)[1]), console.agent)


async def test_logs_by_level_escaped_and_an_unknown_device_is_404(console: Console) -> None:
    async with client() as s:
        # A user name is the client's text, and the failed login is logged with it.
        assert await login(s, console.base, "<img src=x onerror=alert(1)>", "nope") == 401
        assert await login(s, console.base, *VIEWER) == 303
        async with s.get(f"{console.base}/logs?level=warning") as r:
            page = await r.text()
        assert "failed login for" in page
        assert "<img src=x" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert "web console on" not in page  # an info line, under the level asked
        async with s.get(f"{console.base}/logs") as r:
            assert "web console on" in await r.text()
        async with s.get(f"{console.base}/devices/no-such-device") as r:
            assert r.status == 404


async def test_a_dashboard_change_needs_a_restart_and_the_overview_says_so(
    console: Console,
) -> None:
    cfg = yaml.safe_load(console.config.read_text())
    cfg["dashboard"]["session_ttl"] = "1h"
    console.config.write_text(yaml.safe_dump(cfg))
    async with client() as s:
        assert await login(s, console.base, *ADMIN) == 303
        async with s.get(f"{console.base}/") as r:
            csrf = csrf_of(await r.text())
        async with s.post(f"{console.base}/admin/reload", data={"csrf": csrf}) as r:
            page = await r.text()  # the overview, after the redirect
        assert str(r.url).endswith("/?reloaded=1")
        assert "Config reloaded." in page
        assert "restart to apply: dashboard" in page
    health = await asyncio.to_thread(fetch, console.config.parent / "status.sock", "/health")
    assert health["config"]["restart_needed"] == ["dashboard"]


async def test_logins_at_once_are_checked_one_at_a_time_and_stop_at_the_lockout(
    console: Console,
) -> None:
    async with client() as s:
        got = await asyncio.gather(
            *(login(s, console.base, ADMIN[0], f"bad-{i}") for i in range(8))
        )
    assert sorted(got) == [401, 401] + [429] * 6, got
    # Only the three before the lockout cost a password check (each 16 MiB of scrypt); the
    # rest waited their turn and were refused without one.
    assert console.agent.log_text().count("failed login for") == 3


async def test_the_pages_speak_the_browsers_language_or_the_users_choice(
    console: Console,
) -> None:
    """Vietnamese for a browser that prefers it, from the login page on; the switch in the
    header keeps the user's choice (a cookie) over the browser's; a language the console
    has not is a 404, and the switch goes back to a path on this console only."""
    vi = {"Accept-Language": "vi-VN,vi;q=0.9,en-US;q=0.6"}
    async with client() as s:
        async with s.get(f"{console.base}/login", headers=vi) as r:
            page = await r.text()
            assert r.headers["Content-Language"] == "vi"
        assert '<html lang="vi">' in page
        assert "Mật khẩu" in page
        assert 'href="/lang/en?next=/login"' in page  # the switch, to English
        async with s.get(f"{console.base}/login", headers={"Accept-Language": "en"}) as r:
            assert "Password" in await r.text()
        assert await login(s, console.base, *VIEWER) == 303
        async with s.get(f"{console.base}/devices", headers=vi) as r:
            page = await r.text()
        assert "Thiết bị" in page
        assert "Tổng quan" in page
        # The user chooses English: it wins over the browser's Vietnamese, on every page.
        async with s.get(
            f"{console.base}/lang/en?next=/devices", headers=vi, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/devices"
            cookie = r.headers["Set-Cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "secure", "samesite"} <= attrs, cookie
        async with s.get(f"{console.base}/devices", headers=vi) as r:
            page = await r.text()
            assert r.headers["Content-Language"] == "en"
        assert "Devices" in page
        assert 'href="/lang/vi?next=/devices"' in page
        async with s.get(f"{console.base}/lang/fr", allow_redirects=False) as r:
            assert r.status == 404
        for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            async with s.get(
                f"{console.base}/lang/vi", params={"next": evil}, allow_redirects=False
            ) as r:
                assert r.headers["Location"] == "/", evil
