"""Serial sensors end to end: the simulator plays each protocol on a real pty, ``tepi run``
reads them, the readings reach a real Mosquitto, and every payload is checked against the
IOC's JSON Schema. Then faults on the wire, a 10 s unplug behind a stable link, and GPS as
the clock of an agent whose own clock is three years behind and unsynced."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import AgentProc, Broker, Subscriber, agent_config, compile_shim
from rig import validator

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(120)

CYCLE = [10, 20, 30, 40]


def sim_config(tmp: Path) -> dict[str, Any]:
    return {
        "seed": 7,
        "devices": [
            {
                "id": "pm-1",
                "transport": "uart",
                "protocol": "pms5003",
                "interval_s": 0.1,
                "link": str(tmp / "by-id-pm-1"),
                "values": {"pm25_atm": CYCLE},
            },
            {"id": "sds-1", "transport": "uart", "protocol": "sds011", "interval_s": 0.2},
            {"id": "co2-1", "transport": "uart", "protocol": "mhz19"},
            {
                "id": "gps-1",
                "transport": "uart",
                "protocol": "nmea",
                "talker": "GN",
                "interval_s": 0.2,
            },
            {
                "id": "node-1",
                "transport": "uart",
                "protocol": "line",
                "interval_s": 0.1,
                "line_ending": "\r\n",
            },
        ],
    }


def agent_devices(tmp: Path, sim: Simulator) -> list[dict[str, Any]]:
    ep = sim.endpoints()
    base = {"driver": "serial", "poll_interval": "500ms", "timeout": "1s"}
    return [
        {
            **base,
            "id": "pm-1",
            "protocol": "pms5003",
            "port": str(tmp / "by-id-pm-1"),
            "metrics": ["pm25_atm", "pm10_atm"],
            "aggregates": {"pm25_atm": ["mean", "count", "min", "max"]},
            "warmup": "2s",
        },
        {
            **base,
            "id": "sds-1",
            "protocol": "sds011",
            "port": ep["sds-1"],
            "mode": "passive",
            "working_period": 0,
            "warmup": "0s",
        },
        {**base, "id": "co2-1", "protocol": "mhz19", "port": ep["co2-1"], "warmup": "0s"},
        {**base, "id": "gps-1", "protocol": "nmea", "port": ep["gps-1"], "clock_source": True},
        {
            **base,
            "id": "node-1",
            "protocol": "line",
            "port": ep["node-1"],
            "format": "kv",
            "fields": {
                "T": {"unit": "degC", "name": "temperature"},
                "H": {"unit": "%RH", "name": "humidity"},
            },
        },
    ]


@asynccontextmanager
async def serial_rig(
    tmp: Path, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Simulator, Subscriber, AgentProc]]:
    broker = Broker(tmp)
    await broker.start()
    try:
        async with Simulator(sim_config(tmp)) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
            cfg = agent_config(tmp, broker.port, agent_devices(tmp, sim), health_interval="1s")
            agent = AgentProc(cfg, tmp / "agent.log", env)
            agent.start()
            try:
                yield sim, sub, agent
            finally:
                assert await agent.stop() == 0
    finally:
        await broker.stop()
    log = agent.log_text()
    assert "Traceback" not in log, log


def good(sub: Subscriber, device: str, metric: str) -> list[dict[str, Any]]:
    return [
        r
        for r in sub.readings()
        if r["device"] == device and r["metric"] == metric and r["quality"] == "good"
    ]


def health(sub: Subscriber) -> dict[str, Any]:
    return sub.on("/health")[-1]


def proto(sub: Subscriber, device: str) -> dict[str, Any]:
    p: dict[str, Any] = health(sub)["devices"][device]["protocol"]
    return p


async def test_every_protocol_reaches_the_broker_and_wire_faults_are_counted(
    tmp_path: Path,
) -> None:
    async with serial_rig(tmp_path) as (sim, sub, _agent):
        metrics = [
            ("pm-1", "pm25_atm"),
            ("sds-1", "pm25"),
            ("co2-1", "co2"),
            ("gps-1", "latitude"),
            ("node-1", "temperature"),
        ]
        await sub.wait_for(lambda s: all(len(good(s, d, m)) >= 3 for d, m in metrics), 30)

        # PMS: the warm-up's readings are uncertain, then good; each poll's mean of the
        # window, and the counts add up to the frames the sensor sent
        pm = [r for r in sub.readings() if r["device"] == "pm-1"]
        assert pm[0]["quality"] == "uncertain"
        assert pm[0]["reason"] == "warming up"
        assert pm[0]["value"] is not None
        means = good(sub, "pm-1", "pm25_atm")
        assert all(min(CYCLE) <= r["value"] <= max(CYCLE) for r in means)
        counts = {r["ts"]: r["value"] for r in pm if r["metric"] == "pm25_atm_count"}
        frames = sim.uart_device("pm-1").frames_sent
        assert 0 < sum(counts.values()) <= frames
        assert any(c >= 3 for c in counts.values())  # 10 Hz sensor, 2 Hz polls: a window
        low = [r["value"] for r in pm if r["metric"] == "pm25_atm_min"]
        assert min(low) == min(CYCLE)
        assert pm[0]["unit"] == "ug/m3"

        # SDS011 in query mode, MH-Z19 with ABC off: the set-up reached the sensors
        sds = sim.uart_device("sds-1").state()
        assert sds["reporting"] == "query"
        assert sds["working_period_min"] == 0
        assert sim.uart_device("co2-1").state()["abc"] is False
        assert 300 <= good(sub, "co2-1", "co2")[-1]["value"] <= 5000
        assert proto(sub, "co2-1")["requests"] >= 3

        # GPS: the simulator's position, from the GN talker
        assert good(sub, "gps-1", "latitude")[-1]["value"] == pytest.approx(16.0544, abs=1e-4)
        assert good(sub, "gps-1", "satellites")[-1]["value"] > 0
        assert health(sub)["clock"]["gps_device"] == "gps-1"
        assert abs(health(sub)["clock"]["gps_offset_s"]) < 1.0  # same host clock

        # text lines, kv with names and units
        assert good(sub, "node-1", "humidity")[-1]["unit"] == "%RH"

        # faults on the wire: garbage, split frames, bad checksums, a wrong baud rate
        before = {d: proto(sub, d) for d in ("pm-1", "gps-1", "node-1")}
        n = {d: len(good(sub, d, m)) for d, m in metrics}
        sim.set_fault("pm-1", "garbage")
        sim.set_fault("gps-1", "split")
        sim.set_fault("node-1", "bad_checksum")
        await sub.wait_for(lambda s: all(len(good(s, d, m)) >= n[d] + 4 for d, m in metrics), 30)
        await sub.wait_for(
            lambda s: (
                proto(s, "pm-1")["garbage_bytes"] > before["pm-1"]["garbage_bytes"]
                and proto(s, "node-1")["parse_errors"] > before["node-1"]["parse_errors"]
            ),
            10,
        )
        assert all(min(CYCLE) <= r["value"] <= max(CYCLE) for r in good(sub, "pm-1", "pm25_atm"))
        sim.set_fault("pm-1", "baud_mismatch")
        sim.set_fault("sds-1", "silence")
        await sub.wait_for(
            lambda s: (
                "no valid frame" in health(s)["devices"]["pm-1"]["errors"]
                and "no data" in health(s)["devices"]["sds-1"]["errors"]
            ),
            20,
        )
        bad = {(r["device"], r["reason"]) for r in sub.readings() if r["quality"] == "bad"}
        assert ("pm-1", "no valid frame") in bad
        assert ("sds-1", "no data") in bad
        for d in ("pm-1", "sds-1"):
            sim.set_fault(d, "none")
        n = {d: len(good(sub, d, m)) for d, m in metrics}
        await sub.wait_for(lambda s: all(len(good(s, d, m)) > n[d] for d, m in metrics), 20)

    schema = {k: validator(k) for k in ("telemetry", "health")}
    for kind, v in schema.items():
        for msg in sub.on(f"/{kind}"):
            v.validate(msg)
    seqs = [r["seq"] for r in sub.readings()]
    assert len(seqs) == len(set(seqs))


async def test_an_unplugged_sensor_comes_back_without_a_restart_and_health_shows_the_gap(
    tmp_path: Path,
) -> None:
    async with serial_rig(tmp_path) as (sim, sub, agent):
        await sub.wait_for(lambda s: len(good(s, "pm-1", "pm25_atm")) >= 2, 30)
        sim.set_fault("pm-1", "unplugged")
        pulled = time.monotonic()
        await sub.wait_for(lambda s: proto(s, "pm-1")["port_state"] == "missing", 10)
        await sub.wait_for(lambda s: time.monotonic() - pulled >= 10, 15)
        sim.set_fault("pm-1", "none")
        back = len(good(sub, "pm-1", "pm25_atm"))
        await sub.wait_for(lambda s: len(good(s, "pm-1", "pm25_atm")) > back + 2, 30)
        await sub.wait_for(lambda s: proto(s, "pm-1")["gaps"] != [], 10)
        p = proto(sub, "pm-1")
        assert agent.proc is not None
        assert agent.proc.returncode is None  # the same process throughout
    assert p["port_state"] == "open"
    assert p["losses"] == 1
    assert p["opens"] == 2
    assert 9.5 <= p["gaps"][0]["seconds"] <= 14
    missing = [r for r in sub.readings() if r["device"] == "pm-1" and r["quality"] == "bad"]
    assert {r["reason"] for r in missing} == {"port missing"}
    # the replug powered the sensor up again: its first values are warming up again
    late = [r for r in sub.readings() if r["device"] == "pm-1" and r["seq"] > missing[-1]["seq"]]
    assert late[0]["quality"] == "uncertain"


async def test_gps_dates_the_readings_of_an_agent_whose_clock_is_years_off(
    tmp_path: Path,
) -> None:
    stale = -3 * 365 * 86400.0
    clock = tmp_path / "clock"
    clock.write_text(f"{stale} 0\n")  # three years behind, and the kernel says unsynced
    env = {"LD_PRELOAD": str(compile_shim("fakeclock", tmp_path)), "FAKECLOCK_FILE": str(clock)}
    async with serial_rig(tmp_path, env) as (_sim, sub, _agent):
        await sub.wait_for(
            lambda s: (
                any(r.get("ts_status") == "gps" for r in s.readings())
                and len(s.on("/health")) > 0
                and health(s)["clock"]["source"] == "gps"
            ),
            30,
        )
        first_gps = min(r["seq"] for r in sub.readings() if r.get("ts_status") == "gps")
        n = len(sub.readings())
        await sub.wait_for(lambda s: len(s.readings()) > n + 20, 30)
    h = health(sub)
    assert h["clock_synced"] is False
    assert h["clock"]["gps_offset_s"] == pytest.approx(-stale, abs=2.0)
    now = time.time()
    later = [r for r in sub.readings() if r["seq"] > first_gps]
    assert later
    for r in later:
        # dated by GPS: today's time (not three years ago), to well under a second
        assert r["ts_status"] == "gps", r
        assert r["ts"] == pytest.approx(
            r["mono"] + now - time.clock_gettime(time.CLOCK_BOOTTIME), abs=1.0
        )
    early = [r for r in sub.readings() if r["seq"] < first_gps]
    assert all(r.get("ts_status") == "unsynced" for r in early)
    for msg in sub.on("/telemetry"):
        validator("telemetry").validate(msg)
