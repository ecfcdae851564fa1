"""Frames the serial sensors send and tepi never does: built here for the tests, from the
datasheets, so the production codecs hold only what the driver decodes and sends.

(The simulator, hw-sim/tepi_sim/uart_protocols.py, has encoders of its own and imports
nothing of tepi; the CPU bench streams the simulator's frames.)
"""

from __future__ import annotations

import struct

from tepi.drivers.serial.codecs import PMS_METRICS, mhz_checksum, pms_command, sds_decode

PMS_SLEEP = pms_command(0xE4, 0)
"""Stop the fan and laser; tepi never sends it (it wakes the sensor on every open)."""


def _check_range(value: int, what: str, top: int = 0xFF) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{what} must be 0..{top:#x}, got {value}")


def sds_encode(pm25: float, pm10: float, device_id: int = 0x1234) -> bytes:
    """A valid SDS011 ``C0`` data frame: ``AA C0 PM25 PM10 ID CS AB``, little-endian tenths."""
    raw = [round(pm25 * 10), round(pm10 * 10)]
    for name, value in zip(("pm25", "pm10"), raw, strict=True):
        _check_range(value, f"{name} x 10", 0xFFFF)
    _check_range(device_id, "device_id", 0xFFFF)
    body = struct.pack("<HH", *raw) + device_id.to_bytes(2, "big")
    return b"\xaa\xc0" + body + bytes([sum(body) & 0xFF, 0xAB])


def sds_reply(frame: bytes) -> tuple[int, bytes] | None:
    """(command id, data bytes 3..7) of an SDS011 ``C5`` command reply; None for a data
    frame. Raises like ``codecs.sds_decode`` for a frame that is not a valid one."""
    if sds_decode(frame) is not None:
        return None
    return frame[2], frame[3:8]


def mhz_encode(co2: int, temperature: int) -> bytes:
    """A valid MH-Z19 read answer: ``FF 86 CO2H CO2L T+40 0 0 0 CS``."""
    _check_range(co2, "co2", 0xFFFF)
    _check_range(temperature + 40, "temperature + 40")
    frame = bytes([0xFF, 0x86, *co2.to_bytes(2, "big"), temperature + 40, 0, 0, 0])
    return frame + bytes([mhz_checksum(frame)])


def pms_encode(values: dict[str, int]) -> bytes:
    """A valid PMS frame holding ``values`` (missing metrics are 0): 42 4D 00 1C, 13 words, sum."""
    unknown = set(values) - set(PMS_METRICS)
    if unknown:
        raise ValueError(f"not PMS metrics: {sorted(unknown)}")
    for name, value in values.items():
        _check_range(value, name, 0xFFFF)
    body = b"\x42\x4d\x00\x1c"
    body += struct.pack(">13H", *(values.get(m, 0) for m in PMS_METRICS), 0)
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")
