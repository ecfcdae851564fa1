"""How soon after a broker outage readings flow again: seconds from the broker's return to the
first reading at a subscriber.

An agent in this process (no device; a reading put every 100 ms) sends to a Mosquitto on
loopback; the broker is stopped for ``--outage`` seconds, then started again on the same port,
and a subscriber times the first reading. Each run starts a fresh broker and agent.

    .venv/bin/python bench/reconnect.py                          # 30 s outages, 5 runs
    .venv/bin/python bench/reconnect.py --probe-interval 0       # the backoff alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parents[1]

from harness import start_broker  # noqa: E402

from tepi.core.records import Reading  # noqa: E402
from tepi.gateway.configload import parse_config  # noqa: E402
from tepi.gateway.localbroker import free_port, wait_port  # noqa: E402
from tepi.gateway.runtime import Agent  # noqa: E402


async def first_reading(port: int, topic: str) -> None:
    """Return when a telemetry message arrives (the broker keeps nothing: subscribe first)."""
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port) as sub:
                await sub.subscribe(topic, qos=1)
                async for _ in sub.messages:
                    return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)  # the broker is still starting


async def once(work: Path, outage: float, probe_interval: str) -> float:
    port = free_port()
    broker = start_broker(work, port)
    await wait_port(port)
    cfg = {
        "gateway": {"id": "bench-rc", "data_dir": str(work / "data")},
        "uplink": {
            "url": f"mqtt://127.0.0.1:{port}",
            "reconnect": {"probe_interval": probe_interval},
        },
    }
    agent = Agent(parse_config(json.dumps(cfg), "bench", check_files=False))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))

    async def feed() -> None:
        i = 0
        while True:
            agent.buffer.put(Reading("d", "m", i, None, time.time(), time.monotonic()))
            i += 1
            await asyncio.sleep(0.1)

    await agent.ready.wait()
    feeding = asyncio.create_task(feed())
    try:
        await asyncio.sleep(2)
        broker.terminate()
        await asyncio.to_thread(broker.wait)
        await asyncio.sleep(outage)
        broker = start_broker(work, port)
        back = time.monotonic()
        async with asyncio.timeout(300):
            await first_reading(port, "ioc/v1/bench-rc/telemetry")
        return time.monotonic() - back
    finally:
        feeding.cancel()
        stop.set()
        await run
        broker.terminate()
        broker.wait()


async def main_async(args: argparse.Namespace) -> None:
    took: list[float] = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tepi-rc-") as tmp:
            took.append(await once(Path(tmp), args.outage, args.probe_interval))
        print(f"run {k + 1}: {took[-1]:.1f} s", file=sys.stderr)
    print(
        json.dumps(
            {
                "outage_s": args.outage,
                "probe_interval": args.probe_interval,
                "runs_s": [round(t, 2) for t in took],
                "median_s": round(statistics.median(took), 2),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outage", type=float, default=30.0, help="seconds the broker is away")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--probe-interval", default="1s", help="uplink.reconnect.probe_interval")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
