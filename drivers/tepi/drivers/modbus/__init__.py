"""Modbus RTU (serial) and Modbus TCP, on pymodbus's asyncio clients.

Layers: ``config`` (what a person writes) -> ``codec`` (registers <-> values, and the read
plan) -> ``link`` (one shared, serialised pymodbus client per port or host) -> ``driver``
(one device: plan, read, decode, stamp).
"""

from tepi.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig, RegisterConfig
from tepi.drivers.modbus.driver import ModbusDriver

__all__ = ["ModbusDriver", "ModbusRtuConfig", "ModbusTcpConfig", "RegisterConfig"]
