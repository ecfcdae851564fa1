"""Node-RED on a Modbus workload of bench/workloads, beside tepi, measured the same way.

Issue 16 compares tepi with Node-RED, which many integrators run on a Pi instead, on
`modbus-tcp-50` (50 units behind one Modbus TCP address, 20 values each every 100 ms). This
VM's speed moves a run's CPU by up to twice from one hour to another, so a figure of either
agent means little alone: this runs Node-RED on the same simulator, broker and /proc
method as ``bench/suite.py`` runs tepi, and, with ``--tepi``, tepi's run on the same workload
right after, so the two come from the same hour.

The flow is what an integrator would build: one ``modbus-client`` (node-red-contrib-modbus,
its defaults: requests to different unit ids pipelined on the connection), a
``modbus-read`` a device at its poll interval, a ``function`` node that decodes the device's
values from the answer's bytes (type, word order and scale, as tepi's register map), and an
``mqtt out`` node (QoS 1) that publishes each poll as one JSON message: the device, the
poll's time and its values. Node-RED's editor and HTTP nodes are off; it keeps no buffer.

Node-RED is not one of tepi's dependencies; install it once (npm, about a minute):

    npm install --prefix ~/.cache/tepi-bench/node-red node-red@4.1 node-red-contrib-modbus@5.23
    .venv/bin/python bench/nodered.py modbus-tcp-50 --tepi modbus-tcp-50-pipelined

(tepi's ``modbus-tcp-50-pipelined`` is the same workload with ``max_outstanding: 8``, its
requests pipelined as Node-RED's are by default.) ``TEPI_NODE_RED`` names another install's
folder.

Figures print as a Markdown table, or JSON lines with ``--json``; they are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from harness import start_broker, start_simulator  # noqa: E402
from suite import (  # noqa: E402
    BROKER_EXTRA,
    WIDTH,
    WORKLOADS,
    expand,
    loadavg,
    ms,
    pct,
    points,
    sample,
    sim_config,
)

from tepi.core.units import parse_duration  # noqa: E402
from tepi.gateway.localbroker import free_port, wait_port  # noqa: E402

NODE_RED = Path(os.environ.get("TEPI_NODE_RED", Path.home() / ".cache/tepi-bench/node-red"))
TOPIC = "bench/nodered"

# Decodes one poll's answer as tepi's register map does: ``plan`` is [name, type, byte
# offset, word order, scale] a value. Node-RED's function node runs this once a poll.
DECODE = """
const b = msg.responseBuffer.buffer;
const plan = env.get("PLAN_" + msg.topic);
const values = {};
for (const [name, type, at, order, scale] of plan) {
  let v;
  if (type === "uint16") v = b.readUInt16BE(at);
  else if (type === "int16") v = b.readInt16BE(at);
  else {
    const w = order === "little"
      ? Buffer.from([b[at + 2], b[at + 3], b[at], b[at + 1]])
      : b.subarray(at, at + 4);
    v = type === "float32" ? w.readFloatBE(0) : type === "int32" ? w.readInt32BE(0)
      : w.readUInt32BE(0);
  }
  values[name] = scale === 1 ? v : v * scale;
}
msg.payload = JSON.stringify({device: msg.topic, ts: Date.now() / 1000, values: values});
msg.topic = "TOPIC/" + msg.topic;
return msg;
""".replace("TOPIC", TOPIC)


def plan_of(d: dict[str, Any]) -> list[list[Any]]:
    """The decode's plan of a device (``DECODE``), from the same register map as tepi's."""
    return [
        [f"r{pt['address']}", pt["type"], 2 * pt["address"], pt["word_order"], pt["scale"]]
        for pt in points(d)
    ]


def words(d: dict[str, Any]) -> int:
    """The registers one read of the device's whole map takes."""
    last = points(d)[-1]
    return int(last["address"]) + WIDTH[last["type"]]


def flows(
    devices: list[dict[str, Any]], endpoints: dict[str, Any], broker: int, *, raw: bool = False
) -> list[Any]:
    """The flow: a client per Modbus TCP address, a read, a decode and a publish a device.
    ``raw``: no decode, the read's register words published as they come (a JSON array)."""
    nodes: list[dict[str, Any]] = [{"id": "tab", "type": "tab", "label": "bench"}]
    nodes.append(
        {
            "id": "broker",
            "type": "mqtt-broker",
            "broker": "127.0.0.1",
            "port": str(broker),
            "clientid": "nodered-bench",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        }
    )
    nodes.append(
        {
            "id": "out",
            "type": "mqtt out",
            "z": "tab",
            "broker": "broker",
            "qos": "1",
            "retain": "false",
            "topic": "",
            "wires": [],
        }
    )
    clients: dict[str, str] = {}
    env = []
    for i, d in enumerate(devices):
        if d["kind"] != "tcp":
            raise SystemExit(f"{d['id']}: only Modbus TCP devices are built here")
        host, port = endpoints[d["id"]]["endpoint"].rsplit(":", 1)
        key = f"{host}:{port}"
        if key not in clients:
            clients[key] = f"client{len(clients)}"
            nodes.append(
                {
                    "id": clients[key],
                    "type": "modbus-client",
                    "clienttype": "tcp",
                    "bufferCommands": True,
                    "stateLogEnabled": False,
                    "queueLogEnabled": False,
                    "failureLogEnabled": True,
                    "tcpHost": host,
                    "tcpPort": port,
                    "tcpType": "DEFAULT",
                    "unit_id": 1,
                    "commandDelay": 1,
                    "clientTimeout": 1000,
                    "reconnectOnTimeout": True,
                    "reconnectTimeout": 2000,
                    "parallelUnitIdsAllowed": True,
                }
            )
        every = round(parse_duration(d["poll_interval"]) * 1000)
        nodes.append(
            {
                "id": f"read{i}",
                "type": "modbus-read",
                "z": "tab",
                "topic": f"{TOPIC}/{d['id']}" if raw else d["id"],
                "unitid": str(d["unit"]),
                "dataType": "HoldingRegister",
                "adr": "0",
                "quantity": str(words(d)),
                "rate": str(every),
                "rateUnit": "ms",
                "server": clients[key],
                "wires": [["out" if raw else f"decode{i}"], []],
            }
        )
        if raw:
            continue
        nodes.append(
            {
                "id": f"decode{i}",
                "type": "function",
                "z": "tab",
                "func": DECODE,
                "outputs": 1,
                "wires": [["out"]],
            }
        )
        env.append({"name": f"PLAN_{d['id']}", "value": json.dumps(plan_of(d)), "type": "json"})
    nodes[0]["env"] = env
    return nodes


SETTINGS = """module.exports = {
  flowFile: "flows.json",
  uiPort: %d,
  uiHost: "127.0.0.1",
  httpAdminRoot: false,
  httpNodeRoot: false,
  credentialSecret: false,
  logging: {console: {level: "warn", metrics: false, audit: false}},
  editorTheme: {projects: {enabled: false}},
  functionGlobalContext: {},
};
"""


class Counter:
    """Messages and their read-to-broker latency, from a paho subscriber (its own thread)."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.messages = 0
        self.values = 0
        self.latencies: list[float] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-nodered-rx")
        self.client.on_message = self._on_message
        ready = threading.Event()

        def on_connect(c: mqtt.Client, *_: Any) -> None:
            c.subscribe(f"{TOPIC}/#", 0)
            ready.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscriber could not connect")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        body = json.loads(msg.payload)
        with self.lock:
            self.messages += 1
            if isinstance(body, list):  # a raw flow's register words: no time to measure by
                self.values += len(body)
                return
            self.values += len(body["values"])
            self.latencies.append(now - float(body["ts"]))

    def window(self) -> tuple[int, int, list[float]]:
        with self.lock:
            out = (self.messages, self.values, self.latencies)
            self.messages, self.values, self.latencies = 0, 0, []
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def run(name: str, seconds: float | None, *, raw: bool = False) -> dict[str, Any]:
    binary = NODE_RED / "node_modules" / ".bin" / "node-red"
    if not binary.exists():
        raise SystemExit(f"no Node-RED at {NODE_RED}: install it as this file's docstring says")
    wl = yaml.safe_load((WORKLOADS / f"{name}.yaml").read_text())
    duration = float(seconds or wl.get("duration", 30))
    warmup = float(wl.get("warmup", 5))
    devices = list(expand(wl["devices"]))
    offered = sum(1 / parse_duration(d["poll_interval"]) for d in devices)
    work = Path(tempfile.mkdtemp(prefix=f"tepi-bench-nodered-{name}-"))
    port = free_port()
    broker = start_broker(work, port, BROKER_EXTRA)
    sim = red = None
    rx: Counter | None = None
    try:
        await wait_port(port, alive=lambda: broker.poll() is None)
        sim, endpoints = await start_simulator(work, sim_config(devices))
        rx = Counter(port)
        user = work / "node-red"
        user.mkdir()
        (user / "flows.json").write_text(json.dumps(flows(devices, endpoints, port, raw=raw)))
        (user / "settings.js").write_text(SETTINGS % free_port())
        red = subprocess.Popen(
            [str(binary), "--userDir", str(user), "--settings", str(user / "settings.js")],
            stdout=(work / "node-red.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while rx.messages < len(devices):  # every device has published once
            if red.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Node-RED did not deliver: {work / 'node-red.log'}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        rx.window()
        a = sample(red.pid)
        await asyncio.sleep(duration)
        b = sample(red.pid)
        messages, values, lat = rx.window()
        took = b.t - a.t
        cpu = b.cpu_s - a.cpu_s
        return {
            "agent": "node-red, raw" if raw else "node-red",
            "workload": name,
            "seconds": round(took, 1),
            "offered_polls_per_s": round(offered, 1),
            "polls_per_s": round(messages / took, 1),
            "values_per_s": round(values / took, 1),
            "cpu_percent": round(100 * cpu / took, 2),
            "cpu_s_per_1000_polls": round(1000 * cpu / max(1, messages), 4),
            # The suite's percentiles, so that the two agents' figures are taken alike.
            "latency_p50_ms": ms(pct(lat, 0.5)),
            "latency_p99_ms": ms(pct(lat, 0.99)),
            "rss_mb": round(b.rss / 2**20, 1),
            "loadavg": loadavg(),
        }
    finally:
        if rx is not None:
            rx.close()
        for p in (red, sim, broker):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def tepi(name: str) -> dict[str, Any]:
    """bench/suite.py's run of the same workload (its own window), in a process of its own."""
    cmd = [sys.executable, str(REPO / "bench" / "suite.py"), name, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    keep = (
        "seconds",
        "offered_polls_per_s",
        "polls_per_s",
        "cpu_percent",
        "cpu_s_per_1000_polls",
        "latency_p50_ms",
        "latency_p99_ms",
        "rss_mb",
        "lost",
        "loadavg",
        "workload",
    )
    return {"agent": "tepi", **{k: res.get(k) for k in keep}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", nargs="?", default="modbus-tcp-50")
    p.add_argument("--seconds", type=float, help="the window (default: the workload's)")
    p.add_argument(
        "--tepi",
        nargs="?",
        const="",
        metavar="WORKLOAD",
        help="and tepi's run right after, on this workload (default: the same one)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="Node-RED's lightest flow: the register words published as read, no decode",
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {loadavg()}",
        file=sys.stderr,
    )
    results = [asyncio.run(run(args.workload, args.seconds, raw=args.raw))]
    if args.tepi is not None:
        results.append(tepi(args.tepi or args.workload))
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    keys = [k for k in results[0] if k != "agent"]
    print("| figure | " + " | ".join(r["agent"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.get(k, "")) for r in results) + " |")


if __name__ == "__main__":
    main()
