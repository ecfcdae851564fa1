"""Framers against a slow, obviously correct model: every valid frame found in order whatever
the chunking, one-byte resync, bounded memory, and how often random noise passes as a frame.

The protocol rules (header, length, checksum) are written again here from the datasheets,
independently of drivers.serial.codecs, so a wrong rule there cannot hide behind itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from serial_frames import mhz_encode, pms_encode, sds_encode

from tepi.drivers.serial.codecs import (
    PMS_METRICS,
    mhz_framer,
    pms_framer,
    sds_framer,
)
from tepi.drivers.serial.framing import BinaryFramer, FramerStats, LineFramer

# ---- the protocols, from the datasheets ----------------------------------------------------------


def pms_ok(frame: bytes) -> bool:
    """42 4D, length 28, 13 words, 16-bit sum of bytes 0..29."""
    if len(frame) != 32 or frame[:4] != b"\x42\x4d\x00\x1c":
        return False
    total = 0
    for byte in frame[:30]:
        total += byte
    return total % 65536 == frame[30] * 256 + frame[31]


def sds_ok(frame: bytes) -> bool:
    """AA C0|C5, 6 bytes, low byte of their sum, AB."""
    return (
        len(frame) == 10
        and frame[0] == 0xAA
        and frame[1] in (0xC0, 0xC5)
        and frame[9] == 0xAB
        and sum(frame[2:8]) % 256 == frame[8]
    )


def mhz_ok(frame: bytes) -> bool:
    """FF, a command code, 6 bytes, (0xFF - sum(1..7)) + 1."""
    return (
        len(frame) == 9
        and frame[0] == 0xFF
        and frame[1] in (0x86, 0x79, 0x87, 0x99)
        and (0x100 - sum(frame[1:8]) % 256) % 256 == frame[8]
    )


@dataclass(frozen=True)
class Protocol:
    name: str
    make: Callable[[], BinaryFramer]
    header: bytes
    head_len: int
    size: Callable[[bytes], int | None]
    ok: Callable[[bytes], bool]
    max_frame: int
    frames: st.SearchStrategy[bytes]


def sds_reply_frame(cmd: int, data: bytes) -> bytes:
    body = bytes([cmd]) + data
    return b"\xaa\xc5" + body + bytes([sum(body) % 256, 0xAB])


def mhz_ack(cmd: int, data: bytes) -> bytes:
    body = bytes([cmd]) + data
    return b"\xff" + body + bytes([(0x100 - sum(body) % 256) % 256])


u16 = st.integers(0, 0xFFFF)
PMS = Protocol(
    "pms",
    pms_framer,
    b"BM",
    4,
    lambda h: 32 if h[2:4] == b"\x00\x1c" else None,
    pms_ok,
    32,
    st.lists(u16, min_size=12, max_size=12).map(
        lambda w: pms_encode(dict(zip(PMS_METRICS, w, strict=True)))
    ),
)
SDS = Protocol(
    "sds",
    sds_framer,
    b"\xaa",
    2,
    lambda h: 10 if h[1] in (0xC0, 0xC5) else None,
    sds_ok,
    10,
    st.one_of(
        st.tuples(u16, u16, u16).map(lambda t: sds_encode(t[0] / 10, t[1] / 10, t[2])),
        st.tuples(st.integers(0, 255), st.binary(min_size=5, max_size=5)).map(
            lambda t: sds_reply_frame(*t)
        ),
    ),
)
MHZ = Protocol(
    "mhz",
    mhz_framer,
    b"\xff",
    2,
    lambda h: 9 if h[1] in (0x86, 0x79, 0x87, 0x99) else None,
    mhz_ok,
    9,
    st.one_of(
        st.tuples(u16, st.integers(-40, 215)).map(lambda t: mhz_encode(*t)),
        st.tuples(st.sampled_from([0x79, 0x87, 0x99]), st.binary(min_size=6, max_size=6)).map(
            lambda t: mhz_ack(*t)
        ),
    ),
)


def toy_size(head: bytes) -> int | None:
    # Header, length byte, payload, checksum; sizes 13..20 are over max_frame (too_long).
    return 5 + head[3] if head[3] < 16 else None


def toy_ok(frame: bytes) -> bool:
    return frame[-1] == sum(frame[:-1]) % 256


def toy_frame(payload: bytes) -> bytes:
    body = b"\x7e\x81\x7e" + bytes([len(payload)]) + payload
    return body + bytes([sum(body) % 256])


# A 3-byte header (whose prefix recurs in it) and a variable size.
TOY = Protocol(
    "toy",
    lambda: BinaryFramer(b"\x7e\x81\x7e", 4, toy_size, toy_ok, max_frame=12),
    b"\x7e\x81\x7e",
    4,
    toy_size,
    toy_ok,
    12,
    st.binary(max_size=7).map(toy_frame),
)
PROTOCOLS = [PMS, SDS, MHZ, TOY]
protocols = st.sampled_from(PROTOCOLS)


def model(p: Protocol, stream: bytes) -> tuple[list[bytes], FramerStats, int]:
    """What the framer must return for ``stream`` fed at once, by the slowest scan: at each
    position, a header with a sane size and a valid frame, or move on one byte."""
    frames: list[bytes] = []
    stats = FramerStats()
    i = 0
    while i < len(stream):
        rest = stream[i:]
        if not rest.startswith(p.header):
            if p.header.startswith(rest):
                break  # a header cut short: wait for more
            stats.garbage_bytes += 1
            i += 1
            continue
        if len(rest) < p.head_len:
            break
        n = p.size(rest[: p.head_len])
        if n is None or n < p.head_len or n > p.max_frame:
            stats.too_long += n is not None and n > p.max_frame
            stats.garbage_bytes += 1
            i += 1
            continue
        if len(rest) < n:
            break
        if p.ok(rest[:n]):
            frames.append(rest[:n])
            stats.frames += 1
            i += n
        else:
            stats.bad_checksums += 1
            stats.garbage_bytes += 1
            i += 1
    return frames, stats, len(stream) - i


def cut(stream: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = sorted({0, len(stream), *(min(p, len(stream)) for p in points)})
    return [stream[a:b] for a, b in pairwise(bounds)]


def feed_all(framer: BinaryFramer | LineFramer, chunks: Sequence[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


# ---- BinaryFramer: examples ----------------------------------------------------------------------


def pms_frame(seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return pms_encode({m: rng.randrange(1000) for m in PMS_METRICS})


def test_a_frame_fed_one_byte_at_a_time_comes_out_once_complete() -> None:
    framer = pms_framer()
    frame = pms_frame()
    for i, byte in enumerate(frame[:-1]):
        assert framer.feed(bytes([byte])) == []
        assert framer.pending == i + 1
    assert framer.feed(frame[-1:]) == [frame]
    assert framer.pending == 0
    assert framer.stats == FramerStats(frames=1)


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    frames = [pms_frame(s) for s in range(5)]
    framer = pms_framer()
    assert framer.feed(b"".join(frames)) == frames
    assert framer.stats.as_dict() == {
        "frames": 5,
        "bad_checksums": 0,
        "garbage_bytes": 0,
        "too_long": 0,
    }


def test_a_frame_inside_a_bad_candidate_is_found_by_one_byte_resync() -> None:
    """A candidate that starts 5 bytes early swallows the real frame's first 27 bytes; skipping
    the whole candidate would lose the real frame."""
    real = pms_frame()
    stream = b"BM\x00\x1c\x00" + real
    assert not pms_ok(stream[:32])
    framer = pms_framer()
    assert framer.feed(stream) == [real]
    assert framer.stats == FramerStats(frames=1, bad_checksums=1, garbage_bytes=5)


def test_a_corrupted_frame_then_a_good_one() -> None:
    bad = bytearray(pms_frame(1))
    bad[10] ^= 0x40
    good = pms_frame(2)
    framer = pms_framer()
    assert framer.feed(bytes(bad) + good) == [good]
    assert framer.stats.bad_checksums == 1
    # Everything of the bad frame was skipped one byte at a time (there is no other "BM").
    assert framer.stats.garbage_bytes == 32


def test_a_header_with_an_impossible_length_is_skipped_without_a_checksum_failure() -> None:
    real = pms_frame()
    framer = pms_framer()
    assert framer.feed(b"BM\x00\x1d" + real) == [real]
    assert framer.stats == FramerStats(frames=1, garbage_bytes=4)


def test_a_header_cut_between_chunks_is_kept() -> None:
    real = pms_frame()
    framer = pms_framer()
    assert framer.feed(b"noise" + real[:1]) == []
    assert framer.pending == 1  # the "B": maybe a header
    assert framer.stats.garbage_bytes == 5
    assert framer.feed(real[1:]) == [real]


def test_garbage_without_a_header_is_not_kept() -> None:
    framer = sds_framer()
    framer.feed(bytes(range(0xAA)) * 20)
    assert framer.pending == 0
    assert framer.stats.garbage_bytes == 0xAA * 20


def test_reset_drops_a_partial_frame() -> None:
    framer = pms_framer()
    real = pms_frame()
    framer.feed(real[:20])
    framer.reset()
    assert framer.pending == 0
    assert framer.feed(real[20:]) == []
    assert framer.feed(real) == [real]


def test_a_size_over_max_frame_counts_as_too_long_and_resyncs() -> None:
    framer = TOY.make()
    good = toy_frame(b"abc")
    assert framer.feed(b"\x7e\x81\x7e\x0f" + good) == [good]
    assert framer.stats == FramerStats(frames=1, too_long=1, garbage_bytes=4)


@pytest.mark.parametrize(
    ("header", "head_len", "max_frame"), [(b"", 2, 9), (b"ab", 1, 9), (b"ab", 4, 3)]
)
def test_framer_arguments_that_cannot_work_are_refused(
    header: bytes, head_len: int, max_frame: int
) -> None:
    with pytest.raises(ValueError, match="header"):
        BinaryFramer(header, head_len, lambda h: 9, lambda f: True, max_frame=max_frame)


# ---- BinaryFramer: properties --------------------------------------------------------------------


def garbage_for(p: Protocol) -> st.SearchStrategy[bytes]:
    """Noise that looks like the protocol: random bytes, bare headers, cut and damaged frames."""

    def damage(frame: bytes, at: int, bit: int) -> bytes:
        out = bytearray(frame)
        out[at % len(out)] ^= 1 << bit
        return bytes(out)

    return st.one_of(
        st.binary(min_size=1, max_size=40),
        st.just(p.header),
        st.tuples(p.frames, st.integers(1, 40)).map(lambda t: t[0][: t[1] % len(t[0])]),
        st.tuples(p.frames, st.integers(0, 40), st.integers(0, 7)).map(lambda t: damage(*t)),
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[Protocol, list[bytes], list[int], bytes]:
    """A protocol, the valid frames sent, where each starts, and the stream with noise."""
    p = draw(protocols)
    parts = draw(
        st.lists(
            st.one_of(p.frames.map(lambda f: (True, f)), garbage_for(p).map(lambda g: (False, g))),
            max_size=20,
        )
    )
    sent: list[bytes] = []
    starts: list[int] = []
    stream = b""
    for is_frame, piece in parts:
        if is_frame:
            sent.append(piece)
            starts.append(len(stream))
        stream += piece
    return p, sent, starts, stream


def false_starts(p: Protocol, stream: bytes, starts: list[int]) -> list[int]:
    """Where, outside the sent frames, the noise happens to hold a frame that passes."""
    found = []
    for i in range(len(stream)):
        if i in starts or not stream.startswith(p.header, i) or len(stream) - i < p.head_len:
            continue
        n = p.size(stream[i : i + p.head_len])
        if n is not None and n <= len(stream) - i and p.ok(stream[i : i + n]):
            found.append(i)
    return found


@settings(deadline=None)
@given(streams(), st.lists(st.integers(0, 1000)))
def test_every_valid_frame_in_noise_is_recovered_in_order_however_it_is_chunked(
    sample: tuple[Protocol, list[bytes], list[int], bytes], points: list[int]
) -> None:
    p, sent, starts, stream = sample
    framer = p.make()
    got = feed_all(framer, cut(stream, points))
    want, stats, pending = model(p, stream)
    assert got == want
    assert framer.stats == stats
    assert framer.pending == pending
    assert all(p.ok(f) for f in got)
    if false_starts(p, stream, starts):
        # Noise that holds a frame passing every check is a frame; it can hide one sent.
        event(f"{p.name}: noise held a valid-looking frame")
    else:
        assert got == sent


@settings(deadline=None)
@given(protocols, st.lists(st.binary(max_size=64), max_size=30))
def test_memory_is_bounded_and_noise_yields_only_frames_that_pass(
    p: Protocol, chunks: list[bytes]
) -> None:
    framer = p.make()
    for chunk in chunks:
        for frame in framer.feed(chunk):
            assert p.ok(frame)
        assert framer.pending < p.max_frame


@settings(deadline=None)
@given(protocols, st.binary(max_size=300), st.lists(st.integers(0, 300)))
def test_stats_and_state_do_not_depend_on_the_chunking(
    p: Protocol, stream: bytes, points: list[int]
) -> None:
    whole, chunked = p.make(), p.make()
    assert whole.feed(stream) == feed_all(chunked, cut(stream, points))
    assert whole.stats == chunked.stats
    assert whole.pending == chunked.pending


# How often uniform random bytes pass as a frame, per byte of noise. Expected, from the
# checks each protocol makes: PMS 2^-48 (header, length and a 16-bit sum: 3.6e-15),
# SDS 2^-31 (AA, C0 or C5, AB, 8-bit sum: 4.7e-10), MH-Z19 2^-22 (FF, one of four commands,
# 8-bit checksum: 2.4e-7). The bounds leave room for the luck of one seeded sample.
NOISE_BYTES = 1 << 20
FALSE_FRAME_BOUND = {"pms": 0, "sds": 0, "mhz": 4}


@pytest.mark.parametrize("p", [PMS, SDS, MHZ], ids=lambda p: p.name)
def test_false_frames_in_random_noise_are_rare(p: Protocol) -> None:
    noise = random.Random(20240601).randbytes(NOISE_BYTES)
    framer = p.make()
    frames = feed_all(framer, cut(noise, range(0, NOISE_BYTES, 4096)))
    assert all(p.ok(f) for f in frames)
    assert len(frames) <= FALSE_FRAME_BOUND[p.name], f"{len(frames)} in {NOISE_BYTES} bytes"
    # The noise was looked at: candidates were tried and rejected, not skipped wholesale.
    assert framer.stats.garbage_bytes > NOISE_BYTES * 0.99


@pytest.mark.parametrize(
    ("p", "prefix", "rate"),
    [(PMS, b"BM\x00\x1c", 2**-16), (SDS, b"\xaa\xc0", 2**-16), (MHZ, b"\xff\x86", 2**-8)],
    ids=["pms", "sds", "mhz"],
)
def test_a_random_candidate_with_the_right_header_passes_at_the_checksum_rate(
    p: Protocol, prefix: bytes, rate: float
) -> None:
    """The strength of the checksum (and trailer) alone: candidates that pass the header and
    size checks, with random content. Fed one at a time (reset between) so they cannot overlap."""
    rng = random.Random(7)
    trials = 200_000
    passed = 0
    framer = p.make()
    for _ in range(trials):
        passed += len(framer.feed(prefix + rng.randbytes(p.max_frame - len(prefix))))
        framer.reset()
    # Within a factor of two of the expected rate (several standard deviations here).
    assert passed <= 2 * rate * trials + 6
    if rate * trials > 50:
        assert passed >= rate * trials / 2


# ---- LineFramer ----------------------------------------------------------------------------------


def test_lines_come_out_without_their_ending_and_empty_lines_are_skipped() -> None:
    framer = LineFramer()
    assert framer.feed(b"T=1\r\nH=2\n\n\r\nP=3") == [b"T=1", b"H=2"]
    assert framer.pending == 3
    assert framer.feed(b"\r\n") == [b"P=3"]
    assert framer.stats == FramerStats(frames=3)


def test_another_ending_does_not_strip_carriage_returns() -> None:
    framer = LineFramer(ending=b"\r\n")
    assert framer.feed(b"a\r\nb\r") == [b"a"]
    assert framer.feed(b"\nc\rd\r\n") == [b"b", b"c\rd"]
    assert LineFramer(ending=b";").feed(b"a\r;b;") == [b"a\r", b"b"]


def test_a_line_of_max_len_passes_and_one_byte_more_is_dropped_with_its_rest() -> None:
    framer = LineFramer(max_len=8)
    assert framer.feed(b"12345678\r\n123456789\nok\n") == [b"12345678", b"ok"]
    assert framer.stats == FramerStats(frames=2, too_long=1, garbage_bytes=9)


def test_a_stream_without_line_endings_is_dropped_and_the_next_line_survives() -> None:
    framer = LineFramer(max_len=16)
    junk = b"\x00\xff binary junk "
    for _ in range(100):
        assert framer.feed(junk) == []
        assert framer.pending <= 16 + 1
    assert framer.stats.too_long == 1
    assert framer.feed(b"x\nT=21.5\n") == [b"T=21.5"]
    assert framer.stats.too_long == 1
    assert framer.stats.garbage_bytes == 100 * len(junk) + 1


def test_a_multibyte_ending_cut_while_dropping_is_still_seen() -> None:
    framer = LineFramer(ending=b"\r\n", max_len=4)
    assert framer.feed(b"toolongline\r") == []
    assert framer.pending == 1
    assert framer.feed(b"\nok\r\n") == [b"ok"]
    assert framer.stats == FramerStats(frames=1, too_long=1, garbage_bytes=11)


def test_non_text_lines_still_come_out() -> None:
    assert LineFramer().feed(b"\xff\xfe\x00\n") == [b"\xff\xfe\x00"]


def test_line_reset_drops_a_partial_line_and_the_dropping_state() -> None:
    framer = LineFramer(max_len=4)
    framer.feed(b"abcdefgh")
    framer.reset()
    assert framer.pending == 0
    assert framer.feed(b"ok\n") == [b"ok"]


@pytest.mark.parametrize(("ending", "max_len"), [(b"", 10), (b"\n", 0)])
def test_line_framer_arguments_that_cannot_work_are_refused(ending: bytes, max_len: int) -> None:
    with pytest.raises(ValueError, match=r"ending|max_len"):
        LineFramer(ending=ending, max_len=max_len)


def line_model(stream: bytes, ending: bytes, max_len: int) -> tuple[list[bytes], FramerStats]:
    """The lines of ``stream`` by a plain split: what the framer must return."""
    *complete, _rest = stream.split(ending)
    lines: list[bytes] = []
    stats = FramerStats()
    for raw in complete:
        line = raw[:-1] if ending == b"\n" and raw.endswith(b"\r") else raw
        if len(line) > max_len:
            stats.too_long += 1
            stats.garbage_bytes += len(raw)
        elif line:
            lines.append(line)
            stats.frames += 1
    return lines, stats


line_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b";", b"a", b"T=1", b"\xff", b"0123456789"]),
    max_size=60,
).map(b"".join)


@settings(deadline=None)
@given(
    line_bytes,
    st.sampled_from([b"\n", b"\r\n", b";", b"\r\n\r\n"]),
    st.integers(1, 24),
    st.lists(st.integers(0, 400)),
)
def test_lines_match_a_plain_split_however_they_are_chunked(
    stream: bytes, ending: bytes, max_len: int, points: list[int]
) -> None:
    framer = LineFramer(ending=ending, max_len=max_len)
    got: list[bytes] = []
    for chunk in cut(stream, points):
        got += framer.feed(chunk)
        assert framer.pending <= max_len + len(ending)
    want, stats = line_model(stream, ending, max_len)
    # The unfinished last line may already have been counted as too long.
    assert got == want
    tail = stream.split(ending)[-1]
    if framer.stats.too_long == stats.too_long + 1:
        assert len(tail) > max_len
        framer.feed(ending)
        want, stats = line_model(stream + ending, ending, max_len)
    assert framer.stats == stats
    assert all(ending not in line and 0 < len(line) <= max_len for line in got)
