"""The serial driver on real pseudo-terminals: aggregation, warm-up, request/response, no data,
garbage, hot-plug behind a stable link, GPS time. The test plays the sensor on the pty's
master side with the codecs' encoders (the simulator's own encoders are tested end to end in
tests/test_gateway/test_serial_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from serial_frames import mhz_encode, pms_encode, sds_encode

from tepi.core.errors import DeviceUnavailable, ProtocolError
from tepi.drivers.base import SharedResources
from tepi.drivers.serial import codecs
from tepi.drivers.serial.config import SerialConfig
from tepi.drivers.serial.driver import SerialDriver

pytestmark = pytest.mark.timeout(30)


class FakePort:
    """A pty with a stable symlink in front of it, as /dev/serial/by-id gives a USB adapter."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.received = bytearray()
        self._fds: tuple[int, int] | None = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._fds = (master, slave)
        tmp = self.link.with_name(self.link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)

    def unplug(self) -> None:
        assert self._fds is not None
        master, slave = self._fds
        asyncio.get_running_loop().remove_reader(master)
        self.link.unlink()
        os.close(master)
        os.close(slave)
        self._fds = None

    def _readable(self) -> None:
        assert self._fds is not None
        with contextlib.suppress(BlockingIOError, OSError):
            self.received += os.read(self._fds[0], 4096)

    def send(self, data: bytes) -> None:
        assert self._fds is not None
        os.write(self._fds[0], data)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition, checking it as the loop turns."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def config(link: Path, **kw: Any) -> SerialConfig:
    return SerialConfig.model_validate({"id": "s1", "driver": "serial", "port": str(link), **kw})


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, resources: SharedResources | None = None, **kw: Any
) -> AsyncIterator[tuple[SerialDriver, FakePort]]:
    port = FakePort(tmp_path / "usb-sensor")
    drv = SerialDriver(config(port.link, **kw), resources or SharedResources())
    try:
        async with drv:
            await until(lambda: drv.protocol_stats()["port_state"] == "open")
            yield drv, port
    finally:
        with contextlib.suppress(AssertionError):
            port.unplug()


def by_name(samples: list[Any]) -> dict[str, Any]:
    return {s.metric: s for s in samples}


async def test_a_window_gives_mean_min_max_count_and_last_over_a_known_sequence(
    tmp_path: Path,
) -> None:
    fns = ["mean", "min", "max", "count", "last"]
    async with running(tmp_path, protocol="pms5003", warmup=0, aggregates={"pm25_atm": fns}) as (
        drv,
        port,
    ):
        seq = [12, 7, 30, 25, 1]
        data = b"".join(pms_encode({"pm25_atm": v, "pm10_atm": 2 * v}) for v in seq)
        # garbage, and the frames cut at odd places: the framer must not care
        data = b"\x42\x00\xff" + data
        for i in range(0, len(data), 13):
            port.send(data[i : i + 13])
        await until(lambda: drv.stats.data_frames == len(seq))
        got = by_name(await drv.read())
    assert got["pm25_atm"].value == pytest.approx(sum(seq) / len(seq))
    assert got["pm25_atm_min"].value == 1
    assert got["pm25_atm_max"].value == 30
    assert got["pm25_atm_count"].value == 5
    assert got["pm25_atm_last"].value == 1
    assert got["pm10_atm"].value == pytest.approx(2 * sum(seq) / len(seq))
    assert got["pm25_atm"].unit == "ug/m3"
    assert got["pm25_atm_count"].unit is None
    assert all(s.reason is None for s in got.values())
    # the active-mode set-up went to the sensor when the port opened
    assert bytes(port.received).startswith(codecs.PMS_WAKE + codecs.PMS_ACTIVE)


async def test_values_in_the_warm_up_are_uncertain(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="sds011", warmup="1h") as (drv, port):
        port.send(sds_encode(12.3, 45.6))
        got = by_name(await drv.read())
        assert drv.protocol_stats()["warming_up"] is True
    assert got["pm25"].value == pytest.approx(12.3)
    assert got["pm25"].uncertain
    assert got["pm25"].reason == "warming up"
    async with running(tmp_path, protocol="sds011", warmup=0) as (drv, port):
        port.send(sds_encode(12.3, 45.6))
        got = by_name(await drv.read())
    assert not got["pm10"].uncertain
    assert got["pm10"].reason is None


async def test_a_request_response_sensor_is_asked_on_each_poll(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="mhz19", warmup=0, timeout=0.5) as (drv, port):
        # the set-up: automatic baseline calibration off (the default)
        await until(lambda: len(port.received) >= 9)
        assert bytes(port.received[:9]) == codecs.mhz_abc(on=False)
        port.received.clear()

        async def answer() -> None:
            await until(lambda: bytes(port.received).endswith(codecs.MHZ_READ))
            port.send(mhz_encode(812, 27))

        task = asyncio.create_task(answer())
        got = by_name(await drv.read())
        await task
        assert got["co2"].value == 812
        assert got["temperature"].value == 27
        # nobody answers: each try waits its timeout, and the poll fails as no data
        with pytest.raises(DeviceUnavailable, match="no data"):
            await drv.read()
        assert drv.stats.timeouts == 2  # the request and its one retry


async def test_a_silent_sensor_is_no_data_and_a_garbled_one_no_valid_frame(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, protocol="pms5003", timeout=0.3, poll_interval=0.1) as (drv, port):
        with pytest.raises(DeviceUnavailable) as err:
            await drv.read()
        assert err.value.reason == "no data"
        await until(lambda: drv.protocol_stats()["port_state"] == "no data")
        port.send(pms_encode({"pm25_atm": 5}))
        await until(lambda: drv.protocol_stats()["port_state"] == "open")
        await drv.read()
        frame = bytearray(pms_encode({"pm25_atm": 5}))
        frame[-1] ^= 0xFF  # a wrong checksum, as at a wrong baud rate or with noise
        port.send(bytes(frame) * 3 + os.urandom(50).replace(b"BM", b"bm"))
        with pytest.raises(ProtocolError) as perr:
            await drv.read()
        assert perr.value.reason == "no valid frame"
        assert drv.protocol_stats()["bad_checksums"] == 3


async def test_an_unplugged_adapter_is_found_again_behind_its_link(tmp_path: Path) -> None:
    async with running(
        tmp_path, protocol="line", format="kv", fields={"T": {"unit": "degC"}}, timeout=0.5
    ) as (drv, port):
        port.send(b"T=21.5\r\n")
        assert by_name(await drv.read())["T"].value == 21.5
        loop = asyncio.get_running_loop()
        port.unplug()
        gone_at = loop.time()
        await until(lambda: drv.protocol_stats()["port_state"] == "missing")
        with pytest.raises(DeviceUnavailable) as err:
            await drv.read()
        assert err.value.reason == "port missing"
        await until(lambda: loop.time() - gone_at > 1.5)  # out for a while, then back
        port.plug()
        await until(lambda: drv.protocol_stats()["port_state"] == "open")
        port.send(b"T=22.5\n")
        assert by_name(await drv.read())["T"].value == 22.5
        st = drv.protocol_stats()
    assert st["opens"] == 2
    assert st["losses"] == 1
    gaps: list[dict[str, float]] = st["gaps"]  # type: ignore[assignment]
    assert len(gaps) == 1
    assert 1.5 <= gaps[0]["seconds"] < 5
    assert st["gap_total_s"] == pytest.approx(gaps[0]["seconds"], abs=0.1)


async def test_a_missing_port_at_start_fails_each_poll_until_it_appears(tmp_path: Path) -> None:
    link = tmp_path / "not-yet"
    drv = SerialDriver(config(link, protocol="nmea", timeout=0.2), SharedResources())
    async with drv:
        with pytest.raises(DeviceUnavailable, match="port missing"):
            await drv.read()
        port = FakePort(link)
        try:
            await until(lambda: drv.protocol_stats()["port_state"] == "open")
        finally:
            port.unplug()


def rmc(when: datetime) -> bytes:
    body = (
        f"GNRMC,{when:%H%M%S}.{when.microsecond // 10000:02d},A,1603.2640,N,10812.1320,E,"
        f"0.5,90.0,{when:%d%m%y},,,A"
    )
    return f"${body}*{codecs.nmea_checksum(body.encode()):02X}\r\n".encode()


async def test_a_gps_clock_source_reports_its_time(tmp_path: Path) -> None:
    times: list[tuple[float, float, str]] = []
    res = SharedResources(gps_time=lambda utc, mono, dev: times.append((utc, mono, dev)))
    when = datetime(2031, 5, 17, 3, 4, 5, 250000, tzinfo=UTC)
    async with running(tmp_path, res, protocol="nmea", clock_source=True) as (drv, port):
        port.send(rmc(when))
        got = by_name(await drv.read())
    assert got["latitude"].value == pytest.approx(16 + 3.264 / 60)
    assert got["longitude"].value == pytest.approx(108 + 12.132 / 60)
    assert got["speed"].value == pytest.approx(0.5 * 1852 / 3600)
    assert got["satellites"].reason == "no data"  # RMC has none; GGA would
    assert len(times) == 1
    assert times[0][0] == pytest.approx(when.timestamp())
    assert times[0][2] == "s1"


def sentence(body: str) -> bytes:
    return f"${body}*{codecs.nmea_checksum(body.encode()):02X}\r\n".encode()


async def test_a_gps_without_a_fix_reports_no_fix_for_the_position_only(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="nmea") as (drv, port):
        port.send(sentence("GPGGA,120000.00,,,,,0,03,,,M,,M,,"))
        port.send(sentence("GPGSV,1,1,03,01,40,083,46,02,17,308,41,12,07,344,39"))  # ignored
        got = by_name(await drv.read())
    assert got["fix_quality"].value == 0
    assert got["satellites"].value == 3
    for m in ("latitude", "longitude", "altitude"):
        assert got[m].value is None
        assert got[m].reason == "no fix"


async def test_text_fields_take_their_types_scale_and_names(tmp_path: Path) -> None:
    fields = {
        "t": {"scale": 0.1, "offset": -1.0, "unit": "degC", "name": "temperature"},
        "n": {"type": "int"},
        "door": {"type": "bool"},
        "fw": {"type": "str"},
    }
    async with running(
        tmp_path, protocol="line", format="csv", columns=["t", "n", "door", "fw"], fields=fields
    ) as (drv, port):
        port.send(b"250,7,on,v1.2\n260,9,off,v1.3\nnot,a,valid,line\n251,x,1,v\n")
        await until(lambda: drv.stats.data_frames == 2 and drv.stats.parse_errors == 2)
        got = by_name(await drv.read())
    assert got["temperature"].value == pytest.approx(24.5)  # mean of 24.0 and 25.0
    assert got["temperature"].unit == "degC"
    assert got["n"].value == 8  # mean of 7 and 9
    assert got["door"].value is False  # not a number: the last value
    assert got["fw"].value == "v1.3"


async def test_a_passive_pms_is_asked_and_its_stream_ignored(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="pms7003", mode="passive", warmup=0) as (drv, port):
        await until(lambda: len(port.received) >= 14)
        assert bytes(port.received[:14]) == codecs.PMS_WAKE + codecs.PMS_PASSIVE
        port.received.clear()
        port.send(pms_encode({"pm25_atm": 99}))  # unasked: not this poll's answer

        async def answer() -> None:
            await until(lambda: bytes(port.received).endswith(codecs.PMS_READ))
            port.send(pms_encode({"pm25_atm": 41}))

        task = asyncio.create_task(answer())
        got = by_name(await drv.read())
        await task
    assert got["pm25_atm"].value == 41


async def test_a_port_pulled_out_as_a_request_goes_is_port_missing_not_a_crash(
    tmp_path: Path,
) -> None:
    """Flushing a port that just vanished raises termios.error (not an OSError)."""
    async with running(tmp_path, protocol="mhz19", timeout=0.3, warmup=0) as (drv, port):
        port.unplug()
        with pytest.raises(DeviceUnavailable):
            await drv.read()
        port.plug()
        await until(lambda: drv.protocol_stats()["port_state"] == "open")


async def test_an_adapter_that_bounces_while_opening_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import termios

    import serial.serialposix as sp

    orig = sp.Serial._reset_input_buffer
    calls = [0]

    def bouncing(self: sp.Serial) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise termios.error(5, "Input/output error")
        orig(self)

    monkeypatch.setattr(sp.Serial, "_reset_input_buffer", bouncing)
    async with running(tmp_path, protocol="nmea") as (drv, _port):
        assert drv.protocol_stats()["opens"] == 1
    assert calls[0] >= 2


async def test_a_window_with_warm_up_frames_is_uncertain_even_after_the_warm_up(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, protocol="sds011", warmup=0.5) as (drv, port):
        port.send(sds_encode(99.9, 99.9))  # in the warm-up
        await until(lambda: drv.stats.data_frames == 1)
        await asyncio.sleep(0.6)  # the warm-up's length: the only way past it
        port.send(sds_encode(10.0, 10.0))
        await until(lambda: drv.stats.data_frames == 2)
        mixed = by_name(await drv.read())
        port.send(sds_encode(10.0, 10.0))
        after = by_name(await drv.read())
    assert mixed["pm25"].uncertain
    assert mixed["pm25"].value == pytest.approx(54.95)
    assert not after["pm25"].uncertain
    assert after["pm25"].value == pytest.approx(10.0)


async def test_silence_after_earlier_noise_is_no_data(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="pms5003", timeout=0.3) as (drv, port):
        port.send(b"\x42\x4d\x00garbage" + pms_encode({"pm25_atm": 7}))
        await drv.read()
        with pytest.raises(DeviceUnavailable) as err:
            await drv.read()
    assert err.value.reason == "no data"


async def test_values_the_buffer_cannot_keep_are_counted_not_raised(tmp_path: Path) -> None:
    async with running(
        tmp_path,
        protocol="line",
        format="kv",
        max_line=4096,
        fields={"c": {"type": "int"}, "x": {}},
    ) as (drv, port):
        port.send(b"c=18446744073709551615\nx=1e999\nc=" + b"9" * 400 + b"\nc=5,x=2.5\n")
        await until(lambda: drv.stats.parse_errors == 3 and drv.stats.data_frames == 1)
        got = by_name(await drv.read())
    assert got["c"].value == 5
    assert got["x"].value == 2.5


async def test_abc_on_reaches_the_sensor(tmp_path: Path) -> None:
    async with running(tmp_path, protocol="mhz19", abc=True) as (_drv, port):
        await until(lambda: len(port.received) >= 9)
    assert bytes(port.received[:9]) == codecs.mhz_abc(on=True)
    assert codecs.mhz_abc(on=True) != codecs.mhz_abc(on=False)
