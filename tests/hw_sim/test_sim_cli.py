"""The ``tepi-sim`` command as a real subprocess: output contract, manifest, control
socket, signals and exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tepi_sim.protocol import mbap_frame

HW_SIM = Path(__file__).resolve().parents[2] / "hw-sim"
LINE = re.compile(
    r"^(?P<id>\S+) +(?P<transport>rtu|tcp|uart|camera)  (?:unit|protocol|auth)=(?P<unit>\w+)  "
    r"(?P<endpoint>\S+)$"
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HW_SIM)}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tepi_sim.cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Running:
    """A started ``tepi-sim`` whose stdout has been read up to the ``ready`` line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tepi_sim.cli", *args],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        self.stderr = ""
        for line in self.proc.stdout:  # blocks on the next line: waits for the event itself
            if line.strip() == "ready":
                break
            self.lines.append(line.rstrip("\n"))
        else:
            raise AssertionError(f"no ready line; stderr: {self.proc.communicate()[1]}")

    def endpoints(self) -> dict[str, dict[str, str]]:
        parsed = {}
        for line in self.lines:
            match = LINE.match(line)
            assert match, f"unexpected output line {line!r}"
            parsed[match["id"]] = match.groupdict()
        return parsed

    def terminate(self) -> int:
        """SIGTERM, then collect the rest of the output (closing the pipes)."""
        self.proc.send_signal(signal.SIGTERM)
        _, self.stderr = self.proc.communicate(timeout=10)
        return self.proc.returncode


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.communicate(timeout=10)


def test_demo_prints_endpoints_writes_manifest_and_stops_cleanly(
    tmp_path: Path, running: list[Running]
) -> None:
    manifest = tmp_path / "manifest.json"
    control = tmp_path / "control.sock"
    sim = Running("--demo", "--manifest", str(manifest), "--control", str(control))
    running.append(sim)
    printed = sim.endpoints()
    camera = printed.pop("cam-1")
    assert list(printed) == [
        "aq-station-1",
        "noise-meter-2",
        "river-level-3",
        "siren-1",
        "pm-sensor-4",
    ]
    assert (camera["transport"], camera["unit"]) == ("camera", "digest")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", camera["endpoint"])
    assert printed["pm-sensor-4"]["transport"] == "uart"
    assert Path(printed["pm-sensor-4"]["endpoint"]).exists()
    assert printed["aq-station-1"]["transport"] == "rtu"
    assert printed["aq-station-1"]["endpoint"] == printed["noise-meter-2"]["endpoint"]
    assert Path(printed["aq-station-1"]["endpoint"]).exists()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", printed["river-level-3"]["endpoint"])

    data = json.loads(manifest.read_text(encoding="utf-8"))
    assert data["devices"]["noise-meter-2"] == {
        "transport": "rtu",
        "unit": 2,
        "endpoint": printed["noise-meter-2"]["endpoint"],
    }
    assert {k: v["endpoint"] for k, v in data["devices"].items()} == {
        k: v["endpoint"] for k, v in printed.items()
    }
    cam = data["cameras"]["cam-1"]
    assert cam["url"] == camera["endpoint"]
    assert (cam["auth"], cam["username"], cam["password"]) == ("digest", "tepi", "demo-camera")
    # The standard library's own Digest client, a third implementation besides aiohttp's.
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, cam["url"], "tepi", "demo-camera")
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(passwords))
    with opener.open(cam["snapshot"], timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.read().startswith(b"\xff\xd8")

    with socket.socket(socket.AF_UNIX) as ctl:
        ctl.settimeout(10)
        ctl.connect(str(control))
        stream = ctl.makefile("rwb")
        stream.write(b'{"device": "river-level-3", "fault": "exception", "fault_code": 6}\n')
        stream.write(b'{"device": "nope", "fault": "none"}\n')
        stream.flush()
        assert json.loads(stream.readline()) == {"ok": True}
        answer = json.loads(stream.readline())
        assert answer["ok"] is False
        assert "no device 'nope'" in answer["error"]
        stream.write(b'{"query": "counters"}\n{"query": "nope"}\n')
        stream.flush()
        counters = json.loads(stream.readline())
        assert counters["ok"] is True
        assert set(counters["counters"]) == set(printed) - {"pm-sensor-4"}  # Modbus only
        assert all(isinstance(v, int) for c in counters["counters"].values() for v in c.values())
        assert any(counters["counters"].values()), "the demo devices have counter registers"
        assert json.loads(stream.readline())["ok"] is False
        stream.write(b'{"camera": "cam-1", "fault": "black"}\n{"query": "cameras"}\n')
        stream.flush()
        assert json.loads(stream.readline()) == {"ok": True}
        cameras = json.loads(stream.readline())["cameras"]
        assert cameras["cam-1"]["fault"] == "black"
        assert cameras["cam-1"]["url"] == camera["endpoint"]
        assert cameras["cam-1"]["counters"]["requests"] == {"/snapshot.jpg": 2}

    host, _, port = printed["river-level-3"]["endpoint"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(mbap_frame(1, 1, struct.pack(">BHH", 4, 101, 1)))
        assert conn.recv(100) == mbap_frame(1, 1, bytes.fromhex("84 06"))

    # The siren keeps what is written, and the write is recorded with its time.
    host, _, port = printed["siren-1"]["endpoint"].rpartition(":")
    before = time.time()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(mbap_frame(2, 1, struct.pack(">BHH", 5, 0, 0xFF00)))
        assert conn.recv(100) == mbap_frame(2, 1, struct.pack(">BHH", 5, 0, 0xFF00))
        conn.sendall(mbap_frame(3, 1, struct.pack(">BHH", 1, 0, 1)))
        assert conn.recv(100) == mbap_frame(3, 1, bytes.fromhex("01 01 01"))
    with socket.socket(socket.AF_UNIX) as ctl:
        ctl.settimeout(10)
        ctl.connect(str(control))
        stream = ctl.makefile("rwb")
        stream.write(b'{"query": "writes", "device": "siren-1"}\n')
        stream.flush()
        (write,) = json.loads(stream.readline())["writes"]["siren-1"]
        assert (write["table"], write["address"], write["value"]) == ("coil", 0, True)
        assert before <= write["t"] <= time.time()

    assert sim.terminate() == 0
    assert sim.stderr == ""
    assert not control.exists()


def test_config_file_and_fault_option(tmp_path: Path, running: list[Running]) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text(
        "devices:\n"
        "  - {id: gauge, transport: tcp, unit: 4, registers: [{address: 0, kind: counter}]}\n",
        encoding="utf-8",
    )
    sim = Running("--config", str(config), "--fault", "gauge=exception")
    running.append(sim)
    endpoint = sim.endpoints()["gauge"]
    assert endpoint["unit"] == "4"
    host, _, port = endpoint["endpoint"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(mbap_frame(1, 4, struct.pack(">BHH", 3, 0, 1)))
        assert conn.recv(100) == mbap_frame(1, 4, bytes.fromhex("83 04"))
    assert sim.terminate() == 0


def test_invalid_config_exits_2_with_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "devices:\n"
        "  - id: a\n"
        "    transport: rtu\n"
        "    unit: 1\n"
        "    registers: [{address: 0, kind: pm25, type: flaot32}]\n",
        encoding="utf-8",
    )
    result = _run("--config", str(config))
    assert result.returncode == 2
    assert "devices[0].registers[0].type: unknown type 'flaot32'" in result.stderr
    assert "did you mean 'float32'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--demo", "--fault", "nobody=no_reply"], "no device 'nobody'"),
        (["--demo", "--fault", "aq-station-1=sleepy"], "unknown fault mode 'sleepy'"),
        (["--demo", "--fault", "aq-station-1"], "expected DEVICE=MODE"),
        (["--config", "/nonexistent/sim.yaml"], "cannot read config file"),
        ([], "one of the arguments --config --demo is required"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_options() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in ("--config", "--demo", "--manifest", "--fault", "--control", "--debug"):
        assert option in result.stdout
