"""``tepi demo``: the simulator, a local Mosquitto broker and the agent, wired together.

Everything runs as child processes on loopback in a scratch directory; the readings are
printed as they arrive at the broker, so a newcomer sees the whole path work. Without
mosquitto installed, the agent still runs and buffers, and the demo shows the buffer fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import sqlite3
import string
import sys
import tempfile
import time
from asyncio.subprocess import Process
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt

from tepi.gateway.localbroker import find_mosquitto, free_port, mosquitto_conf, wait_port

EXIT_OK, EXIT_MISSING = 0, 4
SIM_MISSING = (
    "tepi demo needs the hardware simulator, which a gateway does not carry: install it with "
    "'pip install tepi-sim' (from a checkout: 'pip install ./hw-sim', or run bash .ci/setup)"
)


def simulator_installed() -> bool:
    """Whether tepi-sim (a distribution of its own) is importable, without importing it."""
    return importlib.util.find_spec("tepi_sim") is not None


async def _start_sim(work: Path) -> tuple[Process, dict[str, Any]]:
    manifest = work / "sim.json"
    with (work / "sim.log").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tepi_sim.cli",
            "--demo",
            "--manifest",
            str(manifest),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while line := (await proc.stdout.readline()).decode():
            if line.strip() == "ready":  # the simulator prints its endpoints, then "ready"
                break
            lines.append(line.rstrip())
        else:
            raise RuntimeError(f"the simulator did not start: see {work / 'sim.log'}")
    print("simulated devices:\n  " + "\n  ".join(lines), flush=True)
    data: dict[str, Any] = json.loads(manifest.read_text())
    return proc, data


def render_config(work: Path, manifest: dict[str, Any], broker_port: int) -> Path:
    devs = manifest["devices"]
    host, port = devs["river-level-3"]["endpoint"].rsplit(":", 1)
    siren_host, siren_port = devs["siren-1"]["endpoint"].rsplit(":", 1)
    template = resources.files("tepi.gateway").joinpath("demo.yaml").read_text()
    text = string.Template(template).substitute(
        data_dir=str(work / "data"),
        broker_port=broker_port,
        aq_port=devs["aq-station-1"]["endpoint"],
        noise_port=devs["noise-meter-2"]["endpoint"],
        pm_port=devs["pm-sensor-4"]["endpoint"],
        level_host=host,
        level_port=port,
        siren_host=siren_host,
        siren_port=siren_port,
    )
    cam = manifest.get("cameras", {}).get("cam-1")
    if cam is not None:
        # The simulated camera: its password in a file of its own, as on a real box.
        secret = work / "cam-1-password"
        secret.write_text(str(cam["password"]) + "\n")
        secret.chmod(0o600)
        text += CAMERA.substitute(snapshot=cam["snapshot"], password_file=str(secret))
    text += RULES + (RULE_SNAPSHOT if cam is not None else "")
    path = work / "tepi.yaml"
    path.write_text(text)
    return path


# Appended to demo.yaml when the simulator has its camera.
CAMERA = string.Template(
    """  - id: cam-1                        # IP camera (simulated): health every 5 s, a snapshot
    driver: camera                   # (and its thumbnail) at once and every minute
    url: ${snapshot}
    username: tepi
    password_file: ${password_file}
    poll_interval: 5s
    snapshot_interval: 1m
    masks:                           # privacy: the top-left corner is never stored or sent
      - [[0.0, 0.0], [0.3, 0.0], [0.3, 0.25], [0.0, 0.25]]
"""
)


# Appended last: the flood rule on the simulator's scripted river (it floods every minute).
RULES = """rules:
  - id: flood-high                   # the river above its alarm level at the bridge
    device: river-level-3
    metric: level
    above: 2.5
    clear_below: 2.3                 # hysteresis: a level that hovers at 2.5 m does not flap
    for: 3s
    severity: critical
    description: River above the alarm level at the bridge
    labels: {site: bridge}
    actions:                         # with the broker down just the same
      - write: {device: siren-1, metric: siren, value: true, on_resolve: false}
      - poll_rate: {device: river-level-3, interval: 500ms}
"""
RULE_SNAPSHOT = """      - snapshot: {camera: cam-1}
"""


def _format_alarm(a: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(a["ts"]))
    if a["state"] == "action":
        act = a["action"]
        if act["kind"] == "write":
            what = f"{act['device']}.{act['metric']} = {act['value']}"
            done = f"read back {act['read_back']}" if act["ok"] else f"FAILED: {act['error']}"
        else:
            what = f"snapshot of {act['camera']}"
            done = f"image {act['image_seq']}" if act["ok"] else f"FAILED: {act['error']}"
        return f"{when}  ALARM {a['rule']}: action {what}: {done} ({act['ms']:.0f} ms)"
    since = time.strftime("%H:%M:%S", time.localtime(a["since"]))
    return (
        f"{when}  ALARM {a['rule']} {a['state'].upper()} ({a['severity']}): "
        f"{a['device']}.{a['metric']} = {a['value']} since {since}, seq {a['seq']}"
    )


def _format(r: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(r["ts"]))
    value = r["value"]
    shown = f"{value:.2f}" if isinstance(value, float) else str(value)
    if r["quality"] == "uncertain":  # a value to take with care: a sensor warming up
        shown = f"~{shown}"
    elif r["quality"] != "good":
        shown = f"BAD ({r.get('reason')})"
    unit = r["unit"] or ""
    return f"{when}  {r['device']:<14} {r['metric']:<12} {shown:>10} {unit:<6} seq {r['seq']}"


def _format_image(m: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(m["ts"]))
    what = f"{m['class']} {m['width']}x{m['height']}"
    return f"{when}  {m['camera']:<14} {'image':<12} {what:>20} {m['size']:,} B, image {m['seq']}"


async def _print_readings(port: int, count: int, *, images: bool = False) -> None:
    """Readings (and images' metadata) as they arrive, until ``count`` readings (and, with
    ``images``, one image) have been shown; 0: until Ctrl-C."""
    shown = images_shown = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier="tepi-demo-viewer") as client:
        await client.subscribe("ioc/v1/+/telemetry", qos=1)
        await client.subscribe("ioc/v1/+/image_meta/+", qos=1)
        await client.subscribe("ioc/v1/+/alarm", qos=1)
        print(
            "readings, alarms and images as they arrive at the broker (Ctrl-C to stop); the "
            "river floods every minute and the rule flood-high sounds the siren:",
            flush=True,
        )
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b"{}"
            if str(msg.topic).endswith("/alarm"):
                print(_format_alarm(json.loads(payload)), flush=True)
            elif "/image_meta/" in str(msg.topic):
                print(_format_image(json.loads(payload)), flush=True)
                images_shown += 1
            else:
                for r in json.loads(payload)["readings"]:
                    print(_format(r), flush=True)
                    shown += 1
            if count and shown >= count and (images_shown or not images):
                return


async def _show_buffer(db: Path, count: int) -> None:
    print("no broker: the agent keeps every reading in its buffer. Buffer depth:", flush=True)
    while True:
        await asyncio.sleep(2)
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                n = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            finally:
                conn.close()
            print(f"  {n} readings buffered", flush=True)
            if count and n >= count:
                return


async def _stop(proc: Process | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout_s):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _demo(work: Path, count: int, broker_port: int | None = None) -> int:
    broker: Process | None = None
    sim: Process | None = None
    agent: Process | None = None
    try:
        mosq = find_mosquitto()
        port = free_port() if broker_port is None else broker_port
        if broker_port is not None:
            # A broker that runs already (the mosquitto service, a test's): not ours to stop.
            try:
                await wait_port(port, timeout_s=5)
            except TimeoutError:
                print(
                    f"error: no broker listens on 127.0.0.1:{port} (--broker-port)", file=sys.stderr
                )
                return EXIT_MISSING
            print(f"broker: the one on 127.0.0.1:{port}", flush=True)
        elif mosq is not None:
            conf = work / "mosquitto.conf"
            conf.write_text(mosquitto_conf(port))
            with (work / "mosquitto.log").open("wb") as mlog:
                broker = await asyncio.create_subprocess_exec(
                    mosq, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=mlog
                )
            proc = broker
            await wait_port(port, alive=lambda: proc.returncode is None)
            print(f"broker: mosquitto on 127.0.0.1:{port}", flush=True)
        else:
            print(
                "mosquitto is not installed (sudo apt-get install mosquitto): running without "
                "a broker.",
                flush=True,
            )
        sim, manifest = await _start_sim(work)
        config = render_config(work, manifest, port)
        with (work / "agent.log").open("wb") as alog:
            agent = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tepi.gateway.cli",
                "run",
                "--config",
                str(config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=alog,
            )
        print(f"agent: tepi run --config {config}  (log: {work / 'agent.log'})", flush=True)
        if broker is not None or broker_port is not None:
            await _print_readings(port, count, images="cam-1" in manifest.get("cameras", {}))
        else:
            await _show_buffer(work / "data" / "buffer.db", count)
        return EXIT_OK
    finally:
        await asyncio.shield(_stop_in_order(agent, sim, broker))


async def _stop_in_order(
    agent: Process | None, sim: Process | None, broker: Process | None
) -> None:
    """The agent first, while its broker and devices are still there: it says ``offline``
    and commits. Stopped together, the broker could be gone during the agent's last second
    (its polls in flight finish first), and the agent logged the lost link as an error."""
    await _stop(agent)
    await asyncio.gather(_stop(sim), _stop(broker))


def run_demo(workdir: Path | None, count: int, broker_port: int | None = None) -> int:
    if not simulator_installed():
        print(f"error: {SIM_MISSING}", file=sys.stderr)
        return EXIT_MISSING
    work = workdir or Path(tempfile.mkdtemp(prefix="tepi-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"tepi demo in {work}", flush=True)
    try:
        return asyncio.run(_demo(work, count, broker_port))
    except KeyboardInterrupt:
        print("\nstopped.", flush=True)
        return EXIT_OK
