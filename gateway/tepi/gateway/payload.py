"""The IOC's contract: the JSON that goes on each topic (docs/payload.md, payload.schema.json).

Telemetry is one object per message: the gateway, the boot id the readings' monotonic times
belong to, the sender's clock at send time (so the IOC can correct timestamps taken before
the clock synced), and ``readings`` in sequence order.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tepi.buffer.records import Batch, Run
from tepi.core.clock import boottime

PAYLOAD_VERSION = 1
_dumps = orjson.dumps  # compact, UTF-8, shortest round-trip floats; ~10x the stdlib's speed


def ms(seconds: float) -> int:
    """Times go out with millisecond precision: the one rounding both encodings share."""
    return round(seconds * 1000)


def run_ts(run: Run, fix: float | None) -> tuple[float, str | None]:
    """The timestamp to send for a run's readings, and its ``ts_status``: None for readings
    taken with a synced clock; "gps" when the system clock was not synced but a GPS
    receiver's time dated them; "corrected" when it was not synced, and ``fix`` (the synced
    wall clock minus ``mono`` now, same boot) dates them from ``mono``; "unsynced" when they
    cannot be corrected here."""
    if run.synced:
        return run.ts, "gps" if run.gps_time else None
    if fix is None:
        return run.ts, "unsynced"
    return run.mono + fix, "corrected"


def clock_fix(
    batch_boot: str, current_boot: str, synced: bool, now: dict[str, Any]
) -> float | None:
    """The offset that dates this boot's readings from ``mono``, if the clock is synced."""
    if not synced or batch_boot != current_boot:
        return None
    return float(now["ts"]) - float(now["mono"])


def reading_objs(batch: Batch, fix: float | None) -> list[dict[str, Any]]:
    """The ``readings`` of a telemetry message, one object each, in seq order."""
    out: list[dict[str, Any]] = []
    append = out.append
    for run, start, stop in batch.spans:
        # What a poll's readings share is worked out once a run, not once a reading.
        ts, status = run_ts(run, fix)
        ts = ms(ts) / 1000
        mono = ms(run.mono) / 1000
        device, metrics, units, values = run.device, run.metrics, run.units, run.values
        first = run.first
        reasons = run.reasons
        if reasons is None:
            # Nearly every run: all good. The same objects as below without their checks a
            # reading (this is per value, the hot path of the uplink), in a comprehension:
            # no method call a reading.
            extra = {} if status is None else {"ts_status": status}
            out += [
                {
                    "seq": first + i,
                    "device": device,
                    "metric": metrics[i],
                    "value": values[i],
                    "unit": units[i],
                    "ts": ts,
                    "mono": mono,
                    "quality": "good",
                    **extra,
                }
                for i in range(start, stop)
            ]
            continue
        uncertain = run.uncertain
        for i in range(start, stop):
            why = None if reasons is None else reasons[i]
            obj: dict[str, Any] = {
                "seq": first + i,
                "device": device,
                "metric": metrics[i],
                "value": values[i],
                "unit": units[i],
                "ts": ts,
                "mono": mono,
                "quality": "good"
                if why is None
                else "uncertain"
                if uncertain is not None and uncertain[i]
                else "bad",
            }
            if why is not None:
                obj["reason"] = why
            if status is not None:
                obj["ts_status"] = status
            append(obj)
    return out


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
    objs = reading_objs(batch, fix)
    body = _dumps(objs)  # one call for the whole batch: the usual case, it fits
    room = max_bytes - len(head) - len(b',"readings":}')
    n = len(objs)
    while len(body) > room and n > 1:
        # Too big: cut where the average reading says it fits (a tenth less each time the
        # guess is over), in one call each, not a call a reading.
        n = max(1, min(n - 1, n * room // len(body) * 19 // 20))
        body = _dumps(objs[:n])
    return head[:-1] + b',"readings":' + body + b"}", n


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


def image_meta_payload(gateway_id: str, meta: Any, *, split: bool = False) -> dict[str, Any]:
    """An image's metadata (docs/payload.md#images): the JSON message on image_meta/{camera},
    and, as strings, the MQTT 5 user properties of the image itself. ``meta`` is a
    tepi.buffer.images.ImageMeta; ``split``: its bytes come in parts, not in one message."""
    return {
        "v": PAYLOAD_VERSION,
        "gateway": gateway_id,
        "seq": meta.seq,
        "camera": meta.camera,
        "class": meta.cls,
        "reason": meta.reason,
        "ts": ms(meta.ts) / 1000,
        "mono": round(meta.mono, 3),
        "boot": meta.boot,
        "width": meta.width,
        "height": meta.height,
        "size": meta.size,
        "sha256": meta.sha256,
        "content_type": meta.content_type,
        "parent": meta.parent,
        "split": split,
        "event": None if meta.event is None else orjson.loads(meta.event),
    }


def alarm_payload(gateway_id: str, msg: Any, *, current_boot: str, clock_synced: bool) -> bytes:
    """An alarm message (docs/payload.md#alarms) on ``alarm``: a rule's ``firing``,
    ``resolved`` or ``acknowledged``, or the outcome of one of its actions (``action``).
    ``msg`` is a tepi.buffer.alarms.Message. ``since`` is when the condition became true
    (firing) or false (resolved), ``ts`` when the transition happened; both are dated again
    from the boot's monotonic clock when the message is of this boot and the clock is synced
    now (an alarm raised before the clock synced gets its true time)."""
    clock = clock_obj(current_boot, clock_synced)
    fix = clock_fix(msg.boot, current_boot, clock_synced, clock)
    since, ts = msg.since_ts, msg.ts
    if fix is not None:
        since, ts = msg.since_mono + fix, msg.mono + fix
    obj: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "gateway": gateway_id,
        "seq": msg.seq,
        "rule": msg.rule,
        "state": msg.transition,
        "severity": msg.severity,
        "device": msg.device or None,
        "metric": msg.metric or None,
        "value": msg.value,
        "since": ms(since) / 1000,
        "ts": ms(ts) / 1000,
        "since_mono": ms(msg.since_mono) / 1000,
        "mono": ms(msg.mono) / 1000,
        "boot": msg.boot,
        "labels": msg.labels,
        "clock": clock,
    }
    if msg.by is not None:
        obj["by"] = msg.by
    if msg.detail is not None:
        obj["action"] = msg.detail
    return _dumps(obj)
