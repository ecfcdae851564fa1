"""A fleet of agents through a broker restart and a long broker outage.

``--agents`` (100) real agents (``tepi run``, each its own process, config, data dir and
gateway id; the synthetic driver: 1 device of ``--metrics`` 5 values every ``--interval`` 1 s;
no status API) send to ONE Mosquitto on a free loopback port. A subscriber (QoS 1, a session
the broker keeps across its restarts: ``persistence true``) records every reading: gateway,
seq, when it was taken and when it arrived. Each setting starts its own broker and fleet, then
runs the scenarios in turn:

- ``restart``: the broker is stopped and started again at once on the same port;
- ``outage``: the broker is kept down for ``--outage`` seconds (300).

For each it prints, from the broker's return (the moment its port listens again):

- the broker's TCP accepts and MQTT connects per second (peak and total), counted from
  Mosquitto's own log (``log_timestamp``: one line per accepted TCP connection, another per
  MQTT CONNECT), so a probe (a bare TCP connection, closed at once) and a session are told
  apart, nothing sits between the agents and the broker, and a stopped broker's port refuses
  as a real one does; the log's clock has whole seconds, which is what "per second" needs;
- the seconds until every agent had delivered a reading taken after the last one that arrived
  before the stop (median, p90, all);
- the seconds until every backlog had drained: every seq taken before the return arrived;
- completeness over the fleet since it started: per gateway, no seq missing from the
  ``first_seq`` of its ``online`` message to the highest seq that arrived (lost), readings
  that arrived twice (duplicated);
- the agents' RSS (sum and per agent) and the machine's CPU (all cores, from /proc/stat) from
  the return until the drain, and its busiest second.

    .venv/bin/python bench/fleet.py                               # 100 agents, both settings
    .venv/bin/python bench/fleet.py --agents 5 --outage 10        # a quick look
    .venv/bin/python bench/fleet.py --settings probes --scenarios outage --backlog-rate 50

``--settings``: ``probes`` is the default config (``uplink.reconnect.probe_interval`` 1 s,
``spread`` 3 s); ``backoff`` is the old behaviour (``probe_interval: 0``, the full-jitter
backoff alone). Figures print as a Markdown table, and as JSON lines with ``--json``; they are
never asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]

from harness import start_broker  # noqa: E402
from suite import agent_command, loadavg, merge, pct, sample  # noqa: E402

from tepi.gateway.compact import ZSTD_MAGIC, decode_compact  # noqa: E402
from tepi.gateway.localbroker import free_port  # noqa: E402

SUBSCRIBER_ID = "fleet-ioc"
SETTINGS: dict[str, dict[str, Any]] = {
    "probes": {},  # the defaults: probe_interval 1s, spread 3s
    "backoff": {"uplink": {"reconnect": {"probe_interval": 0}}},  # the backoff alone
}


# ---- the subscriber: every reading, with its arrival --------------------------------------


@dataclass
class Gateway:
    """What arrived from one gateway."""

    first_seq: int | None = None  # from its ``online`` status message
    online: list[float] = field(default_factory=list)  # when each ``online`` arrived
    seqs: array[int] = field(default_factory=lambda: array("q"))
    taken: array[float] = field(default_factory=lambda: array("d"))  # the reading's ts
    arrived: array[float] = field(default_factory=lambda: array("d"))  # time.time()


class Subscriber:
    """A paho client on a thread of its own, with a session the broker keeps
    (``clean_session=False``, QoS 1): while it reconnects after a broker restart, the broker
    queues what the agents send. It reconnects every 20 ms, so it is back well before any
    agent (paho's own reconnect waits at least a second)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.gateways: dict[str, Gateway] = {}
        self.undecodable = 0
        self.connected = threading.Event()
        self.connected_at = 0.0  # time.time() of its last CONNACK
        self._stop = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER_ID, clean_session=False
        )
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name="fleet-subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = self._client
        while not self._stop.is_set():
            try:
                c.connect("127.0.0.1", self.port, keepalive=30)
            except OSError:
                time.sleep(0.02)
                continue
            while not self._stop.is_set() and c.loop(timeout=0.1) == mqtt.MQTT_ERR_SUCCESS:
                pass
            self.connected.clear()
        with contextlib.suppress(Exception):
            c.disconnect()

    def _on_connect(self, c: mqtt.Client, *_: Any) -> None:
        c.subscribe([("ioc/v1/+/telemetry", 1), ("ioc/v1/+/status", 1)])
        self.connected_at = time.time()
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        gw_id, kind = parts[2], parts[3]
        data = bytes(msg.payload)
        try:
            if kind == "status":
                obj = json.loads(data)
                if obj.get("state") == "online" and isinstance(obj.get("first_seq"), int):
                    with self.lock:
                        gw = self.gateways.setdefault(gw_id, Gateway())
                        gw.first_seq = obj["first_seq"]
                        gw.online.append(now)
                return
            obj = decode_compact(data) if data.startswith(ZSTD_MAGIC) else json.loads(data)
            rows = [(int(r["seq"]), float(r["ts"])) for r in obj["readings"]]
        except (ValueError, KeyError, TypeError):
            self.undecodable += 1
            return
        with self.lock:
            gw = self.gateways.setdefault(gw_id, Gateway())
            for seq, ts in rows:
                gw.seqs.append(seq)
                gw.taken.append(ts)
                gw.arrived.append(now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- the broker and its log -----------------------------------------------------------------

LOG_LINE = re.compile(rb"^(\d+): (New connection from|New client connected from .* as (\S+))")


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (from /proc/net/tcp: asking by
    connecting would be one more connection in the broker's count)."""
    want = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1] == want and cols[3] == "0A":
                return True
    return False


@dataclass
class Broker:
    work: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.work / "mosquitto.log"

    async def start(self) -> float:
        """Start it; returns when its port listens (time.time())."""
        extra = [
            "max_queued_messages 0",  # the subscriber's queue while it reconnects: no cap
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            f"log_dest file {self.log}",
            "log_type notice",
            "log_timestamp true",
        ]
        self.proc = start_broker(self.work, self.port, extra, persistence=True, new_session=True)
        deadline = time.monotonic() + 30
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: see {self.log}")
            await asyncio.sleep(0.005)
        return time.time()

    async def stop(self) -> float:
        """Stop it (SIGTERM: it saves its sessions and queues); returns when it has exited."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        self.proc = None
        return time.time()

    def connects(self, since: float, until: float) -> dict[str, Any]:
        """TCP accepts and MQTT connects in the log between ``since`` and ``until`` (whole
        seconds of the log's clock), without the bench's own subscriber."""
        accepts: Counter[int] = Counter()
        sessions: Counter[int] = Counter()
        by_client: Counter[str] = Counter()
        lo, hi = int(since), int(until)
        with self.log.open("rb") as f:
            for line in f:
                m = LOG_LINE.match(line)
                if m is None or not lo <= int(m[1]) <= hi:
                    continue
                t = int(m[1]) - lo
                if m[3] is None:
                    accepts[t] += 1
                elif m[3].decode() != SUBSCRIBER_ID:
                    sessions[t] += 1
                    by_client[m[3].decode()] += 1
                else:
                    accepts[t] -= 1  # the subscriber's TCP connection
        return {
            "tcp_accepts": sum(accepts.values()),
            "tcp_peak_per_s": max(accepts.values(), default=0),
            "mqtt_connects": sum(sessions.values()),
            "mqtt_peak_per_s": max(sessions.values(), default=0),
            "mqtt_per_s": [sessions.get(s, 0) for s in range(hi - lo + 1)][:60],
            "agents_connected": len(by_client),
        }


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child started in a session of its own, and its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ---- the machine's CPU ---------------------------------------------------------------------


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    cols = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = cols[3] + cols[4]  # idle + iowait
    total = sum(cols[:8])  # without guest time, already counted in user
    return total - idle, total


class CpuWatch:
    """The machine's CPU, sampled every second: overall and its busiest second."""

    def __init__(self) -> None:
        self.start = cpu_times()
        self.last = self.start
        self.peak = 0.0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = cpu_times()
            self.peak = max(self.peak, busy(self.last, now))
            self.last = now

    def stop(self) -> dict[str, float]:
        self._task.cancel()
        return {
            "cpu_pct": round(busy(self.start, cpu_times()), 1),
            "cpu_peak_pct": round(self.peak, 1),
        }


def busy(a: tuple[float, float], b: tuple[float, float]) -> float:
    """% of all cores busy between two ``cpu_times``."""
    return 100.0 * (b[0] - a[0]) / max(b[1] - a[1], 1)


# ---- the fleet ------------------------------------------------------------------------------


@dataclass
class Fleet:
    work: Path
    port: int
    args: argparse.Namespace
    extra: dict[str, Any]
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def config(self, gw: str) -> Path:
        data = self.work / gw
        data.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "gateway": {"id": gw, "data_dir": str(data)},
            "uplink": {"url": f"mqtt://127.0.0.1:{self.port}"},
            "status": {"enabled": False},
            "devices": [
                {
                    "id": "syn",
                    "driver": "synthetic",
                    "metrics": self.args.metrics,
                    "poll_interval": self.args.interval,
                }
            ],
        }
        if self.args.backlog_rate:
            cfg["uplink"]["backlog_rate"] = self.args.backlog_rate
        cfg = merge(cfg, self.extra)
        path = data / "tepi.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    async def start(self, sub: Subscriber) -> None:
        """Start every agent (``--start-rate`` a second: an interpreter's start-up costs
        about half a second of CPU), then wait until each one's readings arrive."""
        command, pythonpath = agent_command(REPO)
        env = dict(os.environ, PYTHONPATH=pythonpath)
        names = [f"fleet-{i:03d}" for i in range(self.args.agents)]
        for gw in names:
            path = self.config(gw)
            self.agents[gw] = subprocess.Popen(
                [*command, "run", "--config", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=(self.work / gw / "agent.log").open("ab"),
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
            await asyncio.sleep(1 / self.args.start_rate)
        deadline = time.monotonic() + 120 + self.args.agents
        while True:
            with sub.lock:
                sending = sum(1 for g in sub.gateways.values() if g.seqs)
            dead = [gw for gw, p in self.agents.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"agents exited: {dead[:5]}: see {self.work}/<id>/agent.log")
            if sending == len(names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sending} of {len(names)} agents deliver readings")
            await asyncio.sleep(0.5)

    def rss(self) -> list[int]:
        out = []
        for p in self.agents.values():
            with contextlib.suppress(OSError):
                out.append(sample(p.pid).rss)
        return out

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.agents.values():
            with contextlib.suppress(OSError):
                total += sample(p.pid).cpu_s
        return total

    async def stop(self) -> None:
        """SIGTERM every agent; SIGKILL the groups of those still running after 30 s."""
        for p in self.agents.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.agents.values():
            try:
                await asyncio.to_thread(p.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(p)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # anything it left in its group
        self.agents.clear()


# ---- what arrived ---------------------------------------------------------------------------


def completeness(sub: Subscriber) -> dict[str, int]:
    """Over every gateway since the fleet started: seqs missing from its ``first_seq`` to the
    highest that arrived (lost), and readings that arrived more than once (duplicated)."""
    lost = duplicated = readings = 0
    with sub.lock:
        for gw in sub.gateways.values():
            seen = Counter(gw.seqs)
            if not seen:
                continue
            lo = gw.first_seq if gw.first_seq is not None else min(seen)
            hi = max(seen)
            lost += sum(1 for s in range(lo, hi + 1) if s not in seen)
            duplicated += sum(n - 1 for n in seen.values())
            readings += len(seen)
    return {"readings": readings, "lost": lost, "duplicated": duplicated}


@dataclass
class Return:
    """Per gateway, after the broker's return: the first new reading's arrival, and when the
    backlog (every seq taken before the return) had all arrived."""

    before: dict[str, int]  # the highest seq that had arrived when the broker stopped
    start: dict[str, int]  # how many readings had arrived then (those are not looked at)
    back_at: float
    first: dict[str, float] = field(default_factory=dict)
    drained: dict[str, float] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)  # readings taken while it was down

    def update(self, sub: Subscriber) -> None:
        with sub.lock:
            for name, gw in sub.gateways.items():
                if name in self.drained:
                    continue
                top = self.before.get(name, -1)
                i = self.start.get(name, 0)
                seqs, taken, arrived_at = gw.seqs[i:], gw.taken[i:], gw.arrived[i:]
                if name not in self.first:
                    new = [a for s, a in zip(seqs, arrived_at, strict=True) if s > top]
                    if new:
                        self.first[name] = min(new)
                # the backlog: seqs above ``top`` taken before the return; drained when every
                # seq up to the first one taken after the return has arrived
                after = [s for s, t in zip(seqs, taken, strict=True) if t > self.back_at]
                if not after:
                    continue
                upto = min(after)
                arrived: dict[int, float] = {}
                for s, a in zip(seqs, arrived_at, strict=True):
                    if top < s < upto:
                        arrived[s] = min(a, arrived.get(s, a))
                if len(arrived) == upto - top - 1:
                    self.drained[name] = max(arrived.values(), default=self.first[name])
                    self.backlog[name] = len(arrived)


async def scenario(
    kind: str, broker: Broker, fleet: Fleet, sub: Subscriber, args: argparse.Namespace
) -> dict[str, Any]:
    down_for = 0.0 if kind == "restart" else args.outage
    with sub.lock:
        before = {n: max(g.seqs) for n, g in sub.gateways.items() if g.seqs}
        start = {n: len(g.seqs) for n, g in sub.gateways.items()}
    rss_before = fleet.rss()
    stopped = await broker.stop()
    await asyncio.sleep(max(0.0, stopped + down_for - time.time()))
    cpu_agents = fleet.cpu_s()
    watch = CpuWatch()
    back = await broker.start()
    ret = Return(before, start, back)
    n = len(fleet.agents)
    rss_peak = rss_before
    deadline = back + args.limit
    while len(ret.drained) < n and time.time() < deadline:
        await asyncio.sleep(0.5)
        ret.update(sub)
        rss_now = fleet.rss()
        if sum(rss_now) > sum(rss_peak):
            rss_peak = rss_now
    drain_end = time.time()
    cpu = watch.stop()
    agents_cpu = fleet.cpu_s() - cpu_agents
    await asyncio.sleep(args.settle)  # what is still on its way, for the counts
    firsts = sorted(t - back for t in ret.first.values())
    with sub.lock:
        online = sorted(
            min(t for t in g.online if t >= back) - back
            for g in sub.gateways.values()
            if any(t >= back for t in g.online)
        )
    drains = sorted(t - back for t in ret.drained.values())
    log = broker.connects(back, max(drain_end, back + 10))
    window = max(drain_end - back, 1e-3)
    return {
        "scenario": kind,
        "down_s": round(back - stopped, 2),
        "agents": n,
        "online_median_s": r2(statistics.median(online)) if online else None,
        "online_all_s": r2(online[-1]) if len(online) == n else None,
        "back_median_s": r2(statistics.median(firsts)) if firsts else None,
        "back_p90_s": r2(pct(firsts, 0.9)),
        "back_all_s": r2(firsts[-1]) if len(firsts) == n else None,
        "agents_back": len(firsts),
        "drained_median_s": r2(statistics.median(drains)) if drains else None,
        "drained_all_s": r2(drains[-1]) if len(drains) == n else None,
        "agents_drained": len(drains),
        "backlog_readings": sum(ret.backlog.values()),
        "back_s": [round(t, 2) for t in firsts],
        "subscriber_back_s": round(sub.connected_at - back, 3),
        **log,
        **completeness(sub),
        "rss_sum_mb": round(sum(rss_peak) / 2**20, 1),
        "rss_agent_mb": round(statistics.median(rss_peak) / 2**20, 1) if rss_peak else None,
        "rss_agent_max_mb": round(max(rss_peak) / 2**20, 1) if rss_peak else None,
        **cpu,
        "agents_cpu_pct": round(100 * agents_cpu / window, 1),
        "load": loadavg(),
    }


def r2(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


async def run_setting(setting: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix=f"tepi-fleet-{setting}-") as tmp:
        work = Path(tmp) if args.work is None else args.work / setting
        work.mkdir(parents=True, exist_ok=True)
        broker = Broker(work, free_port())
        fleet = Fleet(work, broker.port, args, SETTINGS[setting])
        sub: Subscriber | None = None
        try:
            await broker.start()
            sub = Subscriber(broker.port)
            if not await asyncio.to_thread(sub.connected.wait, 10):
                raise RuntimeError("the subscriber could not connect")
            t0 = time.monotonic()
            await fleet.start(sub)
            started = time.monotonic() - t0
            await asyncio.sleep(args.warmup)
            for kind in args.scenarios:
                res = {
                    "setting": setting,
                    "started_s": round(started, 1),
                    **await scenario(kind, broker, fleet, sub, args),
                }
                results.append(res)
                print(json.dumps(res) if args.json else summary(res), flush=True)
        finally:
            await fleet.stop()
            if sub is not None:
                sub.close()
            if broker.proc is not None:
                kill_group(broker.proc)
    return results


def summary(res: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in res.items() if k not in ("mqtt_per_s", "back_s"))


COLUMNS = [
    ("setting", "setting"),
    ("scenario", "scenario"),
    ("down_s", "broker down (s)"),
    ("tcp_peak_per_s", "TCP accepts/s, peak"),
    ("mqtt_peak_per_s", "MQTT connects/s, peak"),
    ("mqtt_connects", "MQTT connects"),
    ("online_median_s", "online: median (s)"),
    ("online_all_s", "all (s)"),
    ("back_median_s", "a reading: median (s)"),
    ("back_p90_s", "p90 (s)"),
    ("back_all_s", "all (s)"),
    ("drained_all_s", "all drained (s)"),
    ("backlog_readings", "backlog readings"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("rss_agent_mb", "RSS/agent (MB)"),
    ("rss_sum_mb", "RSS sum (MB)"),
    ("cpu_pct", "CPU, 2 cores (%)"),
    ("cpu_peak_pct", "busiest second (%)"),
    ("agents_cpu_pct", "agents' CPU (% of a core)"),
]


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for r in results:
        cells = ["-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    # SIGTERM (a timeout's) cancels the run, so the agents and the broker are still stopped
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    print(
        f"{args.agents} agents, {args.metrics} values every {args.interval}; outage "
        f"{args.outage:g} s; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"load average {loadavg()}",
        file=sys.stderr if args.json else sys.stdout,
        flush=True,
    )
    results = []
    for setting in args.settings:
        results += await run_setting(setting, args)
    if not args.json:
        print("\n" + table(results))
    elif args.table:
        print("\n" + table(results), file=sys.stderr)
    print(f"load average at the end: {loadavg()}", file=sys.stderr if args.json else sys.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--outage", type=float, default=300.0, help="seconds the broker is down")
    p.add_argument("--metrics", type=int, default=5, help="values per poll, per agent")
    p.add_argument("--interval", default="1s", help="each agent's poll interval")
    p.add_argument("--backlog-rate", type=int, default=0, help="uplink.backlog_rate (0: none)")
    p.add_argument(
        "--settings",
        type=lambda s: s.split(","),
        default=list(SETTINGS),
        help="comma-separated: probes (the defaults), backoff (probe_interval 0)",
    )
    p.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=["restart", "outage"],
        help="comma-separated: restart, outage (in that order on one fleet)",
    )
    p.add_argument("--start-rate", type=float, default=5.0, help="agents started a second")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of steady sending first")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the drain")
    p.add_argument("--limit", type=float, default=600.0, help="give up this long after return")
    p.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    p.add_argument("--table", action="store_true", help="with --json: the table on stderr")
    p.add_argument("--work", type=Path, help="keep the logs and data dirs here")
    args = p.parse_args()
    for s in args.settings:
        if s not in SETTINGS:
            p.error(f"unknown setting {s!r}")
    for s in args.scenarios:
        if s not in ("restart", "outage"):
            p.error(f"unknown scenario {s!r}")
    try:
        asyncio.run(main_async(args))
    except asyncio.CancelledError:
        raise SystemExit("stopped (SIGTERM): the agents and the broker were stopped") from None


if __name__ == "__main__":
    main()
