"""The console's config page, over HTTPS against a real ``tepi run`` and a real Mosquitto:
the check words every problem as ``tepi check`` does (file:line, key path, hint); an apply
with problems changes nothing; a good one (a new device, another poll interval) runs on trial
and is kept once confirmed; one that breaks the uplink comes back by itself; the audit line
and the config's history name the console's user; a viewer reads the config redacted and
cannot change it; a change without the CSRF token is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from dashkit import ADMIN, VIEWER, client, csrf_of, login
from helpers import AgentProc, Broker, agent_config, run_tepi, until, wait_listening

from tepi.gateway.dashauth import Users
from tepi.gateway.dashconfig import unredact
from tepi.gateway.localbroker import free_port
from tepi.gateway.logring import redact
from tepi.gateway.status import fetch

pytestmark = pytest.mark.timeout(120)

CONFIRM_S = 5


@dataclass
class Box:
    base: str
    agent: AgentProc
    config: Path
    data: Path
    sock: Path
    tmp: Path

    def state(self) -> dict[str, Any]:
        path = self.data / "config" / "state.json"
        out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return out

    async def devices(self) -> dict[str, Any]:
        out: dict[str, Any] = await asyncio.to_thread(fetch, self.sock, "/devices")
        return out

    async def until_devices(self, pred: Any, timeout: float = 20) -> dict[str, Any]:
        """The status API's devices once ``pred`` holds of them (asked every 100 ms)."""
        deadline = time.monotonic() + timeout
        while not pred(devs := await self.devices()):
            assert time.monotonic() < deadline, devs
            await asyncio.sleep(0.1)
        return devs


AQ1 = {"id": "aq-1", "driver": "synthetic", "metrics": 2, "poll_interval": "500ms"}


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    async with running_box(tmp_path, [AQ1]) as b:
        yield b


@contextlib.asynccontextmanager
async def running_box(tmp_path: Path, devices: list[dict[str, Any]]) -> AsyncIterator[Box]:
    broker = Broker(tmp_path)
    await broker.start()
    port = free_port()
    config = agent_config(
        tmp_path,
        broker.port,
        devices,
        status__socket=str(tmp_path / "status.sock"),
        dashboard__listen=f"127.0.0.1:{port}",
        commands__confirm_timeout=f"{CONFIRM_S}s",
    )
    users = Users(tmp_path / "data" / "dashboard" / "users")
    users.set(ADMIN[0], "admin", ADMIN[1])
    users.set(VIEWER[0], "viewer", VIEWER[1])
    agent = AgentProc(config, tmp_path / "agent.log")
    agent.start()
    try:
        await wait_listening(port, agent)
        b = Box(
            f"https://127.0.0.1:{port}",
            agent,
            config,
            tmp_path / "data",
            tmp_path / "status.sock",
            tmp_path,
        )
        await until(lambda: "connected to broker" in agent.log_text(), 30, agent)
        yield b
        assert await agent.stop() == 0
        assert "Traceback" not in agent.log_text(), agent.log_text()
    finally:
        await agent.stop()
        await broker.stop()


def edited(box: Box, change: dict[str, Any]) -> str:
    cfg = yaml.safe_load(box.config.read_text())
    for key, value in change.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return str(yaml.safe_dump(cfg, sort_keys=False))


async def post(s: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, str]:
    async with s.post(url, data=form, allow_redirects=False) as r:
        return r.status, await r.text()


def problems_shown(page: str) -> list[str]:
    return [html.unescape(x) for x in re.findall(r"<li><code>(.*?)</code></li>", page, re.S)]


async def test_check_and_a_bad_apply_show_tepi_checks_errors_and_change_nothing(box: Box) -> None:
    bad = box.config.read_text().replace("poll_interval: 500ms", "poll_interval: fast") + (
        "bogus_section: 1\n"
    )
    # What `tepi check` says of the same text in the same file name.
    copy = box.tmp / "copy" / box.config.name
    copy.parent.mkdir()
    copy.write_text(bad)
    done = run_tepi("check", "--config", str(copy))
    assert done.returncode != 0
    *issues, summary = done.stderr.splitlines()
    assert summary == f"{copy}: 2 problems found", done.stderr
    want = [x.replace(str(copy), str(box.config)) for x in issues]
    assert len(want) == 2, done.stderr
    assert any(re.match(rf"{re.escape(str(box.config))}:\d+: devices\[0\]", w) for w in want), want
    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        async with s.get(f"{box.base}/config") as r:
            page = await r.text()
        assert r.status == 200
        assert "<textarea" in page
        assert "aq-1" in page
        csrf = csrf_of(page)
        status, page = await post(s, f"{box.base}/admin/config/check", {"csrf": csrf, "text": bad})
        assert status == 200
        assert 'data-ok="bad"' in page
        assert problems_shown(page) == want
        status, page = await post(s, f"{box.base}/admin/config/apply", {"csrf": csrf, "text": bad})
        assert status == 200
        assert 'data-ok="bad"' in page
        assert problems_shown(page) == want
        assert "nothing changed" in page
        # The editor keeps the text sent, to fix it.
        assert "bogus_section" in page
        # The good one checks clean, and a check applies nothing.
        good = edited(box, {})
        status, page = await post(s, f"{box.base}/admin/config/check", {"csrf": csrf, "text": good})
        assert status == 200
        assert "No problems found" in page
    assert box.state() == {} or box.state()["active"] is None
    assert "command config.apply" not in box.agent.log_text()
    assert "dashboard: ana's config apply refused: 2 problem(s)" in box.agent.log_text()


async def test_a_good_apply_takes_effect_and_the_audit_names_the_user(box: Box) -> None:
    devices = [
        {"id": "aq-1", "driver": "synthetic", "metrics": 2, "poll_interval": "200ms"},
        {"id": "aq-2", "driver": "synthetic", "metrics": 1, "poll_interval": "200ms"},
    ]
    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        async with s.get(f"{box.base}/config") as r:
            csrf = csrf_of(await r.text())
        status, page = await post(
            s,
            f"{box.base}/admin/config/apply",
            {"csrf": csrf, "text": edited(box, {"devices": devices}).replace("\n", "\r\n")},
        )
        assert status == 200, page
        assert "Applied and confirmed: v1" in page
        # The page's history names the user.
        assert "dashboard:ana:" in page
    state = box.state()
    assert state["active"] == "v1"
    (entry,) = state["history"]
    assert entry["state"] == "confirmed"
    assert entry["by"].startswith("dashboard:ana:")
    log = box.agent.log_text()
    assert re.search(r"command config\.apply id=dashboard:ana:\w+ from the web console", log), log
    # It took effect: the new device polls, and aq-1 at its new interval (200 ms: 10 polls
    # take 2 s, where 500 ms would take 5).
    devs = await box.until_devices(lambda d: "aq-2" in d and d["aq-2"]["polls"] >= 3)
    assert devs["aq-2"]["state"] == "ok"
    started, before = time.monotonic(), devs["aq-1"]["polls"]
    await box.until_devices(lambda d: d["aq-1"]["polls"] >= before + 10)
    assert time.monotonic() - started < 4.0
    applied = yaml.safe_load((box.data / "config" / "v1.yaml").read_text())
    assert applied["devices"][0]["poll_interval"] == "200ms"


async def test_a_config_that_breaks_the_uplink_rolls_back_by_itself(box: Box) -> None:
    broken = edited(box, {"uplink__url": f"mqtt://127.0.0.1:{free_port()}"})
    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        async with s.get(f"{box.base}/config") as r:
            csrf = csrf_of(await r.text())
        status, page = await post(
            s, f"{box.base}/admin/config/apply", {"csrf": csrf, "text": broken}
        )
        assert status == 200
        assert 'data-ok="bad"' in page
        assert "Rolled back" in page
        assert f"not confirmed within {CONFIRM_S} s" in page
    state = box.state()
    assert state["active"] is None
    assert state["history"][-1]["state"] == "rolled_back"
    assert state["history"][-1]["by"].startswith("dashboard:ana:")
    await until(lambda: box.agent.log_text().count("connected to broker") >= 2, 30, box.agent)


async def test_a_viewer_reads_it_redacted_and_cannot_change_it_nor_anyone_without_csrf(
    box: Box,
) -> None:
    good = edited(box, {})
    async with client() as s:
        assert await login(s, box.base, *VIEWER) == 303
        async with s.get(f"{box.base}/config") as r:
            page = await r.text()
        assert r.status == 200
        assert "<textarea" not in page
        assert '<pre class="config">' in page
        assert "aq-1" in page
        csrf = csrf_of(page)
        for action in ("check", "apply"):
            status, _ = await post(
                s, f"{box.base}/admin/config/{action}", {"csrf": csrf, "text": good}
            )
            assert status == 403, action
    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        status, _ = await post(s, f"{box.base}/admin/config/apply", {"text": good})
        assert status == 403
        status, _ = await post(
            s, f"{box.base}/admin/config/apply", {"csrf": "forged", "text": good}
        )
        assert status == 403
    assert box.state() == {}
    assert "command config.apply" not in box.agent.log_text()


def test_a_redacted_line_left_as_shown_gets_its_secret_back() -> None:
    original = (
        "cameras:\n- id: gate\n  url: rtsp://cam:s3cret-pw@10.0.0.9/live\n"
        "- id: yard\n  url: rtsp://cam:other-pw@10.0.0.8/live\n"
    )
    shown = redact(original)
    assert "s3cret-pw" not in shown
    assert "other-pw" not in shown
    # Both lines left as shown: each gets its own secret back (they redact differently).
    assert unredact(shown, original) == original
    # A new secret written in: kept as written.
    edited_text = shown.replace("rtsp://cam:***@10.0.0.9", "rtsp://cam:new-pw@10.0.0.9")
    assert "rtsp://cam:new-pw@10.0.0.9" in unredact(edited_text, original)
    # Two secrets that redact alike: neither is guessed.
    twins = "a:\n  password: one-1\nb:\n  password: two-2\n"
    assert unredact(redact(twins), twins) == redact(twins)


async def scan_events(s: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    out = []
    async with s.get(url) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


async def test_commissioning_is_an_admins_and_adding_a_bad_device_shows_its_lines(
    tmp_path: Path,
) -> None:
    line = {"id": "line-1", "driver": "modbus-rtu", "port": "/dev/tepi-test-line", "unit": 1,
            "registers": [{"name": "x", "address": 0}]}  # fmt: skip
    async with running_box(tmp_path, [AQ1, line]) as box:
        base = f"{box.base}/admin/commission"
        async with client() as s:
            assert await login(s, box.base, *VIEWER) == 303
            async with s.get(base, allow_redirects=False) as r:
                assert r.status == 403
            async with s.get(f"{box.base}/config") as r:
                csrf = csrf_of(await r.text())
            async with s.get(f"{base}/scan?csrf={csrf}&port=127.0.0.1:1&units=1") as r:
                assert r.status == 403
        async with client() as s:
            assert await login(s, box.base, *ADMIN) == 303
            async with s.get(base) as r:
                page = await r.text()
            assert r.status == 200
            assert "Scan" in page
            csrf = csrf_of(page)
            # The stream needs the form's token (it is a GET: the query carries it).
            async with s.get(f"{base}/scan?port=127.0.0.1:1&units=1") as r:
                assert r.status == 403
            # Bad arguments and a busy serial port: said in the stream, nothing asked.
            (ev,) = await scan_events(s, f"{base}/scan?csrf={csrf}&port=127.0.0.1:1&units=0-300")
            assert ev["end"] is True
            assert "0-300" in ev["error"]
            (ev,) = await scan_events(s, f"{base}/scan?csrf={csrf}&port=/dev/tepi-test-line")
            assert "line-1" in ev["error"], ev
            # Nothing listens on a closed port: the stream says which units were asked.
            closed = f"127.0.0.1:{free_port()}"
            events = await scan_events(
                s, f"{base}/scan?csrf={csrf}&port={closed}&units=1-2&timeout=0.1"
            )
            assert events[-1]["end"] is True
            assert events[-1]["found"] == []
            # Adding a device with a problem opens the config page with the whole text and
            # the problem, its line naming that text's line.
            bad = "- id: aq-9\n  driver: synthetic\n  metrics: 1\n  poll_interval: often\n"
            status, page = await post(s, f"{base}/add", {"csrf": csrf, "device": bad})
            assert status == 200
            (problem,) = problems_shown(page)
            m = re.match(
                rf"{re.escape(str(box.config))}:(\d+): devices\[2\]\.poll_interval", problem
            )
            assert m is not None, problem
            shown = re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S)
            assert shown is not None
            text_lines = html.unescape(shown.group(1)).splitlines()
            assert "poll_interval: often" in text_lines[int(m.group(1)) - 1]
            # Not YAML at all: said, and the text kept.
            status, page = await post(s, f"{base}/add", {"csrf": csrf, "device": "[: x"})
            assert "Not YAML" in page
            # Without the token: refused.
            status, _ = await post(s, f"{base}/add", {"device": bad})
            assert status == 403
        assert box.state() == {}
        assert "command config.apply" not in box.agent.log_text()


async def test_a_device_added_with_a_profile_is_applied_with_it(box: Box) -> None:
    device = f"id: level-9\ndriver: modbus-tcp\nhost: 127.0.0.1\nport: {free_port()}\n"
    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        async with s.get(f"{box.base}/admin/commission") as r:
            page = await r.text()
        # The profiles the box knows, with their registers.
        assert "water-level-gauge" in page
        assert "high_water_alarm" in page
        csrf = csrf_of(page)
        form = {"csrf": csrf, "device": device, "profile": "no-such-profile"}
        status, page = await post(s, f"{box.base}/admin/commission/add", form)
        assert "profile: not a valid value" in page
        form["profile"] = "water-level-gauge"
        status, page = await post(s, f"{box.base}/admin/commission/add", form)
        assert status == 200
        assert "Applied and confirmed: v1" in page, problems_shown(page) or page[-3000:]
    applied = yaml.safe_load((box.data / "config" / "v1.yaml").read_text())
    added = applied["devices"][-1]
    assert added["id"] == "level-9"
    assert added["profile"] == "water-level-gauge"
    # The agent runs it with the profile's registers (nothing answers there: it fails, and
    # was not one of the devices a trial waits for).
    devs = await box.until_devices(lambda d: "level-9" in d)
    assert devs["level-9"]["state"] in ("starting", "failing", "quarantined")
    assert box.state()["history"][-1]["by"].startswith("dashboard:ana:")


async def test_an_admin_goes_back_to_an_earlier_version_and_to_the_base(box: Box) -> None:
    """Each confirmed version but the running one has its button; going back is an apply
    of that version's text (a new version, on trial, confirmed), audited with the user."""

    def interval(ms: int) -> str:
        dev = {"id": "aq-1", "driver": "synthetic", "metrics": 2, "poll_interval": f"{ms}ms"}
        return edited(box, {"devices": [dev]})

    async with client() as s:
        assert await login(s, box.base, *ADMIN) == 303
        async with s.get(f"{box.base}/config") as r:
            page = await r.text()
        csrf = csrf_of(page)
        assert 'action="/admin/config/rollback"' not in page  # nothing to go back to yet
        for ms in (300, 400):
            status, page = await post(
                s, f"{box.base}/admin/config/apply", {"csrf": csrf, "text": interval(ms)}
            )
            assert "Applied and confirmed" in page, page
        # v2 runs: v1 and the base can be gone back to, v2 cannot.
        assert re.search(r'data-version="v1">.*?name="to" value="v1"', page, re.S)
        assert not re.search(r'data-version="v2">[^\n]*?name="to" value="v2"', page)
        assert 'name="to" value="base"' in page
        status, page = await post(
            s, f"{box.base}/admin/config/rollback", {"csrf": csrf, "to": "v1"}
        )
        assert status == 200, page
        assert "Back to v1&#x27;s config. Applied and confirmed: v3" in page, page
        state = box.state()
        assert state["active"] == "v3"
        assert state["history"][-1]["by"].startswith("dashboard:ana:")
        v3 = yaml.safe_load((box.data / "config" / "v3.yaml").read_text())
        assert v3["devices"][0]["poll_interval"] == "300ms"
        # To the base file: the one the agent was started with.
        status, page = await post(
            s, f"{box.base}/admin/config/rollback", {"csrf": csrf, "to": "base"}
        )
        assert "Back to base&#x27;s config. Applied and confirmed: base" in page, page
        assert box.state()["active"] is None
        assert 'name="to" value="base"' not in page  # the base runs
        # Not a version: refused before anything is asked of the agent.
        status, _ = await post(
            s, f"{box.base}/admin/config/rollback", {"csrf": csrf, "to": "../../etc/passwd"}
        )
        assert status == 400
        status, page = await post(
            s, f"{box.base}/admin/config/rollback", {"csrf": csrf, "to": "v99"}
        )
        assert "Not applied: version v99 is not kept on the box" in page, page
    log = box.agent.log_text()
    assert len(re.findall(r"command config\.rollback id=dashboard:ana:\w+ from the web", log)) == 3
    # A viewer has no buttons, and the action is refused.
    async with client() as s:
        assert await login(s, box.base, *VIEWER) == 303
        async with s.get(f"{box.base}/config") as r:
            page = await r.text()
        assert 'action="/admin/config/rollback"' not in page
        status, _ = await post(
            s, f"{box.base}/admin/config/rollback", {"csrf": csrf_of(page), "to": "v1"}
        )
        assert status == 403


async def test_a_scan_running_when_the_agent_stops_ends_and_says_so(tmp_path: Path) -> None:
    """A gateway that takes the connection and never answers: each unit waits its timeout,
    so the scan would run for 20 s. The agent stops after the first unit: the stream ends
    whole and says why, at once, and the log has no traceback (the fixture checks)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_box(tmp_path, [AQ1]) as box, client() as s:
            assert await login(s, box.base, *ADMIN) == 303
            async with s.get(f"{box.base}/admin/commission") as r:
                csrf = csrf_of(await r.text())
            url = f"{box.base}/admin/commission/scan?csrf={csrf}&port=127.0.0.1:{port}"
            async with s.get(f"{url}&units=1-100&timeout=0.2") as r:
                events = []
                async for line in r.content:
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 1:  # a unit asked: the scan runs; stop the agent
                            started = time.monotonic()
                            stopping = asyncio.create_task(box.agent.stop())
                assert await stopping == 0
                assert time.monotonic() - started < 5
                assert r.content.at_eof()
            assert events[0]["unit"] == 1
            assert events[0]["answer"] is None
            assert events[-1]["end"] is True
            assert "stopping" in events[-1]["error"], events[-1]
            assert len(events) < 30, "the scan ended with the agent, not after its 100 units"
    finally:
        server.close()
        await server.wait_closed()
