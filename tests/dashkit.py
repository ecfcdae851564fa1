"""What the web console's tests share: the users, an HTTPS client, logging in, a form's token;
Debian's Chromium through Playwright, a page that records CSP violations, waiting on the
page's own state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from helpers import AgentProc, Broker, agent_config, wait_listening
from ports import restartable_port

from tepi.gateway.dashauth import Users
from tepi_sim import Simulator

ADMIN, VIEWER = ("ana", "admin-pass-1"), ("bo", "viewer-pass-2")
CHROMIUM = Path("/usr/bin/chromium")


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


@contextlib.asynccontextmanager
async def chromium(api: Any) -> AsyncIterator[Any]:
    """Debian's Chromium (apt, launched by its path; no browser download), through
    ``playwright.async_api`` (``api``)."""
    async with api.async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox"],  # root in CI containers
        )
        try:
            yield b
        finally:
            await b.close()


async def new_page(browser: Any, width: int, violations: list[str]) -> Any:
    """A page ``width`` px wide; every console error and CSP violation goes to ``violations``."""
    context = await browser.new_context(
        ignore_https_errors=True,  # the console's self-signed certificate
        viewport={"width": width, "height": 800},
        device_scale_factor=1,
    )
    page = await context.new_page()
    page.set_default_timeout(15_000)

    def on_console(msg: Any) -> None:
        if "Content Security Policy" in msg.text or msg.type == "error":
            violations.append(f"{msg.type}: {msg.text}")

    page.on("console", on_console)
    return page


async def until_js(page: Any, expr: str, arg: Any = None, timeout: float = 15.0) -> None:
    """Until the JavaScript function ``expr`` returns true in the page. Asked from here
    (Playwright's evaluate is not subject to the page's CSP), not by wait_for_function, whose
    polling the console's CSP blocks (no eval): that block is what the CSP is for."""
    async with asyncio.timeout(timeout):
        while not await page.evaluate(expr, arg):
            await asyncio.sleep(0.05)


async def log_in(page: Any, base: str, user: str, password: str, landing: str = "/devices") -> None:
    await page.goto(f"{base}/login?next={landing}")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{landing}")


@dataclass
class Console:
    """A running ``tepi run`` with its console on: its base URL, the agent, where the
    screenshots go (``$TEPI_SCREENSHOTS`` when set: docs/dashboard holds the copies the docs
    show), the status socket."""

    base: str
    agent: AgentProc
    shots: Path
    status: Path


@dataclass
class Site(Console):
    """A console with the simulator its agent polls (the browser tests' fixture)."""

    sim: Simulator


@contextlib.asynccontextmanager
async def console(tmp: Path, devices: list[dict[str, Any]], **top: Any) -> AsyncIterator[Console]:
    """A real ``tepi run`` (gateway gw-bridge-07) polling ``devices``, publishing to its own
    Mosquitto, its console on a free port with an admin and a viewer (:data:`ADMIN`,
    :data:`VIEWER`); ``top`` adds top-level config sections (``rules=[...]``). At the end, no
    traceback in its log."""
    broker = Broker(tmp)
    await broker.start()
    port = restartable_port()  # kept for the console if a test restarts the agent (ports.py)
    status = tmp / "status.sock"
    cfg = agent_config(
        tmp,
        broker.port,
        devices,
        gateway_id="gw-bridge-07",
        status__socket=str(status),
        dashboard__listen=f"127.0.0.1:{port}",
    )
    if top:
        cfg.write_text(yaml.safe_dump(yaml.safe_load(cfg.read_text()) | top, sort_keys=False))
    users = Users(tmp / "data" / "dashboard" / "users")
    users.set(ADMIN[0], "admin", ADMIN[1])
    users.set(VIEWER[0], "viewer", VIEWER[1])
    agent = AgentProc(cfg, tmp / "agent.log")
    agent.start()
    shots = Path(os.environ.get("TEPI_SCREENSHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        await wait_listening(port, agent)
        yield Console(f"https://127.0.0.1:{port}", agent, shots, status)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            assert await agent.stop() == 0
        await broker.stop()
    assert "Traceback" not in agent.log_text(), agent.log_text()


async def fits(page: Any, name: str, shots: Path, ext: str = "png") -> None:
    """Nothing wider than the screen (a phone would scroll sideways) at 360 and 1280 px, and
    a screenshot at each (``ext`` jpg for a page with a camera's picture: a PNG of its noise
    is 400 KB); the page is left at 1280 px."""
    for width in (360, 1280):
        await page.set_viewport_size({"width": width, "height": 800})
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (name, width, overflow)
        shot = shots / f"{name}-{width}.{ext}"
        if ext == "jpg":
            await page.screenshot(path=shot, full_page=True, type="jpeg", quality=70)
        else:
            await page.screenshot(path=shot, full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 800})
