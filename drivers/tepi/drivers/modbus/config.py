"""Config models for Modbus devices (``driver: modbus-rtu`` and ``driver: modbus-tcp``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tepi.core.units import Duration
from tepi.drivers.base import DriverConfig
from tepi.drivers.modbus.profile import apply_profile

Table = Literal["holding", "input", "coil", "discrete"]
RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "string"
]
ByteOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]
BIT_TABLES = frozenset({"coil", "discrete"})
WIDTH = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
    "bool": 1,
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})


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
        description="For 32- and 64-bit types: big = the first register holds the high word "
        "(the same as byte_order ABCD), little = the low word (CDAB).",
    )
    byte_order: ByteOrder | None = Field(
        default=None,
        description="ABCD (big-endian), BADC (bytes swapped in each register), CDAB (registers "
        "swapped) or DCBA (little-endian). Replaces word_order; set one or the other.",
    )
    length: int | None = Field(
        default=None, ge=1, le=125, description="For type string: how many registers it spans."
    )
    bit: int | None = Field(
        default=None,
        ge=0,
        le=15,
        description="Read one bit (0 = least significant) of a 16-bit register, as a bool.",
    )
    enum: dict[int, str] | None = Field(
        default=None,
        description="For integer types: the label to send for each raw value, e.g. "
        "{0: off, 1: on}. A value not in the map is sent as a bad reading.",
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="value = raw * scale + offset.")
    deadband: float | None = Field(
        default=None,
        ge=0,
        description="Report on change: send a value only when it moved more than this since "
        "the last one sent (0: on any change), or when the device's heartbeat is due.",
    )
    unit: str | None = Field(
        default=None, max_length=32, description="Unit sent with the value, e.g. ug/m3."
    )
    writable: bool = Field(
        default=False,
        description="Allow writes to this holding register or coil (remote commands). Off by "
        "default: nothing is written that the config does not allow.",
    )
    min: float | None = Field(
        default=None, description="For writes: the lowest value allowed (after scale)."
    )
    max: float | None = Field(
        default=None, description="For writes: the highest value allowed (after scale)."
    )

    @field_validator("enum", mode="before")
    @classmethod
    def _labels_are_text(cls, v: object) -> object:
        if isinstance(v, dict):
            for raw, label in v.items():
                if isinstance(label, bool):
                    raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
                        f"the label for {raw} is {str(label).lower()}, not text: YAML reads "
                        "off, on, yes and no as true or false; quote it, e.g. 'off'"
                    )
        return v

    @property
    def kind(self) -> RegisterType:
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES or self.bit is not None else "uint16"

    @property
    def width(self) -> int:
        if self.kind == "string":
            return self.length or 1
        return WIDTH[self.kind]

    @property
    def order(self) -> ByteOrder:
        if self.byte_order is not None:
            return self.byte_order
        return "ABCD" if self.word_order == "big" else "CDAB"

    @model_validator(mode="after")
    def _check(self) -> Self:
        kind = self.kind
        if self.table in BIT_TABLES and kind != "bool":
            raise ValueError(f"a {self.table} is one bit: its type can only be bool")
        if self.table in BIT_TABLES and self.bit is not None:
            raise ValueError(f"bit selects a bit of a register; a {self.table} is a bit already")
        if self.bit is not None and kind != "bool":
            raise ValueError("a bit is read as a bool: drop type, or set type: bool")
        if kind in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale and offset do not apply to a {kind}")
        if (kind == "string") != (self.length is not None):
            raise ValueError("type string needs length (registers), and only a string has one")
        if self.enum is not None:
            if kind not in INTEGER_TYPES:
                raise ValueError("enum maps integers to labels: use an integer type")
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("an enum value is a label: scale and offset do not apply")
        if self.writable and self.table not in ("holding", "coil"):
            raise ValueError(
                f"a {self.table} is read-only: only holding registers and coils can be writable"
            )
        if self.writable and (self.bit is not None or kind == "string"):
            raise ValueError("writes of a single bit or a string are not supported")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        if self.byte_order is not None and "word_order" in self.model_fields_set:
            raise ValueError("set byte_order or word_order, not both")
        if self.address + self.width > 65536:
            raise ValueError(f"{kind} at address {self.address} runs past register 65535")
        return self


class _ModbusCommon(DriverConfig):
    unit: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    profile: str | None = Field(
        default=None,
        description="A device profile (tepi profiles lists them): its register map and "
        "defaults; registers given here change or add to the profile's.",
    )
    registers: list[RegisterConfig] = Field(
        min_length=1, description="What to read from the device: one entry per metric."
    )

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("profile") is not None:
            return apply_profile(data, cls.model_fields)
        return data

    address_base: Literal[0, 1] = Field(
        default=0,
        description="0 if the addresses in registers are as on the wire; 1 if they count from "
        "1, as many datasheets do (register 1 is wire address 0).",
    )
    max_gap: int = Field(
        default=16,
        ge=0,
        le=124,
        description="Merge reads of registers up to this many unused registers apart into one "
        "request. A device that refuses a merged read (exception 2) gets it split, and keeps it.",
    )
    pause: Duration = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Extra quiet time on the line after each request to this device, for "
        "devices that need it (beyond the standard 3.5-character silence, always kept).",
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Ask again this many times when a request gets no answer or a garbled "
        "one, before the read counts as failed.",
    )
    heartbeat: Duration = Field(
        default=600.0,
        gt=0,
        description="For registers with a deadband: send the value at least this often, changed "
        "or not.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for reg in self.registers:
            if reg.name in seen:
                raise ValueError(f"register name {reg.name!r} is used twice: names must be unique")
            seen.add(reg.name)
            if reg.address < self.address_base:
                raise ValueError(
                    f"register {reg.name!r}: address {reg.address} is below address_base "
                    f"{self.address_base}"
                )
        return self

    def wire_registers(self) -> list[RegisterConfig]:
        """The registers with their addresses as on the wire (address_base applied)."""
        if self.address_base == 0:
            return list(self.registers)
        return [r.model_copy(update={"address": r.address - 1}) for r in self.registers]


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
    framing: Literal["mbap", "rtu"] = Field(
        default="mbap",
        description="mbap: Modbus TCP. rtu: RTU frames over TCP, as a serial-to-Ethernet "
        "converter in transparent mode passes them (RTU over TCP).",
    )
    max_outstanding: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Requests in flight at once on the connection to this host and port, "
        "answers matched by transaction id (pipelining). 1: one at a time, safe with every "
        "gateway. Raise it for a gateway with several units behind it that queues requests "
        "(docs/modbus.md); devices at one host and port must use the same value.",
    )

    @field_validator("max_outstanding")
    @classmethod
    def _one_with_rtu_framing(cls, v: int, info: ValidationInfo) -> int:
        if v != 1 and info.data.get("framing") == "rtu":
            raise ValueError(
                "with framing: rtu only 1 is allowed: RTU frames carry no transaction id to "
                "match answers by"
            )
        return v
