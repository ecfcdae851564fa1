"""Config validation: the example from the issue, every error at once with file:line, hints."""

from __future__ import annotations

import copy
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_tepi
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from tepi.core.errors import ConfigError
from tepi.core.units import parse_duration, parse_size
from tepi.drivers.modbus import ModbusRtuConfig, ModbusTcpConfig
from tepi.drivers.registry import REGISTRY
from tepi.gateway.config import Config
from tepi.gateway.configload import load_config, parse_config
from tepi.gateway.localbroker import free_port

EXAMPLE = (Path(__file__).parent / "example.yaml").read_text()


def issues_of(text: str, **kw: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "tepi.yaml", **kw)
    return [str(i) for i in info.value.issues]


def test_issue_example_validates() -> None:
    cfg = parse_config(EXAMPLE, check_files=False)
    assert cfg.gateway.id == "dng-hoavang-aq-01"
    assert cfg.uplink.batch.max_bytes == 64 * 1024
    assert cfg.uplink.batch.max_wait == 2.0
    assert cfg.buffer.max_bytes == 256 * 1024 * 1024
    assert cfg.buffer.commit_interval == pytest.approx(0.2)
    rtu, tcp = cfg.devices
    assert isinstance(rtu, ModbusRtuConfig)
    assert isinstance(tcp, ModbusTcpConfig)
    assert rtu.registers[1].word_order == "little"
    assert tcp.registers[0].table == "input"


def test_missing_secret_and_certificate_files_are_reported() -> None:
    got = issues_of(EXAMPLE)
    assert any(i.startswith("tepi.yaml:8: uplink.password_file:") for i in got)
    assert sum("uplink.tls." in i for i in got) == 3


def test_every_error_at_once_with_line_path_and_hint() -> None:
    text = (
        EXAMPLE.replace("type: float32", "type: flaot32")
        .replace("driver: modbus-tcp", "driver: modbus-tpc")
        .replace("topic_prefix:", "topic_prefx:")
        .replace("commit_interval: 200ms", "commit_interval: soon")
    )
    got = issues_of(text, check_files=False)
    assert len(got) == 4
    assert (
        "tepi.yaml:6: uplink.topic_prefx: unknown key 'topic_prefx' "
        "(hint: did you mean topic_prefix?)" in got
    )
    assert any(i.startswith("tepi.yaml:13: buffer.commit_interval:") for i in got)
    assert (
        "tepi.yaml:23: devices[0].registers[1].type: 'flaot32' is not allowed "
        "(hint: did you mean float32?)"
    ) in got
    assert (
        "tepi.yaml:25: devices[1].driver: unknown driver 'modbus-tpc' "
        "(hint: did you mean modbus-tcp?)" in got
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("url: mqtts://ioc.example.org:8883", "url: http://ioc.example.org"), "uplink.url: "),
        (("url: mqtts://ioc.example.org:8883", "url: mqtt://ioc.example.org"), "use mqtts://"),
        (
            ("    unit: 1\n    poll_interval: 10s", "    unit: 300\n    poll_interval: 10s"),
            "devices[0].unit",
        ),
        (("address: 100", "address: 70000"), "devices[1].registers[0].address"),
        (("id: river-level-3", "id: aq-station-1"), "already used by devices[0]"),
        (
            (
                "{name: level, address: 100, table: input, type: int16",
                "{name: level, address: 100, table: coil, type: int16",
            ),
            "can only be bool",
        ),
        (("    port: 502\n", "    port: 502\n    colour: red\n"), "unknown key 'colour'"),
        (("gateway:\n  id: dng-hoavang-aq-01", "gateway:\n  id: a/b#"), "gateway.id"),
    ],
)
def test_single_errors(edit: tuple[str, str], expected: str) -> None:
    assert edit[0] in EXAMPLE
    got = issues_of(EXAMPLE.replace(edit[0], edit[1], 1), check_files=False)
    assert any(expected in i for i in got), got
    assert all(i.startswith("tepi.yaml:") and i.split(":")[1].isdigit() for i in got), got


def test_devices_sharing_a_port_must_agree(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE)
    second = dict(data["devices"][0], id="aq-station-2", unit=2, baudrate=19200)
    data["devices"].append(second)
    got = issues_of(yaml.safe_dump(data, sort_keys=False), check_files=False)
    assert any("devices[2].baudrate" in i and "/dev/ttyUSB0 is shared" in i for i in got), got


def test_devices_sharing_a_port_or_an_address_need_their_own_unit_ids() -> None:
    got = issues_of(
        """
gateway: {id: gw}
uplink: {url: "mqtt://127.0.0.1"}
devices:
  - {id: a, driver: modbus-rtu, port: /dev/ttyUSB0, unit: 1, registers: [{name: x, address: 0}]}
  - {id: b, driver: modbus-rtu, port: /dev/ttyUSB0, unit: 1, registers: [{name: x, address: 0}]}
  - {id: c, driver: modbus-tcp, host: 10.0.0.9, unit: 3, registers: [{name: x, address: 0}]}
  - {id: d, driver: modbus-tcp, host: 10.0.0.9, unit: 3, registers: [{name: x, address: 0}]}
  - {id: e, driver: modbus-tcp, host: 10.0.0.9, unit: 4, framing: rtu,
     registers: [{name: x, address: 0}]}
  - {id: f, driver: modbus-tcp, host: 10.0.0.8, unit: 3, registers: [{name: x, address: 0}]}
""",
        check_files=False,
    )
    assert any(
        ":6: devices[1].unit: unit 1 on /dev/ttyUSB0 is already devices[0]" in i for i in got
    )
    assert any("devices[3].unit: unit 3 on 10.0.0.9:502 is already devices[2]" in i for i in got)
    assert any("devices[4].framing: 10.0.0.9:502 is shared with devices[2]" in i for i in got)
    assert len(got) == 3, got  # another host is another gateway: unit 3 is free there


def test_yaml_syntax_error_has_a_line() -> None:
    got = issues_of("gateway:\n  id: [unclosed\n", check_files=False)
    assert len(got) == 1
    assert got[0].startswith("tepi.yaml:")
    assert "not valid YAML" in got[0]


def test_duplicate_keys_are_reported() -> None:
    text = EXAMPLE.replace(
        "  topic_prefix: ioc/v1\n", "  topic_prefix: ioc/v1\n  topic_prefix: x\n"
    )
    got = issues_of(text, check_files=False)
    assert any("uplink.topic_prefix: key given twice (first on line 6)" in i for i in got), got


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2-very-secret\n")
    data = yaml.safe_load(EXAMPLE)
    data["uplink"]["password_file"] = str(secret)
    data["uplink"]["tls"] = None
    data["uplink"]["url"] = "mqtts://x:8883"
    data["devices"][0]["baudrate"] = 12345
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data), "t.yaml")
    assert "hunter2" not in str(info.value)
    cfg = parse_config(yaml.safe_dump({**data, "devices": []}), "t.yaml")
    pw = cfg.uplink.read_password()
    assert pw is not None
    assert pw.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(pw)


def test_units() -> None:
    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_duration("5m") == 300.0
    assert parse_duration(3) == 3.0
    assert parse_size("64KiB") == 65536
    assert parse_size("256MiB") == 256 * 1024 * 1024
    for bad in ("5 parsecs", "-1s", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_tepi("check", "--config", str(path), timeout=60)


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("type: float32", "type: flaot32"))
    out = run_check(bad)
    assert out.returncode == 1
    assert f"{bad}:23: devices[0].registers[1].type" in out.stderr
    assert "problems found" in out.stderr or "problem found" in out.stderr
    good = tmp_path / "good.yaml"
    data = yaml.safe_load(EXAMPLE)
    data["uplink"].update(url="mqtt://localhost", tls=None, password_file=None)
    good.write_text(yaml.safe_dump(data))
    out = run_check(good)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
    assert load_config(good).gateway.id == "dng-hoavang-aq-01"


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
yaml_trees = st.recursive(
    yaml_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=300),
        yaml_trees.map(yaml.safe_dump),
        st.sampled_from(list(yaml.safe_load(EXAMPLE))).flatmap(
            lambda key: yaml_trees.map(
                lambda t: yaml.safe_dump({**yaml.safe_load(EXAMPLE), key: t})
            )
        ),
    )
)
def test_fuzzed_configs_give_only_clean_errors(text: str) -> None:
    try:
        parse_config(text, "f.yaml", check_files=False)
    except ConfigError as err:  # the only exception allowed out
        assert err.issues  # noqa: PT017
        assert all(  # noqa: PT017
            str(i).startswith("f.yaml") for i in err.issues
        )


# Structured fuzz, from the real schema: valid configs changed at any depth (``mutated``), and
# mappings generated from the models (``mappings``). Either way the keys are the models' own at
# every level (gateway, uplink.tls, uplink.batch, devices[] of each driver, registers[] ...),
# with values of about the right kind (durations, sizes, enums, ids, ports, often at or past
# their limits) or of a wrong type (any YAML tree), typo'd keys, and required keys left out. A
# fair share are valid, so the cross-field checks (shared ports, unit ids, files) run too.
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["gw-1", "aq-1", "/dev/ttyUSB0", "ioc/v1", "192.0.2.10", "localhost"]),
    st.sampled_from(["mqtt://127.0.0.1:1883", "mqtts://broker:8883", "http://x", "mqtt://:0"]),
)
INTS = st.one_of(
    st.integers(-2, 300), st.sampled_from([65535, 65536, 2**31]), st.integers(-(2**40), 2**70)
)
NUMBERS = st.one_of(st.integers(-10, 10**7), st.floats(), st.just("1e999"))
TREES = st.recursive(  # a wrong type: any YAML tree
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=20,
)


def _written(suffixes: list[str]) -> st.SearchStrategy[Any]:
    as_text = st.builds(lambda n, u: f"{n}{u}", NUMBERS, st.sampled_from(suffixes))
    return st.one_of(as_text, NUMBERS)


DURATIONS = _written(["ms", "s", "m", "h", "", "d", " s", "min", "sec"])
SIZES = _written(["B", "KiB", "MiB", "GiB", "", "KB", "kib", "MB"])
PLAIN: dict[Any, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: INTS,
    float: st.one_of(st.floats(), INTS),
    str: TEXT,
    Path: TEXT,
    SecretStr: TEXT,
}


def values(tp: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """Values of about the kind a field of type ``tp`` takes, the parsers' edge cases too."""
    funcs = {getattr(m, "func", None) for m in metadata}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if parse_duration in funcs:
        return DURATIONS
    if parse_size in funcs:
        return SIZES
    if origin is typing.Annotated:
        return values(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        return st.one_of([values(a, metadata) for a in args])
    if origin is typing.Literal:
        return st.one_of(st.sampled_from(args), st.sampled_from(args).map(lambda a: f"{a}".upper()))
    if origin is list:
        return st.lists(values(args[0], []), max_size=3)
    if origin is dict:
        return st.dictionaries(values(args[0], []), values(args[1], []), max_size=3)
    if tp is type(None):
        return st.none()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return mappings(tp)
    return PLAIN.get(tp, TREES)


def mappings(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping with ``model``'s real keys: mostly the right kinds of value, now and then a
    wrong type, a typo'd extra key, or a required key missing."""
    fields = model.model_fields
    each = {
        name: st.one_of(*[values(f.annotation, f.metadata)] * 4, TREES)
        for name, f in fields.items()
    }
    required = {n: s for n, s in each.items() if fields[n].is_required()}
    optional = {n: s for n, s in each.items() if not fields[n].is_required()}
    typos = st.dictionaries(
        st.sampled_from([f"{n}s" for n in fields] + [n.replace("_", "-") + "-" for n in fields]),
        TREES,
        max_size=1,
    )
    complete = st.fixed_dictionaries(required, optional=optional)
    partial = st.fixed_dictionaries({}, optional=each)
    built = st.tuples(st.one_of(*[complete] * 6, partial), st.one_of(*[st.just({})] * 4, typos))
    # deferred: its repr is this line, not the whole schema's strategies nested (which a
    # failing example's report would print, and which grows as fast as the schema nests)
    return st.deferred(lambda: built.map(lambda kv: {**kv[1], **kv[0]}))


# A valid config that uses most of the schema, and needs no files (so check_files can pass).
RICH = """
gateway: {id: gw-1, data_dir: /tmp/tepi, log_level: debug}
uplink:
  url: mqtt://127.0.0.1:1883
  topic_prefix: ioc/v1
  client_id: gw-1
  protocol: "5"
  encoding: compact
  keepalive: 10s
  health_interval: 30s
  batch: {max_readings: 100, max_bytes: 32KiB, max_wait: 1s}
  reconnect: {min_delay: 500ms, max_delay: 1m}
buffer: {max_bytes: 64MiB, max_age: 7d, commit_interval: 1s, sync: normal}
devices:
  - id: meter-1
    driver: modbus-rtu
    port: /dev/ttyUSB0
    baudrate: 19200
    parity: E
    unit: 3
    timeout: 300ms
    retries: 1
    quarantine_after: 5
    registers:
      - {name: energy, address: 0, type: uint32, word_order: little, scale: 0.01, unit: kWh}
      - {name: mode, address: 4, enum: {0: 'off', 1: auto}, writable: true}
      - {name: alarm, address: 5, bit: 3}
      - {name: setpoint, address: 6, type: float32, writable: true, min: 0, max: 50}
      - {name: serial, address: 10, type: string, length: 4}
      - {name: relay, address: 0, table: coil, writable: true}
  - id: meter-2
    driver: modbus-rtu
    port: /dev/ttyUSB0
    baudrate: 19200
    parity: E
    unit: 4
    registers: [{name: power, address: 2, type: int16, deadband: 0.5, byte_order: BADC}]
  - id: pump-3
    driver: modbus-tcp
    host: 192.0.2.10
    framing: rtu
    max_gap: 0
    registers: [{name: level, address: 100, table: input, type: int16, scale: 0.01}]
  - {id: fake-4, driver: synthetic, metrics: 3, pattern: wave, poll_interval: 2s}
  - id: pm-5
    driver: serial
    protocol: pms5003
    port: /dev/serial/by-id/usb-pms
    mode: active
    metrics: [pm25_atm, pm10_atm]
    aggregates: {pm25_atm: [mean, max]}
    warmup: 45s
  - id: node-6
    driver: serial
    protocol: line
    port: /dev/ttyAMA0
    format: regex
    regex: 'T=(?P<t>[-0-9.]+) H=(?P<h>[0-9.]+)'
    line_ending: "\r"
    fields: {t: {unit: degC, name: temperature}, h: {unit: "%RH", scale: 1.0}}
  - {id: gps-7, driver: serial, protocol: nmea, port: /dev/ttyS0, clock_source: true}
"""
BASES = [yaml.safe_load(EXAMPLE), yaml.safe_load(RICH)]


def test_the_rich_base_is_valid() -> None:
    assert len(parse_config(RICH, check_files=True).devices) == 7


def _model(tp: Any, item: object) -> type[BaseModel] | None:
    """The model a mapping at a field of type ``tp`` is validated against (a device's by
    its driver), or None."""
    while typing.get_origin(tp) in (typing.Annotated, typing.Union, types.UnionType, list):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) > 1:
            driver = item.get("driver") if isinstance(item, dict) else None
            return (
                REGISTRY[driver].config if isinstance(driver, str) and driver in REGISTRY else None
            )
        tp = args[0]
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


# What a second device may share with the first: the cross-field checks' cases.
SHARING: dict[str, dict[str, list[Any]]] = {
    "modbus-rtu": {
        "id": ["meter-9", "aq-station-1"],
        "port": ["/dev/ttyUSB0", "/dev/ttyUSB1"],
        "unit": [1, 3, 4],
        "baudrate": [9600, 19200],
        "parity": ["N", "E"],
    },
    "modbus-tcp": {
        "id": ["pump-9", "river-level-3"],
        "host": ["192.0.2.10", "192.0.2.11"],
        "port": [502, 1502],
        "unit": [1, 2],
        "framing": ["mbap", "rtu"],
    },
    "synthetic": {"id": ["fake-4", "fake-9"]},
}


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with 0-4 changes at any depth: a real key set to a value of about its
    kind or to a wrong type, a key dropped, a typo'd key added, a device or register
    doubled (ids, units and shared ports for the cross-field checks)."""
    cfg: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASES)))
    if draw(st.booleans()):  # one more device like another: same port? same unit? same id?
        dev = copy.deepcopy(draw(st.sampled_from(cfg["devices"])))
        for key, options in SHARING.get(dev["driver"], {}).items():
            dev[key] = draw(st.sampled_from([dev.get(key, options[0]), *options]))
        cfg["devices"].append(dev)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        node: Any = cfg
        model: type[BaseModel] | None = Config
        while model is not None:  # walk down to a random mapping
            deeper = sorted(k for k in node if k in model.model_fields and node[k])
            if not deeper or draw(st.booleans()):
                break
            key = draw(st.sampled_from(deeper))
            child, tp = node[key], model.model_fields[key].annotation
            if isinstance(child, list):
                if draw(st.integers(0, 3)) == 0:  # the same item twice, perhaps changed below
                    child.append(copy.deepcopy(draw(st.sampled_from(child))))
                child = draw(st.sampled_from(child))
            if not isinstance(child, dict):
                break
            node, model = child, _model(tp, child)
        if model is None:
            continue
        name = draw(st.sampled_from(sorted(model.model_fields)))
        field = model.model_fields[name]
        change = draw(st.sampled_from(["value", "value", "wrong type", "drop", "typo"]))
        if change == "value":
            node[name] = draw(values(field.annotation, field.metadata))
        elif change == "wrong type":
            node[name] = draw(TREES)
        elif change == "drop":
            node.pop(name, None)
        else:
            node[draw(st.sampled_from([f"{name}s", name.replace("_", "-") + "-", name[:-1]]))] = 1
    return cfg


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=st.one_of(mutated(), mappings(Config)), check_files=st.booleans())
def test_structured_configs_give_a_config_or_clean_errors_with_lines(
    config: dict[str, Any], check_files: bool
) -> None:
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    try:
        cfg = parse_config(text, "f.yaml", check_files=check_files)
    except ConfigError as err:  # the only exception allowed out
        event("refused")
        event(f"issues: {'1' if len(err.issues) == 1 else 'several'}")
        last = len(text.splitlines()) + 1  # YAML's line breaks include U+0085, U+2028 ...
        assert err.issues  # noqa: PT017
        for issue in err.issues:
            assert issue.file == "f.yaml"
            assert issue.line is not None, issue
            assert 1 <= issue.line <= last, issue
            assert str(issue).startswith(f"f.yaml:{issue.line}: "), issue
            if "already" in issue.message or "shared with" in issue.message:
                event("cross-field check failed")
    else:
        event("valid")
        assert len(cfg.devices) == len(config.get("devices") or [])


# Inputs that got out of the loader as something other than a ConfigError, found by hand while
# writing the fuzz above; tepi.gateway.configload now turns each into a clean issue with a line.
@pytest.mark.parametrize(
    ("text", "check_files"),
    [
        pytest.param(
            EXAMPLE.replace("/etc/tepi/secrets/mqtt-password", '"/etc/tepi/pass\\0word"'),
            True,
            id="nul-in-a-file-path",  # os.access: ValueError: embedded null byte
        ),
        pytest.param("devices: &d [*d]\n", False, id="self-referencing-alias"),  # RecursionError
        pytest.param("gateway: " + "[" * 2000 + "]" * 2000, False, id="nested-2000-deep"),
        pytest.param(
            EXAMPLE.replace("baudrate: 9600", "baudrate: " + "9" * 5000),
            False,
            id="5000-digit-integer",  # yaml's int(): ValueError: exceeds the limit
        ),
    ],
)
def test_pathological_files_give_clean_errors(text: str, check_files: bool) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", check_files=check_files)
    assert all(i.line is not None for i in info.value.issues)


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_password_the_config_asks_for_is_explained(tmp_path: Path, content: str) -> None:
    """Under systemd the unit's SetCredential= gives one newline when
    /etc/tepi/secrets/mqtt-password is missing (so a site without a password still starts):
    `tepi check`, the unit's ExecStartPre, must then say what is missing."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(content)
    config = tmp_path / "tepi.yaml"
    config.write_text(
        f"gateway: {{id: gw-1, data_dir: {tmp_path / 'data'}}}\n"
        "uplink:\n"
        f"  url: mqtt://127.0.0.1:{free_port()}\n"
        "  username: gw-1\n"
        "  password_file: mqtt-password\n"
        "devices: [{id: s, driver: synthetic, metrics: 1}]\n"
    )
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    res = run_tepi("check", "--config", str(config), env=env)
    assert res.returncode != 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "uplink.password_file: the password is empty" in out, out
    assert "/etc/tepi/secrets/mqtt-password" in out, out
    assert "remove uplink.password_file" in out, out
    # tepi doctor says the same, first.
    res = run_tepi("doctor", "--config", str(config), env=env)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "uplink.password_file: the password is empty" in res.stdout + res.stderr

    # Without password_file (an anonymous broker) the same empty credential is no matter.
    config.write_text(config.read_text().replace("  password_file: mqtt-password\n", ""))
    res = run_tepi("check", "--config", str(config), env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_failover_list_of_brokers() -> None:
    """uplink.url may be a list, tried in order; one url stays a list of one."""
    two = "url: [mqtts://ioc-a.example.org:8883, mqtts://ioc-b.example.org]"
    cfg = parse_config(
        EXAMPLE.replace("url: mqtts://ioc.example.org:8883", two, 1), check_files=False
    )
    up = cfg.uplink
    assert up.urls == ("mqtts://ioc-a.example.org:8883", "mqtts://ioc-b.example.org")
    assert up.brokers == (("ioc-a.example.org", 8883), ("ioc-b.example.org", 8883))
    assert (up.host, up.port, up.secure) == ("ioc-a.example.org", 8883, True)
    assert up.failover.hold == 60.0
    one = parse_config(EXAMPLE, check_files=False).uplink
    assert one.urls == ("mqtts://ioc.example.org:8883",)


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        ("[mqtts://a.example.org, mqtt://b.example.org]", "mixes mqtt:// and mqtts://"),
        ("[]", "the list of brokers is empty"),
        ("[mqtts://a.example.org, mqtts://a.example.org]", "names a broker twice"),
        ("[mqtts://a.example.org, http://b.example.org]", "url 2 (http://b.example.org)"),
        ("mqtts://user:pw@a.example.org", "no user or password in the url"),
    ],
)
def test_a_bad_failover_list_is_refused(urls: str, expected: str) -> None:
    text = EXAMPLE.replace("url: mqtts://ioc.example.org:8883", f"url: {urls}", 1)
    got = issues_of(text, check_files=False)
    assert any(i.startswith("tepi.yaml:") and expected in i for i in got), got


def test_a_password_in_a_broker_url_is_refused_without_echoing_it() -> None:
    for urls in ("mqtts://aq-01:s3cr3t-pw@a.example.org", "[mqtts://a.b, mqtts://x:s3cr3t-pw@c.d]"):
        got = issues_of(EXAMPLE.replace("url: mqtts://ioc.example.org:8883", f"url: {urls}", 1))
        assert any("no user or password in the url" in i for i in got), got
        assert not any("s3cr3t-pw" in i for i in got), got
