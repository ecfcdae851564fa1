"""What the web console costs the agent (issue 22, docs/performance.md#the-web-console).

Three windows of the same workload (default: ``reference``), each measured from /proc like
bench/suite.py (the agent's CPU, its threads' voluntary wake-ups, its RSS):

1. the console off (the default config);
2. the console on, no browser open (the issue: no extra wake-ups);
3. the console on, with Debian's Chromium on the devices page, logged in, its live stream
   running (the issue: at most 1% of one core at the reference workload).

    .venv/bin/python bench/dashboard.py [--workload reference] [--seconds 60] [--json]

Needs /usr/bin/chromium and Playwright (the ``test`` extra) for the third window.
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
                await page.fill("input[name=user]", USER)
                await page.fill("input[name=password]", PASSWORD)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/devices")
                await page.wait_for_selector("body[data-live='1']")
                await asyncio.sleep(warmup)
                return await window(rig, seconds)
            finally:
                await b.close()
    finally:
        await rig.close()


async def main_async(args: argparse.Namespace) -> None:
    wl = yaml.safe_load((WORKLOADS / f"{args.workload}.yaml").read_text())
    rows = []
    for name, dashboard, browser in (
        ("console off", False, False),
        ("console on, no browser", True, False),
        ("console on, devices page open", True, True),
    ):
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


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--workload", default="reference", help="a name in bench/workloads")
    p.add_argument("--seconds", type=float, default=60.0, help="each window's length")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
