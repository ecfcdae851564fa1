"""``tepi demo``: the newcomer's first command, run as a person would."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Broker, run_tepi

from tepi.gateway.configload import load_config
from tepi.gateway.demo import render_config
from tepi.gateway.localbroker import free_port

READING = re.compile(r"^\d\d:\d\d:\d\d  (\S+)\s+(\S+)\s+(\S+)\s+(\S*)\s+seq (\d+)$")
ALARM = re.compile(r"^\d\d:\d\d:\d\d  ALARM (.*)$")
IMAGE = re.compile(r"^\d\d:\d\d:\d\d  cam-1\s+image\s+(\w+) (\d+)x(\d+) ([\d,]+) B, image (\d+)$")


def test_demo_prints_readings_from_every_device(tmp_path: Path) -> None:
    # 48: the camera's first poll gives 12 at once, and the particulate counter's first
    # reading comes after the others' first few polls
    out = run_tepi("demo", "--dir", str(tmp_path), "--count", "48", timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [m.groups() for line in out.stdout.splitlines() if (m := READING.match(line))]
    assert len(rows) >= 48, out.stdout
    devices = {"aq-station-1", "noise-meter-2", "river-level-3", "siren-1", "pm-sensor-4", "cam-1"}
    assert {r[0] for r in rows} == devices
    # the camera's health, and its first snapshot (or thumbnail), arrive too
    assert ("cam-1", "online", "True") in {r[:3] for r in rows}, out.stdout
    images = [m.groups() for line in out.stdout.splitlines() if (m := IMAGE.match(line))]
    assert images, out.stdout
    assert images[0][0] in ("thumbnail", "snapshot")
    # the particulate counter's first values are its warm-up's: shown, marked uncertain
    assert any(r[0] == "pm-sensor-4" and r[2].startswith("~") for r in rows), out.stdout
    seqs = [int(r[4]) for r in rows]
    assert seqs == sorted(seqs)
    assert "broker: mosquitto on 127.0.0.1:" in out.stdout
    # the demo's config is a valid config
    assert load_config(tmp_path / "tepi.yaml").gateway.id == "demo-gateway-01"


async def test_demo_uses_a_broker_that_runs_already(tmp_path: Path) -> None:
    """--broker-port: the demo's readings go to a broker it did not start (the mosquitto
    service on a Pi, or the field test's on the host), which it leaves running."""
    broker = Broker(tmp_path)
    await broker.start()
    try:
        args = ["--dir", str(tmp_path / "demo"), "--count", "12", "--broker-port", str(broker.port)]
        out = await asyncio.to_thread(run_tepi, "demo", *args, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"broker: the one on 127.0.0.1:{broker.port}" in out.stdout
        rows = [m.groups() for line in out.stdout.splitlines() if (m := READING.match(line))]
        assert len(rows) >= 12, out.stdout
        assert not (tmp_path / "demo" / "mosquitto.conf").exists()
        assert broker.proc is not None
        assert broker.proc.poll() is None  # left running
    finally:
        await broker.stop()


def test_demo_says_when_the_given_broker_is_not_there(tmp_path: Path) -> None:
    port = free_port()
    out = run_tepi("demo", "--dir", str(tmp_path), "--broker-port", str(port), timeout=30)
    assert out.returncode == 4, out
    assert f"no broker listens on 127.0.0.1:{port} (--broker-port)" in out.stderr


# Ctrl-C's SIGINT as a terminal's foreground job has it. A non-interactive shell starts its
# background jobs (``pytest &``, some CI runners) with SIGINT ignored, children inherit that,
# and then the SIGINT below did nothing: that was the demo's intermittent "hang". A small
# launcher sets SIGINT back to its default and execs the demo (the setting survives exec).
AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.timeout(120)
def test_demo_floods_sounds_the_siren_resolves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The demo's river floods within its first minute: the rule fires, the siren is
    written (read back), the camera takes a picture, the rule resolves and the siren goes
    off; then Ctrl-C stops everything."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            AS_FROM_A_TERMINAL,
            "-m",
            "tepi.gateway.cli",
            "demo",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90  # the flood peaks 20 s in, and is over 40 s in
    seen: list[str] = []
    for line in proc.stdout:
        if m := ALARM.match(line.rstrip()):
            seen.append(m.group(1))
            if "siren-1.siren = False: read back False" in m.group(1):
                break  # the resolve's action: the cycle is complete
        assert time.monotonic() < deadline, f"no flood cycle shown: {seen}"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    firing = [s for s in seen if s.startswith("flood-high FIRING (critical): river-level-3.level")]
    assert len(firing) == 1, seen
    assert any("siren-1.siren = True: read back True" in s for s in seen), seen
    assert any("snapshot of cam-1: image" in s for s in seen), seen
    resolved = [s for s in seen if s.startswith("flood-high RESOLVED (critical)")]
    assert len(resolved) == 1, seen
    assert seen.index(firing[0]) < seen.index(resolved[0])
    # The broker and the agent stop together: the agent's log has no error for it (it had
    # "Future exception was never retrieved" from aiomqtt's disconnect future).
    log = (tmp_path / "agent.log").read_text()
    assert " ERROR " not in log, log
    # no simulator, broker or agent is left behind
    left = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", left.stdout


def test_render_config_uses_the_simulator_endpoints(tmp_path: Path) -> None:
    manifest = {
        "devices": {
            "aq-station-1": {"endpoint": "/dev/pts/41"},
            "noise-meter-2": {"endpoint": "/dev/pts/41"},
            "river-level-3": {"endpoint": "127.0.0.1:15020"},
            "siren-1": {"endpoint": "127.0.0.1:15021"},
            "pm-sensor-4": {"endpoint": "/dev/pts/42"},
        },
        "cameras": {"cam-1": {"snapshot": "http://127.0.0.1:18001/snapshot.jpg", "password": "pw"}},
    }
    cfg = load_config(render_config(tmp_path, manifest, 18830), check_files=False)
    assert cfg.uplink.port == 18830
    ports = {d.id: getattr(d, "port", None) for d in cfg.devices}
    assert ports == {
        "aq-station-1": "/dev/pts/41",
        "noise-meter-2": "/dev/pts/41",
        "river-level-3": 15020,
        "siren-1": 15021,
        "pm-sensor-4": "/dev/pts/42",
        "cam-1": None,
    }
    cam = cfg.devices[-1]
    assert getattr(cam, "url", None) == "http://127.0.0.1:18001/snapshot.jpg"
    assert (tmp_path / "cam-1-password").read_text() == "pw\n"
    # the flood rule: on the river, writing the siren, and the camera's picture with it
    (rule,) = cfg.rules
    assert (rule.id, rule.device, rule.metric, rule.above) == (
        "flood-high",
        "river-level-3",
        "level",
        2.5,
    )
    assert [a.kind for a in rule.actions] == ["write", "poll_rate", "snapshot"]
    without_camera = {"devices": manifest["devices"]}
    cfg = load_config(render_config(tmp_path, without_camera, 18830), check_files=False)
    assert [a.kind for a in cfg.rules[0].actions] == ["write", "poll_rate"]


@pytest.mark.parametrize("arg", ["--help", "--version"])
def test_cli_help(arg: str) -> None:
    out = run_tepi(arg, timeout=30)
    assert out.returncode == 0
    assert "tepi" in out.stdout


@pytest.mark.parametrize(
    "command",
    ["run", "check", "demo", "scan", "read", "status", "doctor", "buffer", "profiles", "snapshot"],
)
def test_every_command_has_help(command: str) -> None:
    out = run_tepi(command, "--help", timeout=30)
    assert out.returncode == 0
    assert f"usage: tepi {command}" in out.stdout


def test_unknown_command_is_a_usage_error() -> None:
    out = run_tepi("frobnicate", timeout=30)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
