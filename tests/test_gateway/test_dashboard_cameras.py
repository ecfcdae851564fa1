"""The console's cameras in a real browser (Debian's Chromium through Playwright) against a
real ``tepi run`` watching the simulator's camera (real HTTP, real JPEGs, Digest auth) and
publishing to the test's own Mosquitto.

Checked: the cameras list and a camera's page; a snapshot taken from the page; a privacy
mask, a counting line and a zone drawn with the mouse on the snapshot, saved through the
config's apply path (checked, on trial, confirmed), in the config, and the next stored image
masked by the agent; a viewer sees the shapes but cannot change them; a bad shape posted by
hand is refused with a worded error. Screenshots at 360 px and 1280 px (``$TEPI_SCREENSHOTS``
as in test_dashboard_browser.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
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
from helpers import TEST_SECRETS, until

from tepi.gateway.status import fetch
from tepi_sim import Simulator

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (.ci/setup)"),
]
playwright_api = pytest.importorskip("playwright.async_api")

CAMERA_PASSWORD = TEST_SECRETS[1]  # never in any log (conftest checks every agent's log)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    cams = {
        "cameras": [
            {"id": "cam-1", "auth": "digest", "username": "tepi", "password": CAMERA_PASSWORD}
        ]
    }
    secret = tmp_path / "cam-password"
    secret.write_text(CAMERA_PASSWORD + "\n")
    secret.chmod(0o600)
    async with Simulator(cams) as sim:
        camera = {
            "id": "cam-1",
            "driver": "camera",
            "url": sim.camera("cam-1").snapshot_url,
            "username": "tepi",
            "password_file": str(secret),
            "poll_interval": "500ms",
            "timeout": "2s",
            "snapshot_interval": None,  # none until the page asks: the page says so first
        }
        async with console(tmp_path, [camera]) as c:
            yield Site(c.base, c.agent, c.shots, c.status, sim)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium(playwright_api) as b:
        yield b


def camera_online(status: Path) -> bool:
    try:
        proto = fetch(status, "/devices")["cam-1"].get("protocol") or {}
    except (OSError, KeyError, ValueError):
        return False
    return proto.get("state") == "ok"


async def click_at(page: Any, points: list[tuple[float, float]]) -> None:
    """Clicks on the snapshot's overlay at fractions of its width and height."""
    overlay = page.locator(".stage svg.overlay")
    box = await overlay.bounding_box()
    assert box is not None
    for x, y in points:  # (scrolled into view first, by Playwright)
        await overlay.click(position={"x": x * box["width"], "y": y * box["height"]})


async def shown_image(page: Any, base: str) -> Any:
    """The snapshot the page shows, fetched as the page did (its session), decoded."""
    src = await page.locator("img.shot").get_attribute("src")
    assert src is not None
    got = await page.request.get(base + src)
    assert got.status == 200, got.status
    assert got.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(await got.body(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


async def test_a_mask_drawn_on_the_snapshot_is_in_the_config_and_the_next_image_is_masked(
    site: Site, browser: Any
) -> None:
    await until(lambda: camera_online(site.status), 30, site.agent)
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await log_in(page, site.base, *ADMIN, landing="/cameras")
    row = page.locator("tr[data-camera='cam-1']")
    assert "all checks pass" in (await row.text_content() or "")
    await fits(page, "cameras", site.shots)
    # No snapshot held yet (snapshot_interval: null): the page says so; one is taken.
    await row.locator("a").click()
    await page.wait_for_url(f"{site.base}/cameras/cam-1")
    assert await page.locator(".no-shot").count() == 1
    await page.click("form.snap button")
    await page.wait_for_url(re.compile(r".*/cameras/cam-1\?taken=\d+$"))
    await until_js(page, "() => document.querySelector('img.shot')?.naturalWidth > 0")
    before = await shown_image(page, site.base)
    w = before.shape[1]
    assert float(before[8:-8, 8 : w // 2 - 8].mean()) > 40  # the scene, not yet masked
    # Draw: a mask over the left half (its corners snap to the picture's edges, and a click
    # on its first corner closes it), a counting line, and a
    # zone (closed with the button), renamed.
    await page.click("button[data-tool='mask']")
    await click_at(page, [(0.005, 0.005), (0.5, 0.005), (0.5, 0.995), (0.005, 0.995)])
    await click_at(page, [(0.006, 0.006)])
    await page.click("button[data-tool='ignore']")
    await click_at(page, [(0.55, 0.05), (0.7, 0.05), (0.7, 0.3)])
    await page.click("button.close-shape")
    await page.click("button[data-tool='line']")
    await click_at(page, [(0.75, 0.2), (0.75, 0.8)])
    await page.click("button[data-tool='zone']")
    await click_at(page, [(0.6, 0.5), (0.95, 0.5), (0.95, 0.95), (0.6, 0.95)])
    await page.click("button.close-shape")
    await page.click("button[data-tool='zone']")  # the tool off
    zone = page.locator("ul.shapes li[data-kind='zone']")
    await zone.locator("input:not(.length)").fill("crossing")
    # Its queue: the stop line drawn at the zone's left edge, and its length typed.
    await zone.locator("button.stop").click()
    await click_at(page, [(0.6, 0.5), (0.6, 0.95)])
    assert await page.locator(".stage line.stop").count() == 1
    await zone.locator("input.length").fill("26")
    assert await page.locator(".stage polygon.mask").count() == 1
    assert await page.locator(".stage polygon.zone").count() == 1
    assert await page.locator(".stage polygon.ignore").count() == 1
    assert await page.locator(".stage line.count:not(.in)").count() == 1
    await fits(page, "camera-draw", site.shots, "jpg")
    await page.click("form.geometry button[type=submit]")
    await page.wait_for_selector(".result", timeout=60_000)
    result = await page.locator(".result").text_content() or ""
    assert await page.locator(".result").get_attribute("data-ok") == "ok", result
    assert "Applied and confirmed: v1" in result, result
    assert re.search(r"Snapshot \d+ taken with it", result), result
    # The snapshot taken with it, as the agent stored it: the left half black.
    await until_js(page, "() => document.querySelector('img.shot')?.naturalWidth > 0")
    after = await shown_image(page, site.base)
    w = after.shape[1]
    assert float(after[8:-8, 8 : w // 2 - 8].max()) <= 12, float(after[:, : w // 2 - 8].max())
    assert float(after[8:-8, w // 2 + 8 :].mean()) > 40
    # In the config: the mask where it was drawn, the line, the zone by its name.
    await page.goto(f"{site.base}/config")
    running = yaml.safe_load(await page.locator("textarea[name=text]").input_value())
    cam = running["devices"][0]
    assert len(cam["masks"]) == 1, cam
    assert sorted(cam["masks"][0]) == [[0, 0], [0, 1], [0.5, 0], [0.5, 1]], cam["masks"]
    assert [x["name"] for x in cam["analytics"]["lines"]] == ["line-1"]
    (crossing,) = cam["analytics"]["zones"]
    assert crossing["name"] == "crossing"
    assert crossing["length_m"] == 26
    assert [[round(v, 2) for v in p] for p in crossing["stop_line"]] == [[0.6, 0.5], [0.6, 0.95]]
    (ignore,) = cam["analytics"]["ignore"]  # where it was clicked, to a pixel
    for (x, y), (x0, y0) in zip(ignore, [(0.55, 0.05), (0.7, 0.05), (0.7, 0.3)], strict=True):
        assert abs(x - x0) < 0.005
        assert abs(y - y0) < 0.005
    assert cam["password_file"].endswith("cam-password")  # the rest as it was
    await page.goto(f"{site.base}/cameras/cam-1")
    # The page draws the saved shapes from the config.
    assert await page.locator(".stage polygon.mask").count() == 1
    assert await page.locator(".shape-label").all_text_contents() == ["crossing", "line-1"]
    await fits(page, "camera", site.shots, "jpg")
    log = site.agent.log_text()
    assert (
        "dashboard: ana draws on camera cam-1: 1 mask(s), 1 ignore area(s), 1 line(s), 1 zone(s)"
    ) in log
    assert re.search(r"command config\.apply id=dashboard:ana:\w+ from the web console", log)
    # A shape the page would not send, posted by hand: refused, worded, nothing changed.
    token = await page.locator(".who input[name=csrf]").input_value()
    bad = await page.request.post(
        f"{site.base}/admin/cameras/cam-1/geometry",
        form={"csrf": token, "geometry": '{"masks": [[[0, 0], [2, 0], [0, 1]]]}'},
    )
    assert bad.status == 400
    assert "a point is not [x, y] within 0..1" in await bad.text()
    # One the config's own check refuses (a line of two equal points): nothing applied, the
    # problem as tepi check words it, with its line in the file.
    same = '{"lines": [{"name": "x", "points": [[0.5, 0.5], [0.5, 0.5]]}]}'
    refused = await page.request.post(
        f"{site.base}/admin/cameras/cam-1/geometry", form={"csrf": token, "geometry": same}
    )
    page_text = await refused.text()
    assert 'data-ok="bad"' in page_text
    # (the file named is the running one: v1.yaml, the version the first save applied)
    problem = r"v1\.yaml:\d+: devices\[0\]\.analytics\.lines\[0\]: line x: its two points are"
    assert re.search(problem, page_text), page_text[-3000:]
    assert "config apply refused: 1 problem(s), nothing changed" in site.agent.log_text()
    assert violations == []


async def test_a_viewer_sees_the_shapes_but_cannot_change_them(site: Site, browser: Any) -> None:
    await until(lambda: camera_online(site.status), 30, site.agent)
    violations: list[str] = []
    page = await new_page(browser, 1280, violations)
    await log_in(page, site.base, *VIEWER, landing="/cameras/cam-1")
    assert await page.locator("form.geometry").count() == 0
    # A viewer may take a look (a snapshot, as tepi snapshot), not draw.
    await page.click("form.snap button")
    await page.wait_for_url(re.compile(r".*\?taken=\d+$"))
    await until_js(page, "() => document.querySelector('img.shot')?.naturalWidth > 0")
    token = await page.locator(".who input[name=csrf]").input_value()
    refused = await page.request.post(
        f"{site.base}/admin/cameras/cam-1/geometry",
        form={"csrf": token, "geometry": '{"masks": [[[0, 0], [1, 0], [0, 1]]]}'},
    )
    assert refused.status == 403
    # Without the token, not even a snapshot.
    refused = await page.request.post(f"{site.base}/cameras/cam-1/snapshot", form={})
    assert refused.status == 403
    # No other camera's, nor any other image of the buffer, by its number.
    assert (await page.request.get(f"{site.base}/cameras/cam-2")).status == 404
    src = await page.locator("img.shot").get_attribute("src") or ""
    seq = int(src.rsplit("=", 1)[1])
    other = await page.request.get(f"{site.base}/cameras/cam-1/image.jpg?seq={seq + 1}")
    assert other.status == 404  # its thumbnail, or nothing: not served
    assert violations == []
