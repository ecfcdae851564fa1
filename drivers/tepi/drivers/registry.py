"""The explicit map from a driver name (the ``driver:`` key) to its config model and class.

Adding a driver family means adding a line here; nothing scans folders or executes files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field

from tepi.drivers.base import Driver, DriverConfig, SharedResources
from tepi.drivers.camera.config import CameraConfig
from tepi.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from tepi.drivers.serial.config import SerialConfig
from tepi.drivers.synthetic import SyntheticConfig, SyntheticDriver


def _serial_driver(config: Any, resources: SharedResources) -> Driver:
    # Imported with the first serial device: pyserial and the protocols' code are RSS a box
    # with no UART sensor need not hold (docs/performance.md#memory).
    from tepi.drivers.serial.driver import SerialDriver

    return SerialDriver(config, resources)


def _modbus_driver(config: Any, resources: SharedResources) -> Driver:
    # Imported with the first Modbus device: pymodbus is RSS a box without one need not hold.
    from tepi.drivers.modbus.driver import ModbusDriver

    return ModbusDriver(config, resources)


def _camera_driver(config: Any, resources: SharedResources) -> Driver:
    # Imported with the first camera: OpenCV, numpy and PyAV (imported by the driver when it
    # opens) are tens of MB of RSS a box without a camera never pays.
    from tepi.drivers.camera.driver import CameraDriver

    return CameraDriver(config, resources)


@dataclass(frozen=True, slots=True)
class DriverEntry:
    name: str
    config: type[DriverConfig]
    factory: Callable[[Any, SharedResources], Driver]


REGISTRY: dict[str, DriverEntry] = {
    "modbus-rtu": DriverEntry("modbus-rtu", ModbusRtuConfig, _modbus_driver),
    "modbus-tcp": DriverEntry("modbus-tcp", ModbusTcpConfig, _modbus_driver),
    "synthetic": DriverEntry("synthetic", SyntheticConfig, SyntheticDriver),
    "serial": DriverEntry("serial", SerialConfig, _serial_driver),
    "camera": DriverEntry("camera", CameraConfig, _camera_driver),
}

# The discriminated union of every registered device config, keyed on ``driver``.
DeviceConfig = Annotated[
    Union[ModbusRtuConfig, ModbusTcpConfig, SyntheticConfig, SerialConfig, CameraConfig],  # noqa: UP007
    Field(discriminator="driver"),
]


def make_driver(config: DriverConfig, resources: SharedResources) -> Driver:
    entry = REGISTRY[getattr(config, "driver")]  # noqa: B009 - every DeviceConfig has it
    return entry.factory(config, resources)
