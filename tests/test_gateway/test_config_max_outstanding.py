"""``max_outstanding`` (pipelining on Modbus TCP) in the config: its range, one value per
gateway address, and none but 1 with RTU framing; each problem with its file and line."""

from __future__ import annotations

import pytest

from tepi.core.errors import ConfigError
from tepi.gateway.configload import parse_config

HEAD = """\
gateway: {id: gw}
uplink: {url: "mqtt://127.0.0.1"}
devices:
"""
REGS = "registers: [{name: x, address: 0}]"


def issues_of(devices: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + devices, "tepi.yaml", check_files=False)
    return [str(i) for i in info.value.issues]


def test_devices_behind_one_address_share_one_max_outstanding() -> None:
    cfg = parse_config(
        HEAD
        + f"""\
  - {{id: a, driver: modbus-tcp, host: 10.0.0.9, unit: 1, max_outstanding: 8, {REGS}}}
  - {{id: b, driver: modbus-tcp, host: 10.0.0.9, unit: 2, max_outstanding: 8, {REGS}}}
  - {{id: c, driver: modbus-tcp, host: 10.0.0.8, unit: 1, {REGS}}}
""",
        "tepi.yaml",
        check_files=False,
    )
    assert [getattr(d, "max_outstanding", None) for d in cfg.devices] == [8, 8, 1]
    got = issues_of(
        f"""\
  - {{id: a, driver: modbus-tcp, host: 10.0.0.9, unit: 1, max_outstanding: 8, {REGS}}}
  - {{id: b, driver: modbus-tcp, host: 10.0.0.9, unit: 2, {REGS}}}
  - {{id: c, driver: modbus-tcp, host: 10.0.0.9, unit: 3, max_outstanding: 4, {REGS}}}
"""
    )
    assert got == [
        "tepi.yaml:5: devices[1].max_outstanding: 10.0.0.9:502 is shared with devices[0] but "
        "with another max_outstanding 1 vs 8 (hint: requests in flight are counted per "
        "connection: give every device at this address the same max_outstanding)",
        "tepi.yaml:6: devices[2].max_outstanding: 10.0.0.9:502 is shared with devices[0] but "
        "with another max_outstanding 4 vs 8 (hint: requests in flight are counted per "
        "connection: give every device at this address the same max_outstanding)",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "greater than or equal to 1"),
        (33, "less than or equal to 32"),
    ],
)
def test_max_outstanding_is_1_to_32(value: int, message: str) -> None:
    [got] = issues_of(
        f"  - {{id: a, driver: modbus-tcp, host: h, max_outstanding: {value}, {REGS}}}\n"
    )
    assert got.startswith("tepi.yaml:4: devices[0].max_outstanding: ")
    assert message in got


def test_rtu_framing_allows_one_request_at_a_time_only() -> None:
    [got] = issues_of(
        f"""\
  - id: a
    driver: modbus-tcp
    host: h
    framing: rtu
    max_outstanding: 2
    {REGS}
"""
    )
    assert got.startswith("tepi.yaml:8: devices[0].max_outstanding: with framing: rtu only 1")
