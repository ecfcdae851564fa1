"""What the web console costs the agent (issue 22, docs/performance.md#the-web-console).

Three windows of the same workload (default: ``reference``), each measured from /proc like
bench/suite.py (the agent's CPU, its threads' voluntary wake-ups, its RSS):

1. the console off (the default config);
2. the console on, no browser open (the issue: no extra wake-ups);
3. the console on, with Debian's Chromium on the devices page, logged in, its live stream
   running (the issue: at most 1% of one core at the reference workload).

    .venv/bin/python bench/dashboard.py [--workload reference] [--seconds 60] [--json]

Needs /usr/bin/chromium and Playwright (the ``test`` extra) for the third window, which also
reports the first page load as Chromium saw it: bytes transferred (compressed, with headers)
and the first contentful paint, for the login page with a cold cache and the devices page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import Rig, expand, sample

from tepi.gateway.dashauth import Users
from tepi.gateway.localbroker import free_port

WORKLOADS = Path(__file__).resolve().parent / "workloads"
CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "bench", "bench-password"


# The page's load as Chromium saw it: bytes over the wire (the document and its assets,
# compressed, with headers) and the first contentful paint, from the page's own timings.
LOAD = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource').filter((r) => !r.name.includes('/events'));
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {
    bytes: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
    fcp: fcp ? Math.round(fcp.startTime) : -1,
  };
}"""


async def load(page: Any) -> dict[str, float]:
    """LOAD, once the page has painted (its paint entry comes a frame after the load)."""
    for _ in range(100):
        got: dict[str, float] = await page.evaluate(LOAD)
        if got["fcp"] >= 0:
            break
        await asyncio.sleep(0.05)
    return got


async def window(rig: Rig, seconds: float) -> dict[str, float]:
    assert rig.agent is not None
    s0 = sample(rig.agent.pid)
    await asyncio.sleep(seconds)
    s1 = sample(rig.agent.pid)
    span = s1.t - s0.t
    return {
        "cpu_percent": round(100 * (s1.cpu_s - s0.cpu_s) / span, 3),
        "wakeups_per_s": round((s1.wakeups - s0.wakeups) / span, 2),
        "rss_mb": round(s1.rss / 1e6, 1),
    }


async def run(
    wl: dict[str, Any], seconds: float, warmup: float, dashboard: bool, browser: bool
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-dashboard-"))
    rig = Rig(work)
    port = free_port()
    try:
        devices = list(expand(wl["devices"]))
        await rig.start_broker()
        await rig.start_sim(devices)
        extra: dict[str, Any] = {}
        if dashboard:
            extra = {"dashboard": {"listen": f"127.0.0.1:{port}"}}
            Users(work / "data" / "dashboard" / "users").set(USER, "viewer", PASSWORD)
        rig.start_agent(rig.agent_config(devices, extra))
        assert rig.rx is not None
        while rig.rx.first_at is None:
            if rig.agent is not None and rig.agent.poll() is not None:
                raise RuntimeError("agent exited: " + (work / "agent.log").read_text()[-2000:])
            await asyncio.sleep(0.05)
        if not browser:
            await asyncio.sleep(warmup)
            return await window(rig, seconds)
        from playwright.async_api import async_playwright

        async with async_playwright() as p:
            b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await (await b.new_context(ignore_https_errors=True)).new_page()
                base = f"https://127.0.0.1:{port}"
                await page.goto(f"{base}/login?next=/devices")
                first = await load(page)  # a cold cache: the login page's load
                await page.fill("input[name=user]", USER)
                await page.fill("input[name=password]", PASSWORD)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/devices")
                await page.wait_for_selector("body[data-live='1']")
                on_devices = await load(page)  # the devices page, assets revalidated
                await asyncio.sleep(warmup)
                res: dict[str, float] = await window(rig, seconds)
                res["login_load_bytes"] = first["bytes"]
                res["login_fcp_ms"] = first["fcp"]
                res["devices_load_bytes"] = on_devices["bytes"]
                res["devices_fcp_ms"] = on_devices["fcp"]
                return res
            finally:
                await b.close()
    finally:
        await rig.close()


async def main_async(args: argparse.Namespace) -> None:
    wl = yaml.safe_load((WORKLOADS / f"{args.workload}.yaml").read_text())
    rows = []
    windows = (
        ("console off", False, False),
        ("console on, no browser", True, False),
        ("console on, devices page open", True, True),
    )
    for name, dashboard, browser in windows[2:] if args.browser_only else windows:
        res = await run(wl, args.seconds, args.warmup, dashboard, browser)
        rows.append({"window": name, "workload": args.workload, **res})
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(f"{'window':<32} {'CPU %':>7} {'wake-ups/s':>11} {'RSS MB':>7}")
        for r in rows:
            print(
                f"{r['window']:<32} {r['cpu_percent']:>7.2f} {r['wakeups_per_s']:>11.1f} "
                f"{r['rss_mb']:>7.1f}"
            )
        last = rows[-1]
        print(
            f"first load (login page, cold cache): {last['login_load_bytes']:,} bytes, "
            f"first contentful paint {last['login_fcp_ms']:.0f} ms; devices page after login: "
            f"{last['devices_load_bytes']:,} bytes, {last['devices_fcp_ms']:.0f} ms"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--workload", default="reference", help="a name in bench/workloads")
    p.add_argument("--seconds", type=float, default=60.0, help="each window's length")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--browser-only", action="store_true", help="only the third window")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
