"""Reading -> siren: how long a rule's local action takes, with the broker down.

    .venv/bin/python bench/alarm_latency.py [--cycles 30] [--poll 100ms]

A river gauge (Modbus TCP, the simulator in this process) whose level steps between 1.0 m
and 3.0 m every second, and a siren (a writable coil on another Modbus TCP device that
records each write with its wall time). ``tepi run`` polls the gauge and has the rule
``above: 2.0, clear_below: 1.5`` (no hold, no min_interval) that writes the siren on when it
fires and off when it resolves. The broker is down the whole time: the actions are local.
Afterwards a Mosquitto comes up on the broker's port, the agent delivers the alarm messages
it kept, and each transition's ``since`` (when the reading that crossed the level was taken)
is paired with the siren's write: latency = the write's time at the simulator - ``since``.
It includes the poll's reply, the engine, the action's task, the Modbus write and its
read-back request (the write lands before the read-back), on this machine's loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiomqtt
import yaml
from harness import REPO, start_broker
from suite import CountingProxy

from tepi.core.units import parse_duration
from tepi_sim import Simulator

SIM: dict[str, Any] = {
    "devices": [
        {
            "id": "gauge",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {
                    "address": 100,
                    "table": "input",
                    "kind": "script",
                    "type": "int16",
                    "scale": 0.01,
                    # A square wave: 1.0 m for a second, 3.0 m for a second.
                    "points": [[0, 1.0], [0.999, 1.0], [1.0, 3.0], [1.999, 3.0], [2.0, 1.0]],
                    "loop": True,
                }
            ],
        },
        {
            "id": "siren",
            "transport": "tcp",
            "unit": 1,
            "registers": [{"address": 0, "table": "coil", "kind": "output"}],
        },
    ]
}


def config(work: Path, sim: Simulator, broker_port: int, poll: str) -> Path:
    def tcp(dev: str) -> dict[str, Any]:
        host, port = sim.endpoint(dev).rsplit(":", 1)
        return {"host": host, "port": int(port), "unit": 1}

    cfg = {
        "gateway": {"id": "bench-alarm", "data_dir": str(work / "data")},
        "uplink": {
            "url": f"mqtt://127.0.0.1:{broker_port}",
            "reconnect": {"min_delay": "200ms", "max_delay": "500ms"},
        },
        "status": {"socket": str(work / "status.sock")},
        "devices": [
            {
                "id": "gauge",
                "driver": "modbus-tcp",
                **tcp("gauge"),
                "poll_interval": poll,
                "registers": [
                    {
                        "name": "level",
                        "address": 100,
                        "table": "input",
                        "type": "int16",
                        "scale": 0.01,
                    }
                ],
            },
            {
                "id": "siren",
                "driver": "modbus-tcp",
                **tcp("siren"),
                "poll_interval": "10s",
                "registers": [{"name": "siren", "address": 0, "table": "coil", "writable": True}],
            },
        ],
        "rules": [
            {
                "id": "flood",
                "device": "gauge",
                "metric": "level",
                "above": 2.0,
                "clear_below": 1.5,
                "min_interval": "0s",
                "severity": "critical",
                "actions": [
                    {
                        "write": {
                            "device": "siren",
                            "metric": "siren",
                            "value": True,
                            "on_resolve": False,
                        }
                    }
                ],
            }
        ],
    }
    path = work / "tepi.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def main(cycles: int, poll: str) -> dict[str, Any]:
    from tepi.gateway.localbroker import free_port

    work = Path(tempfile.mkdtemp(prefix="tepi-bench-alarm-"))
    broker_port = free_port()
    broker = start_broker(work, broker_port)
    # The agent reaches the broker through a proxy that refuses it until the end: the
    # subscriber is there from the start, and misses nothing.
    proxy = CountingProxy(broker_port)
    await proxy.start()
    await proxy.set_up(False)
    alarms: dict[int, dict[str, Any]] = {}
    done = asyncio.Event()

    async def subscribe() -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", broker_port) as client:
                    await client.subscribe("#", qos=1)
                    subscribed.set()
                    async for msg in client.messages:
                        if str(msg.topic).endswith("/alarm") and isinstance(msg.payload, bytes):
                            a = json.loads(msg.payload)
                            if a["state"] in ("firing", "resolved"):
                                alarms[a["seq"]] = a
                            if len(alarms) >= 2 * cycles:
                                done.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    subscribed = asyncio.Event()
    sub = asyncio.create_task(subscribe())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with Simulator(SIM) as sim:
            siren = sim.device("siren")
            agent = subprocess.Popen(
                [sys.executable, "-m", "tepi.gateway.cli", "run", "--config",
                 str(config(work, sim, proxy.port, poll))],
                stdout=subprocess.DEVNULL,
                stderr=(work / "agent.log").open("ab"),
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )  # fmt: skip
            try:
                # Each cycle of the square wave is one firing and one resolve: two writes.
                await siren.wait_writes(2 * cycles, timeout=2.0 * cycles + 30)
                writes = list(siren.writes)
                await proxy.set_up(True)  # the broker comes back: the kept alarms are delivered
                await asyncio.wait_for(done.wait(), 60)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(20)
    finally:
        sub.cancel()
        await proxy.stop()
        await asyncio.sleep(0.2)  # the proxy's pipes end on their closed sockets
        broker.terminate()
        broker.wait(10)
    unique = [alarms[seq] for seq in sorted(alarms)]
    pairs = list(zip(unique, writes, strict=False))
    bad = [(a["state"], w.values[0]) for a, w in pairs if (a["state"] == "firing") != w.values[0]]
    if bad:
        raise SystemExit(f"alarms and writes do not pair up: {bad[:5]}")
    lat = [(w.t - a["since"]) * 1000 for a, w in pairs]
    return {
        "poll_interval": poll,
        "pairs": len(lat),
        "p50_ms": round(statistics.median(lat), 1),
        "p90_ms": round(pct(lat, 0.9), 1),
        "p99_ms": round(pct(lat, 0.99), 1),
        "max_ms": round(max(lat), 1),
        "min_ms": round(min(lat), 1),
        "poll_s": parse_duration(poll),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=30, help="square-wave cycles (2 writes each)")
    p.add_argument("--poll", default="100ms", help="the gauge's poll interval")
    args = p.parse_args()
    res = asyncio.run(main(args.cycles, args.poll))
    print(json.dumps(res))
    print("| figure | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v} |")
