"""Serial device config: each protocol's options are checked, with the file's line."""

from __future__ import annotations

from typing import get_args

import pytest

from tepi.core.errors import ConfigError
from tepi.drivers.serial.config import Protocol, SerialConfig
from tepi.drivers.serial.protocols import PROTOCOLS
from tepi.gateway.configload import parse_config

HEAD = """gateway: {id: gw-1, data_dir: /tmp/x}
uplink: {url: "mqtt://127.0.0.1:1883", client_id: gw-1}
devices:
"""


def issues(devices: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + devices, "tepi.yaml", check_files=False)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("{protocol: mhz19, mode: passive}", "mode applies to pms5003 and sds011, not mhz19"),
        ("{protocol: pms5003, working_period: 5}", "working_period applies to sds011 only"),
        ("{protocol: sds011, abc: true}", "abc applies to mhz19 only"),
        ("{protocol: pms5003, clock_source: true}", "clock_source applies to nmea only"),
        ("{protocol: pms5003, regex: 'x'}", "regex apply to protocol line only, not pms5003"),
        ("{protocol: sds011, metrics: [pm1]}", "sds011 has no metric 'pm1'; it has: pm25, pm10"),
        ("{protocol: mhz19, aggregate: max}", "aggregate and aggregates apply to streaming"),
        ("{protocol: pms5003, mode: passive, aggregates: {pm25_atm: [max]}}", "streaming"),
        ("{protocol: nmea, aggregates: {latitude: []}}", "aggregates.latitude is empty"),
        ("{protocol: nmea, aggregates: {hdop: [max, max]}}", "names a function twice"),
        ("{protocol: sds011, working_period: 31}", "less than or equal to 30"),
        ("{protocol: line, fields: {t: {}}}", "protocol line needs format"),
        ("{protocol: line, format: kv}", "protocol line needs fields"),
        ("{protocol: line, format: regex, fields: {t: {}}}", "format regex needs regex"),
        ("{protocol: line, format: regex, regex: '(', fields: {t: {}}}", "regex does not compile"),
        (
            "{protocol: line, format: regex, regex: 'T=(?P<x>.*)', fields: {t: {}}}",
            "fields t are not named groups of the regex (it has: x)",
        ),
        ("{protocol: line, format: csv, fields: {t: {}}}", "format csv needs columns"),
        (
            "{protocol: line, format: kv, fields: {t: {type: double}}}",
            "one of: float, int, str, bool",
        ),
        ("{protocol: pms9000}", "did you mean pms7003?"),
        (
            "{protocol: line, format: kv, fields: {a: {name: x}, b: {name: x}}}",
            "metric x would be published twice",
        ),
        (
            "{protocol: line, format: kv, fields: {t: {}, t_max: {}}, "
            "aggregates: {t: [mean, max]}}",
            "metric t_max would be published twice",
        ),
    ],
)
def test_each_protocol_option_is_checked_with_its_line(device: str, expected: str) -> None:
    got = issues(f"  - {{id: s1, driver: serial, port: /dev/ttyUSB0, {device[1:]}\n")
    assert len(got) == 1, got
    assert got[0].startswith("tepi.yaml:4: devices[0]"), got
    assert expected in got[0], got


def test_a_serial_port_is_not_shared_and_there_is_one_clock_source() -> None:
    got = issues(
        "  - {id: a, driver: serial, protocol: nmea, port: /dev/ttyS0, clock_source: true}\n"
        "  - {id: b, driver: serial, protocol: nmea, port: /dev/ttyS1, clock_source: true}\n"
        "  - {id: c, driver: serial, protocol: sds011, port: /dev/ttyS0}\n"
        "  - {id: d, driver: modbus-rtu, port: /dev/ttyS1, registers: [{name: x, address: 0}]}\n"
    )
    assert any(
        "tepi.yaml:6: devices[2].port: /dev/ttyS0 is already used by devices[0]" in i for i in got
    ), got
    assert any("devices[1].port: /dev/ttyS1 is already used by devices[3]" in i for i in got), got
    assert any(
        "tepi.yaml:5: devices[1].clock_source: devices[0] is the clock source" in i for i in got
    ), got
    assert len(got) == 3, got


def test_outputs_name_the_extra_aggregates_and_defaults_follow_the_protocol() -> None:
    cfg = SerialConfig.model_validate(
        {
            "id": "s",
            "driver": "serial",
            "protocol": "pms5003",
            "port": "/dev/x",
            "metrics": ["pm25_atm", "n0_3"],
            "aggregates": {"pm25_atm": ["max", "mean", "count"]},
        }
    )
    assert cfg.outputs() == [
        ("pm25_atm", "pm25_atm", "ug/m3", "max"),
        ("pm25_atm_mean", "pm25_atm", "ug/m3", "mean"),
        ("pm25_atm_count", "pm25_atm", None, "count"),
        ("n0_3", "n0_3", "1/0.1L", "mean"),
    ]
    assert cfg.streaming
    assert cfg.warmup_s == 30
    gps = SerialConfig.model_validate(
        {"id": "g", "driver": "serial", "protocol": "nmea", "port": "/dev/x"}
    )
    assert {fn for *_, fn in gps.outputs()} == {"last"}
    assert gps.warmup_s == 0
    co2 = SerialConfig.model_validate(
        {"id": "c", "driver": "serial", "protocol": "mhz19", "port": "/dev/x", "warmup": "0s"}
    )
    assert not co2.streaming
    assert co2.warmup_s == 0


def test_every_protocol_name_has_one_class_in_the_table() -> None:
    # The config's literal (for pydantic's messages) and the driver's table name the same
    # protocols, so a name the config accepts always picks code.
    assert set(get_args(Protocol)) == set(PROTOCOLS)
