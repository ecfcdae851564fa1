"""The web console's HTTP side, on aiohttp: routes, the guards, the live stream, the assets.

`tepi.gateway.dashboard` imports this module only when the console is on (aiohttp's RSS).

Every request passes, in order:

1. the Host check (421 for a name the box does not answer to: DNS rebinding);
2. the session check: a route not in :data:`PUBLIC` needs a session cookie; a page without
   one redirects to the login page (303), anything else is refused (401);
3. on every POST, the CSRF token (the form's ``csrf`` field or the ``X-CSRF-Token`` header)
   must be the session's (403); the login form carries a token of its own, paired with a
   cookie (double submit), since there is no session yet;
4. a route under ``/admin/`` needs the admin role (403 for a viewer).

Every answer carries a strict Content-Security-Policy (scripts and styles from the console
itself only, nothing inline), ``X-Frame-Options: DENY``, ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import importlib.resources
import logging
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web

from tepi.gateway.config import DashboardSection
from tepi.gateway.dashadmin import AdminPages
from tepi.gateway.dashauth import LoginLimiter, Session, Sessions, Users, host_allowed
from tepi.gateway.dashcameras import CameraPages
from tepi.gateway.dashcommission import Commissioning
from tepi.gateway.dashhistory import History
from tepi.gateway.dashpages import (
    clock,
    device_page,
    devices_page,
    layout,
    login_page,
    logs_page,
    overview_fields,
    overview_page,
    strip_svg,
    value_text,
)
from tepi.gateway.dashtext import LANGS, negotiate, reset, t, use
from tepi.gateway.status import problems

if TYPE_CHECKING:
    from tepi.gateway.dashboard import DashboardAccess
    from tepi.gateway.dashconfig import ConsoleActions

log = logging.getLogger("tepi.gateway.dashboard")
audit = logging.getLogger("tepi.audit")

COOKIE = "tepi_session"
LOGIN_COOKIE = "tepi_login"
# The routes anyone may ask (method, canonical path). Everything else needs a session
# (tests/test_gateway/test_dashboard.py enumerates the router against this).
PUBLIC = frozenset(
    {("GET", "/login"), ("POST", "/login"), ("GET", "/static/{name}"), ("GET", "/lang/{code}")}
)
LANG_COOKIE = "tepi_lang"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TICK_S = 1.0  # the live stream's period
OVERVIEW_EVERY = 5  # ticks between the overview's figures
MAX_STREAMS = 16  # live streams at once (each is a task and a socket)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gz: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The files of ``dashboard_assets`` (package data, in the wheel), with their gzip."""
    out: dict[str, Asset] = {}
    root = importlib.resources.files("tepi.gateway") / "dashboard_assets"
    for item in root.iterdir():
        suffix = Path(item.name).suffix
        if item.is_file() and suffix in _TYPES:
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            out[item.name] = Asset(body, gzip.compress(body, 9, mtime=0), _TYPES[suffix], etag)
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashApp:
    """The console's aiohttp application for one agent."""

    def __init__(
        self,
        section: DashboardSection,
        access: DashboardAccess,
        users_file: Path,
        names: frozenset[str],
    ) -> None:
        self.access = access
        self.names = names
        self.users = Users(users_file)
        self.sessions = Sessions(section.session_ttl)
        self.limiter = LoginLimiter(section.login_attempts, section.lockout)
        self.history = History()
        self.assets = load_assets()
        self.streams = 0
        # The requests that do not end by themselves (live streams, a bus scan): at a stop
        # they are told (``closing``) and waited for, so that none is in flight when aiohttp
        # shuts down. Its shutdown's wait for a request in flight, cut by its timeout as the
        # request ends, logged an InvalidStateError traceback (aiohttp 3.14).
        self.closing = asyncio.Event()
        self.endless: set[asyncio.Task[Any]] = set()
        # One password check at a time: each is 16 MiB of scrypt for about 50 ms on a Pi, and
        # a flood of logins must neither take the box's RAM nor every worker thread.
        self._checking = asyncio.Semaphore(1)
        self.language = section.language
        app = web.Application(
            middlewares=[self._language, self._host, self._auth], client_max_size=64 * 1024
        )
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/login", self._get_login)
        r.add_post("/login", self._post_login)
        r.add_post("/logout", self._post_logout)
        r.add_get("/", self._get_overview)
        r.add_get("/devices", self._get_devices)
        r.add_get("/devices/{device}", self._get_device)
        r.add_get("/logs", self._get_logs)
        r.add_get("/events", self._get_events)
        r.add_post("/admin/reload", self._post_reload)
        self.admin = AdminPages(self)
        self.admin.routes(r)
        Commissioning(self).routes(r)
        CameraPages(self).routes(r)
        r.add_get("/static/{name}", self._get_static)
        r.add_get("/lang/{code}", self._get_lang)
        self.app = app
        # A live stream never ends by itself: at a stop, wait for none (the agent's deadline).
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )

    async def start(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, ssl_context=ctx, backlog=32).start()

    async def stop(self) -> None:
        """End the live streams and scans, wait for them (at most a second), then close."""
        self.closing.set()
        if self.endless:
            await asyncio.wait(set(self.endless), timeout=1.0)
        await self.runner.cleanup()

    def endless_request(self) -> None:
        """The handler calling this answers until ``closing`` (or its client goes)."""
        task = asyncio.current_task()
        if task is not None:
            self.endless.add(task)
            task.add_done_callback(self.endless.discard)

    # ---- guards ------------------------------------------------------------------------

    async def _headers(self, _req: web.Request, resp: web.StreamResponse) -> None:
        h = resp.headers
        h["Content-Security-Policy"] = CSP
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def _language(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The words of this request's pages: the user's choice, ``dashboard.language``, or
        the browser's (`tepi.gateway.dashtext.negotiate`)."""
        code = negotiate(
            request.cookies.get(LANG_COOKIE),
            self.language,
            request.headers.get("Accept-Language"),
        )
        token = use(code)
        try:
            resp = await handler(request)
        finally:
            reset(token)
        if not resp.prepared:  # a stream (the live pages) sent its headers long ago
            resp.headers["Content-Language"] = code
        return resp

    async def _get_lang(self, req: web.Request) -> web.StreamResponse:
        """The user's language (a cookie, a year), then back to the page (``next``)."""
        code = req.match_info["code"]
        if code not in LANGS:
            raise web.HTTPNotFound(text=t("err.lang") + "\n")
        back = req.query.get("next") or "/"
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = "/"  # a path on this console only
        resp = web.HTTPSeeOther(back[:512])
        resp.set_cookie(
            LANG_COOKIE, code, secure=True, httponly=True, samesite="Strict", path="/",
            max_age=365 * 86400,
        )  # fmt: skip
        raise resp

    @web.middleware
    async def _host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self.names, any_ip=True):
            return web.Response(status=421, text=t("err.host") + "\n")
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else None
        method = "GET" if request.method == "HEAD" else request.method
        if (method, path) in PUBLIC:
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if method == "GET" and path != "/events":
                raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="/"))
            return web.Response(status=401, text=t("err.login") + "\n")
        if method != "GET":
            sent = request.headers.get("X-CSRF-Token")
            if sent is None and request.content_type == "application/x-www-form-urlencoded":
                sent = str((await request.post()).get("csrf", ""))
            if not sent or not hmac.compare_digest(sent, session.csrf):
                return web.Response(status=403, text=t("err.csrf") + "\n")
        if path is not None and path.startswith("/admin/") and session.role != "admin":
            return web.Response(status=403, text=t("err.forbidden") + "\n")
        request["session"] = session
        return await handler(request)

    def page(self, req: web.Request, title: str, page: str, body: str) -> web.Response:
        session: Session = req["session"]
        text = layout(
            title, page, body, gateway=self.access.gateway, session=session, csrf=session.csrf,
            path=req.path_qs,
        )  # fmt: skip
        resp = web.Response(text=text, content_type="text/html")
        resp.enable_compression()
        return resp

    # ---- login -------------------------------------------------------------------------

    def _login(self, req: web.Request, error: str | None = None, status: int = 200) -> web.Response:
        # One token while the cookie lasts: a second login page (another tab, the browser's
        # own request for an icon, sent here) must not void the form already shown.
        token = req.cookies.get(LOGIN_COOKIE) or ""
        if len(token) < 32:
            token = secrets.token_urlsafe(24)
        next_url = _safe_next(req.query.get("next") or "/")
        no_users = not self.users.load()
        text = login_page(self.access.gateway, token, next_url, error, no_users)
        resp = web.Response(text=text, content_type="text/html", status=status)
        resp.set_cookie(
            LOGIN_COOKIE, token, httponly=True, secure=True, samesite="Strict", path="/login"
        )
        return resp

    async def _get_login(self, req: web.Request) -> web.Response:
        return self._login(req)

    async def _post_login(self, req: web.Request) -> web.Response:
        client = req.remote or "?"
        left = self.limiter.locked(client)
        if left > 0:
            resp = self._login(req, t("login.locked", seconds=f"{left:.0f}"), 429)
            resp.headers["Retry-After"] = f"{left:.0f}"
            return resp
        form = await req.post()
        sent, want = str(form.get("csrf", "")), req.cookies.get(LOGIN_COOKIE, "")
        if not want or not hmac.compare_digest(sent, want):
            return self._login(req, t("login.expired"), 403)
        name, password = str(form.get("user", ""))[:64], str(form.get("password", ""))[:256]
        async with self._checking:
            if self.limiter.locked(client) > 0:  # locked out while this one waited its turn
                return self._login(
                    req, t("login.locked", seconds=f"{self.limiter.lockout:.0f}"), 429
                )
            user = await asyncio.to_thread(self.users.check, name, password)
        if user is None:
            locked = self.limiter.failed(client)
            audit.warning("dashboard: failed login for %r from %s", name, client)
            if locked:
                log.warning("dashboard: %s locked out after failed logins", client)
                resp = self._login(
                    req, t("login.locked", seconds=f"{self.limiter.lockout:.0f}"), 429
                )
                resp.headers["Retry-After"] = f"{self.limiter.lockout:.0f}"
                return resp
            return self._login(req, t("login.failed"), 401)
        self.limiter.succeeded(client)
        session = self.sessions.create(user.name, user.role)
        audit.info("dashboard: %s (%s) logged in from %s", user.name, user.role, client)
        resp = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
        resp.set_cookie(
            COOKIE,
            session.token,
            httponly=True,
            secure=True,
            samesite="Strict",
            path="/",
            max_age=int(self.sessions.ttl),
        )
        resp.del_cookie(LOGIN_COOKIE, path="/login")
        raise resp

    async def _post_logout(self, req: web.Request) -> web.Response:
        session: Session = req["session"]
        self.sessions.drop(session.token)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # ---- pages -------------------------------------------------------------------------

    async def _get_overview(self, req: web.Request) -> web.Response:
        h = self.access.health()
        health = h.payload()
        strip = strip_svg(
            self.access.link_history(), self.access.started, h.uplink.connected, time.time()
        )
        msg = {"1": t("ov.reloaded"), "0": t("ov.reload_failed")}.get(req.query.get("reloaded", ""))
        session: Session = req["session"]
        body = overview_page(
            h, problems(health), strip, admin=session.role == "admin", csrf=session.csrf,
            message=msg,
        )  # fmt: skip
        return self.page(req, t("nav.overview"), "overview", body)

    async def _get_devices(self, req: web.Request) -> web.Response:
        return self.page(req, t("dev.title"), "devices", devices_page(self.access.devices()))

    async def _get_device(self, req: web.Request) -> web.Response:
        dev = req.match_info["device"]
        d = self.access.devices().get(dev)
        if d is None:
            raise web.HTTPNotFound(text=t("dev.unknown", device=dev))
        lines = self.access.logs(1000, "warning")["lines"]
        named = re.compile(rf"(?<![\w.-]){re.escape(dev)}(?![\w-])")  # aq-1, not aq-10
        mine = [x for x in lines if named.search(x["message"])][-20:][::-1]
        return self.page(req, dev, "device", device_page(dev, d, mine))

    async def _get_logs(self, req: web.Request) -> web.Response:
        level = req.query.get("level", "info")
        if level not in ("debug", "info", "warning", "error"):
            level = "info"
        return self.page(
            req, t("logs.title"), "logs", logs_page(self.access.logs(300, level), level)
        )

    async def _post_reload(self, req: web.Request) -> web.Response:
        session: Session = req["session"]
        audit.info("dashboard: %s asked for a config reload", session.user)
        ok = await self.access.reload()
        raise web.HTTPSeeOther(f"/?reloaded={int(ok)}")

    # ---- config, alarms, commissioning (dashadmin, dashcommission) ---------------------

    def actions(self) -> ConsoleActions:
        if self.access.actions is None:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        return self.access.actions

    async def _get_static(self, req: web.Request) -> web.Response:
        asset = self.assets.get(req.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        if req.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers={"ETag": asset.etag})
        gz = "gzip" in req.headers.get("Accept-Encoding", "")
        resp = web.Response(body=asset.gz if gz else asset.body, content_type=asset.content_type)
        if gz:
            resp.headers["Content-Encoding"] = "gzip"
        resp.headers["ETag"] = asset.etag
        resp.headers["Cache-Control"] = "no-cache"  # revalidated: a new version shows at once
        resp.headers["Vary"] = "Accept-Encoding"
        return resp

    # ---- the live stream ---------------------------------------------------------------

    async def _get_events(self, req: web.Request) -> web.StreamResponse:
        """Server-Sent Events, one ``data:`` JSON a second while the page is open: each
        device's state and worded values, the new sparkline points since the last one, on
        the overview its figures every few seconds, and on the alarms page a signature of
        the alarms' state. Ends when the client goes."""
        if self.streams >= MAX_STREAMS:
            return web.Response(status=503, text="too many live pages open\n")
        page = req.query.get("page", "devices")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.headers["X-Accel-Buffering"] = "no"
        self.streams += 1
        self.endless_request()
        seen = _int(req.query.get("seen"))  # the logs page: the records it shows up to
        floor = logging.getLevelNamesMapping().get(req.query.get("level", "info").upper(), 20)
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await resp.prepare(req)
            since, tick = 0.0, 0
            while True:
                if page == "logs":
                    msg, seen = self._log_tick(seen, floor)
                else:
                    msg = self._tick(page, since, tick)
                since = msg["t"]
                await resp.write(b"data: " + orjson.dumps(msg) + b"\n\n")
                tick += 1
                # The period's pause, or the stop: asyncio.wait arms a timer and no scope.
                await asyncio.wait((closing,), timeout=TICK_S)
                if self.closing.is_set():
                    break
        except (ConnectionResetError, ConnectionError):
            pass  # the page was closed
        finally:
            closing.cancel()
            self.streams -= 1
        return resp

    def _log_tick(self, seen: int, floor: int) -> tuple[dict[str, Any], int]:
        """The log records since the ``seen``-th, at ``floor`` or above, oldest first (at
        most the ring's), worded as the page shows them; and the count seen now."""
        tail = self.access.logs(1000, None)
        new = max(0, min(tail["seen"] - seen, len(tail["lines"])))
        lines = tail["lines"][len(tail["lines"]) - new :]
        names = logging.getLevelNamesMapping()
        msg: dict[str, Any] = {"t": time.time()}
        msg["log"] = [
            [clock(x["ts"]), x["level"], x["logger"], x["message"]]
            for x in lines
            if names.get(str(x["level"]).upper(), 0) >= floor
        ]
        return msg, int(tail["seen"])

    def _tick(self, page: str, since: float, tick: int) -> dict[str, Any]:
        now = time.time()
        msg: dict[str, Any] = {"t": now}
        if page == "overview":
            if tick % OVERVIEW_EVERY == 0:
                h = self.access.health()
                self.history.add("_buffer", "depth", now, h.buffer.readings)
                self.history.add("_buffer", "oldest", now, h.buffer.oldest_age_s or 0.0)
                msg["k"] = overview_fields(h, now)
            msg["points"] = {"_buffer": self.history.series("_buffer", since, now)}
            return msg
        if page == "alarms":
            # What changes when an alarm fires, resolves or is acknowledged (its message
            # sent): the page reloads itself when this does. Counters only, no SQL.
            a = self.access.health().alarms
            if a is not None:
                msg["alarms"] = f"{a.fired}:{a.resolved}:{a.sent}:{a.pending}:" + ",".join(
                    a.firing_rules
                )
            return msg
        devices = self.access.devices()
        self.history.record(devices)
        msg["state"] = {dev: d["state"] for dev, d in devices.items()}
        msg["v"] = {
            f"{dev}/{m}": value_text(v) for dev, d in devices.items() for m, v in d["last"].items()
        }
        points = {dev: self.history.series(dev, since, now) for dev in devices}
        msg["points"] = {dev: p for dev, p in points.items() if p}
        return msg


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _safe_next(url: str) -> str:
    """A redirect target after login: a path on this console only (not //host, not a URL)."""
    if not url.startswith("/") or url.startswith(("//", "/login")) or "\\" in url:
        return "/"
    return url[:512]
