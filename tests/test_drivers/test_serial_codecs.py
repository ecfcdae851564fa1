"""Decoders and commands against datasheet vectors, round trips, and fuzzing: on any bytes a
decoder or parser gives a value, None or a FrameError, never another exception."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import reduce
from operator import xor
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serial_frames import PMS_SLEEP, mhz_encode, pms_encode, sds_encode, sds_reply

from tepi.drivers.serial.codecs import (
    MHZ_READ,
    PMS_ACTIVE,
    PMS_FRAME_LEN,
    PMS_METRICS,
    PMS_PASSIVE,
    PMS_READ,
    PMS_WAKE,
    SDS_QUERY,
    ChecksumError,
    Fix,
    FrameError,
    LineParser,
    mhz_abc,
    mhz_checksum,
    mhz_command,
    mhz_decode,
    mhz_framer,
    nmea_checksum,
    nmea_framer,
    nmea_parse,
    pms_command,
    pms_decode,
    pms_framer,
    sds_command,
    sds_decode,
    sds_framer,
    sds_set_query_mode,
    sds_set_working_period,
    sds_sleep,
)

# ---- PMS5003 / PMS7003 ---------------------------------------------------------------------------

# The datasheet's frame layout, one row per field: (bytes, meaning, value).
PMS_TABLE = [
    (2, "start characters", 0x424D),
    (2, "frame length = 2*13 + 2", 28),
    (2, "PM1.0 CF=1", 5),
    (2, "PM2.5 CF=1", 10),
    (2, "PM10 CF=1", 12),
    (2, "PM1.0 atmospheric", 5),
    (2, "PM2.5 atmospheric", 10),
    (2, "PM10 atmospheric", 12),
    (2, ">0.3 um in 0.1 L", 1000),
    (2, ">0.5 um in 0.1 L", 300),
    (2, ">1.0 um in 0.1 L", 80),
    (2, ">2.5 um in 0.1 L", 10),
    (2, ">5.0 um in 0.1 L", 2),
    (2, ">10 um in 0.1 L", 1),
    (2, "reserved: version 0x97, error 0", 0x9700),
]


def test_pms_frame_built_from_the_datasheet_table() -> None:
    body = bytearray()
    for width, _meaning, value in PMS_TABLE:
        body += value.to_bytes(width, "big")
    assert len(body) == 30
    # By hand: 0x42+0x4D+0x1C = 171; words 5+10+12+5+10+12 = 54; 0x03+0xE8 = 235;
    # 0x01+0x2C = 45; 80 + 10 + 2 + 1 = 93; 0x97 = 151. 749 = 0x02ED.
    frame = bytes(body) + bytes([0x02, 0xED])
    assert frame.hex().upper() == (
        "424D001C0005000A000C0005000A000C03E8012C0050000A000200019700" + "02ED"
    )
    values = pms_decode(frame)
    assert values == {
        "pm1_cf1": 5,
        "pm25_cf1": 10,
        "pm10_cf1": 12,
        "pm1_atm": 5,
        "pm25_atm": 10,
        "pm10_atm": 12,
        "n0_3": 1000,
        "n0_5": 300,
        "n1_0": 80,
        "n2_5": 10,
        "n5_0": 2,
        "n10": 1,
    }
    assert tuple(values) == PMS_METRICS
    assert pms_framer().feed(frame) == [frame]
    # The same values encoded give the same frame but the reserved word.
    assert pms_encode(values)[4:28] == frame[4:28]


def test_pms_frame_errors() -> None:
    good = pms_encode({"pm25_atm": 12})
    assert pms_decode(good)["pm25_atm"] == 12
    with pytest.raises(ChecksumError):
        pms_decode(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(FrameError, match="length"):
        pms_decode(good[:-1])
    with pytest.raises(FrameError, match="header"):
        pms_decode(b"BM\x00\x14" + good[4:])
    with pytest.raises(FrameError, match="header"):
        pms_decode(b"MB" + good[2:])
    assert not issubclass(FrameError, ChecksumError)


@pytest.mark.parametrize(
    ("command", "datasheet"),
    [
        (PMS_PASSIVE, "42 4D E1 00 00 01 70"),
        (PMS_ACTIVE, "42 4D E1 00 01 01 71"),
        (PMS_READ, "42 4D E2 00 00 01 71"),
        (PMS_SLEEP, "42 4D E4 00 00 01 73"),
        (PMS_WAKE, "42 4D E4 00 01 01 74"),
    ],
)
def test_pms_commands_match_the_datasheet(command: bytes, datasheet: str) -> None:
    assert command == bytes.fromhex(datasheet)


def test_pms_command_and_encode_refuse_what_does_not_fit() -> None:
    assert pms_command(0xE1, 0x0102)[3:5] == b"\x01\x02"
    for bad in [(0x100, 0), (-1, 0), (0xE1, 0x10000)]:
        with pytest.raises(ValueError, match="0x"):
            pms_command(*bad)
    with pytest.raises(ValueError, match="pm2_5"):
        pms_encode({"pm2_5": 1})
    with pytest.raises(ValueError, match="n10"):
        pms_encode({"n10": 70000})


@given(st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12))
def test_pms_round_trip(words: list[int]) -> None:
    values = dict(zip(PMS_METRICS, words, strict=True))
    frame = pms_encode(values)
    assert len(frame) == PMS_FRAME_LEN
    assert pms_decode(frame) == values


# ---- SDS011 --------------------------------------------------------------------------------------


def test_sds_data_frame_vector() -> None:
    frame = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")
    # D4+04+3A+0A+A1+60 = 0x21D: the checksum byte 1D is right.
    assert sum(frame[2:8]) & 0xFF == 0x1D
    assert sds_decode(frame) == {"pm25": 123.6, "pm10": 261.8}  # 0x04D4 = 1236, 0x0A3A = 2618
    assert sds_reply(frame) is None
    assert sds_encode(123.6, 261.8, device_id=0xA160) == frame
    with pytest.raises(ChecksumError):
        sds_decode(frame[:8] + b"\x1e\xab")
    with pytest.raises(FrameError, match="header"):
        sds_decode(frame[:9] + b"\xac")
    with pytest.raises(FrameError, match="header"):
        sds_decode(b"\xaa\xc1" + frame[2:])
    with pytest.raises(FrameError, match="length"):
        sds_decode(frame + b"\x00")


def test_sds_command_reply() -> None:
    # The answer to "set query mode" from sensor A160: 02+01+01+00+A1+60 = 0x105.
    frame = bytes.fromhex("AA C5 02 01 01 00 A1 60 05 AB")
    assert sds_reply(frame) == (2, bytes.fromhex("01 01 00 A1 60"))
    assert sds_decode(frame) is None
    assert sds_framer().feed(frame + sds_encode(1.0, 2.0)) == [frame, sds_encode(1.0, 2.0)]


# Commands as in Nova Fitness's "Laser Dust Sensor Control Protocol V1.3", addressed to FFFF.
@pytest.mark.parametrize(
    ("command", "datasheet"),
    [
        (sds_set_query_mode(True), "AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB"),
        (sds_set_query_mode(False), "AA B4 02 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 01 AB"),
        (SDS_QUERY, "AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB"),
        (sds_sleep(True), "AA B4 06 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 05 AB"),
        (sds_sleep(False), "AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 06 AB"),
        (sds_set_working_period(3), "AA B4 08 01 03 00 00 00 00 00 00 00 00 00 00 FF FF 0A AB"),
        (sds_set_working_period(0), "AA B4 08 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 07 AB"),
        (
            sds_command(4, device_id=0xA160),
            "AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 A1 60 05 AB",
        ),
    ],
)
def test_sds_commands(command: bytes, datasheet: str) -> None:
    assert command == bytes.fromhex(datasheet)
    assert len(command) == 19
    assert sum(command[2:17]) & 0xFF == command[17]


def test_sds_commands_refuse_what_does_not_fit() -> None:
    for minutes in (-1, 31):
        with pytest.raises(ValueError, match=r"0\.\.30"):
            sds_set_working_period(minutes)
    with pytest.raises(ValueError, match="12 data bytes"):
        sds_command(2, bytes(13))
    with pytest.raises(ValueError, match="device_id"):
        sds_command(2, device_id=0x10000)
    with pytest.raises(ValueError, match="pm25"):
        sds_encode(6553.6, 0)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_sds_round_trip(pm25: int, pm10: int, device_id: int) -> None:
    frame = sds_encode(pm25 / 10, pm10 / 10, device_id)
    assert sds_decode(frame) == {"pm25": pm25 / 10, "pm10": pm10 / 10}
    assert frame[6:8] == device_id.to_bytes(2, "big")


# ---- MH-Z19B -------------------------------------------------------------------------------------


def test_mhz_read_command_checksum_is_0x79() -> None:
    assert mhz_checksum(MHZ_READ) == 0x79
    assert mhz_command(0x86) == MHZ_READ == bytes.fromhex("FF 01 86 00 00 00 00 00 79")


def test_mhz_abc_commands() -> None:
    # 01+79+A0 = 0x11A: 0xFF - 0x1A + 1 = 0xE6. 01+79 = 0x7A: 0xFF - 0x7A + 1 = 0x86.
    assert mhz_abc(True) == bytes.fromhex("FF 01 79 A0 00 00 00 00 E6")
    assert mhz_abc(False) == bytes.fromhex("FF 01 79 00 00 00 00 00 86")
    with pytest.raises(ValueError, match="5 data bytes"):
        mhz_command(0x99, bytes(6))


def test_mhz_read_answer() -> None:
    # 86+02+60+47 = 0x12F: 0xFF - 0x2F + 1 = 0xD1.
    frame = bytes.fromhex("FF 86 02 60 47 00 00 00 D1")
    assert mhz_decode(frame) == {"co2": 608, "temperature": 31}
    assert mhz_encode(608, 31) == frame
    assert mhz_framer().feed(frame) == [frame]
    with pytest.raises(ChecksumError):
        mhz_decode(frame[:8] + b"\xd2")
    with pytest.raises(FrameError, match="header"):
        mhz_decode(b"\xff\x01" + frame[2:])
    with pytest.raises(FrameError, match="length"):
        mhz_decode(frame[:8])


def test_mhz_acks_are_frames_without_values() -> None:
    ack = bytes.fromhex("FF 79 01 00 00 00 00 00 86")
    assert mhz_checksum(ack) == 0x86
    assert mhz_decode(ack) is None
    assert mhz_framer().feed(ack) == [ack]
    # Our own read command echoed back (a loopback, a half-duplex adapter) is not a frame.
    assert mhz_framer().feed(MHZ_READ) == []


@given(st.integers(0, 0xFFFF), st.integers(-40, 215))
def test_mhz_round_trip(co2: int, temperature: int) -> None:
    assert mhz_decode(mhz_encode(co2, temperature)) == {"co2": co2, "temperature": temperature}


T = TypeVar("T")


def outcome(fn: Callable[[bytes], T], data: bytes) -> T | FrameError:
    """What ``fn`` returns, or the FrameError it raises; any other exception fails the test."""
    try:
        return fn(data)
    except FrameError as err:
        return err


# ---- all binary decoders on any bytes ------------------------------------------------------------


@given(
    st.sampled_from([pms_decode, sds_decode, sds_reply, mhz_decode]),
    st.one_of(
        st.binary(max_size=40),
        st.binary(min_size=32, max_size=32).map(lambda b: b"BM\x00\x1c" + b[4:]),
        st.binary(min_size=8, max_size=8).map(lambda b: b"\xaa\xc0" + b),
        st.binary(min_size=7, max_size=7).map(lambda b: b"\xff\x86" + b),
    ),
)
def test_binary_decoders_on_any_bytes(decode: Callable[[bytes], object], data: bytes) -> None:
    out = outcome(decode, data)
    if isinstance(out, FrameError):
        assert out.reason
    else:
        assert out is None or isinstance(out, dict | tuple)


# ---- NMEA 0183 -----------------------------------------------------------------------------------


def xor_of(sentence: str) -> str:
    body = sentence[1 : sentence.index("*")]
    return f"{reduce(xor, body.encode(), 0):02X}"


def knots(kn: float) -> float:
    return kn * 1852 / 3600


CLASSIC_RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
CLASSIC_GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
UBLOX_RMC = "$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57"
UBLOX_GGA = "$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B"
SIRF_GGA = "$GPGGA,161229.487,3723.2475,N,12158.3416,W,1,07,1.0,9.0,M,,,,0000*18"
# Made for these tests; the checksums were computed, and are checked again below.
GN_RMC_SOUTH = "$GNRMC,001031.00,A,3355.8570,S,15112.5390,E,0.021,,070324,,,A*72"
GN_GGA_SOUTH_WEST = "$GNGGA,154500.50,3436.6000,S,05822.9000,W,2,12,0.8,25.3,M,14.1,M,1.0,0000*6A"
NO_FIX_RMC = "$GPRMC,,V,,,,,,,,,,N*53"
NO_FIX_GGA = "$GPGGA,,,,,,0,00,99.99,,,,,,*48"
LEAP_SECOND_RMC = "$GPRMC,235960,A,4807.038,N,01131.000,E,,,311224,,*13"
ALL_VECTORS = [
    CLASSIC_RMC,
    CLASSIC_GGA,
    UBLOX_RMC,
    UBLOX_GGA,
    SIRF_GGA,
    GN_RMC_SOUTH,
    GN_GGA_SOUTH_WEST,
    NO_FIX_RMC,
    NO_FIX_GGA,
    LEAP_SECOND_RMC,
]


@pytest.mark.parametrize("sentence", ALL_VECTORS)
def test_nmea_vector_checksums(sentence: str) -> None:
    assert sentence.endswith("*" + xor_of(sentence))
    body = sentence[1 : sentence.index("*")].encode()
    assert nmea_checksum(body) == int(sentence[-2:], 16)


def test_classic_rmc() -> None:
    fix = nmea_parse(CLASSIC_RMC.encode())
    assert fix is not None
    assert (fix.sentence, fix.talker, fix.valid) == ("RMC", "GP", True)
    assert fix.utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC)
    assert fix.time_of_day == 12 * 3600 + 35 * 60 + 19
    assert fix.lat == pytest.approx(48 + 7.038 / 60)
    assert fix.lon == pytest.approx(11 + 31.000 / 60)
    assert fix.speed_ms == pytest.approx(knots(22.4))
    assert fix.speed_ms == pytest.approx(11.5236, abs=1e-4)
    assert fix.course == 84.4
    assert (fix.altitude, fix.satellites, fix.fix_quality, fix.hdop) == (None,) * 4


def test_classic_gga_and_its_date_from_elsewhere() -> None:
    fix = nmea_parse(CLASSIC_GGA.encode() + b"\r\n")
    assert fix == Fix(
        sentence="GGA",
        talker="GP",
        utc=None,
        time_of_day=45319.0,
        valid=True,
        lat=pytest.approx(48.1173),  # type: ignore[arg-type]
        lon=pytest.approx(11.516666666),  # type: ignore[arg-type]
        altitude=545.4,
        satellites=8,
        fix_quality=1,
        hdop=0.9,
        speed_ms=None,
        course=None,
    )
    dated = nmea_parse(CLASSIC_GGA.encode(), date=dt.date(1994, 3, 23))
    assert dated is not None
    assert dated.utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC)


def test_ublox_and_sirf_examples() -> None:
    rmc = nmea_parse(UBLOX_RMC.encode())
    assert rmc is not None
    assert rmc.utc == dt.datetime(2002, 12, 9, 8, 35, 59, tzinfo=dt.UTC)
    assert rmc.valid
    assert rmc.lat == pytest.approx(47 + 17.11437 / 60)
    assert rmc.lon == pytest.approx(8 + 33.91522 / 60)
    gga = nmea_parse(UBLOX_GGA.encode())
    assert gga is not None
    assert (gga.altitude, gga.satellites, gga.hdop) == (499.6, 8, 1.01)
    sirf = nmea_parse(SIRF_GGA.encode())
    assert sirf is not None
    assert sirf.time_of_day == pytest.approx(16 * 3600 + 12 * 60 + 29.487)
    assert sirf.lon == pytest.approx(-(121 + 58.3416 / 60))  # west is negative
    assert sirf.lat == pytest.approx(37 + 23.2475 / 60)


def test_gn_talker_southern_and_western_hemispheres() -> None:
    rmc = nmea_parse(GN_RMC_SOUTH.encode())
    assert rmc is not None
    assert (rmc.talker, rmc.sentence, rmc.valid) == ("GN", "RMC", True)
    assert rmc.lat == pytest.approx(-(33 + 55.857 / 60))
    assert rmc.lon == pytest.approx(151 + 12.539 / 60)
    assert rmc.course is None
    assert rmc.utc == dt.datetime(2024, 3, 7, 0, 10, 31, tzinfo=dt.UTC)
    gga = nmea_parse(GN_GGA_SOUTH_WEST.encode())
    assert gga is not None
    assert gga.talker == "GN"
    assert gga.lat == pytest.approx(-(34 + 36.6 / 60))
    assert gga.lon == pytest.approx(-(58 + 22.9 / 60))
    assert (gga.fix_quality, gga.satellites, gga.time_of_day) == (2, 12, 56700.5)


def test_no_fix_gives_none_values_and_invalid() -> None:
    rmc = nmea_parse(NO_FIX_RMC.encode())
    assert rmc is not None
    assert not rmc.valid
    assert (rmc.utc, rmc.time_of_day, rmc.lat, rmc.lon, rmc.speed_ms) == (None,) * 5
    gga = nmea_parse(NO_FIX_GGA.encode())
    assert gga is not None
    assert not gga.valid
    assert (gga.fix_quality, gga.satellites, gga.hdop, gga.lat) == (0, 0, 99.99, None)


def test_rmc_with_mode_n_is_not_valid_even_with_status_a() -> None:
    sentence = "$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,N"
    fix = nmea_parse(f"{sentence}*{xor_of(sentence + '*')}".encode())
    assert fix is not None
    assert not fix.valid


def test_a_leap_second_rolls_into_the_next_day() -> None:
    fix = nmea_parse(LEAP_SECOND_RMC.encode())
    assert fix is not None
    assert fix.time_of_day == 86400
    assert fix.utc == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def signed(body: str) -> bytes:
    return f"${body}*{reduce(xor, body.encode(), 0):02X}".encode()


@pytest.mark.parametrize(
    "line",
    [
        b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74",
        b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48",
        signed("GNGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
        signed("PUBX,00,"),
        signed("PMTK001,604,3"),
    ],
)
def test_other_sentences_give_none(line: bytes) -> None:
    assert nmea_parse(line) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (CLASSIC_RMC[:-2].encode() + b"6B", "checksum"),
        (CLASSIC_RMC[:-3].encode(), "no checksum"),
        (CLASSIC_RMC.encode()[:-2] + b"G1", "malformed"),
        (b"GPRMC,123519*00", "not a sentence"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394"), "field count"),
        (signed("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,"), "field count"),
        (signed("GPRMC,123519,A,48x7.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "position"),
        (signed("GPRMC,123519,A,4807.038,E,01131.000,E,022.4,084.4,230394,003.1,W"), "position"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,,022.4,084.4,230394,003.1,W"), "position"),
        (signed("GPRMC,123519,A,4867.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "position"),
        (signed("GPRMC,123519,A,9107.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "position"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,E,nan,084.4,230394,003.1,W"), "speed"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,E,1e3,084.4,230394,003.1,W"), "speed"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,E,-1,084.4,230394,003.1,W"), "speed"),
        (signed("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,300294,003.1,W"), "date"),
        (signed("GPRMC,126019,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "time"),
        (signed("GPRMC,123519,X,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "status"),
        (signed("GPGGA,123519,4807.038,N,01131.000,E,one,08,0.9,545.4,M,46.9,M,,"), "quality"),
        (signed("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,F,46.9,M,,"), "unit"),
        (signed("G1RMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "address"),
        (
            signed("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W" + "0" * 20),
            "too long",
        ),
        ("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W°*6A".encode(), "ASCII"),
        (b"$GPRMC,\x01*01", "ASCII"),
        (b"$GPGGA,1*2$GPRMC,*00", "malformed"),
    ],
)
def test_malformed_sentences_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason) as info:
        nmea_parse(line)
    assert isinstance(info.value, ChecksumError) == (reason == "checksum")


def test_82_characters_pass_and_83_do_not() -> None:
    base = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A"
    short = len(signed(base))
    line82 = signed(base.replace("022.4", "022.4" + "0" * (82 - short)))
    line83 = signed(base.replace("022.4", "022.4" + "0" * (83 - short)))
    assert (len(line82), len(line83)) == (82, 83)
    assert nmea_parse(line82 + b"\r\n") is not None
    with pytest.raises(FrameError, match="too long"):
        nmea_parse(line83)


def test_sentences_through_the_framer() -> None:
    framer = nmea_framer()
    stream = b"".join(s.encode() + b"\r\n" for s in ALL_VECTORS)
    lines = []
    for i in range(0, len(stream), 7):
        lines += framer.feed(stream[i : i + 7])
    assert [nmea_parse(line) for line in lines] == [nmea_parse(s.encode()) for s in ALL_VECTORS]


def format_coord(value: float, width: int, signs: str) -> tuple[str, str]:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees:0{width}d}{minutes:07.4f}", signs[value < 0]


@settings(deadline=None)
@given(
    st.sampled_from(["GP", "GN", "GL", "GA", "BD"]),
    st.floats(-89.9, 89.9),
    st.floats(-179.9, 179.9),
    st.integers(0, 86399),
    st.dates(dt.date(1980, 1, 1), dt.date(2079, 12, 31)),
    st.floats(0, 999, allow_nan=False),
    st.floats(-400, 9000, allow_nan=False),
)
def test_rmc_and_gga_round_trip(
    talker: str, lat: float, lon: float, secs: int, day: dt.date, knots_: float, alt: float
) -> None:
    la, ns = format_coord(lat, 2, "NS")
    lo, ew = format_coord(lon, 3, "EW")
    hh, mm, ss = secs // 3600, secs // 60 % 60, secs % 60
    time = f"{hh:02d}{mm:02d}{ss:02d}.00"
    date = day.strftime("%d%m%y")
    rmc = nmea_parse(signed(f"{talker}RMC,{time},A,{la},{ns},{lo},{ew},{knots_:.3f},,{date},,"))
    gga = nmea_parse(signed(f"{talker}GGA,{time},{la},{ns},{lo},{ew},1,09,1.1,{alt:.1f},M,,M,,"))
    assert rmc is not None
    assert gga is not None
    when = dt.datetime.combine(day, dt.time(hh, mm, ss), tzinfo=dt.UTC)
    assert rmc.utc == when
    assert rmc.talker == gga.talker == talker
    for fix in (rmc, gga):
        assert fix.lat == pytest.approx(lat, abs=1e-6)
        assert fix.lon == pytest.approx(lon, abs=1e-6)
        assert fix.time_of_day == secs
    assert rmc.speed_ms == pytest.approx(knots(round(knots_, 3)))
    assert gga.altitude == pytest.approx(round(alt, 1))


NMEA_CHARS = st.sampled_from([*"$*,.-0123456789ABCDEFGNPRMSWVX\r\n", "°", "\x00"])


@settings(deadline=None)
@given(
    st.one_of(
        st.binary(max_size=100),
        st.text(NMEA_CHARS, max_size=90).map(str.encode),
        # Deep: a right checksum over random fields of an RMC or GGA.
        st.tuples(
            st.sampled_from(["GPRMC", "GNGGA", "GPGGA", "BDRMC"]),
            st.lists(
                st.text(NMEA_CHARS.filter(lambda c: c not in "$*,"), max_size=8),
                min_size=10,
                max_size=15,
            ),
        ).map(lambda t: signed(",".join([t[0], *t[1]]))),
    )
)
def test_nmea_parse_on_anything_gives_a_fix_none_or_a_frame_error(line: bytes) -> None:
    fix = outcome(nmea_parse, line)
    if isinstance(fix, FrameError):
        assert fix.reason
    elif fix is not None:
        assert fix.sentence in ("RMC", "GGA")
        assert fix.lat is None or -90 <= fix.lat <= 90
        assert fix.lon is None or -180 <= fix.lon <= 180


# ---- line-oriented sensors -----------------------------------------------------------------------


def test_regex_mode() -> None:
    parser = LineParser(mode="regex", regex=r"T:(?P<t>-?[\d.]+) H:(?P<h>[\d.]+)(?: P:(?P<p>\d+))?")
    assert parser.parse(b"  T:-3.5 H:55.1\r") == {"t": "-3.5", "h": "55.1"}
    assert parser.parse(b"T:21 H:40 P:1013") == {"t": "21", "h": "40", "p": "1013"}
    with pytest.raises(FrameError, match="no match"):
        parser.parse(b"T:21 H:40 extra")
    with pytest.raises(FrameError, match="UTF-8"):
        parser.parse(b"T:21 H:\xff")


def test_kv_mode() -> None:
    parser = LineParser(mode="kv")
    assert parser.parse(b"T=23.4,H=55.1") == {"T": "23.4", "H": "55.1"}
    assert parser.parse(b" T = 23.4 , H=55.1, ") == {"T": "23.4", "H": "55.1"}
    assert parser.parse("temp=21,név=x".encode()) == {"temp": "21", "név": "x"}
    assert LineParser(mode="kv", separator=";", kv_separator=":").parse(b"a:1;b:2") == {
        "a": "1",
        "b": "2",
    }
    for bad, reason in [
        (b"T=1,H", "key=value"),
        (b"=1", "key=value"),
        (b"T=1,T=2", "repeated"),
        (b" , ", "empty"),
        (b"", "empty"),
    ]:
        with pytest.raises(FrameError, match=reason):
            parser.parse(bad)


def test_csv_mode() -> None:
    parser = LineParser(mode="csv", columns=("t", "h", "p"))
    assert parser.parse(b"23.4, 55.1,1013\r\n") == {"t": "23.4", "h": "55.1", "p": "1013"}
    with pytest.raises(FrameError, match="column count"):
        parser.parse(b"23.4,55.1")
    with pytest.raises(FrameError, match="column count"):
        parser.parse(b"23.4,55.1,1,2")
    tabbed = LineParser(mode="csv", columns=["a", "b"], separator="\t")
    assert tabbed.parse(b"1\t2") == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "regex", "regex": "(?P<t>[0-9]"}, "invalid regex"),
        ({"mode": "regex", "regex": r"(\d+)"}, "no named group"),
        ({"mode": "regex"}, "regex is needed"),
        ({"mode": "kv", "regex": "(?P<a>.)"}, "regex is needed"),
        ({"mode": "csv"}, "columns are needed"),
        ({"mode": "kv", "columns": ["a"]}, "columns are needed"),
        ({"mode": "csv", "columns": ["a", "a"]}, "distinct"),
        ({"mode": "kv", "separator": ""}, "separators"),
        ({"mode": "json"}, "mode must be"),
    ],
)
def test_line_parser_options_that_cannot_work_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LineParser(**kwargs)  # type: ignore[arg-type]


keys = st.text("abcdefghijklmnopqrstuvwxyzTHP_0123456789", min_size=1, max_size=6)
values = st.text("0123456789.-+e", max_size=8)


@given(st.dictionaries(keys, values, min_size=1, max_size=6))
def test_kv_round_trip(fields: dict[str, str]) -> None:
    line = ",".join(f"{k}={v}" for k, v in fields.items()).encode()
    assert LineParser(mode="kv").parse(line) == fields


PARSERS = [
    LineParser(mode="regex", regex=r"(?P<a>\d+)?,(?P<b>[^,]*)"),
    LineParser(mode="kv"),
    LineParser(mode="csv", columns=("x", "y")),
]


@given(st.sampled_from(PARSERS), st.binary(max_size=60) | st.text(max_size=30).map(str.encode))
def test_line_parsers_on_anything_give_fields_or_a_frame_error(
    parser: LineParser, line: bytes
) -> None:
    fields = outcome(parser.parse, line)
    if isinstance(fields, FrameError):
        assert fields.reason
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
