"""Completeness checker: did every reading arrive, once, and in order?

Two independent signals prove it end to end:

- **The simulator's counters.** A counter register goes up by one for every read it answers,
  so the values a device's ``counter`` metric took are 1, 2, 3 ... up to what the simulator
  says it handed out last. Every one of them must arrive.
- **The readings' sequence numbers.** ``seq`` goes up by one per reading within a run of the
  agent; a new run (after a crash or kill -9) starts at the ``first_seq`` that its ``online``
  status announces. A gap inside a run is a loss; a jump to a run's ``first_seq`` is not.

Per device it reports readings expected, received, lost, unread, duplicated (the same reading
twice, by ``seq``), out of order (``seq`` order that disagrees with the order the device was read
in) and the longest delay from reading to arrival (from the reading's ``mono`` when the
gateway runs on this machine, so exact whatever its wall clock says; else from ``ts``,
skipping readings flagged ``unsynced``). *Unread* are values that never arrived because the
gateway failed to read them and said so: a bad ``counter`` reading (its first failed poll of a
streak) lies, by ``seq``, between the good readings either side of the missing value. A
simulated device hands out a value as it answers, so an answer that comes after the gateway's
timeout (the simulator or the gateway starved of CPU, a slow-device fault) is such a value;
it was never a reading, so the buffer cannot lose it. ``lost`` is the rest: values the gateway
read, or failed to read without saying so. The fault suite uses it (tests/); by hand:

    .venv/bin/python bench/completeness.py --url mqtt://127.0.0.1:1883 --topic 'ioc/v1/#' \\
        --sim-control /run/tepi-sim.sock --seconds 600

subscribes, collects for the given time (or until Ctrl-C), asks the simulator's control
socket for its counters and prints the table. Without ``--sim-control`` the expected count is
taken from the highest counter value that arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]

from tepi.gateway.compact import ZSTD_MAGIC, decode_compact  # noqa: E402


@dataclass(frozen=True, slots=True)
class Row:
    device: str
    expected: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int
    max_delay_s: float | None
    lost_values: tuple[int, ...] = ()  # the first few counter values that never arrived
    unread: int = 0  # values not read, the gateway said so (module docstring); not in lost


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


_LOCAL_BOOT = _boot_id()


@dataclass
class _Device:
    by_seq: dict[int, int] = field(default_factory=dict)  # seq -> counter value
    value_seqs: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    failed: list[int] = field(default_factory=list)  # seqs of bad counter readings
    repeats: int = 0  # a seq received again
    max_delay_s: float | None = None


class Completeness:
    """Fed every message the broker delivered; says what is missing, doubled or reordered."""

    def __init__(self, counter_metric: str = "counter") -> None:
        self.counter_metric = counter_metric
        self.devices: dict[str, _Device] = defaultdict(_Device)
        self.seqs: Counter[int] = Counter()
        self.run_starts: set[int] = set()
        self.undecodable = 0

    def feed(self, topic: str, payload: bytes, received_at: float | None = None) -> None:
        """One message as the broker delivered it (JSON or compact telemetry, status)."""
        now = time.time() if received_at is None else received_at
        try:
            if topic.endswith("/status"):
                obj = json.loads(payload)
                if obj.get("state") == "online" and isinstance(obj.get("first_seq"), int):
                    self.run_starts.add(obj["first_seq"])
            elif topic.endswith("/telemetry"):
                compact = payload.startswith(ZSTD_MAGIC)
                msg = decode_compact(payload) if compact else json.loads(payload)
                # A gateway on this machine (the suite, a bench): its mono is our boot clock,
                # so the delay is exact whatever its wall clock says.
                local = msg.get("boot") == _LOCAL_BOOT
                off = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) if local else None
                readings = [self._parse(r, off) for r in msg["readings"]]
                for r in readings:
                    self._reading(*r, now)
                for r in msg["readings"]:
                    if r["metric"] == self.counter_metric and r.get("quality") == "bad":
                        self.devices[str(r["device"])].failed.append(int(r["seq"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            self.undecodable += 1  # not what the payload contract says: counted, not fatal

    def _parse(
        self, r: Mapping[str, Any], mono_offset: float | None
    ) -> tuple[int, str, int | None, float | None]:
        """(seq, device, counter value or None, when it was read), or raise on a malformed
        reading. When read: from ``mono`` if the gateway shares this machine's boot clock,
        else ``ts``, unless the gateway flags it "unsynced" (no time to measure from: None)."""
        seq, device, ts = int(r["seq"]), str(r["device"]), float(r["ts"])
        if mono_offset is not None:
            return seq, device, self._counter(r), float(r["mono"]) + mono_offset
        if r.get("ts_status") == "unsynced":
            return seq, device, self._counter(r), None
        return seq, device, self._counter(r), ts

    def _counter(self, r: Mapping[str, Any]) -> int | None:
        counter = r["metric"] == self.counter_metric and r.get("quality") == "good"
        return int(r["value"]) if counter else None

    def _reading(
        self, seq: int, device: str, value: int | None, ts: float | None, now: float
    ) -> None:
        self.seqs[seq] += 1
        if value is None:
            return
        dev = self.devices[device]
        if seq in dev.by_seq:
            dev.repeats += 1
            return
        dev.by_seq[seq] = value
        dev.value_seqs[value].add(seq)
        if ts is None:
            return
        delay = now - ts
        dev.max_delay_s = delay if dev.max_delay_s is None else max(dev.max_delay_s, delay)

    def table(
        self, last: Mapping[str, int] | None = None, first: Mapping[str, int] | None = None
    ) -> list[Row]:
        """One row per device: ``last`` is the simulator's last counter value for each device
        (default: the highest that arrived), ``first`` the first value expected (default 1)."""
        rows = []
        names = sorted(set(self.devices) | set(last or {}))
        for name in names:
            dev = self.devices.get(name) or _Device()
            lo = (first or {}).get(name, 1)
            hi = (last or {}).get(name, max(dev.value_seqs, default=lo - 1))
            expected = set(range(lo, hi + 1))
            got = {v for v in dev.value_seqs if lo <= v <= hi}
            missing = sorted(expected - got)
            unread = self._unread(dev, missing)
            lost = [v for v in missing if v not in unread]
            # the same value under two seqs: read once, stored twice (a real duplicate)
            doubled = sum(len(s) - 1 for s in dev.value_seqs.values())
            out_of_order = 0
            running = None
            for seq in sorted(dev.by_seq):
                value = dev.by_seq[seq]
                if running is not None and value < running:
                    out_of_order += 1
                running = value if running is None else max(running, value)
            rows.append(
                Row(
                    name,
                    expected=len(expected),
                    received=len(got),
                    lost=len(lost),
                    duplicated=dev.repeats + doubled,
                    out_of_order=out_of_order,
                    max_delay_s=dev.max_delay_s,
                    lost_values=tuple(lost[:20]),
                    unread=len(unread),
                )
            )
        return rows

    @staticmethod
    def _unread(dev: _Device, missing: list[int]) -> set[int]:
        """The ``missing`` values that a failed read the gateway reported accounts for: a bad
        counter reading whose seq lies between those of the good readings either side."""
        if not dev.failed or not missing:
            return set()
        failed = sorted(dev.failed)
        values = sorted(dev.value_seqs)
        out = set()
        for v in missing:
            i = bisect.bisect_left(values, v)
            after = max(dev.value_seqs[values[i - 1]]) if i else 0
            before = min(dev.value_seqs[values[i]]) if i < len(values) else math.inf
            j = bisect.bisect_right(failed, after)
            if j < len(failed) and failed[j] < before:
                out.add(v)
        return out

    def seq_gaps(self) -> list[tuple[int, int]]:
        """Ranges of ``seq`` (first, last) missing inside a run: readings lost or dropped by
        policy (health counts those). A jump up to an announced ``first_seq`` is no gap."""
        seqs = sorted(self.seqs)
        return [
            (a + 1, b - 1)
            for a, b in itertools.pairwise(seqs)
            if b > a + 1 and b not in self.run_starts
        ]

    def seq_repeats(self) -> int:
        """Readings received more than once (the resends after a reconnect)."""
        return sum(n - 1 for n in self.seqs.values())


def format_table(rows: Iterable[Row]) -> str:
    head = (
        "device",
        "expected",
        "received",
        "lost",
        "unread",
        "duplicated",
        "out of order",
        "max delay",
    )
    lines = [head]
    for r in rows:
        delay = "-" if r.max_delay_s is None else f"{r.max_delay_s:.2f} s"
        lines.append(
            (
                r.device,
                str(r.expected),
                str(r.received),
                str(r.lost),
                str(r.unread),
                str(r.duplicated),
                str(r.out_of_order),
                delay,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


async def sim_counters(control: Path) -> dict[str, int]:
    """The simulator's last counter value per device, from its control socket."""
    reader, writer = await asyncio.open_unix_connection(str(control))
    try:
        writer.write(b'{"query": "counters"}\n')
        await writer.drain()
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
    if not answer.get("ok"):
        raise SystemExit(f"the simulator refused: {answer.get('error')}")
    return {d: max(v.values()) for d, v in answer["counters"].items() if v}


async def _collect(args: argparse.Namespace, check: Completeness) -> None:
    import aiomqtt  # only the command line needs it

    url = urlsplit(args.url)
    async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883) as client:
        await client.subscribe(args.topic, qos=1)
        async with asyncio.timeout(args.seconds):
            async for msg in client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                check.feed(str(msg.topic), payload)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--topic", default="ioc/v1/#")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--sim-control", type=Path, help="the simulator's --control socket")
    args = p.parse_args()
    check = Completeness()
    with contextlib.suppress(TimeoutError, KeyboardInterrupt):
        asyncio.run(_collect(args, check))
    last = asyncio.run(sim_counters(args.sim_control)) if args.sim_control else None
    print(format_table(check.table(last)))
    gaps = check.seq_gaps()
    print(f"seq gaps inside a run: {len(gaps)} {gaps[:10]}; resent: {check.seq_repeats()}")


if __name__ == "__main__":
    main()
