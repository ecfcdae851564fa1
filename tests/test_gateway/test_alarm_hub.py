"""The agent's alarm hub (tepi.gateway.alarms) on a real alarm store: flapping values and
min_interval (no siren storm, the last state wins), bounded retries of a failing action and
their outcome messages, the timer for holds, and a reload that removes a firing rule.

The action targets here record what they are asked (the agent's are exercised end to end in
test_alarms_e2e.py, against the simulator's siren)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tepi.buffer.records import Run
from tepi.core.clock import boottime
from tepi.core.errors import DeviceUnavailable
from tepi.core.records import Value
from tepi.gateway.alarms import AlarmHub
from tepi.gateway.rules import RuleConfig

pytestmark = pytest.mark.timeout(60)


class Targets:
    """Records each action: (boottime, kind, target, value); ``fail`` writes raise first."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, Any]] = []
        self.fail = 0  # this many write attempts fail, then they work
        self.changed = asyncio.Event()

    async def write(self, device: str, metric: str, value: Value) -> Value:
        self.calls.append((boottime(), "write", f"{device}.{metric}", value))
        self.changed.set()
        if self.fail:
            self.fail -= 1
            raise DeviceUnavailable("timeout", f"{device} did not answer")
        return value

    async def snapshot(self, camera: str, reason: str) -> int:
        self.calls.append((boottime(), "snapshot", camera, reason))
        self.changed.set()
        return 7

    def poll_rate(self, rule: str, device: str, interval: float | None) -> None:
        self.calls.append((boottime(), "poll_rate", device, interval))
        self.changed.set()

    def of(self, kind: str) -> list[tuple[float, str, str, Any]]:
        return [c for c in self.calls if c[1] == kind]


def rule(**kw: Any) -> RuleConfig:
    base = {"id": "flood", "device": "gauge", "metric": "level", "above": 2.5}
    return RuleConfig.model_validate({**base, **kw})


SIREN = {"write": {"device": "siren", "metric": "siren", "value": True, "on_resolve": False}}


def reading(value: float, *, bad: bool = False) -> Run:
    return Run(
        "gauge", ("level",), ("m",), [None if bad else value], time.time(), boottime(),
        reasons=["timeout"] if bad else None,
    )  # fmt: skip


async def until(pred: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@pytest.fixture
async def hub_of(tmp_path: Path) -> AsyncIterator[Any]:
    hubs: list[tuple[AlarmHub, asyncio.Task[None]]] = []

    async def make(rules: list[RuleConfig], targets: Targets) -> AlarmHub:
        hub = AlarmHub(rules, tmp_path, targets, boot_id="boot-t", sync=False)
        await hub.open()
        hubs.append((hub, asyncio.create_task(hub.run())))
        return hub

    yield make
    for hub, task in hubs:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await hub.close()


async def messages(hub: AlarmHub, n: int) -> list[Any]:
    await until(lambda: hub.store.pending_count() >= n and not hub.health()["queued"])
    return await hub.store.apending(1000)


async def test_a_flapping_level_never_toggles_the_siren_faster_than_min_interval(
    hub_of: Any,
) -> None:
    targets = Targets()
    hub = await hub_of([rule(min_interval="500ms", actions=[SIREN])], targets)
    started = boottime()
    for i in range(100):  # 2.6 / 2.4 every 20 ms: a transition each reading, for 2 s
        hub.on_run(reading(2.6 if i % 2 == 0 else 2.4))
        await asyncio.sleep(0.02)
    flaps = hub.stats.transitions
    assert flaps >= 90, "no hysteresis, no hold: every crossing is a transition"
    # It ended resolved (2.4): once min_interval has passed, the siren is off.
    await until(lambda: targets.of("write") and targets.of("write")[-1][3] is False)
    await asyncio.sleep(0.6)  # nothing more may come: the level is settled
    writes = targets.of("write")
    times = [t for t, *_ in writes]
    assert all(b - a >= 0.5 - 0.01 for a, b in itertools.pairwise(times)), times
    assert len(writes) <= (boottime() - started) / 0.5 + 1
    assert writes[0][3] is True
    assert writes[-1][3] is False
    assert hub.stats.actions_deferred >= 1
    # Every transition is recorded all the same: the IOC sees the flapping.
    fired = hub.store.stats().fired
    assert fired == (flaps + 1) // 2


async def test_hysteresis_and_a_hold_make_one_alarm_of_a_noisy_level(hub_of: Any) -> None:
    targets = Targets()
    hub = await hub_of(
        [rule(clear_below=2.3, min_interval="0s", **{"for": "200ms"}, actions=[SIREN])], targets
    )
    for i in range(60):  # noise around 2.5: 2.45 .. 2.6
        hub.on_run(reading(2.45 + (i % 4) * 0.05))
        await asyncio.sleep(0.01)
    hub.on_run(reading(2.6))
    await until(lambda: hub.stats.transitions == 1)  # the hold ran out on the timer
    hub.on_run(reading(2.2))
    await until(lambda: hub.stats.transitions == 2)
    msgs = await messages(hub, 4)
    assert [m.transition for m in msgs if m.transition != "action"] == ["firing", "resolved"]
    assert [c[3] for c in targets.of("write")] == [True, False]


async def test_bad_readings_change_nothing_and_stale_fires_on_the_timer(hub_of: Any) -> None:
    targets = Targets()
    hub = await hub_of([rule(), rule(id="silent", above=None, stale="300ms")], targets)
    hub.on_run(reading(2.6))
    await until(lambda: hub.stats.transitions == 1)
    for _ in range(5):
        hub.on_run(reading(0, bad=True))  # a gauge that stopped answering: not a low river
    # No good reading for 300 ms: the stale rule fires, from the timer alone.
    await until(lambda: hub.stats.transitions == 2, timeout=5)
    # Recorded by the hub's recorder task, a moment after the engine's transition.
    await until(lambda: {"flood", "silent"} <= set(hub.store.states()), timeout=5)
    states = hub.store.states()
    assert states["flood"].firing
    assert states["silent"].firing


async def test_a_failing_write_is_retried_then_reported(hub_of: Any) -> None:
    targets = Targets()
    targets.fail = 2
    hub = await hub_of([rule(actions=[SIREN], min_interval="0s")], targets)
    hub.on_run(reading(2.6))
    msgs = await messages(hub, 2)
    action = next(m for m in msgs if m.transition == "action")
    assert action.detail is not None
    assert (action.detail["ok"], action.detail["attempts"]) == (True, 3)
    assert hub.stats.action_retries == 2
    # A device that never answers: 4 attempts, then failed, and the alarm's state says so.
    targets.fail = 100
    hub.on_run(reading(2.0))
    await until(lambda: hub.stats.actions_failed == 1, timeout=20)
    msgs = await messages(hub, 4)
    failed = [m for m in msgs if m.transition == "action"][-1]
    assert failed.detail is not None
    assert (failed.detail["ok"], failed.detail["attempts"]) == (False, 4)
    assert "did not answer" in failed.detail["error"]
    state = hub.store.get("flood")
    assert state is not None
    assert state.actions["0"]["ok"] is False
    assert hub.health()["actions"] == {"ok": 1, "failed": 1, "deferred": 0, "skipped": 0}


async def test_snapshot_and_poll_rate_levels(hub_of: Any) -> None:
    targets = Targets()
    actions = [
        {"snapshot": {"camera": "cam", "on_resolve": True}},
        {"poll_rate": {"device": "gauge", "interval": "1s"}},
    ]
    hub = await hub_of([rule(actions=actions, min_interval="0s")], targets)
    hub.on_run(reading(2.6))
    await until(lambda: len(targets.calls) == 2)
    hub.on_run(reading(2.0))
    await until(lambda: len(targets.calls) == 4)
    assert [(c[1], c[3]) for c in targets.of("poll_rate")] == [
        ("poll_rate", 1.0),
        ("poll_rate", None),
    ]
    assert [c[3] for c in targets.of("snapshot")] == ["rule:flood", "rule:flood"]
    msgs = await messages(hub, 4)
    shots = [m.detail for m in msgs if m.transition == "action"]
    assert [(d["kind"], d["on"], d["image_seq"]) for d in shots if d] == [
        ("snapshot", "firing", 7),
        ("snapshot", "resolved", 7),
    ]


async def test_a_reload_keeps_kept_rules_firing_and_resolves_removed_ones(hub_of: Any) -> None:
    targets = Targets()
    gate = rule(id="gate", device="gate", metric="open", above=0.5)
    hub = await hub_of([rule(actions=[SIREN], min_interval="0s"), gate], targets)
    hub.on_run(reading(2.6))
    hub.on_run(Run("gate", ("open",), (None,), [1.0], time.time(), boottime()))
    await until(lambda: hub.store.stats().fired == 2 and targets.of("write"))
    hub.reconfigure([gate])  # flood removed while firing
    await until(lambda: hub.store.stats().resolved_transitions == 1)
    assert [c[3] for c in targets.of("write")] == [True, False]  # its siren back off
    states = hub.store.states()
    assert states["flood"].state == "resolved"
    assert states["gate"].firing
    # The kept rule did not fire again.
    assert hub.store.stats().fired == 2


async def test_a_bug_in_an_action_stays_with_it(hub_of: Any, caplog: Any) -> None:
    class Buggy(Targets):
        async def write(self, device: str, metric: str, value: Value) -> Value:
            raise ValueError("a driver bug")

    targets = Buggy()
    hub = await hub_of([rule(actions=[SIREN], min_interval="0s")], targets)
    hub.on_run(reading(2.6))
    await until(lambda: hub.stats.actions_failed == 1)
    assert "internal error: a driver bug" in (hub.stats.last_action_error or "")
    assert "internal error (a bug)" in caplog.text
    # The rules go on: it resolves, and that transition is recorded too.
    hub.on_run(reading(2.0))
    await until(lambda: hub.store.stats().resolved_transitions == 1)
