"""The CPU cost of streaming serial sensors in the agent: a PMS5003 frame every second.

The bench runs ``tepi run`` twice for the same time, against a Mosquitto on loopback: once
with no devices (the agent's own idle cost: its health, its timers), once with ``--sensors``
PMS5003s in active mode, each on a pseudo-terminal that the bench writes one valid 32-byte
frame a second to, polled once a minute (the window's mean). The difference in the agent's
CPU time (utime + stime from /proc), divided by the sensors and the seconds, is what one
1 Hz streaming sensor costs: its port's wakeups, framing, checksums, decoding and window.

    .venv/bin/python bench/serial_sensors.py                         # 20 sensors, 60 s per run
    .venv/bin/python bench/serial_sensors.py --sensors 5 --seconds 20 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

from harness import start_broker  # noqa: E402
from suite import sample  # noqa: E402

from tepi.drivers.serial import codecs  # noqa: E402
from tepi.gateway.localbroker import free_port  # noqa: E402
from tepi_sim.model import UartDeviceConfig  # noqa: E402
from tepi_sim.uart_protocols import make_player  # noqa: E402

TEPI = Path(sys.executable).with_name("tepi")


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


async def run(sensors: int, seconds: float, rate: float, work: Path) -> dict[str, Any]:
    """One agent run; its CPU seconds over ``seconds`` of steady streaming."""
    port = free_port()
    broker = start_broker(work, port)
    ptys = [_pty() for _ in range(sensors)]
    cfg = {
        "gateway": {"id": "bench-serial", "data_dir": str(work / "data")},
        "uplink": {"url": f"mqtt://127.0.0.1:{port}", "client_id": "bench-serial"},
        "devices": [
            {
                "id": f"pm-{i}",
                "driver": "serial",
                "protocol": "pms5003",
                "port": path,
                "poll_interval": "60s",
                "warmup": "0s",
            }
            for i, (_, _, path) in enumerate(ptys)
        ],
    }
    (work / "tepi.yaml").write_text(yaml.safe_dump(cfg))
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen([str(TEPI), "run", "--config", str(work / "tepi.yaml")], stderr=log)
    try:
        # Started when the agent's first poll of every port asked nothing of it yet, but its
        # set-up (wake, active mode) arrived: each port is open.
        got = [b""] * sensors
        deadline = time.monotonic() + 30
        while not all(codecs.PMS_ACTIVE in g for g in got) or (
            sensors == 0 and "running" not in (work / "agent.log").read_text()
        ):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {(work / 'agent.log').read_text()}")
            for i, (master, _, _) in enumerate(ptys):
                with contextlib.suppress(BlockingIOError):
                    got[i] += os.read(master, 4096)
            await asyncio.sleep(0.05)
        # The simulator's PMS5003 frame (tepi's codecs only decode): PM2.5 35, PM10 50 ug/m3.
        pms = UartDeviceConfig(
            id="pm", protocol="pms5003", values={"pm25_atm": (35.0,), "pm10_atm": (50.0,)}
        )
        frame = make_player(pms, random.Random(1), time.time).stream()[0].data
        start = sample(agent.pid)
        t0 = time.monotonic()
        sent = 0
        tick = 0
        while time.monotonic() - t0 < seconds:
            for master, _, _ in ptys:
                os.write(master, frame)
                sent += 1
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick / rate - time.monotonic()))
        end = sample(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        broker.terminate()
        broker.wait(10)
        for master, slave, _ in ptys:
            os.close(master)
            os.close(slave)
    return {
        "sensors": sensors,
        "frames": sent,
        "seconds": round(end.t - start.t, 2),
        "cpu_s": round(end.cpu_s - start.cpu_s, 3),
        "wakeups": end.wakeups - start.wakeups,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tepi-bench-serial-") as tmp:
        idle_dir, busy_dir = Path(tmp, "idle"), Path(tmp, "busy")
        await asyncio.to_thread(idle_dir.mkdir)
        await asyncio.to_thread(busy_dir.mkdir)
        idle = await run(0, args.seconds, args.rate, idle_dir)
        busy = await run(args.sensors, args.seconds, args.rate, busy_dir)
    extra = max(busy["cpu_s"] - idle["cpu_s"] * busy["seconds"] / idle["seconds"], 0.0)
    per_sensor = extra / busy["seconds"] / args.sensors
    return {
        "bench": "serial",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "rate_hz": args.rate,
        "idle": idle,
        "busy": busy,
        "cpu_percent_per_sensor": round(100 * per_sensor, 4),
        "us_per_frame": round(1e6 * extra / busy["frames"], 1) if busy["frames"] else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sensors", type=int, default=20, help="PMS5003s streaming (default 20)")
    p.add_argument("--seconds", type=float, default=60.0, help="each run's length (default 60)")
    p.add_argument("--rate", type=float, default=1.0, help="frames a second a sensor (default 1)")
    args = p.parse_args()
    if args.sensors < 1:
        p.error("--sensors must be at least 1")
    res = asyncio.run(main_async(args))
    print(json.dumps(res))
    print(
        f"{args.sensors} sensors at {args.rate:g} Hz: "
        f"{res['cpu_percent_per_sensor']:.4f} % of one core per sensor, "
        f"{res['us_per_frame']} us of CPU per frame (agent idle: "
        f"{100 * res['idle']['cpu_s'] / res['idle']['seconds']:.3f} %)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
