"""The IOC's contract: the JSON that goes on each topic (docs/payload.md, payload.schema.json).

Telemetry is one object per message: the gateway, the boot id the readings' monotonic times
belong to, the sender's clock at send time (so the IOC can correct timestamps taken before
the clock synced), and ``readings`` in sequence order.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tepi.buffer.records import Batch, StoredReading
from tepi.core.clock import boottime

PAYLOAD_VERSION = 1
_dumps = orjson.dumps  # compact, UTF-8, shortest round-trip floats; ~10x the stdlib's speed


def ms(seconds: float) -> int:
    """Times go out with millisecond precision: the one rounding both encodings share."""
    return round(seconds * 1000)


def reading_ts(item: StoredReading, fix: float | None) -> tuple[float, str | None]:
    """The timestamp to send, and its ``ts_status``: None for a reading taken with a synced
    clock; "gps" when the system clock was not synced but a GPS receiver's time dated it;
    "corrected" when it was not synced, and ``fix`` (the synced wall clock minus ``mono``
    now, same boot) dates it from ``mono``; "unsynced" when it cannot be corrected here."""
    r = item.reading
    if r.synced:
        return r.ts, "gps" if r.gps_time else None
    if fix is None:
        return r.ts, "unsynced"
    return r.mono + fix, "corrected"


def clock_fix(
    batch_boot: str, current_boot: str, synced: bool, now: dict[str, Any]
) -> float | None:
    """The offset that dates this boot's readings from ``mono``, if the clock is synced."""
    if not synced or batch_boot != current_boot:
        return None
    return float(now["ts"]) - float(now["mono"])


def reading_obj(item: StoredReading, fix: float | None = None) -> dict[str, Any]:
    r = item.reading
    ts, status = reading_ts(item, fix)
    obj: dict[str, Any] = {
        "seq": item.seq,
        "device": r.device,
        "metric": r.metric,
        "value": r.value,
        "unit": r.unit,
        "ts": ms(ts) / 1000,
        "mono": ms(r.mono) / 1000,
        "quality": r.quality,
    }
    if r.reason is not None:
        obj["reason"] = r.reason
    if status is not None:
        obj["ts_status"] = status
    return obj


def clock_obj(boot_id: str, synced: bool) -> dict[str, Any]:
    return {
        "ts": ms(time.time()) / 1000,
        "mono": ms(boottime()) / 1000,
        "boot": boot_id,
        "synced": synced,
    }


def encode_telemetry(
    gateway_id: str, batch: Batch, *, max_bytes: int, current_boot: str, clock_synced: bool
) -> tuple[bytes, int]:
    """Encode as many of ``batch``'s readings as fit in ``max_bytes`` (at least one).

    Returns the payload and how many readings it holds, counted from the start of the batch.
    """
    clock = clock_obj(current_boot, clock_synced)
    fix = clock_fix(batch.boot_id, current_boot, clock_synced, clock)
    head = _dumps(
        {"v": PAYLOAD_VERSION, "gateway": gateway_id, "boot": batch.boot_id, "clock": clock}
    )
    parts: list[bytes] = []
    size = len(head) + len(b',"readings":[]}')
    for item in batch.items:
        text = _dumps(reading_obj(item, fix))
        grown = size + len(text) + (1 if parts else 0)
        if parts and grown > max_bytes:
            break
        parts.append(text)
        size = grown
    return head[:-1] + b',"readings":[' + b",".join(parts) + b"]}", len(parts)


def status_payload(
    gateway_id: str,
    state: str,
    boot_id: str | None,
    reason: str,
    version: str,
    *,
    first_seq: int | None = None,
) -> bytes:
    obj: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "gateway": gateway_id,
        "state": state,
        "reason": reason,
        "version": version,
    }
    if boot_id is not None:
        obj["boot"] = boot_id
    if first_seq is not None:
        obj["first_seq"] = first_seq
    if state == "online":
        obj["ts"] = ms(time.time()) / 1000
    return _dumps(obj)


def health_payload(obj: dict[str, Any]) -> bytes:
    return _dumps(obj)
