"""What the rule engine costs per reading (docs/rules.md): µs per ``on_reading`` call.

Four cases, each timed over ``--readings`` calls, best of ``--repeat`` runs:

* ``unreferenced``: a (device, metric) no rule names (the common case: one dict lookup);
* ``threshold``: a metric a threshold rule watches, the value not crossing it;
* ``threshold+hold+stale``: a metric that a held threshold, a stale rule and a rate watch;
* ``crossing``: a value flapping over and under a threshold with hysteresis, each reading a
  condition change (the worst case for a single rule).

``baseline`` is an empty method call with the same arguments, for scale. The last line is
the agent's side: ``AlarmHub.on_run``, the buffer's tap, given a poll of 20 values of a
device no rule watches (µs per poll, not per value).

    .venv/bin/python bench/rules.py
    .venv/bin/python bench/rules.py --rules 1000 --readings 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tepi.buffer.records import Run
from tepi.core.records import Value
from tepi.gateway.alarms import AlarmHub
from tepi.gateway.rules import RuleConfig
from tepi.gateway.rules_engine import RuleEngine


class _NoTargets:
    async def write(self, device: str, metric: str, value: Value) -> Value:
        return value

    async def snapshot(self, camera: str, reason: str) -> int:
        return 0

    def poll_rate(self, rule: str, device: str, interval: float | None) -> None:
        pass


class _Empty:
    def on_reading(
        self, device: str, metric: str, value: float, quality: str, mono: float
    ) -> list[object]:
        return []


def _rules(n: int) -> list[RuleConfig]:
    """``n`` threshold rules over as many devices, and on dev-0.level three more."""
    out = [
        RuleConfig.model_validate(
            {"id": f"r{i}", "device": f"dev-{i}", "metric": "level", "above": 2.5}
        )
        for i in range(n)
    ]
    lvl = {"device": "dev-0", "metric": "level"}
    out += [
        RuleConfig.model_validate({"id": "held", **lvl, "above": 2.5, "for": "30s"}),
        RuleConfig.model_validate({"id": "silent", **lvl, "stale": "15m"}),
        RuleConfig.model_validate({"id": "rising", **lvl, "rate": {"above": 0.1}}),
        RuleConfig.model_validate(
            {"id": "flap", "device": "flap", "metric": "level", "above": 2.5, "clear_below": 2.3}
        ),
    ]
    return out


def _time(call: Callable[[int], object], n: int, repeat: int) -> float:
    """Best µs per call over ``repeat`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        call(n)
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rules", type=int, default=100, help="threshold rules (one per device)")
    p.add_argument("--readings", type=int, default=300_000, help="calls per run")
    p.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    args = p.parse_args()

    engine = RuleEngine(_rules(args.rules))
    empty = _Empty()
    on = engine.on_reading

    clock = 0.0  # one monotonic clock across the runs, a reading a second

    def loop(device: str, metric: str, low: float, high: float) -> Callable[[int], object]:
        """``n`` readings of device.metric, alternating low and high, on the shared clock."""

        def run(n: int) -> int:
            nonlocal clock
            f = empty.on_reading if device == "empty" else on
            found = 0
            t = clock
            for i in range(n):
                found += len(f(device, metric, high if i & 1 else low, "good", t + i))
            clock = t + n
            return found

        return run

    assert loop("flap", "level", 2.0, 3.0)(10) == 9  # the worst case: one a reading
    print(f"rules: {args.rules + 4}, readings a run: {args.readings}, best of {args.repeat}")
    for name, call in (
        ("baseline (empty call)", loop("empty", "level", 1.0, 1.0)),
        ("unreferenced", loop("dev-0", "temperature", 1.0, 1.0)),
        ("threshold", loop("dev-1", "level", 1.0, 1.1)),
        ("threshold+hold+stale+rate", loop("dev-0", "level", 1.0, 1.1)),
        ("crossing (a transition each)", loop("flap", "level", 2.0, 3.0)),
    ):
        print(f"  {name:30} {_time(call, args.readings, args.repeat):7.3f} µs/reading")

    # The agent's tap (nothing is opened or written: an unwatched device stops at the door).
    hub = AlarmHub(_rules(args.rules), Path(tempfile.mkdtemp()), _NoTargets(), boot_id="b")
    names = tuple(f"m{i}" for i in range(20))
    run = Run("unwatched", names, (None,) * 20, [1.0] * 20, 0.0, 0.0)

    def tap(n: int) -> None:
        on_run = hub.on_run
        for _ in range(n):
            on_run(run)

    per_poll = _time(tap, args.readings, args.repeat)
    print(f"  {'tap, unwatched device':30} {per_poll:7.3f} µs/poll of 20 values")


if __name__ == "__main__":
    main()
