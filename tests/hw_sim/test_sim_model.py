"""Config loading and validation: every problem reported, each with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tepi_sim import DEMO_CONFIG, ConfigError, SimConfig, load_config


def _one(**device: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "d1",
        "transport": "rtu",
        "unit": 1,
        "registers": [{"address": 0, "kind": "counter"}],
    }
    base.update(device)
    return {"devices": [base]}


def _errors(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return info.value.errors


def test_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        """
seed: 7
devices:
  - id: aq-station-1
    transport: rtu
    unit: 1
    bus: bus0
    link: /tmp/tepi-aq1
    registers:
      - {address: 0, table: holding, kind: pm25, type: uint16, scale: 0.1}
      - {address: 2, table: holding, kind: temperature, type: float32, word_order: little}
      - {address: 10, table: input, kind: counter, type: uint16}
      - {address: 5, table: coil, kind: toggle}
  - id: river-level-3
    transport: tcp
    unit: 1
    port: 0
    fill_gaps: false
    registers:
      - {address: 7, kind: constant, value: 12.5, type: int32, scale: 0.5}
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert isinstance(config, SimConfig)
    assert config.seed == 7
    aq, river = config.devices
    assert (aq.bus, aq.link, aq.fill_gaps) == ("bus0", "/tmp/tepi-aq1", True)
    assert aq.registers[1].width == 2
    assert aq.registers[1].word_order == "little"
    assert aq.registers[3].is_bit
    assert river.fill_gaps is False
    assert river.registers[0].value == 12.5


def test_typo_names_key_path_and_suggests() -> None:
    config = _one(
        registers=[
            {"address": 0, "kind": "counter"},
            {"address": 2, "kind": "pm25", "type": "flaot32"},
        ]
    )
    assert _errors(config) == [
        "devices[0].registers[1].type: unknown type 'flaot32' (did you mean 'float32'?)"
    ]


def test_every_error_is_collected() -> None:
    config = {
        "devices": [
            {
                "id": "a",
                "transport": "rtu",
                "unit": 0,
                "registers": [{"address": 0, "kind": "pm2.5"}],
            },
            {"id": "a", "transport": "tcp", "unit": 1, "link": "x", "colour": 1, "registers": []},
        ]
    }
    errors = _errors(config)
    assert "devices[0].unit: must be between 1 and 247, got 0" in errors
    assert any(e.startswith("devices[0].registers[0].kind: unknown kind 'pm2.5'") for e in errors)
    assert "devices[1].link: only valid for transport rtu" in errors
    assert any(e.startswith("devices[1].colour: unknown key") for e in errors)
    assert "devices[1].registers: must be a non-empty list of registers" in errors
    assert "devices[1].id: duplicate id 'a' (also devices[0])" in errors


def test_overlapping_32_bit_register_is_rejected() -> None:
    config = _one(
        registers=[
            {"address": 0, "kind": "temperature", "type": "float32"},
            {"address": 1, "kind": "counter"},
        ]
    )
    assert _errors(config) == [
        "devices[0].registers[1].address: "
        "holding address 1 is already used by devices[0].registers[0]"
    ]


@pytest.mark.parametrize(
    ("register", "message"),
    [
        ({"address": 0, "kind": "counter", "type": "int16"}, "a counter must be uint16 or uint32"),
        ({"address": 0, "kind": "constant"}, "required for kind 'constant'"),
        ({"address": 0, "kind": "pm25", "value": 3}, "only used with kind 'constant'"),
        ({"address": 0, "kind": "constant", "value": 70000}, "does not fit uint16"),
        ({"address": 0, "table": "coil", "kind": "pm25"}, "needs a register table"),
        ({"address": 0, "table": "coil", "kind": "toggle", "type": "uint16"}, "bits are bool"),
        ({"address": 0, "kind": "level", "type": "float32", "scale": 0.1}, "not used with float32"),
        ({"address": 65535, "kind": "level", "type": "uint32"}, "needs two words"),
        ({"address": -1, "kind": "level"}, "between 0 and 65535"),
    ],
)
def test_register_rules(register: dict[str, Any], message: str) -> None:
    errors = _errors(_one(registers=[register]))
    assert len(errors) == 1
    assert errors[0].startswith("devices[0].registers[0].")
    assert message in errors[0]


def test_two_units_on_one_bus_must_differ() -> None:
    reg = [{"address": 0, "kind": "counter"}]
    config = {
        "devices": [
            {"id": "a", "transport": "rtu", "unit": 1, "bus": "b", "registers": reg},
            {"id": "b", "transport": "rtu", "unit": 1, "bus": "b", "registers": reg},
            {"id": "c", "transport": "rtu", "unit": 1, "registers": reg},  # own pty: fine
        ]
    }
    assert _errors(config) == ["devices[1].unit: unit 1 is already used on bus 'b' by 'a'"]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("devices: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(empty)


def test_demo_config_is_valid() -> None:
    config = load_config(DEMO_CONFIG)
    assert [d.id for d in config.devices] == [
        "aq-station-1",
        "noise-meter-2",
        "river-level-3",
        "siren-1",
    ]
    assert config.devices[0].bus == config.devices[1].bus == "bus0"
    assert config.devices[2].transport == "tcp"
    (camera,) = config.cameras
    assert (camera.id, camera.auth, camera.username) == ("cam-1", "digest", "tepi")
