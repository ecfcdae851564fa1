"""Pipeline benchmark: synthetic readings -> buffer -> uplink -> a real Mosquitto on loopback.

The source is synthetic so that the figure is the pipeline's, not the simulator's. Two modes:

    python bench/pipeline.py throughput --seconds 10    # sustained readings/s, acked by the broker
    python bench/pipeline.py backlog --readings 1000000 # fill with no broker, then drain it

It prints one JSON object with the figures (the machine, readings/s, CPU s per 1,000 readings,
RSS). Everything runs in this one process, which makes it the harness to profile the hot
paths with (``py-spy record -- .venv/bin/python bench/pipeline.py throughput``). The
published figures come from bench/suite.py, which measures the real ``tepi run`` from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import start_broker

from tepi.core.records import Reading
from tepi.gateway.configload import parse_config
from tepi.gateway.localbroker import free_port, wait_port
from tepi.gateway.runtime import Agent
from tepi.gateway.sysinfo import cpu_seconds, rss_bytes


def make_agent(work: Path, port: int) -> Agent:
    cfg = parse_config(
        f"""
gateway: {{id: bench-gw, data_dir: {work}/data}}
uplink: {{url: "mqtt://127.0.0.1:{port}", reconnect: {{min_delay: 100ms, max_delay: 500ms}}}}
buffer: {{max_bytes: 2GiB}}
""",
        "bench",
        check_files=False,
    )
    return Agent(cfg)


async def produce(agent: Agent, n: int, chunk: int = 500) -> None:
    """Put ``n`` readings as fast as the loop allows, yielding between chunks."""
    put = agent.buffer.put
    mono = time.monotonic
    for i in range(0, n, chunk):
        now = time.time()
        for j in range(i, min(i + chunk, n)):
            put(Reading(f"dev-{j % 25}", f"metric-{j % 10}", j * 0.1, "u", now, mono()))
        await asyncio.sleep(0)


async def throughput(seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-"))
    port = free_port()
    broker = start_broker(work, port)
    try:
        await wait_port(port)
        agent = make_agent(work, port)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await agent.ready.wait()
        cpu0, t0, acked0 = cpu_seconds(), time.monotonic(), agent.uplink.stats.readings_acked
        produced = 0
        peak_rss = 0
        while time.monotonic() - t0 < seconds:
            # keep the buffer fed but bounded: the figure is what gets through, acked
            if agent.buffer.stats().depth < 50_000:
                await produce(agent, 5000)
                produced += 5000
            else:
                await asyncio.sleep(0.01)
            peak_rss = max(peak_rss, rss_bytes())
        elapsed = time.monotonic() - t0
        acked = agent.uplink.stats.readings_acked - acked0
        cpu = cpu_seconds() - cpu0
        stop.set()
        await run
        return {
            "mode": "throughput",
            "seconds": round(elapsed, 1),
            "produced": produced,
            "acked": acked,
            "acked_per_s": round(acked / elapsed),
            "cpu_s_per_1000": round(1000 * cpu / max(acked, 1), 4),
            "cpu_percent_of_one_core": round(100 * cpu / elapsed, 1),
            "peak_rss_mb": round(peak_rss / 2**20, 1),
        }
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


async def backlog(readings: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-"))
    port = free_port()  # nothing listens yet: the broker is "down"
    broker: subprocess.Popen[bytes] | None = None
    try:
        agent = make_agent(work, port)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await agent.ready.wait()
        t0 = time.monotonic()
        done = 0
        while done < readings:
            n = min(50_000, readings - done)
            await produce(agent, n)
            done += n
            await agent.buffer.flush()  # keep RAM pending under its bound while filling
        fill_s = time.monotonic() - t0
        rss_full = rss_bytes()
        depth = agent.buffer.stats().depth
        broker = start_broker(work, port)
        await wait_port(port)
        t1 = time.monotonic()
        peak = rss_full
        while agent.buffer.stats().depth > 0:
            await asyncio.sleep(0.1)
            peak = max(peak, rss_bytes())
        drain_s = time.monotonic() - t1
        stop.set()
        await run
        return {
            "mode": "backlog",
            "readings": readings,
            "buffered": depth,
            "fill_s": round(fill_s, 1),
            "drain_s": round(drain_s, 1),
            "drain_per_s": round(depth / drain_s),
            "rss_full_mb": round(rss_full / 2**20, 1),
            "peak_rss_during_drain_mb": round(peak / 2**20, 1),
            "db_mb": round((work / "data" / "buffer.db").stat().st_size / 2**20, 1),
        }
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("throughput").add_argument("--seconds", type=float, default=10)
    sub.add_parser("backlog").add_argument("--readings", type=int, default=1_000_000)
    args = p.parse_args()
    result = asyncio.run(
        throughput(args.seconds) if args.mode == "throughput" else backlog(args.readings)
    )
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
