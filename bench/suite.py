"""tepi's benchmark suite: the real agent (``tepi run``), measured from outside.

Each workload (bench/workloads/*.yaml) starts a Mosquitto broker on loopback, the hardware
simulator (``tepi-sim``, on real ptys and TCP ports) or the synthetic driver, a byte-counting
TCP proxy between the agent and the broker, a subscriber that timestamps every message, and
then ``tepi run`` as its own process. The agent is measured through /proc: CPU time (utime +
stime, all threads), RSS, ``write_bytes`` (bytes sent towards the disk) and voluntary context
switches (wake-ups). Nothing inside the agent is instrumented.

    .venv/bin/python bench/suite.py                       # every workload; prints the tables
    .venv/bin/python bench/suite.py reference idle        # some of them
    .venv/bin/python bench/suite.py backlog --backlog-readings 10000000
    .venv/bin/python bench/suite.py --smoke               # seconds, not minutes (CI: it runs)
    .venv/bin/python bench/suite.py reference --agent-src ../old   # an older checkout's agent

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
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
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
        self.live_ts = array("d")  # when each live reading was taken
        self.live_prefix = "live-"
        self.seqs = bytearray()
        self.first_at: float | None = None
        self.online_at: float | None = None
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
        c.subscribe([(f"{TOPIC}/telemetry", 0), (f"{TOPIC}/status", 0)])
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/status"):
            if b'"online"' in msg.payload and self.online_at is None:
                self.online_at = time.monotonic()
            return
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
            for r in readings:
                seq = r["seq"]
                lat = now - r["ts"]
                self.latencies.append(lat)
                if r["device"].startswith(self.live_prefix):
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
            self.live_ts = array("d")

    def have_all(self, upto: int) -> bool:
        with self.lock:
            return len(self.seqs) > upto and self.seqs.count(1, 1, upto + 1) == upto

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# ---- a proxy that counts the bytes on the agent's MQTT connection ---------------------------


class CountingProxy:
    """127.0.0.1:port -> the broker. ``up`` False refuses connections (the broker is away)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.up = True
        self.bytes = {"to_broker": 0, "to_agent": 0}
        self.segments = 0  # estimated TCP segments on a real link (chunks / MSS)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

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
        try:
            while chunk := await r.read(65536):
                self.bytes[way] += len(chunk)
                self.segments += math.ceil(len(chunk) / MSS)
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


def expand(groups: list[dict[str, Any]], prefix: str = "") -> Iterator[dict[str, Any]]:
    """Each device of each group: {id, kind, registers/metrics, poll_interval, bus}."""
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


def sim_config(devices: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    for d in devices:
        if d["kind"] not in ("rtu", "tcp"):
            continue
        regs = [
            {
                "address": a,
                "table": "holding",
                "kind": SIM_KINDS[a % len(SIM_KINDS)],
                "type": "uint16",
                "scale": 1 if a % len(SIM_KINDS) == 0 else 0.1,
            }
            for a in range(int(d["registers"]))
        ]
        dev: dict[str, Any] = {"id": d["id"], "transport": d["kind"], "unit": d["unit"]}
        if d["kind"] == "rtu":
            dev["bus"] = d["bus"]
        out.append({**dev, "registers": regs})
    return {"devices": out}


def agent_devices(devices: list[dict[str, Any]], endpoints: dict[str, Any]) -> list[Any]:
    out: list[dict[str, Any]] = []
    for d in devices:
        base = {"id": d["id"], "poll_interval": d["poll_interval"]}
        if d["kind"] == "synthetic":
            out.append({**base, "driver": "synthetic", "metrics": int(d["metrics"])})
            continue
        regs = [
            {
                "name": f"r{a}",
                "address": a,
                "type": "uint16",
                "scale": 1 if a % len(SIM_KINDS) == 0 else 0.1,
            }
            for a in range(int(d["registers"]))
        ]
        ep = endpoints[d["id"]]["endpoint"]
        if d["kind"] == "rtu":
            out.append({**base, "driver": "modbus-rtu", "port": ep, "unit": d["unit"]})
        else:
            host, port = ep.rsplit(":", 1)
            out.append({**base, "driver": "modbus-tcp", "host": host, "port": int(port), "unit": 1})
        out[-1]["registers"] = regs
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---- one run ---------------------------------------------------------------------------------


AGENT_SRC = REPO  # the checkout whose agent runs (--agent-src)


def agent_command(src: Path) -> tuple[list[str], str]:
    """``python -m`` for the agent of checkout ``src``, and its PYTHONPATH: the tepi namespace
    layout, or the flat layout of checkouts before it (for before/after figures)."""
    if (src / "gateway" / "cli.py").exists():
        return [sys.executable, "-m", "gateway.cli"], str(src)
    roots = os.pathsep.join(str(src / d) for d in ("drivers", "buffer", "gateway"))
    return [sys.executable, "-m", "tepi.gateway.cli"], roots


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

    async def start_broker(self) -> None:
        self.broker_port = free_port()
        self.broker = start_broker(self.work, self.broker_port, ["max_queued_messages 0"])
        broker = self.broker
        await wait_port(self.broker_port, alive=lambda: broker.poll() is None)
        self.proxy = CountingProxy(self.broker_port)
        await self.proxy.start()
        self.rx = Receiver(self.broker_port)

    async def start_sim(self, devices: list[dict[str, Any]]) -> None:
        cfg = sim_config(devices)
        if cfg["devices"]:
            self.sim, self.endpoints = await start_simulator(self.work, cfg)

    def agent_config(self, devices: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
        assert self.proxy is not None
        cfg: dict[str, Any] = {
            "gateway": {"id": "bench-gw", "data_dir": str(self.work / "data")},
            "uplink": {"url": f"mqtt://127.0.0.1:{self.proxy.port}"},
            "devices": agent_devices(devices, self.endpoints),
        }
        cfg = merge(cfg, extra)
        path = self.work / "tepi.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start_agent(self, config: Path) -> float:
        t0 = time.monotonic()
        command, pythonpath = agent_command(AGENT_SRC)
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
    rig: Rig, warmup: float, duration: float, *, offered: float | None = None
) -> dict[str, Any]:
    """Warm up, then measure a window of ``duration`` seconds."""
    assert rig.agent is not None
    assert rig.rx is not None
    assert rig.proxy is not None
    pid = rig.agent.pid
    await asyncio.sleep(warmup)
    rig.rx.reset_window()
    s0 = sample(pid)
    b0, seg0 = rig.proxy.snapshot()
    rss: list[int] = []
    while time.monotonic() - s0.t < duration:
        await asyncio.sleep(0.5)
        rss.append(sample(pid).rss)
    s1 = sample(pid)
    b1, seg1 = rig.proxy.snapshot()
    with rig.rx.lock:
        n = rig.rx.count
        lat = array("d", rig.rx.latencies)
        sizes = list(rig.rx.batch_sizes)
        payload = rig.rx.payload_bytes
    span = s1.t - s0.t
    cpu = s1.cpu_s - s0.cpu_s
    wb = s1.write_bytes - s0.write_bytes
    wire = b1 - b0
    out: dict[str, Any] = {
        "seconds": round(span, 1),
        "readings_per_s": round(n / span, 1),
        "cpu_percent": round(100 * cpu / span, 2),
        "cpu_s_per_1000": round(1000 * cpu / n, 4) if n else None,
        "latency_p50_ms": ms(pct(lat, 0.50)),
        "latency_p99_ms": ms(pct(lat, 0.99)),
        "batch_mean": round(statistics.fmean(sizes), 1) if sizes else None,
        "batch_max": max(sizes) if sizes else None,
        "rss_mb": round(statistics.median(rss) / 2**20, 1) if rss else None,
        "rss_peak_mb": round(max(rss) / 2**20, 1) if rss else None,
        "disk_bytes_per_reading": round(wb / n, 2) if n else None,
        "disk_mb_per_hour": round(wb / span * 3600 / 1e6, 2),
        "wakeups_per_s": round((s1.wakeups - s0.wakeups) / span, 2),
        "payload_bytes_per_reading": round(payload / n, 2) if n else None,
        "mqtt_bytes_per_reading": round(wire / n, 2) if n else None,
        "wire_bytes_per_reading": round((wire + TCP_IP_HEADER * (seg1 - seg0)) / n, 2)
        if n
        else None,
    }
    if offered is not None:
        out["offered_per_s"] = offered
    return out


async def run_steady(
    name: str, wl: dict[str, Any], *, smoke: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"tepi-bench-{name}-"))
    rig = Rig(work)
    try:
        devices = list(expand(wl["devices"]))
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
        res = await measure(rig, warm, dur, offered=wl.get("offered"))
        res["startup_s"] = round(startup, 2)
        res["workload"] = name
        return res
    finally:
        await rig.close()
        shutil.rmtree(work, ignore_errors=True)


def offered_rate(groups: list[dict[str, Any]]) -> float:
    total = 0.0
    for g in groups:
        per = int(g.get("registers", g.get("metrics", 0)))
        total += int(g["count"]) * per / parse_duration(g["poll_interval"])
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
        rig.proxy.up = False  # the broker is away
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
        # 2. Live devices only, still without the broker: the memory a backlog costs.
        rig.start_agent(rig.agent_config(live, extra))
        assert rig.agent is not None
        await asyncio.sleep(3 if not smoke else 1)
        rss_backlog = [sample(rig.agent.pid).rss]
        for _ in range(4):
            await asyncio.sleep(0.5)
            rss_backlog.append(sample(rig.agent.pid).rss)
        # 3. The broker comes back: drain while live readings flow.
        rig.rx.reset_window()
        rig.proxy.up = True
        while rig.rx.online_at is None:
            await asyncio.sleep(0.01)
        t_up = rig.rx.online_at
        t_up_wall = time.time() - (time.monotonic() - t_up)
        rss_drain: list[int] = []
        while not rig.rx.have_all(depth[1]):
            await asyncio.sleep(0.1)
            rss_drain.append(sample(rig.agent.pid).rss)
        drain_s = time.monotonic() - t_up
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
        }
    finally:
        await rig.close()
        shutil.rmtree(work, ignore_errors=True)


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
                f"{r['cpu_s_per_1000']} CPU s/1000, p99 {r['latency_p99_ms']} ms, "
                f"batch {r['batch_mean']}, {'sustained' if r['sustained'] else 'NOT sustained'}",
            )
            for r in res["runs"]
        ]
        return "### throughput\n\n" + table(rows)
    if name == "backlog":
        return "### backlog\n\n" + table(list(res.items())[1:])
    return f"### {name}\n\n" + table([(k, v) for k, v in res.items() if k != "workload"])


async def main_async(args: argparse.Namespace) -> None:
    names = args.workloads or ["reference", "idle", "stress", "throughput", "backlog"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n"
    )
    for name in names:
        wl = yaml.safe_load((WORKLOADS / f"{name}.yaml").read_text())
        if name == "throughput":
            res = await run_throughput(wl, smoke=args.smoke)
        elif name == "backlog":
            res = await run_backlog(wl, smoke=args.smoke, readings=args.backlog_readings)
        else:
            wl["offered"] = round(offered_rate(wl["devices"]), 1)
            res = await run_steady(name, wl, smoke=args.smoke, extra=encoding(args))
        if args.json:
            print(json.dumps(res))
        else:
            print(render(res) + "\n", flush=True)


def encoding(args: argparse.Namespace) -> dict[str, Any]:
    if args.encoding == "json":
        return {}
    return {"uplink": {"encoding": args.encoding, "batch": {"linger": args.linger}}}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("workloads", nargs="*", help="names in bench/workloads (default: all)")
    p.add_argument("--smoke", action="store_true", help="seconds per workload: checks it runs")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    p.add_argument("--backlog-readings", type=int, help="override the backlog size")
    p.add_argument("--encoding", default="json", choices=["json", "compact"])
    p.add_argument("--linger", default="0s", help="uplink.batch.linger with --encoding")
    p.add_argument(
        "--agent-src",
        type=Path,
        help="run the agent from this checkout (to compare commits on the same workload)",
    )
    args = p.parse_args()
    if args.agent_src is not None:
        global AGENT_SRC  # noqa: PLW0603 - set once, before anything runs
        AGENT_SRC = args.agent_src.resolve()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
