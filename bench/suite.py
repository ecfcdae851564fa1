"""tepi's benchmark suite: the real agent (``tepi run``), measured from outside.

Each workload (bench/workloads/*.yaml) starts a Mosquitto broker on loopback, the hardware
simulator (``tepi-sim``, on real ptys and TCP ports) or the synthetic driver, a byte-counting
TCP proxy between the agent and the broker, a subscriber that timestamps every message, and
then ``tepi run`` as its own process. The agent is measured through /proc: CPU time (utime +
stime, all threads), RSS, ``write_bytes`` (bytes sent towards the disk) and voluntary context
switches (wake-ups). Nothing inside the agent is instrumented; its counters (polls made,
readings taken) are read from its status API, ``GET /health``, as ``tepi status`` does.

    .venv/bin/python bench/suite.py                       # every workload; prints the tables
    .venv/bin/python bench/suite.py reference idle        # some of them
    .venv/bin/python bench/suite.py backlog --backlog-readings 10000000
    .venv/bin/python bench/suite.py --smoke               # seconds, not minutes (CI: it runs)
    .venv/bin/python bench/suite.py reference --agent-src ../old   # an older checkout's agent
    .venv/bin/python bench/suite.py modbus-tcp-50 --profile   # and the agent's cProfile

``--profile`` runs the agent under bench/profiled.py (``python -m cProfile``, switched on for
the measured window only) and prints its top 25 functions by tottime and by cumtime.

Figures print as Markdown tables (the ones in docs/performance.md) and as JSON lines with
``--json``. They are never asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]

from harness import start_broker, start_simulator  # noqa: E402

from tepi.core.units import parse_duration  # noqa: E402
from tepi.gateway.compact import decode_compact  # noqa: E402
from tepi.gateway.localbroker import free_port, wait_port  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
TICK = os.sysconf("SC_CLK_TCK")
# The benchmarks' Mosquitto (bench/nodered.py's too). set_tcp_nodelay: Mosquitto leaves
# Nagle's algorithm on by default, and a PUBACK written while its previous one awaits the
# peer's delayed ACK waits up to 40 ms: the p99 of modbus-tcp-50 was 43 ms with it, 7.8 ms
# without (docs/performance.md).
BROKER_EXTRA = ["max_queued_messages 0", "set_tcp_nodelay true"]
TOPIC = "ioc/v1/bench-gw"
TCP_IP_HEADER = 52  # IPv4 20 + TCP 20 + timestamps option 12, per segment
MSS = 1448  # a typical Ethernet/4G MSS with the timestamps option


# ---- the agent, seen from /proc ------------------------------------------------------------


@dataclass
class ProcSample:
    t: float
    cpu_s: float
    rss: int
    write_bytes: int
    wakeups: int


def sample(pid: int) -> ProcSample:
    proc = Path(f"/proc/{pid}")
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = 0
    for line in (proc / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    wb = 0
    for line in (proc / "io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            wb = int(line.split()[1])
    wake = 0
    for st in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in st.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wake += int(line.split()[1])
    return ProcSample(time.monotonic(), cpu, rss, wb, wake)


# ---- the subscriber: what arrives at the broker, and when -----------------------------------


class Receiver:
    """A paho subscriber (its own thread) that keeps, per reading: seq, device, latency."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.messages = 0
        self.payload_bytes = 0
        self.batch_sizes = array("l")
        self.latencies = array("d")  # arrival - reading ts, seconds
        self.live_latencies = array("d")
        self.sensor_latencies = array("d")  # readings of every device but the cameras
        self.live_ts = array("d")  # when each live reading was taken
        self.live_prefix = "live-"
        self.seqs = bytearray()
        self.per_device: dict[str, int] = {}  # readings in the window, by device
        self.first_at: float | None = None
        self.online_at: float | None = None
        self.alarm_at: float | None = None  # the first alarm message (monotonic)
        self.telemetry_before_alarm = 0  # telemetry messages between online and that alarm
        self.first_seq: int | None = None  # the run's first seq (its ``online`` message)
        self.max_seq = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{port}")
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("bench subscriber could not connect")

    def _on_connect(self, c: mqtt.Client, *_: Any) -> None:
        c.subscribe([(f"{TOPIC}/telemetry", 0), (f"{TOPIC}/status", 0), (f"{TOPIC}/alarm", 0)])
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/status"):
            if b'"online"' in msg.payload and self.online_at is None:
                self.online_at = time.monotonic()
                first = json.loads(msg.payload).get("first_seq")
                self.first_seq = int(first) if first is not None else None
            return
        if msg.topic.endswith("/alarm"):
            if self.alarm_at is None:
                self.alarm_at = time.monotonic()
            return
        if self.online_at is not None and self.alarm_at is None:
            self.telemetry_before_alarm += 1
        data = bytes(msg.payload)
        obj = decode_compact(data) if data[:1] != b"{" else json.loads(data)
        readings = obj["readings"]
        with self.lock:
            if self.first_at is None:
                self.first_at = time.monotonic()
            self.messages += 1
            self.count += len(readings)
            self.payload_bytes += len(msg.payload)
            self.batch_sizes.append(len(readings))
            per_device = self.per_device
            for r in readings:
                seq = r["seq"]
                device = r["device"]
                per_device[device] = per_device.get(device, 0) + 1
                lat = now - r["ts"]
                self.latencies.append(lat)
                if not device.startswith("camera-"):
                    self.sensor_latencies.append(lat)
                if device.startswith(self.live_prefix):
                    self.live_latencies.append(lat)
                    self.live_ts.append(r["ts"])
                if seq >= len(self.seqs):
                    self.seqs.extend(bytes(max(seq + 1 - len(self.seqs), 1 << 20)))
                self.seqs[seq] = 1
                self.max_seq = max(self.max_seq, seq)

    def reset_window(self) -> None:
        with self.lock:
            self.count = self.messages = self.payload_bytes = 0
            self.batch_sizes = array("l")
            self.latencies = array("d")
            self.live_latencies = array("d")
            self.sensor_latencies = array("d")
            self.live_ts = array("d")
            self.per_device = {}

    def missing(self, lo: int, hi: int) -> int:
        """How many of the seqs ``lo`` to ``hi`` (both included) have not arrived."""
        with self.lock:
            return hi - lo + 1 - self.seqs.count(1, lo, hi + 1)

    def have_all(self, upto: int) -> bool:
        with self.lock:
            return len(self.seqs) > upto and self.seqs.count(1, 1, upto + 1) == upto

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# ---- a proxy that counts the bytes on the agent's MQTT connection ---------------------------


class CountingProxy:
    """127.0.0.1:port -> the broker. ``set_up(False)`` makes the broker away: the port stops
    listening, so connections are refused (as a stopped broker's are), until ``set_up(True)``
    listens on the same port again."""

    def __init__(self, target: int, rate: float = 0.0) -> None:
        self.target = target
        self.rate = rate  # bytes a second towards the broker (a slow uplink); 0: no limit
        self.port = 0
        self.up = True
        self.bytes = {"to_broker": 0, "to_agent": 0}
        self.segments = 0  # estimated TCP segments on a real link (chunks / MSS)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_up(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            await self.start()
        elif self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not self.up:
            w.close()
            return
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self._conns |= {w, bw}
        await asyncio.gather(self._pipe(r, bw, "to_broker"), self._pipe(br, w, "to_agent"))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, way: str) -> None:
        slow = self.rate > 0 and way == "to_broker"
        due = time.monotonic()
        try:
            while chunk := await r.read(MSS if slow else 65536):
                self.bytes[way] += len(chunk)
                self.segments += math.ceil(len(chunk) / MSS)
                if slow:  # a link of ``rate`` bytes a second: each segment takes its time
                    due = max(due, time.monotonic()) + len(chunk) / self.rate
                    await asyncio.sleep(due - time.monotonic())
                w.write(chunk)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    def snapshot(self) -> tuple[int, int]:
        return self.bytes["to_broker"] + self.bytes["to_agent"], self.segments


# ---- configs from a workload ----------------------------------------------------------------

SIM_KINDS = ["counter", "pm25", "pm10", "temperature", "humidity", "level", "noise"]
SENSOR_KINDS = SIM_KINDS[1:]
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


def expand(groups: list[dict[str, Any]], prefix: str = "") -> Iterator[dict[str, Any]]:
    """Each device of each group: {id, kind, registers/metrics, poll_interval, bus, unit}.

    ``per_bus`` puts that many devices on one bus: an RS-485 bus (``rtu``), or one Modbus TCP
    address with the devices as its unit ids (``tcp``, a gateway). Without it, each TCP
    device has a port of its own."""
    n = 0
    for gi, g in enumerate(groups):
        for i in range(int(g["count"])):
            n += 1
            yield {
                **g,
                "id": f"{prefix}{g['kind']}-{gi}-{i}",
                "bus": f"bus{gi}-{i // int(g.get('per_bus', 1))}",
                "unit": i % int(g.get("per_bus", 1)) + 1,
            }


def points(d: dict[str, Any]) -> list[dict[str, Any]]:
    """A Modbus device's register map, as consecutive holding registers from address 0.

    ``registers: N`` is N uint16 values (kinds in turn, scale 1 or 0.1); a list of
    ``{type, count, kind, scale, word_order}`` gives a mix of types. Each point is one value
    (one reading a poll): {address, type, kind, scale, word_order}."""
    spec = d["registers"]
    if isinstance(spec, int):
        return [
            {
                "address": a,
                "type": "uint16",
                "kind": SIM_KINDS[a % len(SIM_KINDS)],
                "scale": 1 if a % len(SIM_KINDS) == 0 else 0.1,
                "word_order": "big",
            }
            for a in range(spec)
        ]
    out: list[dict[str, Any]] = []
    address = 0
    for group in spec:
        for _ in range(int(group.get("count", 1))):
            kind = group.get("kind", SENSOR_KINDS[len(out) % len(SENSOR_KINDS)])
            scale = 1 if group["type"] == "float32" or kind == "counter" else group.get("scale", 1)
            out.append(
                {
                    "address": address,
                    "type": group["type"],
                    "kind": kind,
                    "scale": scale,
                    "word_order": group.get("word_order", "big"),
                }
            )
            address += WIDTH[group["type"]]
    return out


CAMERA_METRICS = {"snapshot": 12, "mjpeg": 12, "stream": 11}  # tepi's camera health metrics


def values_per_poll(d: dict[str, Any]) -> int:
    """The readings one poll of a device (or of each device of a group) gives."""
    if d["kind"] == "synthetic":
        return int(d.get("metrics", 10))
    if d["kind"] == "camera":
        return CAMERA_METRICS[d.get("source", "snapshot")]
    return len(points(d))


def sim_config(devices: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    cameras = [
        {
            "id": d["id"],
            "width": int(d.get("width", 1280)),
            "height": int(d.get("height", 720)),
            "fps": int(d.get("fps", 5)),
            "seed": i,
            **{k: d[k] for k in ("scene", "traffic") if k in d},
        }
        for i, d in enumerate(devices)
        if d["kind"] == "camera"
    ]
    for d in devices:
        if d["kind"] not in ("rtu", "tcp"):
            continue
        regs = []
        for pt in points(d):
            reg = {"table": "holding", **pt}
            if pt["type"] == "float32" or pt["kind"] == "counter":
                del reg["scale"]  # the simulator stores these as they are
            regs.append(reg)
        dev: dict[str, Any] = {"id": d["id"], "transport": d["kind"], "unit": d["unit"]}
        if d["kind"] == "rtu" or "per_bus" in d:
            dev["bus"] = d["bus"]
        out.append({**dev, "registers": regs})
    cfg: dict[str, Any] = {"devices": out} if out else {}
    if cameras:
        cfg["cameras"] = cameras
    return cfg


def analytics_of(d: dict[str, Any], devices: list[dict[str, Any]]) -> dict[str, Any]:
    """A camera's ``analytics:``; ``lines: scene`` takes the traffic scene's own lines and
    queue zones (the scene is rebuilt here from the same settings and seed: deterministic)."""
    out = dict(d["analytics"])
    if out.get("lines") == "scene":
        from tepi_sim.traffic import TrafficScene
        from tepi_sim.traffic_settings import TrafficSettings

        seed = [x["id"] for x in devices if x["kind"] == "camera"].index(d["id"])
        scene = TrafficScene(
            TrafficSettings(
                seed=seed,
                width=int(d.get("width", 1280)),
                height=int(d.get("height", 720)),
                **dict(d.get("traffic") or {}),
            )
        )
        out["lines"] = [{"name": x.name, "points": [list(x.a), list(x.b)]} for x in scene.lines]
        out["zones"] = [
            {
                "name": z.name,
                "polygon": [list(p) for p in z.polygon],
                "stop_line": [list(p) for p in z.stop_line],
                "length_m": z.length_m,
            }
            for z in scene.zones
        ]
    return out


def agent_devices(devices: list[dict[str, Any]], endpoints: dict[str, Any]) -> list[Any]:
    out: list[dict[str, Any]] = []
    for d in devices:
        base = {"id": d["id"], "poll_interval": d["poll_interval"]}
        if d["kind"] == "synthetic":
            out.append({**base, "driver": "synthetic", "metrics": int(d["metrics"])})
            continue
        if d["kind"] == "camera":
            source = d.get("source", "snapshot")
            cam = endpoints[d["id"]]
            url = cam["snapshot"] if source == "snapshot" else cam[source]
            out.append({**base, "driver": "camera", "url": url, "source": source})
            out[-1]["snapshot_interval"] = d.get("snapshot_interval")
            if "analytics" in d:
                out[-1]["analytics"] = analytics_of(d, devices)
            continue
        regs = []
        for pt in points(d):
            reg = {"name": f"r{pt['address']}", "address": pt["address"], "type": pt["type"]}
            if pt["scale"] != 1:
                reg["scale"] = pt["scale"]
            if pt["word_order"] != "big":
                reg["word_order"] = pt["word_order"]
            regs.append(reg)
        ep = endpoints[d["id"]]["endpoint"]
        if d["kind"] == "rtu":
            out.append({**base, "driver": "modbus-rtu", "port": ep, "unit": d["unit"]})
        else:
            host, port = ep.rsplit(":", 1)
            out.append(
                {**base, "driver": "modbus-tcp", "host": host, "port": int(port), "unit": d["unit"]}
            )
        out[-1]["registers"] = regs
        out[-1].update(d.get("agent", {}))  # the group's own device keys (max_outstanding, ...)
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---- one run ---------------------------------------------------------------------------------


AGENT_SRC = REPO  # the checkout whose agent runs (--agent-src)
PROFILE_DIR: Path | None = None  # --profile: run the agent under cProfile, its stats here
PROFILE_CLOCK = "wall"  # --profile-clock


def agent_command(src: Path) -> tuple[list[str], str]:
    """``python -m`` for the agent of checkout ``src``, and its PYTHONPATH: the tepi namespace
    layout, or the flat layout of checkouts before it (for before/after figures)."""
    if (src / "gateway" / "cli.py").exists():
        return [sys.executable, "-m", "gateway.cli"], str(src)
    roots = os.pathsep.join(str(src / d) for d in ("drivers", "buffer", "gateway"))
    return [sys.executable, "-m", "tepi.gateway.cli"], roots


def has_status_api(src: Path) -> bool:
    """Whether the checkout's agent serves the local status API (``status.socket``)."""
    for config in (
        src / "gateway" / "tepi" / "gateway" / "config.py",
        src / "gateway" / "config.py",
    ):
        if config.exists() and "class StatusSection" in config.read_text():
            return True
    return False


async def agent_health(socket: Path | None) -> dict[str, Any] | None:
    """The agent's health message, from its status API (``GET /health`` on its unix socket);
    None when it has none or does not answer."""
    if socket is None:
        return None
    try:
        async with asyncio.timeout(5):
            r, w = await asyncio.open_unix_connection(str(socket))
            w.write(b"GET /health HTTP/1.0\r\nHost: tepi\r\n\r\n")
            data = await r.read()
            w.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        return None
    health: dict[str, Any] = json.loads(body)
    return health


def device_sum(health: dict[str, Any] | None, key: str) -> int | None:
    """A device counter of the health message, summed over the devices."""
    if health is None:
        return None
    return sum(int(d.get(key, 0)) for d in health.get("devices", {}).values())


@dataclass
class Rig:
    work: Path
    broker: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    proxy: CountingProxy | None = None
    rx: Receiver | None = None
    broker_port: int = 0
    endpoints: dict[str, Any] = field(default_factory=dict)
    status_socket: Path | None = None  # the agent's status API, when its checkout has one
    profile: Path | None = None  # run the agent under cProfile, writing its stats here
    link_rate: float = 0.0  # bytes a second from the agent to the broker (0: loopback's)

    async def start_broker(self) -> None:
        self.broker_port = free_port()
        self.broker = start_broker(self.work, self.broker_port, BROKER_EXTRA)
        broker = self.broker
        await wait_port(self.broker_port, alive=lambda: broker.poll() is None)
        self.proxy = CountingProxy(self.broker_port, rate=self.link_rate)
        await self.proxy.start()
        self.rx = Receiver(self.broker_port)

    async def start_sim(self, devices: list[dict[str, Any]]) -> None:
        cfg = sim_config(devices)
        if cfg:
            self.sim, self.endpoints = await start_simulator(self.work, cfg)

    def agent_config(self, devices: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
        assert self.proxy is not None
        cfg: dict[str, Any] = {
            "gateway": {"id": "bench-gw", "data_dir": str(self.work / "data")},
            "uplink": {"url": f"mqtt://127.0.0.1:{self.proxy.port}"},
            "devices": agent_devices(devices, self.endpoints),
        }
        if has_status_api(AGENT_SRC):
            self.status_socket = self.work / "status.sock"
            cfg["status"] = {"socket": str(self.status_socket)}
        cfg = merge(cfg, extra)
        path = self.work / "tepi.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start_agent(self, config: Path) -> float:
        t0 = time.monotonic()
        command, pythonpath = agent_command(AGENT_SRC)
        if self.profile is not None:  # as python -m cProfile -o FILE -m <the agent's module>
            launcher = str(REPO / "bench" / "profiled.py")
            clock = ["--clock", PROFILE_CLOCK]
            command = [command[0], launcher, *clock, "-o", str(self.profile), *command[1:]]
        self.agent = subprocess.Popen(
            [*command, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "agent.log").open("ab"),
            cwd=AGENT_SRC,
            env=dict(os.environ, PYTHONPATH=pythonpath),
        )
        return t0

    async def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.agent.wait, 20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    async def close(self) -> None:
        await self.stop_agent()
        if self.rx is not None:
            self.rx.close()
        if self.proxy is not None:
            await self.proxy.stop()
        for p in (self.sim, self.broker):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)


def pct(values: array[float] | list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


async def measure(
    rig: Rig,
    warmup: float,
    duration: float,
    *,
    offered: float | None = None,
    offered_polls: float | None = None,
    per_poll: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Warm up, then measure a window of ``duration`` seconds. ``per_poll``: the readings one
    poll of each device gives, to count polls from readings."""
    assert rig.agent is not None
    assert rig.rx is not None
    assert rig.proxy is not None
    pid = rig.agent.pid
    await asyncio.sleep(warmup)
    # Before the bench's first status request: the status API imports its HTTP side at its
    # first connection (docs/performance.md#memory), so a box nobody queried holds this.
    rss_unqueried = sample(pid).rss
    h0 = await agent_health(rig.status_socket)
    rig.rx.reset_window()
    if rig.profile is not None:
        os.kill(pid, signal.SIGUSR2)  # bench/profiled.py: the profiler on, for the window
    s0 = sample(pid)
    b0, seg0 = rig.proxy.snapshot()
    rss: list[int] = []
    while time.monotonic() - s0.t < duration:
        await asyncio.sleep(0.5)
        rss.append(sample(pid).rss)
    s1 = sample(pid)
    if rig.profile is not None:
        os.kill(pid, signal.SIGUSR2)  # and off
    b1, seg1 = rig.proxy.snapshot()
    h1 = await agent_health(rig.status_socket)
    with rig.rx.lock:
        n = rig.rx.count
        lat = array("d", rig.rx.latencies)
        sensor_lat = array("d", rig.rx.sensor_latencies)
        sizes = list(rig.rx.batch_sizes)
        payload = rig.rx.payload_bytes
        per_device = dict(rig.rx.per_device)
        max_seq = rig.rx.max_seq
    span = s1.t - s0.t
    cpu = s1.cpu_s - s0.cpu_s
    wb = s1.write_bytes - s0.write_bytes
    wire = b1 - b0
    polls = None
    if per_poll:
        polls = sum(count / per_poll.get(dev, 1) for dev, count in per_device.items())
    lost, checked = await count_lost(rig.rx, h1, max_seq)

    def delta(key: str) -> int | None:
        a, b = device_sum(h0, key), device_sum(h1, key)
        return None if a is None or b is None else b - a

    made = delta("polls")
    out: dict[str, Any] = {"seconds": round(span, 1)}
    if offered_polls is not None:
        out["offered_polls_per_s"] = offered_polls
    if polls is not None:
        out["polls_per_s"] = round(polls / span, 1)
    out["polls_made_per_s"] = None if made is None else round(made / span, 1)
    out["missed_polls"] = delta("missed_polls")
    if offered is not None:
        out["offered_per_s"] = offered
    out |= {
        "readings_per_s": round(n / span, 1),
        "cpu_percent": round(100 * cpu / span, 2),
        "cpu_s_per_1000_polls": round(1000 * cpu / polls, 4) if polls else None,
        "cpu_s_per_1000_values": round(1000 * cpu / n, 4) if n else None,
        "latency_p50_ms": ms(pct(lat, 0.50)),
        "latency_p99_ms": ms(pct(lat, 0.99)),
        "lost": lost,
        "lost_checked": checked,
        "batch_mean": round(statistics.fmean(sizes), 1) if sizes else None,
        "batch_max": max(sizes) if sizes else None,
        "rss_mb": round(statistics.median(rss) / 2**20, 1) if rss else None,
        "rss_peak_mb": round(max(rss) / 2**20, 1) if rss else None,
        "rss_before_status_api_mb": round(rss_unqueried / 2**20, 1),
        "disk_bytes_per_poll": round(wb / polls, 2) if polls else None,
        "disk_bytes_per_reading": round(wb / n, 2) if n else None,
        "disk_mb_per_hour": round(wb / span * 3600 / 1e6, 2),
        "wakeups_per_s": round((s1.wakeups - s0.wakeups) / span, 2),
        "wake_floor_percent": await wake_floor((s1.wakeups - s0.wakeups) / span),
        "loadavg": loadavg(),
        **image_figures(h0, h1, span),
        # With cameras: the other devices' readings alone (a camera's health readings are
        # dated when its frame came, before its pixels are worked on and its images stored).
        **(
            {
                "sensor_latency_p50_ms": ms(pct(sensor_lat, 0.50)),
                "sensor_latency_p99_ms": ms(pct(sensor_lat, 0.99)),
            }
            if len(sensor_lat) < len(lat)
            else {}
        ),
        "payload_bytes_per_reading": round(payload / n, 2) if n else None,
        "mqtt_bytes_per_reading": round(wire / n, 2) if n else None,
        "wire_bytes_per_reading": round((wire + TCP_IP_HEADER * (seg1 - seg0)) / n, 2)
        if n
        else None,
    }
    return out


def image_figures(
    h0: dict[str, Any] | None, h1: dict[str, Any] | None, span: float
) -> dict[str, Any]:
    """With cameras: images acknowledged in the window, their bytes a second, and what was
    queued at its end (from the health message's ``images``)."""
    a = (h0 or {}).get("images")
    b = (h1 or {}).get("images")
    if not a or not b:
        return {}
    return {
        "images_per_min": round((b["sent"] - a["sent"]) * 60 / span, 1),
        "image_bytes_per_s": round((b["bytes_sent"] - a["bytes_sent"]) / span),
        "images_queued": b["count"],
    }


async def count_lost(
    rx: Receiver,
    health: dict[str, Any] | None,
    max_seq: int,
    *,
    stall: float = 3.0,
    limit: float = 30.0,
) -> tuple[int | None, int]:
    """Readings the agent took by the end of the window that never reached the subscriber.

    The agent gives its readings consecutive seqs from the run's ``first_seq`` (its
    ``online`` message). By the end of the window its polls have put E readings in its
    buffer: the health message's ``readings - bad_suppressed``, summed over the devices. So
    seqs ``first_seq`` to ``first_seq + E - 1`` must all arrive. The bench waits for those
    still on their way (an overloaded agent sends its backlog late) until none is missing,
    none has arrived for ``stall`` seconds, or ``limit`` seconds have passed; the ones
    missing then are lost. Returns (lost, E).

    Without a status API (an old checkout) E is unknown: the seqs up to the highest one
    received by the end of the window are checked instead, which misses a lost tail."""
    with rx.lock:
        lo = rx.first_seq if rx.first_seq is not None else rx.seqs.find(1)
    if lo < 0:
        return None, 0
    taken, suppressed = device_sum(health, "readings"), device_sum(health, "bad_suppressed")
    hi = max_seq if taken is None or suppressed is None else lo + taken - suppressed - 1
    start = last = time.monotonic()
    missing = rx.missing(lo, hi)
    while missing:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        still = rx.missing(lo, hi)
        if still < missing:
            last = now
        missing = still
        if now - last > stall or now - start > limit:
            break
    return missing, hi - lo + 1


async def run_steady(
    name: str, wl: dict[str, Any], *, smoke: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"tepi-bench-{name}-"))
    rig = Rig(work)
    if PROFILE_DIR is not None:
        tag = f"-{wl['offered']:.0f}" if name == "throughput" else ""
        rig.profile = PROFILE_DIR / f"{name}{tag}-{time.strftime('%Y%m%d-%H%M%S')}.prof"
    res: dict[str, Any] = {}
    try:
        devices = list(expand(wl["devices"]))
        rig.link_rate = float(wl.get("link_rate", 0))
        await rig.start_broker()
        await rig.start_sim(devices)
        cfg = rig.agent_config(devices, merge(wl.get("agent", {}), extra or {}))
        t0 = rig.start_agent(cfg)
        assert rig.rx is not None
        while rig.rx.first_at is None:
            if rig.agent is not None and rig.agent.poll() is not None:
                raise RuntimeError("agent exited: " + (work / "agent.log").read_text()[-2000:])
            await asyncio.sleep(0.01)
        startup = rig.rx.first_at - t0
        warm = 1.0 if smoke else float(wl.get("warmup", 5))
        dur = 2.0 if smoke else float(wl.get("duration", 30))
        res = await measure(
            rig,
            warm,
            dur,
            offered=wl.get("offered"),
            offered_polls=wl.get("offered_polls"),
            per_poll={d["id"]: values_per_poll(d) for d in devices},
        )
        res["startup_s"] = round(startup, 2)
        res["workload"] = name
    finally:
        await rig.close()  # the agent stops: cProfile writes its stats
        shutil.rmtree(work, ignore_errors=True)
    if rig.profile is not None:
        res["profile"] = str(rig.profile)
    return res


def offered_polls(groups: list[dict[str, Any]]) -> float:
    return sum(int(g["count"]) / parse_duration(g["poll_interval"]) for g in groups)


def offered_rate(groups: list[dict[str, Any]]) -> float:
    total = 0.0
    for g in groups:
        total += int(g["count"]) * values_per_poll(g) / parse_duration(g["poll_interval"])
    return total


async def run_throughput(wl: dict[str, Any], *, smoke: bool) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    runs = []
    rates = wl["rates"][:1] if smoke else wl["rates"]
    for rate in rates:
        groups = [dict(g) for g in wl["devices"]]
        g = groups[0]
        g["metrics"] = max(1, round(rate * parse_duration(g["poll_interval"]) / int(g["count"])))
        offered = offered_rate(groups)
        res = await run_steady(
            "throughput", {**wl, "devices": groups, "offered": offered}, smoke=smoke
        )
        res["sustained"] = bool(
            res["readings_per_s"] >= 0.98 * offered and (res["latency_p99_ms"] or 1e9) < 1000
        )
        runs.append(res)
        print(json.dumps(res), file=sys.stderr)
        if res["sustained"]:
            best = res
        else:
            break
    return {"workload": "throughput", "best": best, "runs": runs}


def file_depth(db: Path) -> tuple[int, int]:
    """(rows, max seq) in the buffer file, read-only while the agent writes."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0, 0
    try:
        lo, hi = conn.execute("SELECT min(seq), max(seq) FROM readings").fetchone()
        return (0, 0) if lo is None else (hi - lo + 1, hi)
    except sqlite3.Error:
        return 0, 0
    finally:
        conn.close()


async def run_backlog(wl: dict[str, Any], *, smoke: bool, readings: int | None) -> dict[str, Any]:
    target = 20_000 if smoke else int(readings or wl["readings"])
    work = Path(tempfile.mkdtemp(prefix="tepi-bench-backlog-"))
    rig = Rig(work)
    db = work / "data" / "buffer.db"
    try:
        await rig.start_broker()
        assert rig.proxy is not None
        assert rig.rx is not None
        await rig.proxy.set_up(False)  # the broker is away: connections refused
        fill = list(expand(wl["fill"], prefix="fill-"))
        live = list(expand(wl["devices"], prefix="live-"))
        extra = wl.get("agent", {})
        # 1. Fill: the agent reads the fill devices; nothing can be sent.
        rig.start_agent(rig.agent_config(fill, extra))
        t0 = time.monotonic()
        while (depth := file_depth(db))[0] < target:
            await asyncio.sleep(0.5)
        await rig.stop_agent()
        fill_s = time.monotonic() - t0
        depth = file_depth(db)
        # 2. Live devices only, still without the broker: the memory a backlog costs. With
        # the workload's ``alarm``, a rule that fires on the first live reading: an alarm
        # raised during the outage, to be delivered before the backlog.
        live_extra = extra
        if "alarm" in wl:
            live_extra = merge(extra, {"rules": [{"id": "bench-alarm", **wl["alarm"]}]})
        rig.start_agent(rig.agent_config(live, live_extra))
        assert rig.agent is not None
        live_started = time.monotonic()
        await asyncio.sleep(3 if not smoke else 1)
        rss_backlog = [sample(rig.agent.pid).rss]
        for _ in range(4):
            await asyncio.sleep(0.5)
            rss_backlog.append(sample(rig.agent.pid).rss)
        # An outage of its own length (``outage_s``), for the reconnect's backoff to grow.
        if not smoke and "outage_s" in wl:
            await asyncio.sleep(max(0.0, live_started + float(wl["outage_s"]) - time.monotonic()))
        # 3. The broker comes back: drain while live readings flow.
        rig.rx.reset_window()
        await rig.proxy.set_up(True)
        t_back = time.monotonic()
        while rig.rx.online_at is None:
            await asyncio.sleep(0.01)
        t_up = rig.rx.online_at
        t_up_wall = time.time() - (time.monotonic() - t_up)
        rss_drain: list[int] = []
        while not rig.rx.have_all(depth[1]):
            await asyncio.sleep(0.1)
            rss_drain.append(sample(rig.agent.pid).rss)
        drain_s = time.monotonic() - t_up
        alarm_at = rig.rx.alarm_at
        t_done_wall = time.time()
        await asyncio.sleep(2.5)  # let the live readings taken during the drain arrive
        with rig.rx.lock:
            # Live readings taken while the drain ran (not those taken during the outage).
            live_lat = array(
                "d",
                (
                    lat
                    for lat, ts in zip(rig.rx.live_latencies, rig.rx.live_ts, strict=True)
                    if t_up_wall <= ts <= t_done_wall
                ),
            )
        return {
            "workload": "backlog",
            "backlog_readings": depth[0],
            "fill_s": round(fill_s, 1),
            "db_mb": round(db.stat().st_size / 2**20, 1),
            "drain_s": round(drain_s, 1),
            "drain_per_s": round(depth[0] / drain_s),
            "live_p50_ms": ms(pct(live_lat, 0.5)),
            "live_p99_ms": ms(pct(live_lat, 0.99)),
            "live_readings": len(live_lat),
            "rss_with_backlog_mb": round(statistics.median(rss_backlog) / 2**20, 1),
            "rss_peak_drain_mb": round(max(rss_drain, default=0) / 2**20, 1),
            # From the agent's online message to the first alarm raised during the outage,
            # and the telemetry messages that came in between (0: the alarm went first).
            "alarm_after_online_ms": None if alarm_at is None else ms(alarm_at - t_up),
            "alarm_after_broker_back_ms": None if alarm_at is None else ms(alarm_at - t_back),
            "telemetry_before_alarm": rig.rx.telemetry_before_alarm,
        }
    finally:
        await rig.close()
        shutil.rmtree(work, ignore_errors=True)


# ---- profiles -----------------------------------------------------------------------------


def where(path: str) -> str:
    """A profiled function's file, short: relative to the agent's checkout, to
    site-packages or to the standard library."""
    for base in (str(AGENT_SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]):
        if path.startswith(base + os.sep):
            return path[len(base) + 1 :]
    if "site-packages" + os.sep in path:
        return path.split("site-packages" + os.sep, 1)[1]
    return path


def waiting(func: str) -> bool:
    """Whether a profiled function is the event loop waiting for I/O (epoll, select)."""
    return func.startswith(("<method 'poll' of 'select.", "<built-in method select.select"))


def profile_report(path: Path, top: int = 25) -> str:
    """The ``top`` functions by own time (tottime) and by time with callees (cumtime).

    ``%`` is of the busy time: the whole profile's time less the event loop's wait in
    epoll (which the wall clock counts as that call's own time)."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total: float = stats.total_tt  # type: ignore[attr-defined]
    idle = sum(v[2] for (file, _line, func), v in entries.items() if file == "~" and waiting(func))
    busy = total - idle
    out = [
        f"profile: {path} (cProfile, {PROFILE_CLOCK} clock, over the window: the agent's main "
        f"thread, the event loop; not its other threads): {total:.2f} s, of which "
        f"{idle:.2f} s waiting in epoll and {busy:.2f} s busy"
    ]
    for title, col in (("tottime", 2), ("cumtime", 3)):
        rows = sorted(entries.items(), key=lambda kv: kv[1][col], reverse=True)[:top]
        out += [
            "",
            f"top {top} by {title}:",
            "",
            "| ncalls | tottime s | % of busy | µs/call | cumtime s | function |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for (file, line, func), (_cc, nc, tt, ct, _callers) in rows:
            name = func if file == "~" else f"{where(file)}:{line}({func})"
            share = "-" if file == "~" and waiting(func) else f"{100 * tt / busy:.1f}"
            out.append(
                f"| {nc} | {tt:.3f} | {share if busy > 0 else '-'} | "
                f"{1e6 * tt / nc if nc else 0:.1f} | {ct:.3f} | `{name}` |"
            )
    return "\n".join(out)


# ---- tables ------------------------------------------------------------------------------


def table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {'-' if v is None else v} |" for k, v in rows]
    return "\n".join(lines)


def render(res: dict[str, Any]) -> str:
    name = res["workload"]
    if name == "throughput":
        rows = [
            (
                f"offered {r['offered_per_s']:,.0f}/s",
                f"{r['readings_per_s']:,.0f}/s arrived, {r['cpu_percent']}% CPU, "
                f"{r['cpu_s_per_1000_values']} CPU s/1000, p99 {r['latency_p99_ms']} ms, "
                f"batch {r['batch_mean']}, {'sustained' if r['sustained'] else 'NOT sustained'}",
            )
            for r in res["runs"]
        ]
        return "### throughput\n\n" + table(rows)
    if name in ("backlog", "alarm-backlog"):
        return f"### {name}\n\n" + table(list(res.items())[1:])
    return f"### {name}\n\n" + table([(k, v) for k, v in res.items() if k != "workload"])


ALL = [
    "reference",
    "idle",
    "stress",
    "modbus-tcp-50",
    "modbus-tcp-50-pipelined",
    "throughput",
    "backlog",
    "cameras-8",
    "camera-stream",
    "reference-cameras",
    "camera-analytics",
    "reference-cameras-analytics",
]
# Also in bench/workloads, run by name for comparisons on a 2 Mbit/s link: reference-2mbit
# (the link alone), reference-cameras-2mbit (and 4 cameras), reference-cameras-whole (images
# not in parts); and alarm-backlog (an alarm raised during a 60 s outage, the default
# reconnect settings, a 1M backlog waiting).


_SLEEPER = """
import sys, time
d, n = float(sys.argv[1]), int(sys.argv[2])
c = time.process_time()
for _ in range(n):
    time.sleep(d)
print(time.process_time() - c)
"""


async def wake_floor(rate: float, seconds: float = 5.0) -> float | None:
    """The CPU (% of a core) this machine charges a process that does nothing but sleep and
    wake ``rate`` times a second: what the agent's wake-ups cost before it does any work.
    On a VM it is far from zero (on the project's CI machine, a 100 ms sleep is charged about
    100 µs), so it is reported beside the agent's CPU rather than left hidden in it."""
    if rate <= 0:
        return None
    n = max(1, int(rate * seconds))

    def run() -> float:  # the loop's own CPU, without the interpreter's start-up
        args = [sys.executable, "-c", _SLEEPER, str(1 / rate), str(n)]
        return float(subprocess.run(args, capture_output=True, check=True, text=True).stdout)

    cpu = await asyncio.to_thread(run)
    return round(100 * cpu / (n / rate), 3)


def loadavg() -> str:
    """The machine's load averages (1, 5, 15 min): how busy the shared cores were."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main_async(args: argparse.Namespace) -> None:
    out = sys.stderr if args.json else sys.stdout  # profiles: JSON lines stay JSON lines
    names = args.workloads or ALL
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load average {loadavg()}\n"
    )
    for name in names:
        wl = yaml.safe_load((WORKLOADS / f"{name}.yaml").read_text())
        if name == "throughput":
            res = await run_throughput(wl, smoke=args.smoke)
        elif name in ("backlog", "alarm-backlog"):
            res = await run_backlog(wl, smoke=args.smoke, readings=args.backlog_readings)
        else:
            wl["offered"] = round(offered_rate(wl["devices"]), 1)
            wl["offered_polls"] = round(offered_polls(wl["devices"]), 1)
            res = await run_steady(name, wl, smoke=args.smoke, extra=encoding(args))
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(render(res) + "\n", flush=True)
        for run in res.get("runs", [res]):
            if run.get("profile"):
                print(profile_report(Path(run["profile"])) + "\n", file=out, flush=True)


def encoding(args: argparse.Namespace) -> dict[str, Any]:
    if args.encoding == "json" and args.linger == "0s":
        return {}
    return {"uplink": {"encoding": args.encoding, "batch": {"linger": args.linger}}}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("workloads", nargs="*", help="names in bench/workloads (default: all)")
    p.add_argument("--smoke", action="store_true", help="seconds per workload: checks it runs")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    p.add_argument("--backlog-readings", type=int, help="override the backlog size")
    p.add_argument("--encoding", default="json", choices=["json", "compact"])
    p.add_argument("--linger", default="0s", help="uplink.batch.linger")
    p.add_argument(
        "--agent-src",
        type=Path,
        help="run the agent from this checkout (to compare commits on the same workload)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="run the agent under cProfile and print its top 25 functions by tottime and by "
        "cumtime (not the backlog; the CPU figures then include the profiler's cost)",
    )
    p.add_argument(
        "--profile-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cProfile's clock: wall (its own, cheaper) or the agent's main thread's CPU "
        "time (waits do not count, but the agent runs about 3 times slower)",
    )
    p.add_argument(
        "--profile-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tepi-bench-profiles",
        help="where --profile keeps the stats files, for pstats (default: %(default)s)",
    )
    args = p.parse_args()
    global AGENT_SRC, PROFILE_DIR, PROFILE_CLOCK  # noqa: PLW0603 - set once, before anything runs
    if args.agent_src is not None:
        AGENT_SRC = args.agent_src.resolve()
    if args.profile:
        PROFILE_DIR = args.profile_dir.resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        PROFILE_CLOCK = args.profile_clock
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
