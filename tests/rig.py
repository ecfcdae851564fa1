"""The end-to-end rig shared by the end-to-end and fault tests: the simulator (ptys, TCP) ->
``tepi run`` -> Mosquitto -> a subscriber, and the checks on what arrived.

The simulator's counter registers go up by one per answered read, so every lost reading shows
as a gap in the counter values the subscriber receives; ``seq`` shows duplicates and order.
The counters are 32-bit: at the rig's 9.3 answered polls a second a 16-bit one wrapped after
1 h 57 min, and the 2-hour soak's checks then compared new values with old ones.
The completeness checker (bench/completeness.py) reads both.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jsonschema
from completeness import Row
from helpers import SCHEMA_PATH, AgentProc, Broker, FaultProxy, Subscriber, agent_config

from tepi_sim import Simulator

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{kind}"})


def metrics_table() -> dict[str, tuple[str, str]]:
    """docs/operations.md's metrics table: name -> (type, labels)."""
    doc = (SCHEMA_PATH.parents[3] / "docs" / "operations.md").read_text()
    section = doc.split("### Metrics", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(tepi_[a-z_]+)` \| (\w+) \| ([^|]*) \|", section, re.M)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


SIM: dict[str, Any] = {
    "seed": 7,
    "devices": [
        {
            "id": "aq-station-1",
            "transport": "rtu",
            "unit": 1,
            "bus": "bus0",
            "registers": [
                {"address": 0, "table": "holding", "kind": "pm25", "type": "uint16", "scale": 0.1},
                {
                    "address": 2,
                    "table": "holding",
                    "kind": "temperature",
                    "type": "float32",
                    "word_order": "little",
                },
                {"address": 10, "table": "holding", "kind": "counter", "type": "uint32"},
            ],
        },
        {
            "id": "noise-2",
            "transport": "rtu",
            "unit": 2,
            "bus": "bus0",
            "registers": [
                {"address": 0, "table": "holding", "kind": "noise", "type": "uint16", "scale": 0.1},
                {"address": 1, "table": "holding", "kind": "counter", "type": "uint32"},
            ],
        },
        {
            "id": "river-level-3",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {"address": 100, "table": "input", "kind": "level", "type": "int16", "scale": 0.01},
                {"address": 101, "table": "input", "kind": "counter", "type": "uint32"},
            ],
        },
    ],
}
DEVICES = ("aq-station-1", "noise-2", "river-level-3")
POLL = "100ms"


def agent_devices(endpoints: dict[str, str]) -> list[dict[str, Any]]:
    host, port = endpoints["river-level-3"].split(":")
    return [
        {
            "id": "aq-station-1",
            "driver": "modbus-rtu",
            "port": endpoints["aq-station-1"],
            "baudrate": 9600,
            "unit": 1,
            "poll_interval": POLL,
            "timeout": "500ms",
            "registers": [
                {"name": "pm25", "address": 0, "type": "uint16", "scale": 0.1, "unit": "ug/m3"},
                {
                    "name": "temperature",
                    "address": 2,
                    "type": "float32",
                    "word_order": "little",
                    "unit": "degC",
                },
                {"name": "counter", "address": 10, "type": "uint32"},
            ],
        },
        {
            "id": "noise-2",
            "driver": "modbus-rtu",
            "port": endpoints["noise-2"],
            "baudrate": 9600,
            "unit": 2,
            "poll_interval": POLL,
            "timeout": "500ms",
            "registers": [
                {"name": "noise", "address": 0, "scale": 0.1, "unit": "dBA"},
                {"name": "counter", "address": 1, "type": "uint32"},
            ],
        },
        {
            "id": "river-level-3",
            "driver": "modbus-tcp",
            "host": host,
            "port": int(port),
            "unit": 1,
            "poll_interval": POLL,
            "timeout": "500ms",
            "registers": [
                {
                    "name": "level",
                    "address": 100,
                    "table": "input",
                    "type": "int16",
                    "scale": 0.01,
                    "unit": "m",
                },
                {"name": "counter", "address": 101, "table": "input", "type": "uint32"},
            ],
        },
    ]


class AnyBroker(Protocol):
    """A broker the test owns: helpers.Broker (Mosquitto), or one of tests/brokers.py."""

    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Rig:
    tmp: Path
    broker: AnyBroker
    sim: Simulator
    sub: Subscriber
    agent: AgentProc

    def counters(self, device: str) -> list[int]:
        """Counter values in seq order (the IOC's order: after an outage live messages and
        the backlog's interleave), duplicates (same seq) removed."""
        by_seq = {
            r["seq"]: int(r["value"])
            for r in self.sub.readings()
            if r["device"] == device and r["metric"] == "counter" and r["quality"] == "good"
        }
        return [by_seq[s] for s in sorted(by_seq)]

    def sim_counter(self, device: str) -> int:
        devices: list[dict[str, Any]] = SIM["devices"]
        spec = next(d for d in devices if d["id"] == device)
        reg = next(r for r in spec["registers"] if r["kind"] == "counter")
        return self.sim.device(device).counter_value(address=reg["address"], table=reg["table"])

    async def wait_counters(self, at_least: int, timeout: float = 30) -> None:
        await self.sub.wait_for(
            lambda s: all(len(self.counters(d)) >= at_least for d in DEVICES), timeout
        )

    def table(self, upto: dict[str, int]) -> list[Row]:
        """The completeness checker's table, counting counter values up to ``upto``."""
        return self.sub.completeness().table(upto)

    def assert_complete(self, upto: dict[str, int], *, allowed_lost: int = 0) -> list[Row]:
        """Every counter value up to ``upto`` arrived (but ``allowed_lost``, and those the
        agent said it failed to read: the rows' ``unread``), none out of order; and with
        nothing allowed lost, no gap in ``seq`` inside a run either."""
        check = self.sub.completeness()
        rows = check.table(upto)
        gaps = check.seq_gaps()
        for row in rows:
            assert row.out_of_order == 0, self._why(row, gaps)
            assert row.lost <= allowed_lost, self._why(row, gaps)
        if not allowed_lost:
            assert gaps == [], self._why(gaps[:10], gaps)
        assert check.undecodable == 0
        return rows

    def _why(self, what: object, gaps: list[tuple[int, int]]) -> str:
        """A failed check, with what tells a lost reading from a device that failed: the
        seq gaps and the agent's errors and warnings."""
        said = [
            line
            for line in self.agent.log_text().splitlines()
            if " ERROR " in line or " WARNING " in line
        ]
        return f"{what}\nseq gaps: {gaps[:10]}\nthe agent's log said:\n" + "\n".join(said[-30:])

    async def wait_caught_up(self, timeout: float = 30) -> dict[str, int]:
        """Wait until the subscriber has every counter value the simulator handed out so far."""
        target = {d: self.sim_counter(d) for d in DEVICES}
        await self.wait_past(target, timeout)
        return target

    async def wait_past(self, target: dict[str, int], timeout: float = 120) -> None:
        """Wait until each device's counter reached ``target`` at the subscriber."""
        await self.sub.wait_for(
            lambda s: all(s.max_counter.get(d, 0) >= target[d] for d in DEVICES), timeout
        )


@asynccontextmanager
async def running_rig(
    tmp_path: Path,
    *,
    persistence: bool = True,
    proxy: FaultProxy | None = None,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    linked: bool = False,
    device_over: dict[str, dict[str, Any]] | None = None,
    broker: AnyBroker | None = None,
    **over: Any,
) -> AsyncIterator[Rig]:
    """Broker, simulator, subscriber and agent, all started; with ``proxy``, the agent
    reaches the broker through that fault proxy; ``env`` is added to the agent's, and
    ``prefix`` wraps its command (helpers.mount_namespace). With ``linked``, the agent reaches
    the RTU line through a symlink (as a udev rule's /dev/ttyRS485), so a replugged adapter
    (the simulator's ``disconnect``) comes back at the same path. ``device_over`` adds keys
    to one device's config by id, or to every device's with ``"*"``. ``broker``: a running
    broker the caller owns (tests/brokers.py), used instead of a Mosquitto of the rig's own."""
    own = broker is None
    if broker is None:
        broker = Broker(tmp_path, persistence=persistence)
        await broker.start()
    via = None
    if proxy is not None:
        proxy.upstream_port = broker.port
        via = proxy.port
    link = tmp_path / "ttyRS485"
    sim_cfg = {
        **SIM,
        "devices": [
            {**d, "link": str(link)} if linked and d["transport"] == "rtu" else d
            for d in SIM["devices"]
        ],
    }
    async with Simulator(sim_cfg) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        over.setdefault("health_interval", "1s")
        devices = agent_devices(sim.endpoints())
        for dev in devices:
            if linked and dev["driver"] == "modbus-rtu":
                dev["port"] = str(link)
            for key in ("*", dev["id"]):
                dev.update((device_over or {}).get(key, {}))
        cfg = agent_config(tmp_path, broker.port if via is None else via, devices, **over)
        agent = AgentProc(cfg, tmp_path / "agent.log", env, prefix)
        agent.start()
        try:
            yield Rig(tmp_path, broker, sim, sub, agent)
        finally:
            await agent.stop()
            if own:
                await broker.stop()
    log = agent.log_text()
    assert "Traceback" not in log, log


def assert_continuous(rig: Rig, device: str, *, allowed_gaps: int = 0) -> None:
    values = rig.counters(device)
    assert values, f"no counter readings from {device}"
    assert values == sorted(values), f"{device}: order not kept"
    missing = set(range(values[0], values[-1] + 1)) - set(values)
    assert len(missing) <= allowed_gaps, f"{device}: missing counter values {sorted(missing)[:20]}"


def lost_outside_windows(
    received: dict[str, dict[int, float]], upto: dict[str, int], cuts: list[float], window: float
) -> list[str]:
    """The counter values up to ``upto`` (what the simulator had handed out when the
    subscriber caught up) that never arrived, but for those a cut can explain: a value whose
    device answered it within ``window`` seconds before a cut (a ``kill -9``: read but not yet
    committed; a line cut, the simulator's ``disconnect``: counted as answered, but the reply
    was on the line when it was cut, and the agent never got it). ``received``: per device,
    each value that arrived and when it was read (wall clock)."""
    bad = []
    for d, taken in received.items():
        values = sorted(taken)
        for c in sorted(set(range(values[0], upto[d] + 1)) - set(values)):
            before = taken[max(v for v in values if v < c)]
            cut = min((k for k in cuts if k >= before), default=None)
            if cut is None or cut - before > window:
                bad.append(f"{d}: counter {c} lost (read after {before:.2f}; cut {cut})")
    return bad
