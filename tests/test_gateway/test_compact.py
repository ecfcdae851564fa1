"""The compact encoding: it decodes to exactly what the JSON encoding says, it is small, it
refuses garbage with a clear error, and it works through the real agent and broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zstandard
from helpers import SCHEMA_PATH, Broker, Subscriber
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi.buffer import Batch
from tepi.buffer.records import Run, StoredReading
from tepi.core.records import Reading
from tepi.gateway.compact import CompactError, decode_compact, encode_compact
from tepi.gateway.configload import parse_config
from tepi.gateway.payload import encode_telemetry
from tepi.gateway.runtime import Agent

SCHEMA = json.loads(SCHEMA_PATH.read_text())
TELEMETRY = jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/telemetry"})

names = st.sampled_from(["aq-1", "river-3", "noise-2", "x"])
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)


def _reading(
    dev: str,
    met: str,
    val: Any,
    unit: str | None,
    ts: float,
    mono: float,
    quality: str,
    clock: str,
) -> Reading:
    """good, bad (no value) or uncertain (a value and a reason); dated by a synced clock,
    an unsynced one, or GPS."""
    reason = {"good": None, "bad": "timeout", "uncertain": "warming up"}[quality]
    if quality == "bad":
        val = None
    elif quality == "uncertain" and val is None:
        val = 0.0
    synced, gps = {"synced": (True, False), "unsynced": (False, False), "gps": (True, True)}[clock]
    return Reading(dev, met, val, unit, ts, mono, reason, synced, quality == "uncertain", gps)


readings = st.builds(
    _reading,
    names,
    st.sampled_from(["pm25", "level", "m0", "pm2.5"]),
    values,
    st.one_of(st.none(), st.just("ug/m3")),
    st.floats(0, 4e9),
    st.floats(0, 1e7),
    st.sampled_from(["good", "bad", "uncertain"]),
    st.sampled_from(["synced", "unsynced", "gps"]),
)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    rs = draw(st.lists(readings, min_size=1, max_size=60))
    gaps = draw(st.lists(st.integers(1, 1000), min_size=len(rs), max_size=len(rs)))
    seq, items = 0, []
    for r, g in zip(rs, gaps, strict=True):
        seq += g
        items.append(StoredReading(seq, r))
    return Batch.of("boot-1", items)


def without_clock(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "clock"}


def corrected_ts_apart(obj: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """The message without its clock and with corrected readings' ts taken out: each encoder
    reads the clock itself, a moment apart, so those may differ by a millisecond."""
    readings, fixed = [], []
    for r in obj["readings"]:
        if r.get("ts_status") == "corrected":
            fixed.append(r["ts"])
        readings.append({**r, "ts": None} if r.get("ts_status") == "corrected" else r)
    return {**without_clock(obj), "readings": readings}, fixed


@settings(max_examples=150, deadline=None)
@given(batches(), st.sampled_from(["boot-1", "boot-2"]), st.booleans())
def test_compact_decodes_to_exactly_the_json_encoding(
    batch: Batch, current_boot: str, synced: bool
) -> None:
    kw: dict[str, Any] = {
        "max_bytes": 1 << 20,
        "current_boot": current_boot,
        "clock_synced": synced,
    }
    compact, n = encode_compact("gw-1", batch, **kw)
    plain, m = encode_telemetry("gw-1", batch, **kw)
    assert n == m == len(batch)
    decoded, decoded_fixed = corrected_ts_apart(decode_compact(compact))
    expected, expected_fixed = corrected_ts_apart(json.loads(plain))
    assert decoded == expected
    assert decoded_fixed == pytest.approx(expected_fixed, abs=0.01)
    assert decode_compact(compact)["clock"].keys() == json.loads(plain)["clock"].keys()
    TELEMETRY.validate(decode_compact(compact))


def test_readings_taken_before_the_clock_synced_are_dated_from_mono_or_flagged() -> None:
    """Read unsynced, sent from the same boot with the clock synced: ts = mono + (clock.ts -
    clock.mono), "corrected". From another boot, or still unsynced: ts as read, "unsynced"."""
    stale = Reading("aq-1", "pm25", 1.0, None, 1000.0, 30.0, synced=False)
    good = Reading("aq-1", "pm25", 2.0, None, 1_795_430_462.0, 31.0)
    batch = Batch.of("boot-1", [StoredReading(1, stale), StoredReading(2, good)])
    for encode in (encode_telemetry, encode_compact):
        for current, synced, status in [
            ("boot-1", True, "corrected"),
            ("boot-2", True, "unsynced"),
            ("boot-1", False, "unsynced"),
        ]:
            raw, _ = encode(
                "gw", batch, max_bytes=1 << 20, current_boot=current, clock_synced=synced
            )
            msg = decode_compact(raw) if encode is encode_compact else json.loads(raw)
            TELEMETRY.validate(msg)
            first, second = msg["readings"]
            assert first["ts_status"] == status
            want = (
                msg["clock"]["ts"] - (msg["clock"]["mono"] - 30.0)
                if status == "corrected"
                else 1000.0
            )
            assert first["ts"] == pytest.approx(want, abs=0.002)
            assert "ts_status" not in second
            assert second["ts"] == 1_795_430_462.0


def reference_batch(n: int) -> Batch:
    """n readings like a city station's: 25 devices x 10 metrics, values with one decimal."""
    t0 = 1_795_430_462.0
    rng = random.Random(7)
    items = []
    for i in range(n):
        dev, met = divmod(i % 250, 10)
        value = round(rng.uniform(0, 200), 1)
        r = Reading(f"station-{dev:02d}", f"metric-{met}", value, "ug/m3", t0 + i // 250, 5000.0)
        items.append(StoredReading(1000 + i, r))
    return Batch.of("boot-1", items)


def test_compact_is_far_smaller_than_json() -> None:
    batch = reference_batch(450)  # 5 s of the reference load
    kw: dict[str, Any] = {"max_bytes": 1 << 20, "current_boot": "boot-1", "clock_synced": True}
    compact, _ = encode_compact("gw-1", batch, **kw)
    plain, _ = encode_telemetry("gw-1", batch, **kw)
    print(f"compact: {len(compact) / len(batch):.1f} B/reading, json {len(plain) / len(batch):.0f}")
    assert len(compact) / len(batch) < 15
    assert len(compact) * 10 < len(plain)


def test_a_batch_too_big_for_max_bytes_is_cut_but_never_empty() -> None:
    batch = reference_batch(5000)
    payload, n = encode_compact(
        "gw-1", batch, max_bytes=2048, current_boot="boot-1", clock_synced=True
    )
    assert 1 <= n < 5000
    assert len(payload) <= 2048
    assert [r["seq"] for r in decode_compact(payload)["readings"]] == list(range(1000, 1000 + n))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b'{"v": 1}',
        b"\x28\xb5\x2f\xfd garbage",
        zstandard.ZstdCompressor().compress(b"not json"),
        zstandard.ZstdCompressor().compress(b'{"enc": "c9"}'),
        zstandard.ZstdCompressor().compress(b'{"enc": "c1", "series": []}'),
    ],
)
def test_bad_messages_get_a_clear_error(payload: bytes) -> None:
    with pytest.raises(CompactError):
        decode_compact(payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(CompactError):
        decode_compact(b"\x28\xb5\x2f\xfd" + data)


async def test_the_agent_sends_compact_batches_the_ioc_can_decode(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    cfg = parse_config(
        json.dumps(
            {
                "gateway": {"id": "gw-c", "data_dir": str(tmp_path / "data")},
                "uplink": {
                    "url": f"mqtt://127.0.0.1:{broker.port}",
                    "encoding": "compact",
                    "batch": {"linger": "300ms"},
                },
            }
        ),
        "t.yaml",
        check_files=False,
    )
    agent = Agent(cfg)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        async with Subscriber(broker.port, "ioc/v1/gw-c/telemetry") as sub:

            def payloads() -> list[bytes]:
                return [p for _, p, _ in sub.messages]

            await agent.ready.wait()
            await agent.uplink.wait_for(lambda s: s.connected)
            for i in range(500):
                agent.buffer.put(Reading("d", "counter", i, None, time.time(), 1.0))
            await sub.wait_for(
                lambda _: sum(len(decode_compact(p)["readings"]) for p in payloads()) >= 500, 20
            )
            got = [r for p in payloads() for r in decode_compact(p)["readings"]]
            assert [r["value"] for r in got] == list(range(500))
            assert len(payloads()) < 10, "linger must gather the readings into few messages"
            for p in payloads():
                TELEMETRY.validate(decode_compact(p))
    finally:
        stop.set()
        await run
        await broker.stop()


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_mutated_columns_in_a_valid_frame_never_crash_the_decoder(
    batch: Batch, data: st.DataObject
) -> None:
    """Valid zstd frames around mutated column data: the fuzz reaches the column decoder, not
    only zstd's and orjson's own checks. Whatever the columns hold, the decoder answers or
    raises CompactError, nothing else."""
    compact, _ = encode_compact(
        "gw-1", batch, max_bytes=1 << 20, current_boot="b", clock_synced=True
    )
    obj = json.loads(zstandard.ZstdDecompressor().decompress(compact))
    how = data.draw(st.sampled_from(["replace", "delete", "shorten", "element", "whole"]))
    key = data.draw(st.sampled_from(sorted(obj)))
    if how == "replace":
        obj[key] = data.draw(json_values)
    elif how == "delete":
        del obj[key]
    elif how == "shorten" and isinstance(obj[key], list):
        obj[key] = obj[key][: data.draw(st.integers(0, max(len(obj[key]) - 1, 0)))]
    elif how == "element" and isinstance(obj[key], list) and obj[key]:
        i = data.draw(st.integers(0, len(obj[key]) - 1))
        obj[key][i] = data.draw(json_values)
    elif how == "whole":
        obj = data.draw(json_values)
    frame = zstandard.ZstdCompressor().compress(json.dumps(obj).encode())
    with contextlib.suppress(CompactError):
        decode_compact(frame)


@st.composite
def run_batches(draw: st.DrawFn) -> Batch:
    """Polls as runs (one device and instant, several metrics), sliced as a batch cuts them."""
    spans = []
    seq = 0
    for _ in range(draw(st.integers(1, 6))):
        rs = draw(st.lists(readings, min_size=1, max_size=12))
        head = rs[0]
        run = Run(
            head.device,
            tuple(r.metric for r in rs),
            tuple(r.unit for r in rs),
            [r.value for r in rs],
            head.ts,
            head.mono,
            head.synced,
            head.gps_time,
            [r.reason for r in rs] if any(r.reason for r in rs) else None,
            [r.uncertain for r in rs] if any(r.uncertain for r in rs) else None,
            first=seq + draw(st.integers(1, 50)),
        )
        start = draw(st.integers(0, len(rs) - 1))
        stop = draw(st.integers(start + 1, len(rs)))
        spans.append((run, start, stop))
        seq = run.first + len(rs)
    return Batch("boot-1", spans)


@settings(max_examples=150, deadline=None)
@given(run_batches(), st.booleans())
def test_a_batch_of_runs_encodes_as_its_readings_one_by_one(batch: Batch, synced: bool) -> None:
    """The encoders work a run at a time: the same message as for the readings one by one,
    in JSON and in the compact encoding."""
    kw: dict[str, Any] = {"max_bytes": 1 << 20, "current_boot": "boot-1", "clock_synced": synced}
    one_by_one = Batch.of("boot-1", batch.items)
    plain, n = encode_telemetry("gw-1", batch, **kw)
    reference, _ = encode_telemetry("gw-1", one_by_one, **kw)
    assert n == len(batch) == len(one_by_one)
    got, got_fixed = corrected_ts_apart(json.loads(plain))
    want, want_fixed = corrected_ts_apart(json.loads(reference))
    assert got == want
    assert got_fixed == pytest.approx(want_fixed, abs=0.01)
    assert [r["seq"] for r in got["readings"]] == [i.seq for i in batch.items]
    TELEMETRY.validate(json.loads(plain))
    compact, _ = encode_compact("gw-1", batch, **kw)
    assert corrected_ts_apart(decode_compact(compact))[0] == got
