"""The rules at run time: readings and device states in, alarms and local actions out.

The agent's one :class:`AlarmHub` joins three parts that know nothing of each other:

- the :class:`~tepi.gateway.rules_engine.RuleEngine` (pure): it sees each reading as the
  buffer takes it (``Buffer.tap``: no polling of its own), each device's state change, and
  the time, through one timer set to its ``next_deadline``;
- the :class:`~tepi.buffer.alarms.AlarmStore` (durable, bounded): each transition is
  recorded there, in order, by one recorder task, then the uplink's alarm lane delivers it
  ahead of all telemetry;
- the rules' **actions**, started the moment the engine reports a transition, before the
  store's fsync and whatever the link does: a siren sounds with the broker down.

Actions. ``write`` and ``poll_rate`` set a *level* (the siren on while the rule fires, off
when it resolves if ``on_resolve`` says so; the faster poll interval while it fires), and
``snapshot`` is a one-off. Each action has its own runner: at most one attempt in flight, the
latest wanted level wins, and no more than one run per ``min_interval`` (a level wanted
sooner is deferred to the end of the interval, not dropped; a snapshot wanted sooner is
skipped and counted). A failing write or snapshot is tried again by
:data:`~tepi.core.retry.RULE_ACTION` (4 attempts), and its outcome, good or bad, is recorded
in the alarm store: on the alarm's state row and as an ``action`` message to the IOC.
``poll_rate`` cannot fail and is applied at once, with no message.

A restart restores the firing alarms from the store into the engine (they do not fire again)
and sets their levels again (a siren that lost power, the faster polling, which lived only in
memory); a snapshot is not taken again. A reload keeps the firing alarms of the rules it
keeps, and resolves those of the rules it removes.

Bound: the recorder's queue holds transitions the store has not taken yet. It grows only
while the store refuses writes (a full disk); a rule gives at most one transition per reading
of its metrics, so it is bounded by :data:`MAX_QUEUED`, past which the oldest *outcome*
messages are dropped and counted (never a transition: the alarm's state would be wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tepi.buffer.alarms import AlarmStore, AlarmWriteError
from tepi.buffer.records import Run
from tepi.core.clock import boottime
from tepi.core.errors import DeviceError, WriteRefused
from tepi.core.records import Value
from tepi.core.retry import RULE_ACTION, Outage
from tepi.gateway.rules import ActionConfig, RuleConfig, alarms_wanted
from tepi.gateway.rules_engine import RuleEngine, Transition

__all__ = ["ActionTargets", "AlarmHub", "HubStats"]

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # transitions and outcomes the store has not taken yet
_STORE_RETRY_S = 5.0  # a store that refused a write is tried again this often


class ActionTargets(Protocol):
    """What the agent lends the rules' actions."""

    async def write(self, device: str, metric: str, value: Value) -> Value:
        """The driver's checked write with its read-back; the value read back."""
        ...

    async def snapshot(self, camera: str, reason: str) -> int:
        """A snapshot stored in the image buffer; its seq."""
        ...

    def poll_rate(self, rule: str, device: str, interval: float | None) -> None:
        """Poll ``device`` every ``interval`` s for ``rule`` (None: as configured)."""
        ...


@dataclass(slots=True)
class HubStats:
    """Counters of the rules and their actions (the health message's ``alarms``)."""

    transitions: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    action_retries: int = 0
    actions_deferred: int = 0  # a level held back by min_interval (applied later)
    actions_skipped: int = 0  # a snapshot wanted within min_interval of the last
    queue_dropped: int = 0  # outcome messages dropped while the store refused writes
    tap_errors: int = 0  # readings the engine failed on (a bug: logged once)
    last_action_error: str | None = None


@dataclass(slots=True)
class _Record:
    """One entry for the recorder: a transition, or an action's outcome."""

    kind: Literal["firing", "resolved", "action"]
    rule: str
    at_ts: float
    at_mono: float
    transition: Transition | None = None
    key: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class _Runner:
    """One action of one rule: its wanted level, its min_interval, one attempt at a time."""

    def __init__(self, hub: AlarmHub, rule: RuleConfig, key: str, action: ActionConfig) -> None:
        self.hub = hub
        self.rule = rule.id
        self.key = key
        self.action = action
        self.min_interval = (
            action.min_interval if action.min_interval is not None else rule.min_interval
        )
        self.want: object = None
        self.dirty = False  # a level was set that is not applied yet
        self.why = "firing"
        self.last_run: float | None = None  # boottime of the last attempt's start
        self.task: asyncio.Task[None] | None = None

    # A level: write's value, poll_rate's interval (None: back to normal). Each transition
    # applies its level, even one the device should already have (someone may have switched
    # the siren off by hand); levels set faster than min_interval collapse into the last.
    def set_level(self, level: object, why: str) -> None:
        self.want, self.why, self.dirty = level, why, True
        if self.task is None or self.task.done():
            self.task = self.hub.spawn(self._levels(), f"tepi.rule[{self.rule}].{self.key}")

    def trigger(self, why: str) -> None:
        now = boottime()
        if self.last_run is not None and now - self.last_run < self.min_interval:
            self.hub.stats.actions_skipped += 1
            return
        self.last_run = now
        self.hub.spawn(self._snapshot(why), f"tepi.rule[{self.rule}].{self.key}")

    async def _levels(self) -> None:
        while self.dirty:
            if self.action.poll_rate is not None:
                self.dirty = False
                interval = self.want
                assert interval is None or isinstance(interval, float)
                self.hub.targets.poll_rate(self.rule, self.action.poll_rate.device, interval)
                continue
            now = boottime()
            if self.last_run is not None and now - self.last_run < self.min_interval:
                self.hub.stats.actions_deferred += 1
                await asyncio.sleep(self.last_run + self.min_interval - now)
                continue  # the level wanted may have changed meanwhile: the latest goes
            self.dirty = False
            self.last_run = now
            await self._write(self.want, self.why)

    async def _write(self, level: object, why: str) -> None:
        w = self.action.write
        assert w is not None
        value: Value = level  # type: ignore[assignment]
        detail: dict[str, Any] = {
            "action": self.key,
            "kind": "write",
            "on": why,
            "device": w.device,
            "metric": w.metric,
            "value": value,
        }
        started = boottime()
        got, attempts, err = await self.hub.attempt(
            lambda: self.hub.targets.write(w.device, w.metric, value)
        )
        detail.update(
            ok=err is None,
            read_back=got,
            attempts=attempts,
            error=err,
            ms=round((boottime() - started) * 1000, 1),
        )
        self.hub.outcome(self.rule, self.key, detail)

    async def _snapshot(self, why: str) -> None:
        s = self.action.snapshot
        assert s is not None
        started = boottime()
        seq, attempts, err = await self.hub.attempt(
            lambda: self.hub.targets.snapshot(s.camera, f"rule:{self.rule}")
        )
        self.hub.outcome(
            self.rule,
            self.key,
            {
                "action": self.key,
                "kind": "snapshot",
                "on": why,
                "camera": s.camera,
                "ok": err is None,
                "image_seq": seq,
                "attempts": attempts,
                "error": err,
                "ms": round((boottime() - started) * 1000, 1),
            },
        )


class AlarmHub:
    """See the module docstring. ``open`` (restores), ``run`` (a task of the agent's
    TaskGroup), ``close``; ``on_run`` is the buffer's tap, ``on_state`` the devices'."""

    def __init__(
        self,
        rules: list[RuleConfig],
        directory: Path,
        targets: ActionTargets,
        *,
        boot_id: str,
        sync: bool = True,
        max_alarms: int = 10_000,
    ) -> None:
        self.rules = {r.id: r for r in rules}
        self.engine = RuleEngine(rules)
        self._watched = self.engine.reading_devices()
        self.store = AlarmStore(directory, max_alarms=max_alarms, sync=sync, boot_id=boot_id)
        self.targets = targets
        self.stats = HubStats()
        self.changed = asyncio.Event()  # a message waits for the uplink's alarm lane
        self.sent = 0  # messages the broker acknowledged (the uplink counts them here)
        self._runners = self._make_runners(rules)
        self._queue: deque[_Record] = deque()
        self._queued = asyncio.Event()
        self._kick = asyncio.Event()  # the engine's next deadline moved earlier
        self._armed: float | None = None  # the deadline the timer sleeps towards
        self._tasks: set[asyncio.Task[None]] = set()
        self._tap_failed = False
        self._store_outage = Outage(
            log, f"alarm store {self.store.path}", level=logging.ERROR, then="alarms wait in memory"
        )

    @staticmethod
    def wanted(directory: Path, rules: list[RuleConfig]) -> bool:
        """Whether the agent needs a hub: rules, or alarms left from an earlier config."""
        return alarms_wanted(directory, rules)

    def _make_runners(self, rules: list[RuleConfig]) -> dict[str, list[_Runner]]:
        return {r.id: [_Runner(self, r, str(i), a) for i, a in enumerate(r.actions)] for r in rules}

    # ---- life -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and restore the firing alarms (their levels set again)."""
        await asyncio.to_thread(self.store.open)
        firing = await asyncio.to_thread(self.store.firing)
        now_ts, now_mono = time.time(), boottime()
        since = {
            rule: (
                st.since_mono
                if st.boot == self.store.boot_id
                else now_mono - max(0.0, now_ts - st.since_ts)  # an earlier boot's clock
            )
            for rule, st in firing.items()
        }
        for rule in self.engine.restore(since):
            log.info("alarm %s: its rule is no longer in the config; resolving it", rule)
            self._record(_Record("resolved", rule, now_ts, now_mono))
        for rule in since:
            if rule in self.rules:
                log.info("alarm %s: still firing (since before the restart)", rule)
                self._act(rule, "restored")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.to_thread(self.store.close)

    async def run(self) -> None:
        """The timer (holds, stale metrics) and the recorder, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._timer(), name="tepi.rules.timer")
            tg.create_task(self._recorder(), name="tepi.rules.recorder")

    def reconfigure(self, rules: list[RuleConfig]) -> None:
        """A reload's new rules: firing alarms of kept rules stay firing (their conditions
        are known again with the next readings), those of removed rules resolve."""
        firing = self.engine.firing()
        old = self.rules
        self.rules = {r.id: r for r in rules}
        self.engine = RuleEngine(rules)
        self._watched = self.engine.reading_devices()
        for rid, runners in self._runners.items():  # the old runners' pending levels are void
            for r in runners:
                if r.task is not None:
                    r.task.cancel()
                if r.action.poll_rate is not None and rid in firing:
                    self.targets.poll_rate(rid, r.action.poll_rate.device, None)
        kept = {rid: since for rid, since in firing.items() if rid in self.rules}
        self.engine.restore(kept)
        now_ts, now_mono = time.time(), boottime()
        gone = [rid for rid in firing if rid not in self.rules]
        removed = self._runners
        self._runners = self._make_runners(rules)
        for rid in gone:
            log.info("reload: rule %s was removed while firing; resolving its alarm", rid)
            self._record(_Record("resolved", rid, now_ts, now_mono))
            for r in removed.get(rid, []):  # its levels go back: the old rule's resolve
                self._resolve_level(r, old[rid])
        for rid in kept:
            self._act(rid, "restored")
        self._kick.set()

    # ---- events in ----------------------------------------------------------------------

    def on_run(self, run: Run) -> None:
        """The buffer's tap: each run as it is buffered. One set lookup for a device no
        rule watches; then one dict lookup a value in the engine."""
        if run.device not in self._watched:
            return
        try:
            on_reading = self.engine.on_reading
            reasons, uncertain = run.reasons, run.uncertain
            out: list[Transition] = []
            for i, metric in enumerate(run.metrics):
                if reasons is not None and reasons[i] is not None:
                    quality = "bad"
                elif uncertain is not None and uncertain[i]:
                    quality = "uncertain"
                else:
                    quality = "good"
                out += on_reading(run.device, metric, run.values[i], quality, run.mono)
        except Exception:  # noqa: BLE001 - a bug in the engine must not cost a reading
            self._tap_error()
            return
        self._after(out)

    def on_state(self, device: str, state: str, reason: str | None = None) -> None:
        """A device's state changed (a camera: its own state)."""
        try:
            out = self.engine.on_state(device, state, reason, boottime())
        except Exception:  # noqa: BLE001 - nor the device its state
            self._tap_error()
            return
        self._after(out)

    def _tap_error(self) -> None:
        self.stats.tap_errors += 1
        if not self._tap_failed:
            self._tap_failed = True
            log.exception("rules: evaluating failed (a bug); the reading is kept")

    def _after(self, out: list[Transition]) -> None:
        if out:
            self._handle(out)
        due = self.engine.next_deadline()
        if due is not None and (self._armed is None or due < self._armed):
            self._kick.set()

    # ---- transitions out ----------------------------------------------------------------

    def _handle(self, transitions: list[Transition]) -> None:
        now_ts, now_mono = time.time(), boottime()
        for t in transitions:
            self.stats.transitions += 1
            at_ts = now_ts - (now_mono - t.at_mono)
            self._record(_Record(t.state, t.rule, at_ts, t.at_mono, t))
            log.log(
                logging.WARNING if t.state == "firing" else logging.INFO,
                "alarm %s %s (%s): %s.%s = %r",
                t.rule,
                t.state,
                t.severity,
                t.device,
                t.metric,
                t.value,
            )
            self._act(t.rule, t.state)

    def _act(self, rule_id: str, why: str) -> None:
        """Start the rule's actions for a transition (firing, resolved, restored)."""
        rule = self.rules.get(rule_id)
        if rule is None:
            return
        for runner in self._runners.get(rule_id, []):
            a = runner.action
            if why == "resolved":
                self._resolve_level(runner, rule)
            elif a.write is not None:
                runner.set_level(a.write.value, why)
            elif a.poll_rate is not None:
                runner.set_level(a.poll_rate.interval, why)
            elif a.snapshot is not None and why == "firing":
                runner.trigger(why)

    @staticmethod
    def _resolve_level(runner: _Runner, rule: RuleConfig) -> None:
        a = runner.action
        if a.write is not None and a.write.on_resolve is not None:
            runner.set_level(a.write.on_resolve, "resolved")
        elif a.poll_rate is not None:
            runner.set_level(None, "resolved")
        elif a.snapshot is not None and a.snapshot.on_resolve:
            runner.trigger("resolved")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """An action's task: its own, so it never delays the evaluation; tracked, cancelled
        by ``close``, and a bug in it is logged and counted, never lost nor fatal."""
        task = asyncio.get_running_loop().create_task(self._guarded(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except Exception as err:  # one action's bug stays with it (a cancel is not one)
            self.stats.actions_failed += 1
            self.stats.last_action_error = f"internal error: {err}"
            log.exception("%s: internal error (a bug)", name)

    async def attempt(self, fn: Callable[[], Any]) -> tuple[Any, int, str | None]:
        """Run an action by RULE_ACTION: (result, attempts, None) or (None, attempts, error)."""
        attempts = 0

        async def once() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return await fn()
            except KeyError as err:  # the device went away (a reload)
                raise DeviceError("no such device", str(err)) from err

        def failed(err: BaseException) -> None:
            self.stats.action_retries += 1

        retried = (DeviceError, WriteRefused, OSError)
        try:
            result = await RULE_ACTION.call(once, retried, None, on_failure=failed)
        except (DeviceError, WriteRefused, OSError) as err:
            self.stats.action_retries -= 1  # the last failure was not followed by a retry
            self.stats.actions_failed += 1
            self.stats.last_action_error = str(err)
            log.error("rule action failed after %d attempts: %s", attempts, err)
            return None, attempts, str(err)
        self.stats.actions_ok += 1
        return result, attempts, None

    def outcome(self, rule: str, key: str, detail: dict[str, Any]) -> None:
        self._record(_Record("action", rule, time.time(), boottime(), key=key, detail=detail))

    def _record(self, rec: _Record) -> None:
        q = self._queue
        if len(q) >= MAX_QUEUED:
            # Only while the store refuses writes: outcomes go, transitions never.
            for i, old in enumerate(q):
                if old.kind == "action":
                    del q[i]
                    self.stats.queue_dropped += 1
                    break
        q.append(rec)
        self._queued.set()

    # ---- the tasks ---------------------------------------------------------------------

    async def _timer(self) -> None:
        while True:
            due = self.engine.next_deadline()
            self._armed = due
            self._kick.clear()
            if due is None:
                await self._kick.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - boottime())):
                        await self._kick.wait()
            try:
                out = self.engine.advance(boottime())
            except Exception:  # noqa: BLE001 - nor the timer the agent
                self._tap_error()
                continue
            if out:
                self._handle(out)

    async def _recorder(self) -> None:
        q = self._queue
        while True:
            if not q:
                self._queued.clear()
                await self._queued.wait()
                continue
            rec = q[0]
            try:
                msg = await asyncio.to_thread(self._write, rec)
            except AlarmWriteError as err:
                self._store_outage.failed(err)
                await asyncio.sleep(_STORE_RETRY_S)
                continue
            self._store_outage.recovered()
            q.popleft()
            if msg:
                self.changed.set()

    def _write(self, rec: _Record) -> bool:
        """In a worker thread: one record into the store; whether it made a message."""
        store = self.store
        t = rec.transition
        if rec.kind == "firing":
            assert t is not None
            rule = self.rules.get(rec.rule)
            since_ts = rec.at_ts - (t.at_mono - t.since_mono)
            return (
                store.fire(
                    rec.rule,
                    severity=t.severity,
                    since_ts=since_ts,
                    since_mono=t.since_mono,
                    value=t.value,
                    device=t.device or "",
                    metric=t.metric or "",
                    labels=rule.labels if rule is not None else None,
                    ts=rec.at_ts,
                    mono=rec.at_mono,
                )
                is not None
            )
        if rec.kind == "resolved":
            if t is None:  # its rule was removed: no reading cleared it
                return store.resolve(rec.rule, ts=rec.at_ts, mono=rec.at_mono) is not None
            msg = store.resolve(
                rec.rule,
                ts=rec.at_ts,
                mono=rec.at_mono,
                value=t.value,
                since_ts=rec.at_ts - (t.at_mono - t.since_mono),
                since_mono=t.since_mono,
            )
            return msg is not None
        return store.action(rec.rule, rec.key, rec.detail, rec.at_ts, mono=rec.at_mono) is not None

    # ---- the operator ------------------------------------------------------------------

    async def acknowledge(self, rule: str, by: str) -> bool:
        """An operator acknowledged the rule's alarm; False if there is none to acknowledge."""
        msg = await self.store.aacknowledge(rule, by, time.time())
        if msg is not None:
            self.changed.set()
        return msg is not None

    def busy(self) -> bool:
        """Whether transitions or outcomes wait to be recorded (then sent)."""
        return bool(self._queue)

    def health(self) -> dict[str, Any]:
        """The health message's ``alarms`` (tepi.gateway.health.AlarmsHealth): from the
        counters only, no SQL, so asking never waits for the store's writer."""
        st = self.store.stats(quick=True)
        firing = sorted(self.engine.firing())
        hs = self.stats
        return {
            "firing": len(firing),
            "firing_rules": firing[:50],
            "pending": st.pending,
            "queued": len(self._queue),
            "rows": st.rows,
            "max_alarms": st.max_alarms,
            "fired": st.fired,
            "resolved": st.resolved_transitions,
            "sent": self.sent,
            "dropped": st.dropped,
            "write_errors": st.write_errors,
            "actions": {
                "ok": hs.actions_ok,
                "failed": hs.actions_failed,
                "deferred": hs.actions_deferred,
                "skipped": hs.actions_skipped,
            },
            "action_retries": hs.action_retries,
            "last_action_error": hs.last_action_error,
        }
