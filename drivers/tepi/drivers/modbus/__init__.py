"""Modbus RTU (serial, on pymodbus's client) and Modbus TCP (on tepi's own transaction layer).

Layers: ``config`` (what a person writes) -> ``codec`` (registers <-> values, and the read
plan) and ``decoder`` (each planned read's answer decoded in one step) -> ``link`` (one
shared client per port or host: ``tcp`` and ``wire`` for Modbus TCP, pymodbus for serial)
-> ``driver`` (one device: plan, read, decode, stamp).
"""

from typing import TYPE_CHECKING, Any

from tepi.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig, RegisterConfig

if TYPE_CHECKING:
    from tepi.drivers.modbus.driver import ModbusDriver

__all__ = ["ModbusDriver", "ModbusRtuConfig", "ModbusTcpConfig", "RegisterConfig"]


def __getattr__(name: str) -> Any:
    # The driver (and pymodbus with it) is imported with the first Modbus device, not with
    # the config models every ``tepi check`` and every box loads (docs/performance.md#memory).
    if name == "ModbusDriver":
        from tepi.drivers.modbus.driver import ModbusDriver

        return ModbusDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
