"""The web console in a real browser: Debian's Chromium (apt, launched by its path; no browser
download) driven by Playwright's async API, against a real ``tepi run`` polling the
simulator (Modbus TCP) and publishing to the test's own Mosquitto.

Checked: the login form, a value changed in the simulator reaching the devices page within
2 s (over the live stream), the pages with no Content-Security-Policy violation in the
browser's console (so nothing inline slipped in), and every page at 360 px and 1280 px
wide, saved as screenshots: into the test's tmp dir, or into ``$TEPI_SCREENSHOTS`` when it is
set (docs/dashboard/ holds the copies the docs show: ``TEPI_SCREENSHOTS=docs/dashboard``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dashkit import (
    ADMIN,
    CHROMIUM,
    VIEWER,
    Site,
    chromium,
    console,
    fits,
    log_in,
    new_page,
    until_js,
)
from helpers import until

from tepi.gateway.localbroker import free_port
from tepi_sim import Simulator

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (.ci/setup)"),
]
playwright_api = pytest.importorskip("playwright.async_api")

SIM: dict[str, Any] = {
    "seed": 5,
    "devices": [
        {
            "id": "gauge",
            "transport": "tcp",
            "bus": "gw",  # the two behind one Modbus TCP gateway: the scan finds both
            "unit": 1,
            "registers": [
                {
                    "address": 100,
                    "table": "input",
                    "kind": "constant",
                    "value": 1.25,
                    "type": "int16",
                    "scale": 0.01,
                },
            ],
        },
        {
            "id": "station",
            "transport": "tcp",
            "bus": "gw",
            "unit": 2,
            "registers": [
                {
                    "address": 0,
                    "table": "input",
                    "kind": "temperature",
                    "type": "int16",
                    "scale": 0.1,
                },
                {"address": 1, "table": "input", "kind": "humidity", "type": "int16", "scale": 0.1},
            ],
        },
        {  # not in the agent's config: the one commissioning finds and adds
            "id": "spare",
            "transport": "tcp",
            "bus": "gw",
            "unit": 3,
            "registers": [
                {
                    "address": 100,
                    "table": "input",
                    "kind": "constant",
                    "value": 4.2,
                    "type": "int16",
                    "scale": 0.01,
                },
            ],
        },
    ],
}


RULE: dict[str, Any] = {
    "id": "level-high",
    "device": "river-gauge",
    "metric": "level",
    "above": 3.0,
    "clear_below": 2.8,
    "severity": "critical",
    "description": "River above the alarm level at the bridge",
}


def devices(sim: Simulator) -> list[dict[str, Any]]:
    def tcp(dev: str) -> dict[str, Any]:
        host, port = sim.endpoint(dev).rsplit(":", 1)
        return {"host": host, "port": int(port)}

    return [
        {
            "id": "river-gauge",
            "driver": "modbus-tcp",
            **tcp("gauge"),
            "unit": 1,
            "poll_interval": "250ms",
            "registers": [
                {
                    "name": "level",
                    "address": 100,
                    "table": "input",
                    "type": "int16",
                    "scale": 0.01,
                    "unit": "m",
                }
            ],
        },
        {
            "id": "aq-station",
            "driver": "modbus-tcp",
            **tcp("station"),
            "unit": 2,
            "poll_interval": "1s",
            "registers": [
                {
                    "name": "temperature",
                    "address": 0,
                    "table": "input",
                    "type": "int16",
                    "scale": 0.1,
                    "unit": "degC",
                },
                {
                    "name": "humidity",
                    "address": 1,
                    "table": "input",
                    "type": "int16",
                    "scale": 0.1,
                    "unit": "%",
                },
            ],
        },
        {  # nothing answers there: a failing device, as the page shows one
            "id": "noise-meter",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout": "200ms",
            "poll_interval": "2s",
            "registers": [{"name": "laeq", "address": 0, "unit": "dB"}],
        },
    ]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with Simulator(SIM) as sim, console(tmp_path, devices(sim), rules=[RULE]) as c:
        yield Site(c.base, c.agent, c.shots, c.status, sim)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium(playwright_api) as b:
        yield b


async def test_a_simulator_value_reaches_the_devices_page_within_2_s(
    site: Site, browser: Any
) -> None:
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await log_in(page, site.base, *VIEWER)
    await page.wait_for_selector("body[data-live='1']")
    cell = page.locator("[data-v='river-gauge/level']")
    shows = (
        "(want) => document.querySelector(\"[data-v='river-gauge/level']\")"
        ".textContent.startsWith(want)"
    )
    await until_js(page, shows, "1.25")
    for level in (3.21, 0.42):
        site.sim.device("gauge").set_value(100, level, "input")
        changed = time.monotonic()
        await until_js(page, shows, f"{level:.2f}", timeout=2.0)
        took = time.monotonic() - changed
        assert took < 2.0, took
        assert (await cell.text_content() or "").endswith(" m")
    # The failing device is shown as such.
    await page.wait_for_selector(
        "[data-devstate='noise-meter'] "
        ".badge:is([data-state='failing'], [data-state='quarantined'])"
    )
    assert violations == []


PAGES = (
    ("overview", "/"),
    ("devices", "/devices"),
    ("device", "/devices/aq-station"),
    ("alarms", "/alarms"),
    ("config", "/config"),
    ("logs", "/logs"),
)


async def test_every_page_at_360_and_1280_px_without_csp_violations(
    site: Site, browser: Any
) -> None:
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await page.goto(f"{site.base}/")
    await page.wait_for_url(f"{site.base}/login?next=/")
    # The first load (a cold cache) within the 150 KB, compressed, as the browser
    # fetched it (bench/dashboard.py reports the figure).
    loaded = await page.evaluate(
        "() => performance.getEntriesByType('navigation')[0].transferSize + performance"
        ".getEntriesByType('resource').reduce((n, r) => n + r.transferSize, 0)"
    )
    assert 1000 < loaded < 150_000, loaded
    for width in (360, 1280):
        await page.set_viewport_size({"width": width, "height": 800})
        await page.screenshot(path=site.shots / f"login-{width}.png", full_page=True)
    await log_in(page, site.base, *ADMIN)
    # Wait until the plots have a few points (one a 10 s step): a line, not a dot.
    await page.wait_for_selector("body[data-live='1']")
    await until_js(
        page,
        "() => (document.querySelector(\"svg[data-spark='aq-station/temperature'] path.line\")"
        "?.getAttribute('d') || '').split('L').length >= 3",
        timeout=60,
    )
    for name, path in PAGES:
        for width in (360, 1280):
            await page.set_viewport_size({"width": width, "height": 800})
            await page.goto(site.base + path)
            if name in ("overview", "devices", "device"):
                await page.wait_for_selector("body[data-live='1']")
            if name == "device":
                await page.wait_for_selector("svg[data-spark='aq-station/temperature'] path.line")
            # Nothing wider than the screen (a phone would scroll sideways).
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (name, width, overflow)
            await page.screenshot(path=site.shots / f"{name}-{width}.png", full_page=True)
    # The config page's check shows a problem as `tepi check` words it, at both widths.
    await page.goto(site.base + "/config")
    text = await page.locator("textarea[name=text]").input_value()
    assert "river-gauge" in text
    await page.fill(
        "textarea[name=text]", text.replace("poll_interval: 250ms", "poll_interval: 250 ms!")
    )
    await page.click("button:text('Check')")
    await page.wait_for_selector(".result[data-ok='bad']")
    shown = await page.locator(".cfg-errors li").all_text_contents()
    assert len(shown) == 1, shown
    assert re.match(r".*tepi\.yaml:\d+: devices\[0\]\.poll_interval: ", shown[0]), shown
    await fits(page, "config-check", site.shots)
    # A failing device's page lists its own recent errors, and no other device's.
    await page.goto(site.base + "/devices/noise-meter")
    recent = await page.locator("ul.log li").all_text_contents()
    assert recent, recent
    assert all("noise-meter" in line for line in recent), recent
    assert any("cannot connect" in line for line in recent), recent
    # The overview: the link is up, the strip is drawn, the admin sees the reload button.
    await page.goto(site.base + "/")
    assert await page.locator(".badge[data-k='uplink.state']").text_content() == "online"
    assert await page.locator("svg.strip rect.up").count() >= 1
    await page.click("form.admin button")
    await page.wait_for_url(f"{site.base}/?reloaded=1")
    assert "Config reloaded." in (await page.locator(".notice").text_content() or "")
    # Logging out goes back to the login, and the pages are closed again.
    await page.click(".who button")
    await page.wait_for_url(f"{site.base}/login")
    await page.goto(site.base + "/devices")
    await page.wait_for_url(f"{site.base}/login?next=/devices")
    assert violations == []
    taken = sorted(p.name for p in site.shots.glob("*.png"))
    assert len(taken) >= 10, taken
    await until(lambda: "dashboard: ana (admin) logged in" in site.agent.log_text(), 5)


async def test_a_rule_fires_on_a_simulator_value_and_an_admin_acknowledges_it(
    site: Site, browser: Any
) -> None:
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await log_in(page, site.base, *ADMIN)
    await page.goto(site.base + "/alarms")
    assert await page.locator("tr[data-rule]").count() == 0
    site.sim.device("gauge").set_value(100, 3.5, "input")
    await page.wait_for_selector("body[data-live='1']")
    row = page.locator("tr[data-rule='level-high']")
    # The page is live: it asks itself again when the alarm fires (no reload from here).
    await row.wait_for(timeout=20_000)
    assert "firing" in (await row.locator(".badge").text_content() or "")
    assert "3.5" in (await row.text_content() or "")
    await fits(page, "alarm-firing", site.shots)
    # A change without the CSRF token is refused (the page's own request, its cookie).
    refused = await page.request.post(f"{site.base}/admin/alarms/level-high/ack", form={})
    assert refused.status == 403
    # A viewer sees it, without the button, and the server refuses the action anyway.
    viewer = await new_page(browser, 1280, violations)
    await log_in(viewer, site.base, *VIEWER)
    await viewer.goto(site.base + "/alarms")
    vrow = viewer.locator("tr[data-rule='level-high']")
    assert await vrow.locator("button").count() == 0
    token = await viewer.locator(".who input[name=csrf]").input_value()
    refused = await viewer.request.post(
        f"{site.base}/admin/alarms/level-high/ack", form={"csrf": token}
    )
    assert refused.status == 403
    # The viewer watches the logs (live: new lines come on top, no reload).
    await viewer.goto(site.base + "/logs?level=info")
    await viewer.wait_for_selector("body[data-live='1']")
    # The admin acknowledges it: the page says so, and says by whom.
    await row.locator("button").click()
    await page.wait_for_url(re.compile(r".*/alarms\?acked=level-high&done=1$"))
    assert "acknowledged" in (await page.locator(".notice").text_content() or "")
    assert "by dashboard:ana" in (await row.text_content() or "")
    assert await row.locator("button").count() == 0
    log = site.agent.log_text()
    assert "dashboard: ana acknowledges the alarm of rule level-high" in log
    top = viewer.locator("ul.log li", has_text="acknowledges the alarm of rule level-high")
    await top.wait_for(timeout=10_000)
    assert await top.locator(".lvl").text_content() == "INFO"
    assert await top.locator(".logger").text_content() == "tepi.audit"
    # It resolves when the river goes down, and stays listed among the recent ones.
    site.sim.device("gauge").set_value(100, 1.0, "input")
    await page.wait_for_selector("body[data-live='1']")
    await page.locator("tr[data-rule='level-high'] .badge:text('resolved')").wait_for(
        timeout=20_000
    )
    assert violations == []


async def test_a_scan_from_the_page_finds_the_simulators_unit_and_it_is_added(
    site: Site, browser: Any
) -> None:
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await log_in(page, site.base, *ADMIN)
    await page.click("nav a:text('Commissioning')")
    await page.wait_for_url(f"{site.base}/admin/commission")
    endpoint = site.sim.endpoint("gauge")  # units 1, 2 and 3 answer there, and no other
    scan = page.locator("form.scan")
    await scan.locator("input[name=port]").fill(endpoint)
    await scan.locator("input[name=units]").fill("1-5")
    await scan.locator("button").click()
    await page.wait_for_selector(".scan-out[data-done]")
    found = await page.locator(".found li").all_text_contents()
    assert await page.locator(".scan-out").get_attribute("data-done") == "3", found
    for unit, text in zip((1, 2, 3), found, strict=True):
        assert text.startswith(f"unit {unit}: answers (registers)"), found
    assert "3 unit(s) answered" in (await page.locator(".scan-text").text_content() or "")
    assert await page.locator(".scan-out progress").get_attribute("value") == "5"
    # The unit found fills the read form; a read shows every decoding.
    await page.click(".found li[data-unit='3'] button")
    read = page.locator("form.read")
    assert await read.locator("input[name=port]").input_value() == endpoint
    await read.locator("select[name=table]").select_option("input")
    await read.locator("input[name=address]").fill("100")
    await read.locator("input[name=count]").fill("1")
    await read.locator("button").click()
    await page.wait_for_selector("pre.decodings")
    decoded = await page.locator("pre.decodings").text_content() or ""
    assert re.search(r"^\s+100\s+0x01A4\s+420\s+420", decoded, re.M), decoded
    await fits(page, "commission", site.shots)
    # "Add this device": the read filled it in; named, it goes through the config's apply.
    snippet = await page.locator("textarea[name=device]").input_value()
    assert "driver: modbus-tcp" in snippet, snippet
    assert "address: 100" in snippet, snippet
    snippet = snippet.replace("id: unit-3", "id: gauge-2").replace("name: r100", "name: level")
    await page.fill("textarea[name=device]", snippet)
    await page.click("button:text('Add to the config and apply')")
    await page.wait_for_selector(".result", timeout=60_000)
    result = await page.locator(".result").text_content() or ""
    assert await page.locator(".result").get_attribute("data-ok") == "ok", result
    assert "Applied and confirmed: v1" in result, result
    # It is in the config and polls: its value on the devices page.
    assert "id: gauge-2" in (await page.locator("textarea[name=text]").input_value())
    await page.goto(site.base + "/devices")
    await page.wait_for_selector("body[data-live='1']")
    await until_js(
        page,
        "() => (document.querySelector(\"[data-v='gauge-2/level']\")?.textContent || '')"
        ".startsWith('420')",
    )
    log = site.agent.log_text()
    assert re.search(r"command config\.apply id=dashboard:ana:\w+ from the web console", log)
    # A serial port a configured device uses is refused (here none is, so one that does not
    # exist: the tool's own error, said in the stream).
    await page.goto(site.base + "/admin/commission")
    await scan.locator("input[name=port]").fill("/dev/tepi-no-such-port")
    await scan.locator("button").click()
    await page.wait_for_selector(".scan-out[data-done='error']")
    assert "tepi-no-such-port" in (await page.locator(".scan-text").text_content() or "")
    assert violations == []


async def test_every_page_in_vietnamese_fits_a_phone(site: Site, browser: Any) -> None:
    """The header's switch turns the console to Vietnamese (longer words than English):
    every page still fits 360 px, and says what it says in Vietnamese."""
    violations: list[str] = []
    page = await new_page(browser, 360, violations)
    await log_in(page, site.base, *ADMIN)
    await page.click(".langs a[hreflang='vi']")
    await page.wait_for_url(f"{site.base}/devices")
    assert await page.get_attribute("html", "lang") == "vi"
    assert "Thiết bị" in (await page.locator("h1").text_content() or "")
    for name, path in (*PAGES, ("commission", "/admin/commission")):
        await page.goto(site.base + path)
        if name in ("overview", "devices", "device"):
            await page.wait_for_selector("body[data-live='1']")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (name, overflow)
        if name in ("overview", "devices"):
            await page.screenshot(path=site.shots / f"{name}-vi-360.png", full_page=True)
    # Back to English, from the same switch.
    await page.click(".langs a[hreflang='en']")
    await page.wait_for_url(f"{site.base}/admin/commission")
    assert await page.get_attribute("html", "lang") == "en"
    assert violations == []


def test_the_screenshot_copies_in_the_docs_are_there() -> None:
    """docs/dashboard.md shows the screenshots this file takes (refreshed by running it with
    TEPI_SCREENSHOTS=docs/dashboard)."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "dashboard.md").read_text()
    extra = (
        ("config-check", "png"),
        ("alarm-firing", "png"),
        ("commission", "png"),
        # test_dashboard_cameras.py's: JPEG for the camera's picture (a PNG of it: 400 KB)
        ("cameras", "png"),
        ("camera-draw", "jpg"),
        ("camera", "jpg"),
        ("overview-vi", "png"),
        ("devices-vi", "png"),
    )
    pages = tuple((name, "png") for name, _ in PAGES)
    for name, ext in (("login", "png"), *pages, *extra):
        for width in (360,) if name.endswith("-vi") else (360, 1280):
            shot = f"dashboard/{name}-{width}.{ext}"
            assert shot in text, shot
            assert (docs / shot).stat().st_size > 2000, shot
