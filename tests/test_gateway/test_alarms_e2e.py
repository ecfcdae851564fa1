"""Rules and alarms end to end: ``tepi run`` against the simulator and a real Mosquitto.

A river gauge (Modbus TCP, its level set by the test) and a siren (a writable coil on another
Modbus TCP device, which records every write with its time). The rule ``flood-high`` fires
above 2.5 m, clears under 2.3 m, sounds the siren and reads the gauge faster while it fires.
Checked: the alarm messages (schema, order, seq, the time the condition became true), the
siren's writes with their read-back, the faster polling, local actions with the broker down,
alarms ahead of the backlog after an outage, and no duplicate or lost transition through a
restart and a kill -9.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import AgentProc, Broker, Subscriber, agent_config, run_tepi
from rig import validator

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(120)

ALARM = validator("alarm")
TOPIC = "ioc/v1/gw-test/alarm"

SIM: dict[str, Any] = {
    "seed": 3,
    "devices": [
        {
            "id": "gauge",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {
                    "address": 100,
                    "table": "input",
                    "kind": "constant",
                    "value": 1.0,
                    "type": "int16",
                    "scale": 0.01,
                },
            ],
        },
        {
            "id": "siren",
            "transport": "tcp",
            "unit": 1,
            "registers": [{"address": 0, "table": "coil", "kind": "output"}],
        },
    ],
}

RULE: dict[str, Any] = {
    "id": "flood-high",
    "device": "gauge",
    "metric": "level",
    "above": 2.5,
    "clear_below": 2.3,
    "severity": "critical",
    "labels": {"site": "bridge"},
    "min_interval": "0s",
    "actions": [
        {"write": {"device": "siren", "metric": "siren", "value": True, "on_resolve": False}},
        {"poll_rate": {"device": "gauge", "interval": "200ms"}},
    ],
}


def devices(sim: Simulator, gauge_poll: str = "1s") -> list[dict[str, Any]]:
    def tcp(dev: str) -> dict[str, str | int]:
        host, port = sim.endpoint(dev).rsplit(":", 1)
        return {"host": host, "port": int(port)}

    return [
        {
            "id": "gauge",
            "driver": "modbus-tcp",
            **tcp("gauge"),
            "unit": 1,
            "poll_interval": gauge_poll,
            "registers": [
                {"name": "level", "address": 100, "table": "input", "type": "int16", "scale": 0.01}
            ],
        },
        {
            "id": "siren",
            "driver": "modbus-tcp",
            **tcp("siren"),
            "unit": 1,
            "poll_interval": "5s",
            "registers": [{"name": "siren", "address": 0, "table": "coil", "writable": True}],
        },
    ]


@dataclass
class Site:
    tmp: Path
    broker: Broker
    sim: Simulator
    sub: Subscriber
    agent: AgentProc

    def level(self, metres: float) -> None:
        self.sim.device("gauge").set_value(100, metres, "input")

    def alarms(self) -> list[dict[str, Any]]:
        return self.sub.on("/alarm")

    def transitions(self) -> list[str]:
        """The transitions as the IOC keeps them: a seq it already has is dropped (at least
        once delivery: a message whose PUBACK a kill -9 lost comes again)."""
        seen: set[int] = set()
        out = []
        for a in self.alarms():
            if a["seq"] not in seen and a["state"] != "action":
                out.append(a["state"])
            seen.add(a["seq"])
        return out

    def siren_writes(self) -> list[bool]:
        return [bool(w.values[0]) for w in self.sim.device("siren").writes]

    async def wait_alarms(self, states: list[str], timeout: float = 20.0) -> None:
        await self.sub.wait_for(lambda s: self.transitions()[: len(states)] == states, timeout)
        # Nothing more than asked for.
        assert self.transitions() == states, self.transitions()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    broker = Broker(tmp_path, persistence=True)
    await broker.start()
    async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        cfg = agent_config(tmp_path, broker.port, devices(sim), health_interval="1s")
        text = cfg.read_text() + "rules:\n" + _yaml_list([RULE])
        cfg.write_text(text)
        agent = AgentProc(cfg, tmp_path / "agent.log")
        agent.start()
        try:
            yield Site(tmp_path, broker, sim, sub, agent)
        finally:
            if agent.proc is not None and agent.proc.poll() is None:
                await agent.stop()
            await broker.stop()
    assert "Traceback" not in agent.log_text(), agent.log_text()


def _yaml_list(items: list[dict[str, Any]]) -> str:
    return "".join(f"  - {json.dumps(item)}\n" for item in items)


def _gauge_gaps(site: Site, since: float) -> list[float]:
    ts = sorted(
        r["ts"]
        for r in site.sub.readings()
        if r["device"] == "gauge" and r["metric"] == "level" and r["ts"] >= since
    )
    return [b - a for a, b in itertools.pairwise(ts)]


async def test_a_flood_fires_sounds_the_siren_polls_faster_and_resolves(site: Site) -> None:
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    raised = time.time()
    site.level(2.9)
    await site.wait_alarms(["firing"])
    firing = next(a for a in site.alarms() if a["state"] == "firing")
    ALARM.validate(firing)
    assert firing["rule"] == "flood-high"
    assert firing["severity"] == "critical"
    assert firing["device"] == "gauge"
    assert firing["metric"] == "level"
    assert firing["value"] == pytest.approx(2.9)
    assert firing["labels"] == {"site": "bridge"}
    # The time the condition became true: the reading's, not the send's.
    assert raised - 0.1 <= firing["since"] <= firing["ts"] <= time.time()
    # The siren: written on, with its read-back reported in an action message.
    await site.sub.wait_for(lambda s: any(a["state"] == "action" for a in site.alarms()))
    action = next(a for a in site.alarms() if a["state"] == "action")
    ALARM.validate(action)
    assert action["action"]["kind"] == "write"
    assert action["action"]["ok"] is True
    assert action["action"]["read_back"] is True
    assert action["seq"] > firing["seq"]
    assert site.siren_writes() == [True]
    # Faster polling while it fires: the gauge at 200 ms instead of 1 s.
    fast_from = time.time()
    await site.sub.wait_for(lambda s: len(_gauge_gaps(site, fast_from)) >= 5)
    assert sorted(_gauge_gaps(site, fast_from))[2] < 0.5, _gauge_gaps(site, fast_from)

    site.level(2.4)  # between the levels: still firing (hysteresis)
    seen = len([r for r in site.sub.readings() if r["value"] == pytest.approx(2.4)])
    await site.sub.wait_for(
        lambda s: len([r for r in s.readings() if r["value"] == pytest.approx(2.4)]) > seen + 2
    )
    assert site.transitions() == ["firing"]
    site.level(2.0)
    await site.wait_alarms(["firing", "resolved"])
    resolved = next(a for a in site.alarms() if a["state"] == "resolved")
    ALARM.validate(resolved)
    assert resolved["value"] == pytest.approx(2.0)
    assert resolved["seq"] > firing["seq"]
    # Its since is the reading that cleared it (no clear_for: the transition's own time).
    assert firing["ts"] < resolved["since"] <= resolved["ts"]
    await site.sub.wait_for(
        lambda s: len([a for a in site.alarms() if a["state"] == "action"]) == 2
    )
    assert site.siren_writes() == [True, False]
    # And back to the configured 1 s.
    slow_from = time.time() + 0.5
    await site.sub.wait_for(lambda s: len(_gauge_gaps(site, slow_from)) >= 2, timeout=10)
    assert min(_gauge_gaps(site, slow_from)) > 0.7, _gauge_gaps(site, slow_from)


async def test_the_siren_sounds_with_the_broker_down_and_the_alarm_goes_first(
    site: Site,
) -> None:
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    await site.broker.stop()
    down_at = time.time()
    before = len(site.sub.messages)
    site.level(3.1)
    await site.sim.device("siren").wait_writes(1, timeout=10)
    assert site.siren_writes() == [True]
    # A backlog builds while the broker is away (the gauge read every 200 ms now).
    gauge = site.sim.device("gauge")
    polled = gauge.requests
    async with asyncio.timeout(10):
        while gauge.requests < polled + 10:
            await asyncio.sleep(0.05)
    await site.broker.start()
    await site.wait_alarms(["firing"], timeout=30)

    def backlog(payload: bytes) -> bool:  # holds a reading taken while the broker was away
        return any(r["ts"] >= down_at for r in json.loads(payload)["readings"])

    await site.sub.wait_for(
        lambda s: (
            sum(backlog(p) for t, p, _ in s.messages[before:] if t.endswith("/telemetry")) >= 1
        )
    )
    # Only telemetry from before the outage (the broker kept it for the subscriber) may come
    # ahead of the alarm; the readings taken during the outage come after it.
    order = [
        "alarm" if t.endswith("/alarm") else "backlog"
        for t, p, _ in site.sub.messages[before:]
        if t.endswith("/alarm") or (t.endswith("/telemetry") and backlog(p))
    ]
    assert order[0] == "alarm", order[:5]


async def _restarted(site: Site) -> None:
    """Start the agent again and wait until it is connected and has read the gauge."""
    onlines = len([m for m in site.sub.on("/status") if m["state"] == "online"])
    seen = len(site.sub.readings())
    site.agent.start()
    await site.sub.wait_for(
        lambda s: (
            len([m for m in s.on("/status") if m["state"] == "online"]) > onlines
            and any(r["device"] == "gauge" for r in s.readings()[seen:])
        )
    )


async def test_a_restart_or_kill_9_never_fires_again_nor_loses_the_resolve(site: Site) -> None:
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    site.level(2.8)
    await site.wait_alarms(["firing"])
    await site.sim.device("siren").wait_writes(1)

    # kill -9 while it fires: the alarm is restored, not fired again; the siren is set again.
    site.agent.kill9()
    await _restarted(site)
    await site.sub.wait_for(
        lambda s: any(a.get("action", {}).get("on") == "restored" for a in site.alarms())
    )
    assert site.transitions() == ["firing"]
    assert site.siren_writes() == [True, True]

    # A clean stop while it fires, and the water goes down while the agent is away: the
    # restarted agent resolves it once, from the first reading.
    assert await site.agent.stop() == 0
    site.level(1.5)
    await _restarted(site)
    await site.wait_alarms(["firing", "resolved"])
    resolved = next(a for a in site.alarms() if a["state"] == "resolved")
    assert resolved["value"] == pytest.approx(1.5)
    await site.sub.wait_for(lambda s: site.siren_writes()[-1:] == [False])
    seqs = [a["seq"] for a in site.alarms()]
    assert sorted(set(seqs)) == list(dict.fromkeys(seqs))  # increasing, repeats aside


async def test_health_and_the_status_api_show_the_alarm(site: Site) -> None:
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    site.level(2.7)
    await site.wait_alarms(["firing"])
    await site.sub.wait_for(
        lambda s: any((h.get("alarms") or {}).get("firing") == 1 for h in s.on("/health"))
    )
    health = next(h for h in site.sub.on("/health") if (h.get("alarms") or {}).get("firing"))
    validator("health").validate(health)
    assert health["alarms"]["firing_rules"] == ["flood-high"]
    await site.sub.wait_for(
        lambda s: any((h.get("alarms") or {}).get("actions", {}).get("ok") for h in s.on("/health"))
    )


async def test_tepi_alarms_lists_and_acknowledges_through_the_agent(site: Site) -> None:
    cfg = str(site.agent.config)
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    none = await asyncio.to_thread(run_tepi, "alarms", "--config", cfg)
    assert none.returncode == 0, none.stderr
    assert "no alarms (1 rules)" in none.stdout
    site.level(2.6)
    await site.wait_alarms(["firing"])
    await site.sub.wait_for(lambda s: "action" in [a["state"] for a in site.alarms()])
    listed = await asyncio.to_thread(run_tepi, "alarms", "--config", cfg)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("flood-high"))
    assert line.split()[1:3] == ["firing", "critical"]
    assert "gauge.level = 2.6" in line
    assert "action 0 write siren: ok" in listed.stdout
    status = await asyncio.to_thread(run_tepi, "status", "--config", cfg)
    assert "alarms  1 FIRING: flood-high" in status.stdout, status.stdout

    acked = await asyncio.to_thread(
        run_tepi, "alarms", "ack", "flood-high", "--by", "tech-anh", "--config", cfg
    )
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged by tech-anh" in acked.stdout
    await site.wait_alarms(["firing", "acknowledged"])
    ack = next(a for a in site.alarms() if a["state"] == "acknowledged")
    ALARM.validate(ack)
    assert ack["by"] == "tech-anh"
    # Twice: refused, and no second message; an unknown rule: a clear error.
    again = await asyncio.to_thread(run_tepi, "alarms", "ack", "flood-high", "--config", cfg)
    assert again.returncode != 0
    assert "already acknowledged" in again.stderr
    unknown = await asyncio.to_thread(run_tepi, "alarms", "ack", "flood-hgh", "--config", cfg)
    assert unknown.returncode != 0
    assert "no alarm for rule 'flood-hgh'" in unknown.stderr
    as_json = await asyncio.to_thread(run_tepi, "alarms", "--json", "--config", cfg)
    rows = json.loads(as_json.stdout)["alarms"]
    assert rows[0]["acknowledged"] is True
    assert rows[0]["ack_by"] == "tech-anh"
    assert site.transitions() == ["firing", "acknowledged"]


async def test_a_reload_that_removes_a_firing_rule_resolves_it(site: Site) -> None:
    await site.sub.wait_for(lambda s: any(r["device"] == "gauge" for r in s.readings()))
    site.level(2.9)
    await site.wait_alarms(["firing"])
    await site.sim.device("siren").wait_writes(1)
    cfg = site.agent.config
    cfg.write_text(cfg.read_text().split("rules:\n")[0])  # no rules any more
    assert site.agent.proc is not None
    site.agent.proc.send_signal(signal.SIGHUP)
    await site.wait_alarms(["firing", "resolved"])
    resolved = next(a for a in site.alarms() if a["state"] == "resolved")
    ALARM.validate(resolved)
    assert resolved["value"] is None  # no reading cleared it: its rule went
    await site.sub.wait_for(lambda s: site.siren_writes() == [True, False])
