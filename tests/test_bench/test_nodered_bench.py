"""bench/nodered.py builds the Node-RED flow of a workload, and its decode gives the values
tepi's register map means. No figure is asserted; Node-RED itself is not one of tepi's
dependencies, so its run is only checked where it is installed."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from typing import Any

import pytest
import yaml
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import nodered
from suite import WORKLOADS, expand, points

pytestmark = pytest.mark.timeout(120)


def _workload(name: str) -> list[dict[str, Any]]:
    return list(expand(yaml.safe_load((WORKLOADS / f"{name}.yaml").read_text())["devices"]))


def test_the_flow_reads_every_unit_behind_one_client() -> None:
    devices = _workload("modbus-tcp-50")
    endpoints = {d["id"]: {"endpoint": "127.0.0.1:15020"} for d in devices}
    nodes = nodered.flows(devices, endpoints, 1883)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        by_type.setdefault(n["type"], []).append(n)
    [client] = by_type["modbus-client"]
    assert (client["tcpHost"], client["tcpPort"]) == ("127.0.0.1", "15020")
    assert client["parallelUnitIdsAllowed"] is True  # Node-RED's default: pipelined
    reads = by_type["modbus-read"]
    assert sorted(int(r["unitid"]) for r in reads) == list(range(1, 51))
    # 20 values in 28 words, every 100 ms, each read decoded and published with QoS 1.
    assert {(r["quantity"], r["rate"], r["rateUnit"]) for r in reads} == {("28", "100", "ms")}
    [out] = by_type["mqtt out"]
    assert out["qos"] == "1"
    decoders = {n["id"]: n for n in by_type["function"]}
    for r in reads:
        [decode] = r["wires"][0]
        assert decoders[decode]["wires"] == [[out["id"]]]
    plans = {e["name"]: json.loads(e["value"]) for e in nodes[0]["env"]}
    assert len(plans[f"PLAN_{devices[0]['id']}"]) == len(points(devices[0])) == 20
    # The raw flow publishes the words as read.
    raw = nodered.flows(devices, endpoints, 1883, raw=True)
    assert not [n for n in raw if n["type"] == "function"]
    assert {tuple(n["wires"][0]) for n in raw if n["type"] == "modbus-read"} == {(out["id"],)}


@pytest.mark.skipif(shutil.which("node") is None, reason="no node: the decode runs in Node-RED's")
def test_the_decode_gives_the_values_tepi_means() -> None:
    plan = [
        ["a", "uint16", 0, "big", 0.1],
        ["b", "int16", 2, "big", 0.01],
        ["c", "float32", 4, "big", 1],
        ["d", "float32", 8, "little", 1],
        ["e", "uint32", 12, "big", 1],
        ["f", "int32", 16, "big", 0.001],
        ["g", "uint32", 20, "little", 1],
    ]

    def little(word_pair: bytes) -> bytes:  # the low word first
        return word_pair[2:] + word_pair[:2]

    data = (
        struct.pack(">H", 238)
        + struct.pack(">h", -1234)
        + struct.pack(">f", 1.5)
        + little(struct.pack(">f", 67.25))
        + struct.pack(">I", 70000)
        + struct.pack(">i", -54755)
        + little(struct.pack(">I", 0x12345678))
    )
    script = (
        f"const buffer = Buffer.from('{data.hex()}', 'hex');\n"
        "const msg = {topic: 'dev', responseBuffer: {buffer: buffer}};\n"
        f"const env = {{get: () => {json.dumps(plan)}}};\n"
        f"const out = (function (msg) {{ {nodered.DECODE} }})(msg);\n"
        "console.log(JSON.stringify({topic: out.topic, payload: JSON.parse(out.payload)}));\n"
    )
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(done.stdout)
    assert got["topic"] == f"{nodered.TOPIC}/dev"
    values = got["payload"]["values"]
    assert values == pytest.approx(
        {"a": 23.8, "b": -12.34, "c": 1.5, "d": 67.25, "e": 70000, "f": -54.755, "g": 0x12345678}
    )
    assert got["payload"]["device"] == "dev"


@pytest.mark.skipif(
    not (nodered.NODE_RED / "node_modules" / ".bin" / "node-red").exists(),
    reason="Node-RED is not installed (bench/nodered.py's docstring says how)",
)
def test_node_red_delivers_the_workload() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "nodered.py"),
            "modbus-tcp-50",
            *("--seconds", "1"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [res] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert res["agent"] == "node-red"
    assert res["polls_per_s"] > 0
    assert res["values_per_s"] == pytest.approx(20 * res["polls_per_s"], rel=0.05)
