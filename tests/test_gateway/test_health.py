"""The typed health model (tepi.gateway.health) against its three other places: the JSON
Schema's ``$defs/health`` (both ways, with types), the MQTT payload it renders (valid, the
fields and values as given), the Prometheus text it renders (parsed back by
prometheus-client: names, kinds, labels, units), and the metrics table of
docs/operations.md."""

from __future__ import annotations

import re
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import BaseModel
from rig import SCHEMA, metrics_table, validator

from tepi.gateway.health import (
    EXPORTED,
    BufferHealth,
    ClockHealth,
    ConfigHealth,
    DeviceHealth,
    Health,
    ProcessHealth,
    Prom,
    UplinkHealth,
    prometheus,
)
from tepi.gateway.poller import DeviceStats

pytestmark = pytest.mark.timeout(30)

DOCS = Path(__file__).resolve().parents[2] / "docs"
DEFS: dict[str, Any] = SCHEMA["$defs"]


MODBUS: dict[str, object] = {
    "requests": 11,
    "timeouts": 2,
    "bad_frames": 0,
    "crc_errors": 0,
    "exceptions": 0,
    "retries": 0,
    "splits": 0,
    "latency_ms_avg": 38.2,
    "latency_ms_max": 61.0,
}


def sample_health(**devices: DeviceHealth) -> Health:
    st = DeviceStats(state="failing", polls=9, readings=20, bad_readings=3)
    st.errors.update({"timeout": 2, "crc": 1})
    st.last_poll_s, st.last_error, st.consecutive_failures = 0.25, "timeout: no answer", 2
    st.protocol = lambda: dict(MODBUS)
    return Health(
        gateway="gw-1",
        boot="b00t",
        version="0.1.0",
        ts=1795430462.9,
        uptime_s=3600.2,
        clock_synced=True,
        clock=ClockHealth(
            synced=True, source="system", gps_device=None, gps_fix_age_s=None, gps_offset_s=0.25
        ),
        buffer=BufferHealth(
            readings=12,
            bytes=28672,
            max_bytes=268435456,
            oldest_age_s=None,
            pending=3,
            dropped={"expired": 4},
            quarantined_files=1,
            write_errors=0,
            acked_in_memory=35990,
            written=10,
            commits=2,
            file_error="disk full",
        ),
        uplink=UplinkHealth(
            connected=True,
            connects=1,
            messages=1800,
            readings_acked=36000,
            publish_rate=10.0,
            last_ack_ts=1795430462.4,
            errors={"link": 2},
            broker="mqtt://ioc.example.org:1883",
        ),
        devices={"aq-1": DeviceHealth.of(st), **devices},
        config=ConfigHealth(
            reloads=1,
            last_reload_ts=None,
            last_reload_ok=False,
            errors=["x"],
            restart_needed=[],
            version="v3",
            trial=True,
        ),
        process=ProcessHealth(
            cpu_percent=0.4, cpu_seconds=14.2, rss_bytes=41234432, disk_free_bytes=None
        ),
    )


# ---- the schema and the model, both ways ----------------------------------------------

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def model_types(tp: Any) -> set[str]:
    """The JSON types a field's annotation can produce (a sub-model: "object")."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return model_types(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return {t for a in typing.get_args(tp) for t in model_types(a)}
    if origin is typing.Literal:
        return {_json_type(v) for v in typing.get_args(tp)}
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return {"object"}
    if origin is list:
        return {"array"}
    if tp is type(None):
        return {"null"}
    return {_JSON_TYPES[tp]}


def _json_type(v: Any) -> str:
    return "null" if v is None else _JSON_TYPES[type(v)]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**DEFS[node["$ref"].split("/")[-1]], **extra}
    return node


def schema_types(node: dict[str, Any]) -> set[str]:
    node = resolve(node)
    if "oneOf" in node:
        return {t for alt in node["oneOf"] for t in schema_types(alt)}
    if "const" in node:
        return {_json_type(node["const"])}
    if "enum" in node:
        return {_json_type(v) for v in node["enum"]}
    t = node["type"]
    return set(t) if isinstance(t, list) else {t}


def compare(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    node = resolve(node)
    props: dict[str, Any] = node["properties"]
    out = [f"{path}{n}: in the schema, not the model" for n in props if n not in model.model_fields]
    out += [
        f"{path}{n}: in the model, not the schema" for n in model.model_fields if n not in props
    ]
    out += [
        f"{path}{n}: not required in the schema"
        for n in model.model_fields
        if n not in node.get("required", ())
    ]
    if node.get("additionalProperties") is not False:
        out.append(f"{path}: the schema allows other properties")
    for name, info in model.model_fields.items():
        if name not in props:
            continue
        have, want = model_types(info.annotation), schema_types(props[name])
        # An int field fits a "number"; otherwise the sets must be equal.
        if have != want and (have - {"integer"}) | {"number"} != want:
            out.append(f"{path}{name}: model {sorted(have)}, schema {sorted(want)}")
        sub = _sub(info.annotation)
        if sub is not None:
            sub_node = resolve(props[name])
            if typing.get_origin(_strip(info.annotation)) is dict:
                sub_node = sub_node["additionalProperties"]
            out += compare(sub, sub_node, f"{path}{name}.")
    return out


def _strip(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _sub(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    if typing.get_origin(tp) is dict:
        tp = typing.get_args(tp)[1]
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def test_schema_and_model_agree_both_ways() -> None:
    assert compare(Health, DEFS["health"], "") == []


def test_the_schema_check_sees_drift() -> None:
    """The comparison above fails on a field added to one side only, or retyped."""
    node = {**DEFS["health"], "properties": {**DEFS["health"]["properties"]}}
    node["properties"]["extra"] = {"type": "string"}
    node["properties"]["uptime_s"] = {"type": "string"}
    del node["properties"]["boot"]
    found = compare(Health, node, "")
    assert "extra: in the schema, not the model" in found
    assert "boot: in the model, not the schema" in found
    assert "uptime_s: model ['number'], schema ['string']" in found


# ---- model -> MQTT payload -------------------------------------------------------------


def test_payload_is_the_contract() -> None:
    h = sample_health()
    p = h.payload()
    validator("health").validate(p)
    assert list(p) == list(DEFS["health"]["required"])  # every field, in the schema's order
    assert p["v"] == 1
    assert p["buffer"]["dropped"] == {"expired": 4}  # absent reasons stay absent
    assert p["buffer"]["file_error"] == "disk full"
    dev = p["devices"]["aq-1"]
    assert dev["state"] == "failing"
    assert dev["errors"] == {"timeout": 2, "crc": 1}
    assert type(dev["errors"]) is dict  # a Counter in DeviceStats, a plain dict here
    assert dev["last_poll_ms"] == 250.0
    assert dev["probe_interval_s"] is None
    assert dev["protocol"] == MODBUS
    assert p["process"]["disk_free_bytes"] is None


def test_device_health_reads_the_stats_now() -> None:
    st = DeviceStats()
    assert DeviceHealth.of(st).payload()["last_poll_ms"] is None
    st.errors["timeout"] += 1
    st.next_probe_s = 10.0
    d = DeviceHealth.of(st).payload()
    assert d["errors"] == {"timeout": 1}
    assert d["probe_interval_s"] == 10.0
    st.errors["timeout"] += 1
    assert d["errors"] == {"timeout": 1}  # a snapshot, not a view of the live counters


def test_a_wrong_value_is_refused() -> None:
    with pytest.raises(ValueError, match="state"):
        DeviceHealth.of(DeviceStats(state="sleeping"))


# ---- model -> Prometheus ---------------------------------------------------------------


def exposition(h: Health) -> str:
    class One(Collector):
        def collect(self) -> Any:
            yield from prometheus(h)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_prometheus_names_kinds_labels_and_units() -> None:
    other = DeviceHealth.of(DeviceStats(state="ok", polls=5))
    text = exposition(sample_health(**{"pm-2": other}))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    got = samples(text)
    # counters: the family without _total, the samples with it (and nothing twice)
    assert families["tepi_device_readings"].type == "counter"
    assert got[("tepi_device_readings_total", (("device", "aq-1"),))] == 20
    assert got[("tepi_device_polls_total", (("device", "pm-2"),))] == 5
    assert not any(name.endswith("_total_total") for name, _ in got)
    assert families["tepi_buffer_readings"].type == "gauge"
    assert got[("tepi_buffer_readings", ())] == 12
    assert got[("tepi_up", ())] == 1
    # a dict: one sample per key; the fixed reasons always there
    assert got[("tepi_buffer_dropped_total", (("reason", "expired"),))] == 4
    assert got[("tepi_buffer_dropped_total", (("reason", "overflow"),))] == 0
    assert got[("tepi_buffer_dropped_total", (("reason", "buffer_full"),))] == 0
    assert got[("tepi_uplink_errors_total", (("kind", "link"),))] == 2
    assert got[("tepi_device_errors_total", (("device", "aq-1"), ("reason", "crc")))] == 1
    # an enum: one-hot
    assert got[("tepi_device_state", (("device", "aq-1"), ("state", "failing")))] == 1
    assert got[("tepi_device_state", (("device", "aq-1"), ("state", "ok")))] == 0
    assert got[("tepi_device_state", (("device", "pm-2"), ("state", "ok")))] == 1
    # base units and derived values
    assert got[("tepi_device_last_poll_duration_seconds", (("device", "aq-1"),))] == 0.25
    assert got[("tepi_buffer_file_ok", ())] == 0
    assert got[("tepi_config_last_reload_ok", ())] == 0
    assert got[("tepi_clock_gps_offset_seconds", ())] == 0.25
    assert got[("tepi_process_cpu_seconds_total", ())] == 14.2
    # None: the family is declared, with no sample
    assert families["tepi_buffer_oldest_age_seconds"].samples == []
    assert families["tepi_disk_free_bytes"].samples == []
    assert ("tepi_device_probe_interval_seconds", (("device", "aq-1"),)) not in got


def test_every_model_metric_is_exposed_once_and_follows_conventions() -> None:
    names = [e.prom.name for e in EXPORTED]
    assert len(names) == len(set(names))
    text = exposition(sample_health())
    declared = {f.name for f in text_string_to_metric_families(text)}
    assert declared == {n.removesuffix("_total") for n in names}
    for e in EXPORTED:
        assert re.fullmatch(r"tepi_[a-z_]+", e.prom.name), e.prom.name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)(_|$)", e.prom.name), e.prom.name
        assert e.help.endswith("."), e.prom.name
    with pytest.raises(ValueError, match="_total"):
        Prom("tepi_x", "counter")
    with pytest.raises(ValueError, match="_total"):
        Prom("tepi_x_total", "gauge")


# ---- the docs --------------------------------------------------------------------------


def test_every_metric_is_in_the_docs_table() -> None:
    table = metrics_table()
    want = {
        e.prom.name: (e.prom.kind, ", ".join(f"`{label}`" for label in e.labels)) for e in EXPORTED
    }
    assert table == want
    # and what /metrics actually shows, sample by sample
    shown = {name for name, _ in samples(exposition(sample_health()))}
    assert shown <= set(table), shown - set(table)


def test_every_health_field_is_in_payload_md() -> None:
    doc = (DOCS / "payload.md").read_text().split("## Health", 1)[1].split("\n## ", 1)[0]
    counts = Counter(re.findall(r"`([a-z_.{}]+)`", doc))
    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            sub = _sub(info.annotation)
            if sub is None and counts[path] == 0 and counts[name] == 0:
                missing.append(path)
            if sub is not None:
                each = typing.get_origin(_strip(info.annotation)) is dict
                walk(sub, f"{path}.{{id}}." if each else f"{path}.")

    walk(Health, "")
    assert missing == []
