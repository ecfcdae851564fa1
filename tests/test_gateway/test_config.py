"""Config validation: the example from the issue, every error at once with file:line, hints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import run_tepi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus import ModbusRtuConfig, ModbusTcpConfig
from gateway.configload import load_config, parse_config
from gateway.errors import ConfigError
from gateway.units import parse_duration, parse_size

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
