"""The compact telemetry encoding for metered links (``uplink.encoding: compact``).

A message is one zstd frame holding a columnar JSON object. Readings are stored column by
column, and every column that is nearly constant is stored as differences, which zstd then
squeezes to almost nothing:

    {"v": 1, "enc": "c1", "gateway": ..., "boot": ..., "clock": {...},   # as in JSON
     "series": [[device, metric, unit], ...],   # each (device, metric, unit) once
     "s":     [series index of each reading],
     "seq":   [first seq, then the difference to the previous one ...],
     "ts":    [first ts in ms, then differences in ms ...],
     "off":   [first (ts - mono) in ms, then differences ...],
     "value": [each value],
     "bad":   [[index, reason], ...],            # only the bad readings
     "uncertain": [[index, reason], ...],       # only if any reading is uncertain
     "ts_status": [[index, status], ...]}       # only if any reading has one

:func:`decode_compact` turns a message back into exactly the object the JSON encoding gives
for the same readings (docs/payload.md#the-compact-encoding), and the tests check that on
random batches. Any zstd library and any JSON parser can decode it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import orjson

from tepi.buffer.records import Batch
from tepi.gateway.payload import PAYLOAD_VERSION, clock_fix, clock_obj, ms, run_ts

if TYPE_CHECKING:
    import zstandard

ENCODING = "c1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LEVEL = 12
_MAX_DECODED = 64 * 1024 * 1024


# zstandard is imported at the first compact message, not with this module (the uplink
# imports it on every box): most boxes send JSON, and it costs RSS (docs/performance.md#memory).
@functools.cache
def _compressor() -> zstandard.ZstdCompressor:
    import zstandard

    return zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True)


@functools.cache
def _decompressor() -> zstandard.ZstdDecompressor:
    import zstandard

    return zstandard.ZstdDecompressor()


def _columns(
    gateway_id: str, batch: Batch, n: int, clock: dict[str, Any], fix: float | None
) -> bytes:
    series: dict[tuple[str, str, str | None], int] = {}
    s: list[int] = []
    seq: list[int] = []
    ts: list[int] = []
    off: list[int] = []
    value: list[Any] = []
    bad: list[list[Any]] = []
    unsure: list[list[Any]] = []
    tstat: list[list[Any]] = []
    prev_seq = prev_ts = prev_off = 0
    i = 0
    for run, start, stop in batch.head(n).spans:
        rts, status = run_ts(run, fix)
        t = ms(rts)
        o = t - ms(run.mono)
        reasons, uncertain = run.reasons, run.uncertain
        for k in range(start, stop):
            key = (run.device, run.metrics[k], run.units[k])
            s.append(series.setdefault(key, len(series)))
            seq.append(run.first + k - prev_seq)
            prev_seq = run.first + k
            ts.append(t - prev_ts)
            off.append(o - prev_off)
            prev_ts, prev_off = t, o
            value.append(run.values[k])
            why = None if reasons is None else reasons[k]
            if why is not None:
                (unsure if uncertain is not None and uncertain[k] else bad).append([i, why])
            if status is not None:
                tstat.append([i, status])
            i += 1
    obj = orjson.dumps(
        {
            "v": PAYLOAD_VERSION,
            "enc": ENCODING,
            "gateway": gateway_id,
            "boot": batch.boot_id,
            "clock": clock,
            "series": [list(k) for k in series],
            "s": s,
            "seq": seq,
            "ts": ts,
            "off": off,
            "value": value,
            "bad": bad,
        }
    )
    extra = b""
    if unsure:
        extra += b',"uncertain":' + orjson.dumps(unsure)
    if tstat:
        extra += b',"ts_status":' + orjson.dumps(tstat)
    return obj[:-1] + extra + b"}" if extra else obj


def encode_compact(
    gateway_id: str, batch: Batch, *, max_bytes: int, current_boot: str, clock_synced: bool
) -> tuple[bytes, int]:
    """Encode as many of ``batch``'s readings as fit in ``max_bytes`` (at least one)."""
    clock = clock_obj(current_boot, clock_synced)
    fix = clock_fix(batch.boot_id, current_boot, clock_synced, clock)
    n = len(batch)
    while True:
        payload = _compressor().compress(_columns(gateway_id, batch, n, clock, fix))
        if len(payload) <= max_bytes or n == 1:
            return payload, n
        n = max(1, n * max_bytes // len(payload) * 9 // 10)


class CompactError(ValueError):
    """The message is not a valid compact telemetry message."""


def decode_compact(payload: bytes) -> dict[str, Any]:
    """A compact message -> the same object the JSON encoding gives for these readings."""
    import zstandard

    if not payload.startswith(ZSTD_MAGIC):
        raise CompactError("not a zstd frame")
    try:
        # The frame header states the size: refuse a lie before allocating for it.
        if zstandard.frame_content_size(payload) > _MAX_DECODED:
            raise CompactError("compact message larger than 64 MiB decoded")
        obj = orjson.loads(_decompressor().decompress(payload, max_output_size=_MAX_DECODED))
        if not isinstance(obj, dict):
            raise CompactError("a compact message is a JSON object")
        if obj.get("enc") != ENCODING:
            raise CompactError(f"unknown encoding {obj.get('enc')!r}")
        series = obj["series"]
        bad = {int(i): str(reason) for i, reason in obj["bad"]}
        unsure = {int(i): str(reason) for i, reason in obj.get("uncertain", [])}
        tstat = {int(i): str(status) for i, status in obj.get("ts_status", [])}
        readings: list[dict[str, Any]] = []
        seq = t = o = 0
        cols = zip(obj["s"], obj["seq"], obj["ts"], obj["off"], obj["value"], strict=True)
        for i, (si, dseq, dt, doff, value) in enumerate(cols):
            seq += dseq
            t += dt
            o += doff
            if not isinstance(si, int) or not 0 <= si < len(series):
                raise CompactError(f"reading {i} names series {si!r}, not one of {len(series)}")
            device, metric, unit = series[si]
            r: dict[str, Any] = {
                "seq": seq,
                "device": device,
                "metric": metric,
                "value": value,
                "unit": unit,
                "ts": t / 1000,
                "mono": (t - o) / 1000,
                "quality": "bad" if i in bad else "uncertain" if i in unsure else "good",
            }
            if i in bad:
                r["reason"] = bad[i]
            elif i in unsure:
                r["reason"] = unsure[i]
            if i in tstat:
                r["ts_status"] = tstat[i]
            readings.append(r)
        return {
            "v": obj["v"],
            "gateway": obj["gateway"],
            "boot": obj["boot"],
            "clock": obj["clock"],
            "readings": readings,
        }
    except (zstandard.ZstdError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, CompactError):
            raise
        raise CompactError(f"malformed compact message: {err}") from err
