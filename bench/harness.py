"""What the benchmarks share: a Mosquitto and a ``tepi-sim`` as child processes."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

from tepi.gateway.localbroker import find_mosquitto, mosquitto_conf  # noqa: E402


def start_broker(
    work: Path,
    port: int,
    extra: Iterable[str] = (),
    *,
    persistence: bool = False,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Mosquitto on 127.0.0.1:``port``, its config in ``work`` (and its ``persistence`` file,
    which keeps sessions and queued messages across a restart). ``new_session``: in a process
    group of its own, which the caller ends."""
    mosq = find_mosquitto()
    if mosq is None:
        raise SystemExit("mosquitto is not installed: run .ci/setup")
    conf = work / "mosquitto.conf"
    conf.write_text(
        mosquitto_conf(port, persistence_dir=work if persistence else None, extra=extra)
    )
    return subprocess.Popen(
        [mosq, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )


async def start_simulator(
    work: Path, config: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``tepi-sim`` with ``config``, once it listens; returns it and its manifest's devices
    (and cameras)."""
    (work / "sim.yaml").write_text(yaml.safe_dump(config))
    manifest = work / "sim.json"
    log = work / "sim.log"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tepi_sim.cli",
            "--config",
            str(work / "sim.yaml"),
            "--manifest",
            str(manifest),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while not manifest.exists():
        if sim.poll() is not None or time.monotonic() > deadline:
            sim.kill()
            raise RuntimeError(f"simulator did not start: {log.read_text()}")
        await asyncio.sleep(0.05)
    data = json.loads(manifest.read_text())
    devices: dict[str, Any] = data["devices"]
    devices.update(data.get("cameras", {}))  # a camera's: url, snapshot, mjpeg, stream
    return sim, devices


def timed(repeats: int, fn: Callable[[], object], warmup: int = 3) -> float:
    """The median wall time of ``fn`` in milliseconds, after ``warmup`` calls."""
    for _ in range(min(warmup, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
