"""Serial sensors on real pseudo-terminals: frames, commands and faults, read as a client
reads them. The frame checks here are written independently of ``uart_protocols.py``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import json
import operator
import os
import re
import socket
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tepi_sim import ConfigError, Simulator, load_config
from tepi_sim.control import apply_command
from tepi_sim.model import UartDeviceConfig
from tepi_sim.uart import UartDevice

HW_SIM = Path(__file__).resolve().parents[2] / "hw-sim"
PMS_METRICS = (
    "pm1_cf1",
    "pm25_cf1",
    "pm10_cf1",
    "pm1_atm",
    "pm25_atm",
    "pm10_atm",
    "n0_3",
    "n0_5",
    "n1_0",
    "n2_5",
    "n5_0",
    "n10",
)
NMEA_LINE = re.compile(
    rb"\$(?P<body>(?P<talker>[A-Z]{2})(?P<kind>[A-Z]{3}),[^*$]*)\*(?P<cs>[0-9A-F]{2})\r\n"
)


class Port:
    """A client on the pty: raw, non-blocking, reading into ``buf`` (and ``chunks``: what
    each read returned) on the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        termios.tcflush(self.fd, termios.TCIFLUSH)  # start from now, as after opening a port
        self.buf = bytearray()
        self.chunks: list[bytes] = []

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read_until(self, done: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
        """Read until ``done(buf)``; TimeoutError if it does not happen in time."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self.fd, ready.set)
        try:
            async with asyncio.timeout(timeout):
                while not done(bytes(self.buf)):
                    await ready.wait()
                    ready.clear()
                    self._read()
        finally:
            loop.remove_reader(self.fd)
        return bytes(self.buf)

    async def read_for(self, seconds: float) -> bytes:
        """Everything that arrives within ``seconds`` (for checks that nothing does)."""
        start = len(self.buf)
        with contextlib.suppress(TimeoutError):
            await self.read_until(lambda _: False, timeout=seconds)
        return bytes(self.buf[start:])

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self.chunks.append(data)
        self.buf += data

    def clear(self) -> None:
        self.buf.clear()
        self.chunks.clear()

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def ports() -> Iterator[Callable[[str | Path], Port]]:
    opened: list[Port] = []

    def open_port(path: str | Path) -> Port:
        port = Port(path)
        opened.append(port)
        return port

    yield open_port
    for port in opened:
        with contextlib.suppress(OSError):
            port.close()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Simulator]]]:
    """Start a simulator with the given uart devices (or a whole config)."""
    sims: list[Simulator] = []

    async def run(*devices: dict[str, Any], config: dict[str, Any] | None = None) -> Simulator:
        sim = Simulator(config or {"seed": 7, "devices": list(devices)})
        await sim.start()
        sims.append(sim)
        return sim

    yield run
    for sim in sims:
        await sim.stop()


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def scan(
    buf: bytes, header: bytes, length: int, valid: Callable[[bytes], bool]
) -> tuple[list[bytes], int, int]:
    """Complete frames with a good checksum, candidates rejected, bytes outside frames."""
    frames: list[bytes] = []
    rejected = skipped = 0
    i = 0
    while True:
        start = buf.find(header, i)
        if start < 0 or start + length > len(buf):
            skipped += (len(buf) if start < 0 else start) - i
            return frames, rejected, skipped
        skipped += start - i
        frame = buf[start : start + length]
        if valid(frame):
            frames.append(frame)
            i = start + length
        else:
            rejected += 1
            skipped += 1
            i = start + 1


def pms_valid(frame: bytes) -> bool:
    return frame[2:4] == b"\x00\x1c" and sum(frame[:30]) & 0xFFFF == int.from_bytes(frame[30:])


def pms_frames(buf: bytes) -> list[dict[str, float]]:
    frames, _, _ = scan(buf, b"BM", 32, pms_valid)
    return [
        {m: float(int.from_bytes(f[4 + 2 * i : 6 + 2 * i])) for i, m in enumerate(PMS_METRICS)}
        for f in frames
    ]


def pms_command(cmd: int, data: int, lrc_error: int = 0) -> bytes:
    body = bytes((0x42, 0x4D, cmd, data >> 8, data & 0xFF))
    return body + ((sum(body) + lrc_error) & 0xFFFF).to_bytes(2)


def sds_valid(frame: bytes) -> bool:
    return frame[9] == 0xAB and sum(frame[2:8]) & 0xFF == frame[8]


def sds_frames(buf: bytes, kind: int = 0xC0) -> list[bytes]:
    return scan(buf, bytes((0xAA, kind)), 10, sds_valid)[0]


def sds_values(frame: bytes) -> dict[str, float]:
    return {
        "pm25": int.from_bytes(frame[2:4], "little") / 10,
        "pm10": int.from_bytes(frame[4:6], "little") / 10,
    }


def sds_command(
    command: int,
    write: int = 0,
    value: int = 0,
    *,
    target: int = 0xFFFF,
    new_id: int | None = None,
    checksum_error: int = 0,
) -> bytes:
    data = bytearray(15)
    data[0:3] = (command, write, value)
    if new_id is not None:
        data[11:13] = new_id.to_bytes(2)
    data[13:15] = target.to_bytes(2)
    return b"\xaa\xb4" + data + bytes(((sum(data) + checksum_error) & 0xFF, 0xAB))


def mhz_checksum(frame: bytes) -> int:
    return (0xFF - (sum(frame[1:8]) & 0xFF) + 1) & 0xFF


def mhz_command(cmd: int, b3: int = 0, checksum_error: int = 0) -> bytes:
    frame = bytes((0xFF, 0x01, cmd, b3, 0, 0, 0, 0))
    return frame + bytes(((mhz_checksum(frame + b"\x00") + checksum_error) & 0xFF,))


def nmea_sentences(buf: bytes) -> list[re.Match[bytes]]:
    """Complete sentences with a correct checksum."""
    out = []
    for match in NMEA_LINE.finditer(buf):
        body = match["body"]
        if functools.reduce(operator.xor, body, 0) == int(match["cs"], 16):
            out.append(match)
    return out


def nmea_utc(hhmmss: bytes, ddmmyy: bytes) -> float:
    when = dt.datetime.strptime((ddmmyy + hhmmss[:6]).decode(), "%d%m%y%H%M%S")
    return when.replace(tzinfo=dt.UTC).timestamp() + int(hhmmss[7:9]) / 100


def in_sent_order(decoded: list[dict[str, float]], device: UartDevice) -> bool:
    """``decoded`` is a run of consecutive entries of ``device.sent``."""
    sent = [values for _, values in device.sent]
    return any(sent[i : i + len(decoded)] == decoded for i in range(len(sent)))


def pms(**extra: Any) -> dict[str, Any]:
    return {"id": "pm", "transport": "uart", "protocol": "pms5003", "interval_s": 0.03, **extra}


async def test_pms_streams_checked_frames_that_match_what_was_sent(
    start: Callable[..., Awaitable[Simulator]],
    ports: Callable[[str | Path], Port],
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyPM"
    sim = await start(pms(link=str(link), values={"pm25_atm": [10, 20, 30]}))
    assert link.readlink() == Path(sim.endpoint("pm"))
    port = ports(link)
    buf = await port.read_until(lambda b: len(pms_frames(b)) >= 6)
    frames = pms_frames(buf)
    assert in_sent_order(frames, sim.uart_device("pm"))
    cycle = [f["pm25_atm"] for f in frames]
    assert set(cycle) <= {10, 20, 30}
    assert all((b - a) % 30 == 10 for a, b in itertools.pairwise(cycle)), cycle
    for f in frames:  # the metrics that drift keep their sizes in order, like a real sensor
        assert 0 < f["pm1_cf1"] <= f["pm25_cf1"] <= f["pm10_cf1"]
        assert f["n0_3"] >= f["n0_5"] >= f["n1_0"] >= f["n2_5"] >= f["n10"]


async def test_pms_passive_mode_sleep_and_a_bad_lrc(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(pms())
    dev = sim.uart_device("pm")
    port = ports(sim.endpoint("pm"))
    await port.read_until(lambda b: len(pms_frames(b)) >= 1)

    port.send(pms_command(0xE1, 0))  # passive
    await until(lambda: dev.player.state()["mode"] == "passive")
    await port.read_for(0.1)  # a frame that was already on its way
    port.clear()
    assert await port.read_for(0.25) == b"", "passive: no streaming, no reply to the command"

    port.send(pms_command(0xE1, 1, lrc_error=1))  # "active" with a bad LRC: ignored
    port.send(pms_command(0xE2, 0))  # read
    buf = await port.read_until(lambda b: len(pms_frames(b)) >= 1)
    assert len(buf) == 32, "exactly one answer"
    assert pms_frames(buf) == [dev.sent[-1][1]]
    assert dev.state() == {"mode": "passive", "asleep": False}

    port.clear()
    port.send(pms_command(0xE4, 0))  # sleep
    await until(lambda: dev.state()["asleep"])
    port.send(pms_command(0xE2, 0))
    assert await port.read_for(0.25) == b"", "asleep: reads are not answered"
    port.send(pms_command(0xE4, 1))  # wake
    await until(lambda: not dev.state()["asleep"])
    port.send(pms_command(0xE2, 0))
    assert len(pms_frames(await port.read_until(lambda b: len(pms_frames(b)) >= 1))) == 1

    port.clear()
    port.send(pms_command(0xE1, 1))  # active again: streams without being asked
    await port.read_until(lambda b: len(pms_frames(b)) >= 2)


async def test_sds011_streams_and_takes_period_mode_and_id_commands(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start({"id": "sds", "transport": "uart", "protocol": "sds011", "interval_s": 0.03})
    dev = sim.uart_device("sds")
    port = ports(sim.endpoint("sds"))
    frames = sds_frames(await port.read_until(lambda b: len(sds_frames(b)) >= 3))
    assert in_sent_order([sds_values(f) for f in frames], dev)
    device_id = int.from_bytes(frames[0][6:8])
    assert device_id == dev.state()["device_id"]

    async def reply(command: bytes) -> bytes:
        port.clear()
        port.send(command)
        return sds_frames(await port.read_until(lambda b: bool(sds_frames(b, 0xC5))), 0xC5)[0]

    assert (await reply(sds_command(8, 1, 1)))[2:5] == bytes((8, 1, 1))  # period: 1 minute
    assert dev.state()["working_period_min"] == 1
    port.clear()
    assert sds_frames(await port.read_for(0.25)) == [], "one frame a minute now"
    assert (await reply(sds_command(8, 0)))[2:5] == bytes((8, 0, 1)), "query answers the period"
    await reply(sds_command(8, 1, 0))  # continuous again
    await port.read_until(lambda b: len(sds_frames(b)) >= 1)

    assert (await reply(sds_command(2, 1, 1)))[2:5] == bytes((2, 1, 1))  # query mode
    assert dev.state()["reporting"] == "query"
    port.clear()
    assert sds_frames(await port.read_for(0.25)) == [], "query mode: no streaming"
    port.send(sds_command(4, checksum_error=1))  # bad checksum: ignored
    port.send(sds_command(4, target=(device_id + 1) & 0xFFFF))  # another sensor's
    assert await port.read_for(0.2) == b""
    port.send(sds_command(4))
    frame = sds_frames(await port.read_until(lambda b: bool(sds_frames(b))))[0]
    assert sds_values(frame) == dev.sent[-1][1]

    answer = await reply(sds_command(5, target=device_id, new_id=0x1234))
    assert answer[2] == 5
    assert answer[6:8] == b"\x12\x34"
    assert dev.state()["device_id"] == 0x1234
    assert (await reply(sds_command(6, 1, 0)))[2:5] == bytes((6, 1, 0))  # sleep
    assert dev.state()["asleep"] is True


async def test_mhz19_answers_reads_and_acknowledges_abc(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(
        {"id": "co2", "transport": "uart", "protocol": "mhz19", "values": {"co2": [450, 1300]}}
    )
    dev = sim.uart_device("co2")
    port = ports(sim.endpoint("co2"))
    assert mhz_command(0x86) == bytes.fromhex("FF 01 86 00 00 00 00 00 79")
    readings = []
    for _ in range(3):
        port.clear()
        port.send(mhz_command(0x86))
        answer = await port.read_until(lambda b: len(b) >= 9)
        assert len(answer) == 9
        assert answer[:2] == b"\xff\x86"
        assert answer[8] == mhz_checksum(answer)
        readings.append({"co2": answer[2] * 256 + answer[3], "temperature": answer[4] - 40})
        assert readings[-1] == dev.sent[-1][1]
    assert [r["co2"] for r in readings] == [450, 1300, 450]

    port.clear()
    port.send(mhz_command(0x86, checksum_error=1))
    assert await port.read_for(0.25) == b"", "a bad checksum is ignored, and nothing streams"
    assert dev.state() == {"abc": True}
    port.send(mhz_command(0x79, 0x00))
    ack = await port.read_until(lambda b: len(b) >= 9)
    assert ack == bytes.fromhex("FF 79 01 00 00 00 00 00 86")
    assert dev.state() == {"abc": False}
    port.clear()
    port.send(mhz_command(0x79, 0xA0))
    await port.read_until(lambda b: len(b) >= 9)
    assert dev.state() == {"abc": True}


async def test_nmea_rmc_and_gga_with_fix_talker_and_clock_offset(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    offset = -86400 * 400.5  # a receiver whose clock is far from the host's
    sim = await start(
        {
            "id": "gps",
            "transport": "uart",
            "protocol": "nmea",
            "interval_s": 0.02,
            "talker": "GN",
            "position": [16.0544, 108.2022, 12.5],
            "clock_offset_s": offset,
        }
    )
    dev = sim.uart_device("gps")
    port = ports(sim.endpoint("gps"))

    def enough(buf: bytes) -> bool:
        kinds = [m["kind"] for m in nmea_sentences(buf)]
        return kinds.count(b"RMC") >= 5 and bool({b"GSV", b"VTG"} & set(kinds))

    buf = await port.read_until(enough)
    now = time.time() + offset
    sentences = nmea_sentences(buf)
    lines = [line for line in buf.split(b"\r\n") if line.startswith(b"$")]
    assert len(sentences) >= len(lines) - 2, "every complete line is a valid sentence"
    sent_utc = [values["utc"] for _, values in dev.sent]
    for match in sentences:
        assert match["talker"] == b"GN"
        assert len(match[0]) <= 82
        fields = match["body"].split(b",")
        if match["kind"] == b"RMC":
            assert fields[2:7] == [b"A", b"1603.2640", b"N", b"10812.1320", b"E"]
            utc = nmea_utc(fields[1], fields[9])
            assert 0 <= now - utc < 5
            assert any(abs(utc - t) < 0.001 for t in sent_utc)
        elif match["kind"] == b"GGA":
            assert fields[2:7] == [b"1603.2640", b"N", b"10812.1320", b"E", b"1"]
            assert re.fullmatch(rb"\d\d", fields[7])
            assert fields[9:11] == [b"12.5", b"M"]
    rmc = [v for _, v in dev.sent if "valid" in v]
    assert rmc[-1]["lat"] == pytest.approx(16.0544, abs=1e-6)
    assert rmc[-1]["lon"] == pytest.approx(108.2022, abs=1e-6)


async def test_nmea_without_fix(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(
        {"id": "gps", "transport": "uart", "protocol": "nmea", "interval_s": 0.02, "fix": False}
    )
    port = ports(sim.endpoint("gps"))
    buf = await port.read_until(
        lambda b: {m["kind"] for m in nmea_sentences(b)} >= {b"RMC", b"GGA"}
    )
    for match in nmea_sentences(buf):
        fields = match["body"].split(b",")
        assert match["talker"] == b"GP", "the default talker"
        if match["kind"] == b"RMC":
            assert fields[2] == b"V"
            assert fields[3:7] == [b""] * 4
        elif match["kind"] == b"GGA":
            assert fields[2:6] == [b""] * 4
            assert fields[6] == b"0"


async def test_line_sensor_formats_its_metrics(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    fmt = "T={temperature:.1f};H={humidity:.0f};P={pressure}"
    sim = await start(
        {
            "id": "node",
            "transport": "uart",
            "protocol": "line",
            "interval_s": 0.02,
            "line_format": fmt,
            "line_ending": "\r\n",
            "values": {"pressure": [1000, 1001.5]},
        }
    )
    dev = sim.uart_device("node")
    port = ports(sim.endpoint("node"))
    buf = await port.read_until(lambda b: b.count(b"\r\n") >= 5)
    lines = buf.split(b"\r\n")[1:-1]  # the first may have been cut by the flush
    assert lines
    for line in lines:
        assert re.fullmatch(rb"T=\d+\.\d;H=\d+;P=100(0\.0|1\.5)", line), line
    sent = [(fmt.format(**values)).encode() for _, values in dev.sent]
    assert any(sent[i : i + len(lines)] == lines for i in range(len(sent)))


async def test_garbage_between_frames(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(pms(fault="garbage"))
    port = ports(sim.endpoint("pm"))
    buf = await port.read_until(lambda b: len(pms_frames(b)) >= 8)
    _, _, skipped = scan(buf, b"BM", 32, pms_valid)
    assert skipped > 0, "noise between the frames"
    assert in_sent_order(pms_frames(buf)[1:], sim.uart_device("pm"))


async def test_split_frames_arrive_in_pieces(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(pms(interval_s=0.15, fault="split"))
    port = ports(sim.endpoint("pm"))
    buf = await port.read_until(lambda b: len(pms_frames(b)) >= 3)
    assert any(len(chunk) < 32 for chunk in port.chunks), [len(c) for c in port.chunks]
    assert in_sent_order(pms_frames(buf), sim.uart_device("pm"))


async def test_bad_checksum_on_every_other_frame(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(
        {
            "id": "sds",
            "transport": "uart",
            "protocol": "sds011",
            "interval_s": 0.02,
            "fault": "bad_checksum",
        }
    )
    dev = sim.uart_device("sds")
    port = ports(sim.endpoint("sds"))

    def shaped(buf: bytes) -> list[bytes]:  # AA C0 ... AB, whatever the checksum
        return scan(buf, b"\xaa\xc0", 10, lambda f: f[9] == 0xAB)[0]

    buf = await port.read_until(lambda b: len(shaped(b)) >= 8)
    good = [sds_valid(f) for f in shaped(buf)]
    assert all(a != b for a, b in itertools.pairwise(good)), good
    assert dev.bad_frames_sent >= good.count(False) >= 4
    assert in_sent_order([sds_values(f) for f in shaped(buf) if sds_valid(f)], dev)
    assert len(dev.sent) == dev.frames_sent, "broken frames are not in `sent`"


async def test_silence_sends_and_answers_nothing(
    start: Callable[..., Awaitable[Simulator]], ports: Callable[[str | Path], Port]
) -> None:
    sim = await start(pms(fault="silence"), {"id": "co2", "transport": "uart", "protocol": "mhz19"})
    sim.set_fault("co2", "silence")
    pm, co2 = ports(sim.endpoint("pm")), ports(sim.endpoint("co2"))
    co2.send(mhz_command(0x86))
    assert await pm.read_for(0.25) == b""
    assert await co2.read_for(0.01) == b""
    assert sim.uart_device("pm").frames_sent == sim.uart_device("co2").frames_sent == 0

    sim.set_fault("pm", "none")
    sim.set_fault("co2", "none")
    co2.send(mhz_command(0x86))
    await co2.read_until(lambda b: len(b) >= 9)
    await pm.read_until(lambda b: len(pms_frames(b)) >= 1)


@pytest.mark.parametrize(
    ("device", "sync"),
    [(pms(), b"BM"), ({"id": "gps", "transport": "uart", "protocol": "nmea"}, b"$")],
)
async def test_baud_mismatch_never_yields_a_frame(
    start: Callable[..., Awaitable[Simulator]],
    ports: Callable[[str | Path], Port],
    device: dict[str, Any],
    sync: bytes,
) -> None:
    sim = await start({**device, "interval_s": 0.02, "fault": "baud_mismatch"})
    dev = sim.uart_device(device["id"])
    port = ports(sim.endpoint(device["id"]))
    buf = await port.read_until(lambda b: len(b) >= 300)
    assert sync[:1] not in buf
    assert pms_frames(buf) == []
    assert nmea_sentences(buf) == []
    assert dev.scrambled_frames > 0
    assert (dev.frames_sent, len(dev.sent)) == (0, 0)


async def test_unplugged_closes_the_pty_and_replug_brings_a_new_one_behind_the_link(
    start: Callable[..., Awaitable[Simulator]],
    ports: Callable[[str | Path], Port],
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyNODE"
    sim = await start(
        {
            "id": "node",
            "transport": "uart",
            "protocol": "line",
            "interval_s": 0.02,
            "link": str(link),
        }
    )
    dev = sim.uart_device("node")
    old = ports(link)
    await old.read_until(lambda b: b.count(b"\n") >= 1)
    old_path = sim.endpoint("node")

    sim.set_fault("node", "unplugged")
    assert not link.is_symlink(), "the adapter is out: its path is gone"
    with pytest.raises(RuntimeError, match="unplugged"):
        sim.endpoint("node")
    assert dev.status()["path"] is None
    with contextlib.suppress(OSError):  # the client's open port hangs up: EOF or an error
        assert os.read(old.fd, 100) == b""

    sim.set_fault("node", "none")
    assert dev.replugs == 1
    assert link.readlink() == Path(sim.endpoint("node"))
    assert sim.endpoint("node") != old_path, "a new pty (the old one is still held open)"
    again = ports(link)
    await again.read_until(lambda b: b.count(b"\n") >= 2)


async def test_control_commands_and_manifest(
    start: Callable[..., Awaitable[Simulator]], tmp_path: Path
) -> None:
    link = tmp_path / "ttyPM"
    sim = await start(
        config={
            "devices": [
                {
                    "id": "meter",
                    "transport": "tcp",
                    "unit": 1,
                    "registers": [{"address": 0, "kind": "counter"}],
                },
                pms(link=str(link)),
            ]
        }
    )
    dev = sim.uart_device("pm")

    def cmd(obj: dict[str, Any]) -> dict[str, Any]:
        return apply_command(sim, json.dumps(obj).encode())

    assert cmd({"device": "pm", "fault": "garbage"}) == {"ok": True}
    assert dev.fault == "garbage"
    answer = cmd({"device": "pm", "fault": "no_reply"})
    assert answer["ok"] is False
    assert "baud_mismatch" in answer["error"], "the error lists the uart modes"
    assert cmd({"device": "pm", "fault": "none", "delay_s": 1})["ok"] is False
    assert cmd({"device": "meter", "fault": "no_reply"}) == {"ok": True}

    status = cmd({"query": "uart"})
    assert status["ok"] is True
    pm = status["uart"]["pm"]
    assert pm["path"] == sim.endpoint("pm")
    assert pm["mode"] == "active"
    assert {"frames_sent", "bad_frames_sent", "fault", "asleep"} <= set(pm)
    assert cmd({"query": "counters"})["counters"] == {"meter": {"holding/0": 0}}

    assert sim.manifest()["devices"]["pm"] == {
        "transport": "uart",
        "protocol": "pms5003",
        "endpoint": sim.endpoint("pm"),
        "link": str(link),
    }
    assert set(sim.endpoints()) == {"meter", "pm"}
    with pytest.raises(KeyError, match="is a uart device"):
        sim.device("pm")


def test_config_errors_name_their_key_paths() -> None:
    uart = {"transport": "uart"}
    config = {
        "devices": [
            {"id": "a", **uart, "protocol": "pms5030"},
            {
                "id": "b",
                **uart,
                "protocol": "pms5003",
                "unit": 1,
                "talker": "GN",
                "values": {"pm25": [1], "pm10_atm": [1.5]},
            },
            {"id": "c", **uart, "protocol": "line", "line_format": "X={pressure}"},
            {"id": "d", **uart, "protocol": "mhz19", "fault": "no_reply", "interval_s": 0},
            {
                "id": "e",
                "transport": "rtu",
                "unit": 1,
                "protocol": "nmea",
                "registers": [{"address": 0, "kind": "counter"}],
            },
            {"id": "f", **uart, "protocol": "nmea", "position": [95, 0, 0], "talker": "gp"},
            {"id": "g", **uart, "protocol": "sds011", "link": "/tmp/x"},
            {"id": "h", **uart, "protocol": "sds011", "link": "/tmp/x"},
        ]
    }
    with pytest.raises(ConfigError) as info:
        load_config(config)
    errors = info.value.errors
    expected = [
        "devices[0].protocol: unknown protocol 'pms5030' (did you mean 'pms5003'?)",
        "devices[1].unit: only valid for transport rtu, tcp or rtu-tcp",
        "devices[1].talker: only valid for protocol nmea",
        "devices[1].values.pm10_atm[0]: pm10_atm is a whole number, got 1.5",
        "devices[3].fault: unknown fault 'no_reply'",
        "devices[3].interval_s: must be between 0.001 and 86400, got 0.0",
        "devices[4].protocol: only valid for transport uart",
        "devices[5].talker: must be two capital letters like GP or GN, got 'gp'",
        "devices[5].position: latitude must be between -90 and 90, got 95.0",
        "devices[7].link: '/tmp/x' is already the link of another pty",
    ]
    for message in expected:
        assert any(e.startswith(message) for e in errors), (message, errors)
    assert any(e.startswith("devices[1].values.pm25: unknown metric for pms5003") for e in errors)
    assert any(e.startswith("devices[2].line_format: unknown metric {pressure}") for e in errors)


def test_uart_config_loads_with_defaults() -> None:
    config = load_config(
        {
            "devices": [
                {"id": "pm", "transport": "uart", "protocol": "pms7003", "values": {"n10": [1]}},
                {"id": "gps", "transport": "uart", "protocol": "nmea", "clock_offset_s": 2},
            ]
        }
    )
    assert config.devices == ()
    pm, gps = config.uart_devices
    assert isinstance(pm, UartDeviceConfig)
    assert (pm.interval_s, pm.fault, pm.link, dict(pm.values)) == (
        1.0,
        "none",
        None,
        {"n10": (1.0,)},
    )
    assert (gps.talker, gps.fix, gps.clock_offset_s) == ("GP", True, 2.0)
    assert gps.line_format == "T={temperature:.1f},H={humidity:.1f}"


@pytest.mark.timeout(30)
def test_cli_lists_uart_devices_and_applies_their_faults(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text(
        "devices:\n  - {id: pm-1, transport: uart, protocol: pms5003}\n", encoding="utf-8"
    )
    control = tmp_path / "control.sock"
    args = ["--config", str(config), "--fault", "pm-1=split", "--control", str(control)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepi_sim.cli", *args],
        env={**os.environ, "PYTHONPATH": str(HW_SIM)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"pm-1  uart  protocol=pms5003  /dev/pts/\d+\n", line), line
        assert proc.stdout.readline() == "ready\n"
        with socket.socket(socket.AF_UNIX) as ctl:
            ctl.settimeout(10)
            ctl.connect(str(control))
            stream = ctl.makefile("rwb")
            stream.write(b'{"query": "uart"}\n')
            stream.flush()
            status = json.loads(stream.readline())["uart"]["pm-1"]
        assert status["fault"] == "split"
        assert status["path"] == line.split()[-1]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
