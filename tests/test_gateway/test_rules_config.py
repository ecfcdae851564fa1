"""The rules: section: the issue's shape validates, every error has file:line, its key path and
a hint, and fuzzed rule sections give only clean ConfigErrors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tepi.core.errors import ConfigError
from tepi.gateway.configload import device_metrics, parse_config
from tepi.gateway.rules import MAX_DEPTH

DOCS = Path(__file__).resolve().parents[2] / "docs"

HEAD = """\
gateway: {id: gw}
uplink: {url: "mqtt://127.0.0.1"}
devices:
  - id: river-level-3
    driver: modbus-tcp
    host: 192.0.2.10
    poll_interval: 5m
    registers:
      - {name: level, address: 100, table: input, type: int16, scale: 0.01, unit: m}
      - {name: mode, address: 101, enum: {0: 'off', 1: auto}}
  - id: siren-1
    driver: modbus-tcp
    host: 192.0.2.11
    registers:
      - {name: siren, address: 0, table: coil, writable: true}
      - {name: horn, address: 1, table: coil}
      - {name: gate, address: 2, writable: true, min: 0, max: 100}
  - {id: bridge-cam, driver: camera, url: "http://192.0.2.20/snap.jpg"}
  - {id: pm-5, driver: serial, protocol: pms5003, port: /dev/ttyUSB1,
     aggregates: {pm25_atm: [mean, max]}}
  - {id: fake, driver: synthetic, metrics: 3}
"""  # 21 lines: rules: is line 22

FLOOD = """\
rules:
  - id: flood-high
    device: river-level-3
    metric: level
    above: 2.5
    clear_below: 2.3
    for: 30s
    severity: critical
    description: River above the alarm level at the bridge
    labels: {site: bridge}
    actions:
      - write: {device: siren-1, metric: siren, value: true}
      - snapshot: {camera: bridge-cam}
      - poll_rate: {device: river-level-3, interval: 10s}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "tepi.yaml", check_files=False)
    return [str(i) for i in info.value.issues]


def one_issue(rules: str) -> str:
    got = issues(HEAD + rules)
    assert len(got) == 1, got
    return got[0]


def test_the_issue_shape_validates() -> None:
    cfg = parse_config(HEAD + FLOOD, check_files=False)
    (rule,) = cfg.rules
    assert rule.id == "flood-high"
    assert (rule.device, rule.metric, rule.above, rule.clear_below) == (
        "river-level-3",
        "level",
        2.5,
        2.3,
    )
    assert rule.for_ == 30.0
    assert rule.clear_for == 0.0
    assert rule.severity == "critical"
    assert rule.labels == {"site": "bridge"}
    assert rule.kind == "threshold"
    assert rule.min_interval == 10.0
    write, snap, poll = rule.actions
    assert write.write is not None
    assert write.write.value is True
    assert write.write.on_resolve is None
    assert snap.snapshot is not None
    assert snap.snapshot.camera == "bridge-cam"
    assert poll.poll_rate is not None
    assert poll.poll_rate.interval == 10.0
    assert [a.kind for a in rule.actions] == ["write", "snapshot", "poll_rate"]


def test_every_condition_type_validates() -> None:
    text = """\
rules:
  - {id: r1, device: river-level-3, metric: level, below: 0.2, clear_above: 0.3}
  - {id: r2, device: river-level-3, metric: level, rate: {above: 0.1, per: 1m, window: 10m}}
  - {id: r3, device: river-level-3, metric: level, rate: {below: -0.1, clear_above: 0}}
  - {id: r4, device: pm-5, metric: pm25_atm_max, stale: 15m, clear_for: 1m}
  - {id: r5, device: river-level-3, state: quarantined}
  - {id: r6, device: bridge-cam, state: degraded, reason: black, severity: info}
  - {id: r7, device: bridge-cam, metric: brightness, below: 10}
  - id: r8
    any:
      - {device: fake, metric: m2, above: 1}
      - all:
          - {device: siren-1, state: offline}
          - {device: bridge-cam, state: auth_failed}
    actions:
      - {write: {device: siren-1, metric: gate, value: 50, on_resolve: 0}, min_interval: 1m}
"""
    cfg = parse_config(HEAD + text, check_files=False)
    kinds = [r.kind for r in cfg.rules]
    assert kinds == ["threshold", "rate", "rate", "stale", "state", "state", "threshold", "any"]
    assert cfg.rules[7].depth() == 2
    assert [leaf.device for leaf in cfg.rules[7].leaves()] == ["fake", "siren-1", "bridge-cam"]
    assert cfg.rules[7].actions[0].min_interval == 60.0


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # shape (one rule alone)
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, above: 2.5, "
            "clear_below: 2.7}\n",
            "tepi.yaml:23: rules[0].clear_below: clear_below 2.7 is over the alarm level "
            "above: 2.5",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, below: 1,\n"
            "     clear_above: 0.5}\n",
            "tepi.yaml:24: rules[0].clear_above: clear_above 0.5 is under the alarm level",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, above: 1, clear_above: 2}\n",
            "rules[0].clear_above: clear_above goes with below",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, clear_below: 2}\n",
            "rules[0].clear_below: clear_below is the clear level of a threshold",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, above: 1, below: 0}\n",
            "rules[0].below: above and below together",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, above: 1, stale: 5m}\n",
            "rules[0].stale: above and stale in one condition",
        ),
        ("rules:\n  - {id: a, device: river-level-3}\n", "rules[0].device: no condition"),
        ("rules:\n  - {id: a, metric: level, above: 1}\n", "rules[0].device: above needs the"),
        ("rules:\n  - {id: a, device: river-level-3, above: 1}\n", "rules[0].metric: above needs"),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: level, state: failing}\n",
            "rules[0].metric: state is the device's, not a metric's: drop metric",
        ),
        (
            "rules:\n  - {id: a, device: bridge-cam, state: offline, reason: black}\n",
            "rules[0].reason: reason narrows state: degraded",
        ),
        (
            "rules:\n  - {id: a, device: bridge-cam, state: degradd}\n",
            "rules[0].state: 'degradd' is not allowed (hint: did you mean degraded?)",
        ),
        (
            "rules:\n  - {id: a, severity: critcal, device: bridge-cam, state: offline}\n",
            "rules[0].severity: 'critcal' is not allowed (hint: did you mean critical?)",
        ),
        (
            "rules:\n  - {id: a, fro: 30s, device: bridge-cam, state: offline}\n",
            "rules[0].fro: unknown key 'fro' (hint: did you mean for?)",
        ),
        (
            "rules:\n  - {id: a, for: soon, device: bridge-cam, state: offline}\n",
            "rules[0].for: ",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m0, rate: {per: 1m}}\n",
            "rules[0].rate.above: a rate needs above (rising) or below (falling)",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m0, rate: {above: 1, windw: 5m}}\n",
            "rules[0].rate.windw: unknown key 'windw' (hint: did you mean window?)",
        ),
        (
            "rules:\n  - id: a\n    device: fake\n    all: [{device: fake, metric: m0, above: 1}]"
            "\n",
            "tepi.yaml:24: rules[0].device: device next to all",
        ),
        (
            "rules:\n  - id: a\n    any:\n      - {device: fake, metric: m0, abov: 1}\n",
            "tepi.yaml:25: rules[0].any[0].abov: unknown key 'abov' (hint: did you mean above?)",
        ),
        (
            "rules:\n  - id: a\n    any:\n      - {device: fake, metric: m0, above: 1, for: 1m}\n",
            "rules[0].any[0].for: unknown key 'for'",  # a hold is the rule's, not a leaf's
        ),
        (
            "rules:\n  - id: a\n    all: []\n",
            "rules[0].all: ",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m0, above: 1, labels: {1st: x}}\n",
            "rules[0].labels: label name '1st'",
        ),
        (
            "rules:\n  - {id: 'a b', device: fake, metric: m0, above: 1}\n",
            "rules[0].id: ",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m0, above: .nan}\n",
            "rules[0].above: ",
        ),
        # actions: shape
        (
            "rules:\n  - id: a\n    device: fake\n    metric: m0\n    above: 1\n    actions:\n"
            "      - {snapshot: {camera: bridge-cam}, poll_rate: {device: fake, interval: 1s}}\n",
            "tepi.yaml:28: rules[0].actions[0].poll_rate: snapshot and poll_rate in one item",
        ),
        (
            "rules:\n  - id: a\n    device: fake\n    metric: m0\n    above: 1\n    actions:\n"
            "      - {min_interval: 1m}\n",
            "rules[0].actions[0].write: no action",
        ),
        (
            "rules:\n  - id: a\n    device: fake\n    metric: m0\n    above: 1\n    actions:\n"
            "      - {siren: {device: siren-1}}\n",
            "rules[0].actions[0].siren: unknown key 'siren'",
        ),
        (
            "rules:\n  - id: a\n    device: fake\n    metric: m0\n    above: 1\n    actions:\n"
            "      - write: {device: siren-1, metric: siren}\n",
            "rules[0].actions[0].write.value: required key is missing",
        ),
        # references (the second pass)
        (
            "rules:\n  - {id: a, device: river-levl-3, metric: level, above: 1}\n",
            "tepi.yaml:23: rules[0].device: no device 'river-levl-3' in devices "
            "(hint: did you mean river-level-3?)",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: levle, above: 1}\n",
            "rules[0].metric: river-level-3 has no metric 'levle' (hint: did you mean level?)",
        ),
        (
            "rules:\n  - {id: a, device: pm-5, metric: pm25_atm_mx, above: 1}\n",
            "rules[0].metric: pm-5 has no metric 'pm25_atm_mx' (hint: did you mean pm25_atm_max?)",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m3, above: 1}\n",
            "rules[0].metric: fake has no metric 'm3'",
        ),
        (
            "rules:\n  - {id: a, device: bridge-cam, metric: fps, above: 1}\n",
            "rules[0].metric: bridge-cam has no metric 'fps'",  # a snapshot camera has none
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, metric: mode, above: 1}\n",
            "rules[0].metric: river-level-3.mode is text (enum): threshold needs a number",
        ),
        (
            "rules:\n  - {id: a, device: river-level-3, state: degraded}\n",
            "rules[0].state: degraded is a camera's state; river-level-3 is driver: modbus-tcp",
        ),
        (
            "rules:\n  - id: a\n    any:\n      - {device: fake, metric: m0, above: 1}\n"
            "      - all: [{device: nope, state: failing}]\n",
            "tepi.yaml:26: rules[0].any[1].all[0].device: no device 'nope' in devices",
        ),
        (
            "rules:\n  - {id: a, device: fake, metric: m0, above: 1}\n"
            "  - {id: a, device: fake, metric: m1, above: 1}\n",
            "tepi.yaml:24: rules[1].id: rule id 'a' is already used by rules[0]",
        ),
        # actions: references
        (
            FLOOD.replace("device: siren-1", "device: siren-2"),
            "tepi.yaml:33: rules[0].actions[0].write.device: no device 'siren-2' in devices "
            "(hint: did you mean siren-1?)",
        ),
        (
            FLOOD.replace("device: siren-1", "device: bridge-cam"),
            "rules[0].actions[0].write.device: bridge-cam is driver: camera; write sets a Modbus",
        ),
        (
            FLOOD.replace("metric: siren,", "metric: sirne,"),
            "rules[0].actions[0].write.metric: siren-1 has no register 'sirne' "
            "(hint: did you mean siren?)",
        ),
        (
            FLOOD.replace("metric: siren,", "metric: horn,"),
            "rules[0].actions[0].write.metric: siren-1.horn is not writable",
        ),
        (
            FLOOD.replace("value: true", "value: 7"),
            "rules[0].actions[0].write.value: 7 cannot be written to siren-1.siren "
            "(hint: siren is a bool: write true or false)",
        ),
        (
            FLOOD.replace("metric: siren, value: true", "metric: gate, value: 10, on_resolve: 101"),
            "rules[0].actions[0].write.on_resolve: 101 cannot be written to siren-1.gate "
            "(hint: gate takes 0.0 to 100.0, not 101)",
        ),
        (
            FLOOD.replace("camera: bridge-cam", "camera: siren-1"),
            "tepi.yaml:34: rules[0].actions[1].snapshot.camera: siren-1 is driver: modbus-tcp, "
            "not a camera",
        ),
        (
            FLOOD.replace("camera: bridge-cam", "camera: bridge-cm"),
            "rules[0].actions[1].snapshot.camera: no device 'bridge-cm' in devices "
            "(hint: did you mean bridge-cam?)",
        ),
        (
            FLOOD.replace("interval: 10s", "interval: 5m"),
            "tepi.yaml:35: rules[0].actions[2].poll_rate.interval: 300s is not faster than "
            "river-level-3's poll_interval 300s",
        ),
        (
            FLOOD.replace("{device: river-level-3, interval", "{device: gauge, interval"),
            "rules[0].actions[2].poll_rate.device: no device 'gauge' in devices",
        ),
    ],
)
def test_each_rule_error_is_clear(rules: str, expected: str) -> None:
    got = issues(HEAD + rules)
    assert any(expected in i for i in got), got
    assert all(re.match(r"tepi\.yaml:\d+: rules\[\d+\]", i) for i in got), got


def test_every_reference_error_at_once() -> None:
    text = (
        FLOOD.replace("metric: level", "metric: levle")
        .replace("metric: siren,", "metric: horn,")
        .replace("camera: bridge-cam", "camera: siren-1")
        .replace("interval: 10s", "interval: 10m")
    )
    got = issues(HEAD + text)
    assert [i.split(":")[1] for i in got] == ["25", "33", "34", "35"], got


def test_nesting_is_bounded() -> None:
    leaf = "{device: fake, metric: m0, above: 1}"
    cond = leaf
    for _ in range(MAX_DEPTH - 1):
        cond = f"{{all: [{cond}]}}"
    assert parse_config(HEAD + f"rules:\n  - {{id: a, any: [{cond}]}}\n", check_files=False)
    got = one_issue(f"rules:\n  - {{id: a, any: [{{any: [{cond}]}}]}}\n")
    assert f"all/any nest more than {MAX_DEPTH} deep" in got


def test_a_driver_whose_metrics_are_unknown_accepts_any() -> None:
    assert device_metrics(object()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "has", "lacks"),
    [
        ("http://c/snap.jpg", ["image_bytes", "clock_drift_s"], ["fps"]),
        ("rtsp://c/stream", ["fps"], ["image_bytes", "clock_drift_s"]),
    ],
)
def test_camera_metrics_follow_the_source(source: str, has: list[str], lacks: list[str]) -> None:
    cfg = parse_config(
        HEAD.replace("http://192.0.2.20/snap.jpg", source), "t.yaml", check_files=False
    )
    names = device_metrics(cfg.devices[2])
    assert names is not None
    assert "online" in names
    assert "black" in names
    assert all(n in names for n in has)
    assert not any(n in names for n in lacks)


@pytest.mark.parametrize("name", ["flood", "air quality"])
def test_the_rules_doc_examples_validate(name: str) -> None:
    doc = (DOCS / "rules.md").read_text()
    section = doc.split(f"## Example: {name}", 1)[1]
    block = re.search(r"```yaml\n(devices:.*?)```", section, re.S)
    assert block is not None
    head = 'gateway: {id: gw}\nuplink: {url: "mqtt://127.0.0.1"}\n'
    cfg = parse_config(head + block.group(1), "docs/rules.md", check_files=False)
    assert cfg.rules
    assert all(r.description for r in cfg.rules)


# ---- fuzz: random rule sections give a config or clean errors, never another exception ----

KEYS = [
    "id", "device", "metric", "above", "below", "clear_above", "clear_below", "rate", "stale",
    "state", "reason", "all", "any", "for", "clear_for", "severity", "description", "labels",
    "actions", "min_interval", "write", "snapshot", "poll_rate", "camera", "value",
    "on_resolve", "interval", "per", "window",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        [
            "river-level-3", "siren-1", "bridge-cam", "pm-5", "fake", "level", "siren", "gate",
            "m0", "pm25_atm", "30s", "10m", "1e999", "failing", "degraded", "black", "critical",
        ]
    ),
)  # fmt: skip
TREES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), kids, max_size=5),
    ),
    max_leaves=30,
)


LABEL = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


def pick(ok: bool, good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``good``; with ``ok`` False, one of ``bad`` as likely as not."""
    return st.sampled_from(good) if ok else st.one_of(st.sampled_from(good), st.sampled_from(bad))


@st.composite
def conditions(draw: st.DrawFn, ok: bool, depth: int = 0) -> dict[str, Any]:
    """A condition of the right shape; with ``ok`` False, often wrong in one way or another
    (values, nesting, keys). Devices and metrics are mixed up either way (the second pass)."""
    if depth < MAX_DEPTH + (0 if ok else 1) and draw(st.integers(0, 3)) == 0:
        kids = draw(st.lists(conditions(ok, depth + 1), min_size=1 if ok else 0, max_size=3))
        return {draw(st.sampled_from(["all", "any"])): kids}
    cond: dict[str, Any] = {
        "device": draw(st.sampled_from(["river-level-3", "bridge-cam", "pm-5", "fake", "x"]))
    }
    kind = draw(st.sampled_from(["above", "below", "rate", "stale", "state"]))
    if kind in ("above", "below"):
        cond["metric"] = draw(st.sampled_from(["level", "mode", "m0", "pm25_atm", "brightness"]))
        level = draw(st.floats(-5, 5))
        cond[kind] = level
        if draw(st.booleans()):
            clear = "clear_below" if kind == "above" else "clear_above"
            if not ok:
                clear = draw(st.sampled_from(["clear_above", "clear_below"]))
            gap = draw(st.floats(0, 2) if ok else st.floats(-2, 2))
            cond[clear] = level - gap if clear == "clear_below" else level + gap
    elif kind == "rate":
        cond["metric"] = "level"
        rate = {draw(st.sampled_from(["above", "below"])): draw(st.floats(-1, 1))}
        for key, good, bad in (("per", ["1m", 60], ["0s"]), ("window", ["10m", "1s"], [-1])):
            if draw(st.booleans()):
                rate[key] = draw(pick(ok, good, bad))
        if not ok and draw(st.booleans()):
            rate = draw(st.fixed_dictionaries({}, optional={"above": SCALARS, "below": SCALARS}))
        cond["rate"] = rate
    elif kind == "stale":
        cond["metric"] = draw(st.sampled_from(["level", "online", "m1"]))
        cond["stale"] = draw(pick(ok, ["15m", "1h", 5], ["0s", "soon"]))
    else:
        state = draw(st.sampled_from(["failing", "offline", "degraded", "auth_failed"]))
        cond["state"] = state
        if (state == "degraded" or not ok) and draw(st.booleans()):
            cond["reason"] = draw(pick(ok, ["black", "frozen"], ["nope"]))
    if not ok and draw(st.integers(0, 3)) == 0:
        cond[draw(st.sampled_from(KEYS))] = draw(TREES)
    return cond


@st.composite
def actions(draw: st.DrawFn, ok: bool) -> Any:
    """An action; with ``ok`` False, now and then two in one item, or any YAML tree."""
    kind = draw(st.sampled_from(["write", "snapshot", "poll_rate"]))
    action: dict[str, Any]
    if kind == "write":
        write = {
            "device": draw(st.sampled_from(["siren-1", "river-level-3", "bridge-cam", "nope"])),
            "metric": draw(st.sampled_from(["siren", "horn", "gate", "level"])),
            "value": draw(st.one_of(st.booleans(), st.integers(-5, 200), st.floats())),
        }
        if draw(st.booleans()):
            write["on_resolve"] = draw(st.one_of(st.booleans(), st.integers(-5, 200)))
        action = {"write": write}
    elif kind == "snapshot":
        action = {"snapshot": {"camera": draw(st.sampled_from(["bridge-cam", "siren-1"]))}}
    else:
        action = {
            "poll_rate": {
                "device": draw(st.sampled_from(["river-level-3", "fake", "nope"])),
                "interval": draw(pick(ok, ["10s", "1h"], [0, "x"])),
            }
        }
    if draw(st.booleans()):
        action["min_interval"] = draw(pick(ok, ["1m", 0], ["never", -1]))
    if not ok and draw(st.booleans()):
        return draw(st.one_of(TREES, actions(ok=True).map(lambda other: {**action, **other})))
    return action


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    """A rule: half of them sound in shape and values (their references may still be wrong,
    for the second pass), half with mistakes anywhere."""
    ok = draw(st.booleans())
    rule: dict[str, Any] = {"id": draw(pick(ok, ["r1", "r2", "r3", "r4"], ["bad id", ""]))}
    rule.update(draw(conditions(ok)))
    for key, good, bad in (
        ("for", ["30s", "1h", "0s", 2], [-1, "x", None]),
        ("clear_for", ["0s", "5m"], ["-5m"]),
        ("severity", ["info", "critical", "warning"], ["fatal", 3]),
        ("min_interval", ["1m", 0, "5s"], ["never"]),
        ("description", ["River above the alarm level", ""], [None, "x" * 2000]),
    ):
        if draw(st.booleans()):
            rule[key] = draw(pick(ok, good, bad))
    if draw(st.booleans()):
        labels = st.dictionaries(LABEL, st.text(max_size=5), max_size=3)
        rule["labels"] = draw(labels if ok else st.one_of(labels, TREES))
    if draw(st.booleans()):
        rule["actions"] = draw(st.lists(actions(ok), max_size=3))
    return rule


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(section=st.one_of(*[st.lists(rules(), max_size=3)] * 3, TREES))
def test_fuzzed_rule_sections_give_clean_errors(section: Any) -> None:
    base = yaml.safe_load(HEAD)
    text = yaml.safe_dump({**base, "rules": section}, sort_keys=False, allow_unicode=True)
    last = len(text.splitlines()) + 1
    try:
        cfg = parse_config(text, "f.yaml", check_files=False)
    except ConfigError as err:  # the only exception allowed out
        event("refused")
        assert err.issues  # noqa: PT017
        for issue in err.issues:
            assert issue.file == "f.yaml"
            assert issue.line is not None, issue
            assert 1 <= issue.line <= last, issue
            assert str(issue).startswith(f"f.yaml:{issue.line}: "), issue
            if any(w in issue.message for w in ("no device", "has no", "not writable", "driver:")):
                event("refused by a reference check")
    else:
        event("valid")
        assert len(cfg.rules) == len(section or [])
