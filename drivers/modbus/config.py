"""Config models for Modbus devices (``driver: modbus-rtu`` and ``driver: modbus-tcp``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import DriverConfig

Table = Literal["holding", "input", "coil", "discrete"]
RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
BIT_TABLES = frozenset({"coil", "discrete"})
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}


class RegisterConfig(BaseModel):
    """One metric read from a register (or two, for 32-bit types) or from one bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Metric name in the readings, e.g. pm25. Unique within the device.",
    )
    address: int = Field(ge=0, le=65535, description="Register or bit address, 0-based.")
    table: Table = Field(
        default="holding",
        description="holding (fc 3), input (fc 4), coil (fc 1) or discrete (fc 2).",
    )
    type: RegisterType | None = Field(
        default=None,
        description="int16, uint16, int32, uint32, float32 or bool. Default: uint16 for "
        "registers, bool for coils and discrete inputs.",
    )
    word_order: Literal["big", "little"] = Field(
        default="big",
        description="For 32-bit types: big = the first register holds the high word.",
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="value = raw * scale + offset.")
    unit: str | None = Field(
        default=None, max_length=32, description="Unit sent with the value, e.g. ug/m3."
    )

    @property
    def kind(self) -> RegisterType:
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    @property
    def width(self) -> int:
        return WIDTH[self.kind]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.table in BIT_TABLES and self.kind != "bool":
            raise ValueError(f"a {self.table} is one bit: its type can only be bool")
        if self.kind == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("scale and offset do not apply to a bool")
        if self.address + self.width > 65536:
            raise ValueError(f"{self.kind} at address {self.address} runs past register 65535")
        return self


class _ModbusCommon(DriverConfig):
    unit: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    registers: list[RegisterConfig] = Field(
        min_length=1, description="What to read from the device: one entry per metric."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for reg in self.registers:
            if reg.name in seen:
                raise ValueError(f"register name {reg.name!r} is used twice: names must be unique")
            seen.add(reg.name)
        return self


class ModbusRtuConfig(_ModbusCommon):
    """A Modbus RTU device on a serial port (RS-485 or RS-232)."""

    driver: Literal["modbus-rtu"] = Field(description="modbus-rtu")
    port: str = Field(
        min_length=1, description="Serial port, best a stable /dev/serial/by-id/... path."
    )
    baudrate: Literal[1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200] = Field(
        default=9600, description="Line speed; every device on one port must use the same."
    )
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")

    @model_validator(mode="after")
    def _rtu_unit(self) -> Self:
        if not 1 <= self.unit <= 247:
            raise ValueError("an RTU unit id is 1 to 247")
        return self

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.bytesize, self.stopbits)


class ModbusTcpConfig(_ModbusCommon):
    """A Modbus TCP device, or a unit behind a Modbus TCP gateway."""

    driver: Literal["modbus-tcp"] = Field(description="modbus-tcp")
    host: str = Field(min_length=1, description="Host name or IP address.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")
