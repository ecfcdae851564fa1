"""Device profiles: every shipped profile is played by the simulator and read back whole by
the driver; overrides change and add registers; mistakes get a clear error."""

from __future__ import annotations

import pytest
import yaml
from helpers import run_tepi

from tepi.core.errors import ConfigError
from tepi.core.records import as_samples
from tepi.drivers.base import SharedResources
from tepi.drivers.modbus import ModbusDriver, ModbusTcpConfig
from tepi.drivers.modbus.profile import PROFILE_DIR, profile_names
from tepi.gateway.configload import parse_config
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(30)


def test_the_promised_profiles_ship() -> None:
    assert {
        "eastron-sdm120",
        "air-quality-station",
        "water-level-gauge",
        "weather-station",
    } <= set(profile_names())


@pytest.mark.parametrize("name", profile_names())
async def test_the_simulator_plays_each_profile_and_the_driver_reads_it_all(name: str) -> None:
    spec = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
    sim_cfg = {"devices": [{"id": "d", "transport": "tcp", "unit": 1, "profile": name}]}
    async with Simulator(sim_cfg) as sim:
        host, port = sim.endpoint("d").split(":")
        cfg = ModbusTcpConfig.model_validate(
            {"id": "d", "driver": "modbus-tcp", "host": host, "port": int(port), "profile": name}
        )
        async with ModbusDriver(cfg, SharedResources()) as drv:
            samples = as_samples(await drv.read())
    got = {s.metric: s for s in samples}
    assert set(got) == {r["name"] for r in spec["registers"]}
    assert all(s.reason is None for s in samples), [s for s in samples if s.reason]
    for reg in spec["registers"]:
        hint = reg.get("sim", {})
        if hint.get("kind", "constant") == "constant" and "enum" not in reg and "bit" not in reg:
            assert got[reg["name"]].value == pytest.approx(hint.get("value", 0), rel=1e-6)
        assert got[reg["name"]].unit == reg.get("unit")


def test_a_profile_can_be_changed_and_added_to_per_device() -> None:
    cfg = parse_config(
        """
gateway: {id: gw}
uplink: {url: "mqtt://127.0.0.1"}
devices:
  - id: meter-1
    driver: modbus-rtu
    port: /dev/ttyUSB0
    unit: 4
    baudrate: 9600
    profile: eastron-sdm120
    registers:
      - {name: voltage, unit: volt}
      - {name: relay, address: 500, table: coil}
""",
        "t.yaml",
        check_files=False,
    )
    dev = cfg.devices[0]
    regs = {r.name: r for r in getattr(dev, "registers", [])}
    assert regs["voltage"].unit == "volt"
    assert regs["voltage"].type == "float32", "the keys not given come from the profile"
    assert regs["relay"].table == "coil"
    assert len(regs) == 11
    assert getattr(dev, "baudrate", None) == 9600, "the device's own key wins over the default"


def test_a_profile_default_applies_when_the_device_does_not_set_it() -> None:
    cfg = parse_config(
        "gateway: {id: gw}\nuplink: {url: 'mqtt://127.0.0.1'}\ndevices:\n"
        "  - {id: m, driver: modbus-rtu, port: /dev/ttyUSB0, profile: eastron-sdm120}\n",
        "t.yaml",
        check_files=False,
    )
    assert getattr(cfg.devices[0], "baudrate", None) == 2400


def test_an_unknown_profile_is_reported_with_its_place_and_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            "gateway: {id: gw}\nuplink: {url: 'mqtt://127.0.0.1'}\ndevices:\n"
            "  - {id: m, driver: modbus-tcp, host: 10.0.0.2, profile: sdm120}\n",
            "site.yaml",
            check_files=False,
        )
    text = str(info.value)
    assert "site.yaml:4" in text
    assert "did you mean 'eastron-sdm120'" in text


def test_tepi_profiles_lists_and_shows() -> None:
    listing = run_tepi("profiles")
    assert listing.returncode == 0
    assert "eastron-sdm120" in listing.stdout
    shown = run_tepi("profiles", "water-level-gauge")
    assert shown.returncode == 0
    assert "high_water_alarm" in shown.stdout
    assert "bit 0" in shown.stdout
    missing = run_tepi("profiles", "nope")
    assert missing.returncode == 2
    assert "unknown profile" in missing.stderr
