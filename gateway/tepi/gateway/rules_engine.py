"""The rule engine: the rules of ``rules:`` evaluated on readings, device states and time.

Pure and synchronous: no I/O, no asyncio, no clock of its own. The caller passes each event's
time as monotonic seconds (the readings' ``mono``, CLOCK_BOOTTIME) and gets back the
:class:`Transition` list it caused: a rule that starts ``firing`` or is ``resolved``.

    engine = RuleEngine(cfg.rules)
    engine.restore(saved)                       # rule id -> since_mono, from before a restart
    engine.on_reading(dev, metric, value, quality, mono)
    engine.on_state(dev, state, reason, mono)   # a device's (or a camera's) state changed
    engine.advance(mono)                        # at next_deadline(): holds and stale metrics

How a rule is evaluated (docs/rules.md has the whole story):

* Each leaf condition is *unknown* until it has seen what it needs (a good reading, a state,
  enough readings for a rate, the stale time passing); ``all``/``any`` use three-valued logic
  (``all`` is false if one is false, unknown if one is unknown). An unknown condition never
  fires nor resolves a rule, so a restored alarm stays firing until the readings say otherwise.
* Thresholds latch between the alarm level and the clear level (hysteresis). A bad or
  uncertain reading changes no threshold and no rate; only a good reading refreshes ``stale``.
* When the condition becomes true at ``t``, the rule fires at ``t + for`` if it is still true
  then; when it becomes false, a firing rule resolves at ``t + clear_for`` if it is still false.
  A transition's ``since_mono`` is ``t`` (when the condition changed), its ``at_mono`` when the
  hold completed.

Cost: a reading of a (device, metric) no rule names is one dict lookup (``bench/rules.py``).
Time-driven changes wait in one heap with at most one live entry per rule and per stale
condition, so :meth:`RuleEngine.next_deadline` is the one timer the caller needs.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

from tepi.core.records import Value
from tepi.gateway.rules import Condition, RuleConfig, Severity

__all__ = ["STATE_MATCHES", "RuleEngine", "Transition"]

# Which device states each ``state:`` of a rule matches. A quarantined device is still failing;
# ``offline`` is a camera without a frame, or any other device that does not answer (those
# have no offline state of their own); ``failing`` is any device giving no data, a camera whose
# password is refused too. For a camera the caller passes the camera's own state.
STATE_MATCHES: dict[str, frozenset[str]] = {
    "failing": frozenset({"failing", "quarantined", "offline", "auth_failed"}),
    "quarantined": frozenset({"quarantined"}),
    "offline": frozenset({"offline", "failing", "quarantined"}),
    "degraded": frozenset({"degraded"}),
    "auth_failed": frozenset({"auth_failed"}),
}
_Cause: TypeAlias = tuple[Value, str | None, str | None]  # value, device, metric
_RATE_POINTS = 256  # a rate's window keeps about this many readings, evenly thinned


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule that started firing or was resolved.

    ``value``, ``device`` and ``metric`` are what changed the condition: the reading's value
    (for a state, the state; for ``stale``, None). ``since_mono`` is when the condition became
    true (firing) or false (resolved), not when the hold ran out; ``at_mono`` is when the
    transition happened (the hold ran out, or the event came, for a rule without a hold).
    """

    rule: str
    state: Literal["firing", "resolved"]
    severity: Severity
    value: Value
    device: str | None
    metric: str | None
    since_mono: float
    at_mono: float


class _Levels:
    """A threshold with hysteresis on a number (a value, or a rate)."""

    __slots__ = ("above", "below", "clear")

    def __init__(
        self,
        above: float | None,
        below: float | None,
        clear_above: float | None,
        clear_below: float | None,
    ) -> None:
        self.above = above
        self.below = below
        self.clear = clear_below if above is not None else clear_above

    def level(self, truth: bool | None, v: float) -> bool | None:
        """True over the alarm level; false past the clear level; else as it was."""
        above, clear = self.above, self.clear
        if above is not None:
            if v > above:
                return True
            if (v < clear) if clear is not None else (v <= above):
                return False
            return truth
        below = self.below
        assert below is not None
        if v < below:
            return True
        if (v > clear) if clear is not None else (v >= below):
            return False
        return truth


class _Leaf:
    __slots__ = ("device", "metric", "rule", "truth")

    def __init__(self, rule: _Rule, cond: Condition) -> None:
        assert cond.device is not None
        self.rule = rule
        self.device: str = cond.device
        self.metric = cond.metric
        self.truth: bool | None = None  # unknown until the leaf has seen what it needs


class _Threshold(_Leaf):
    __slots__ = ("levels",)

    def __init__(self, rule: _Rule, cond: Condition) -> None:
        super().__init__(rule, cond)
        self.levels = _Levels(cond.above, cond.below, cond.clear_above, cond.clear_below)

    def reading(self, v: float, mono: float) -> bool:
        new = self.levels.level(self.truth, v)
        if new is self.truth:
            return False
        self.truth = new
        return True


class _Rate(_Leaf):
    """(newest - oldest good value in the window) / their time apart, per ``per``; known once
    the readings span half the window. The window keeps about _RATE_POINTS readings: a
    reading closer than window/_RATE_POINTS to the one before the newest replaces the newest."""

    __slots__ = ("levels", "per", "points", "step", "window")

    def __init__(self, rule: _Rule, cond: Condition) -> None:
        super().__init__(rule, cond)
        r = cond.rate
        assert r is not None
        self.levels = _Levels(r.above, r.below, r.clear_above, r.clear_below)
        self.per = r.per
        self.window = r.window
        self.step = r.window / _RATE_POINTS
        self.points: deque[tuple[float, float]] = deque()

    def reading(self, v: float, mono: float) -> bool:
        pts = self.points
        if pts and mono < pts[-1][0]:
            return False  # older than what the window holds: it cannot be placed
        if len(pts) >= 2 and mono - pts[-2][0] < self.step:
            pts[-1] = (mono, v)
        else:
            pts.append((mono, v))
        while mono - pts[0][0] > self.window:
            pts.popleft()
        span = mono - pts[0][0]
        if span < self.window / 2:
            return False  # not known yet (or again, after a gap in the readings)
        new = self.levels.level(self.truth, (v - pts[0][1]) / span * self.per)
        if new is self.truth:
            return False
        self.truth = new
        return True


class _Stale(_Leaf):
    __slots__ = ("after", "base", "order", "queued")

    def __init__(self, rule: _Rule, cond: Condition) -> None:
        super().__init__(rule, cond)
        assert cond.stale is not None
        self.after = cond.stale
        self.base: float | None = None  # the last good reading, or the engine's first clock
        self.queued: float | None = None
        self.order = 0  # its place in the config (the engine's heap)

    def due(self) -> float | None:
        if self.truth is True or self.base is None:
            return None
        return self.base + self.after


class _State(_Leaf):
    __slots__ = ("matches", "reason")

    def __init__(self, rule: _Rule, cond: Condition) -> None:
        super().__init__(rule, cond)
        assert cond.state is not None
        self.matches = STATE_MATCHES[cond.state]
        self.reason = cond.reason


_Node: TypeAlias = _Leaf | tuple[bool, list["_Node"]]  # a leaf, or (is_all, children)


def _truth(node: _Node) -> bool | None:
    """Three-valued: all is false if one is false, else unknown if one is; any likewise."""
    if isinstance(node, _Leaf):
        return node.truth
    is_all, children = node
    seen_unknown = False
    for child in children:
        t = _truth(child)
        if t is None:
            seen_unknown = True
        elif t is not is_all:
            return t
    return None if seen_unknown else is_all


class _Rule:
    __slots__ = (
        "cause",
        "clear_hold",
        "cond",
        "cond_since",
        "due_at",
        "fired_since",
        "firing",
        "hold",
        "id",
        "order",
        "queued",
        "root",
        "severity",
    )

    def __init__(self, cfg: RuleConfig) -> None:
        self.id = cfg.id
        self.severity: Severity = cfg.severity
        self.hold = cfg.for_
        self.clear_hold = cfg.clear_for
        self.root: _Node = (True, [])  # the engine compiles the condition into it
        self.cond: bool | None = None
        self.cond_since = 0.0
        self.cause: _Cause = (None, None, None)
        self.firing = False
        self.fired_since = 0.0  # while firing: when its condition became true
        self.due_at: float | None = None  # when a pending hold runs out
        self.queued: float | None = None  # its entry in the engine's heap
        self.order = 0  # its place in the config

    def due(self) -> float | None:
        return self.due_at


_Timed: TypeAlias = _Rule | _Stale


class RuleEngine:
    """See the module docstring."""

    def __init__(self, rules: list[RuleConfig]) -> None:
        self._rules: dict[str, _Rule] = {}
        self._readings: dict[tuple[str, str], list[_Threshold | _Rate | _Stale]] = {}
        self._states: dict[str, list[_State]] = {}
        self._stales: list[_Stale] = []
        # (when, order, seq, rule or stale leaf): at one instant, in the order of the config
        # (a rule before its leaves), so the outcome never hangs on the order of pushes.
        self._heap: list[tuple[float, int, int, _Timed]] = []
        self._seq = itertools.count()
        self._now: float | None = None
        self._order = 0
        for cfg in rules:
            if cfg.id in self._rules:
                raise ValueError(f"rule id {cfg.id!r} twice")  # configload refuses it first
            rule = _Rule(cfg)
            rule.order = self._order = self._order + 1
            rule.root = self._compile(rule, cfg)
            self._rules[cfg.id] = rule

    def reading_devices(self) -> frozenset[str]:
        """The devices whose readings some rule watches (the others need no call at all)."""
        return frozenset(device for device, _ in self._readings)

    def _compile(self, rule: _Rule, cond: Condition) -> _Node:
        if cond.children:
            return (cond.all is not None, [self._compile(rule, c) for c in cond.children])
        kind = cond.kind
        if kind == "state":
            leaf = _State(rule, cond)
            self._states.setdefault(leaf.device, []).append(leaf)
            return leaf
        watcher: _Threshold | _Rate | _Stale
        if kind == "threshold":
            watcher = _Threshold(rule, cond)
        elif kind == "rate":
            watcher = _Rate(rule, cond)
        else:
            watcher = _Stale(rule, cond)
            watcher.order = self._order = self._order + 1
            self._stales.append(watcher)
        assert watcher.metric is not None
        self._readings.setdefault((watcher.device, watcher.metric), []).append(watcher)
        return watcher

    # ---- events --------------------------------------------------------------------------

    def on_reading(
        self, device: str, metric: str, value: Value, quality: str, mono: float
    ) -> list[Transition]:
        """One reading, as it goes into the buffer. ``quality``: good, uncertain or bad; only
        a good one moves a threshold or a rate, or refreshes a stale condition."""
        watchers = self._readings.get((device, metric))
        if watchers is None:
            return []
        out = self._advance(mono)
        if quality != "good":
            return out
        num = float(value) if isinstance(value, int | float) else None  # a bool is 0 or 1
        if num is not None and math.isnan(num):
            num = None
        for w in watchers:
            if isinstance(w, _Stale):
                if w.base is None or mono > w.base:
                    w.base = mono
                    self._schedule(w, mono + w.after)
                if w.truth is not False:
                    w.truth = False
                    self._update(w.rule, mono, (value, device, metric), out)
            elif num is not None and w.reading(num, mono):
                self._update(w.rule, mono, (value, device, metric), out)
        return out

    def on_state(
        self, device: str, state: str, reason: str | None, mono: float
    ) -> list[Transition]:
        """A device's state changed (the poller's ok, failing, quarantined; a camera's own ok,
        degraded, offline, auth_failed, with the reason of degraded)."""
        leaves = self._states.get(device)
        if leaves is None:
            return []
        out = self._advance(mono)
        for leaf in leaves:
            new = state in leaf.matches and (leaf.reason is None or reason == leaf.reason)
            if new is not leaf.truth:
                leaf.truth = new
                self._update(leaf.rule, mono, (state, device, None), out)
        return out

    def advance(self, mono: float) -> list[Transition]:
        """The transitions that time alone brings by ``mono``: holds that ran out, metrics
        that went stale. Call it at :meth:`next_deadline` (earlier or later is harmless)."""
        return self._advance(mono)

    def next_deadline(self) -> float | None:
        """When :meth:`advance` next has something to do, or None: the one timer to set."""
        heap = self._heap
        while heap:
            t, _, _, obj = heap[0]
            if obj.queued != t:
                heapq.heappop(heap)  # superseded by an earlier entry
                continue
            due = obj.due()
            if due == t:
                return t
            heapq.heappop(heap)
            obj.queued = None
            if due is not None:
                self._schedule(obj, due)
        return None

    # ---- restart -------------------------------------------------------------------------

    def firing(self) -> dict[str, float]:
        """The rules firing now: rule id -> since_mono (when its condition became true)."""
        return {r.id: r.fired_since for r in self._rules.values() if r.firing}

    def restore(self, firing: dict[str, float]) -> list[str]:
        """Mark rules as firing since the given since_mono (this engine's clock: from an
        earlier boot, convert the saved wall time), before any event: they do not fire again,
        and resolve when their condition is known to be false. Returns the ids it does not
        know (rules removed from the config while they fired), for the caller to close."""
        unknown = []
        for rule_id, since in firing.items():
            rule = self._rules.get(rule_id)
            if rule is None:
                unknown.append(rule_id)
                continue
            rule.firing = True
            rule.fired_since = since
            rule.cond = True
            rule.cond_since = since
            rule.due_at = None
        return unknown

    # ---- internals -----------------------------------------------------------------------

    def _advance(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        if self._now is None:
            self._now = now
            for s in self._stales:  # stale counts from the first clock until a reading
                if s.base is None:
                    s.base = now
                    self._schedule(s, now + s.after)
        elif now > self._now:
            self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, _, obj = heapq.heappop(heap)
            if obj.queued != t:
                continue
            obj.queued = None
            due = obj.due()
            if due is None:
                continue
            if due != t:  # moved on since it was queued: back in line, in time order
                self._schedule(obj, due)
            elif isinstance(obj, _Stale):
                obj.truth = True
                self._update(obj.rule, due, (None, obj.device, obj.metric), out)
            else:
                obj.due_at = None
                if obj.cond and not obj.firing:
                    self._fire(obj, due, out)
                elif obj.cond is False and obj.firing:
                    self._resolve(obj, due, out)
        return out

    def _schedule(self, obj: _Timed, at: float) -> None:
        if obj.queued is not None and obj.queued <= at:
            return  # the earlier entry, when it comes, looks again
        obj.queued = at
        heap = self._heap
        heapq.heappush(heap, (at, obj.order, next(self._seq), obj))
        if len(heap) > 2 * (len(self._rules) + len(self._stales)) + 16:
            # Bounded: entries an earlier one superseded are dropped.
            self._heap = [e for e in heap if e[3].queued == e[0]]
            heapq.heapify(self._heap)

    def _update(self, rule: _Rule, t: float, cause: _Cause, out: list[Transition]) -> None:
        """A leaf of ``rule`` changed at ``t``: re-evaluate it, start or cancel a hold."""
        new = _truth(rule.root)
        if new is None or new is rule.cond:
            return
        rule.cond = new
        rule.cond_since = t
        rule.cause = cause
        if new is not rule.firing:
            hold = rule.hold if new else rule.clear_hold
            if hold <= 0:
                rule.due_at = None
                (self._fire if new else self._resolve)(rule, t, out)
            else:
                rule.due_at = t + hold
                self._schedule(rule, t + hold)
        else:
            rule.due_at = None  # back before the hold ran out

    def _fire(self, rule: _Rule, at: float, out: list[Transition]) -> None:
        rule.firing = True
        rule.fired_since = rule.cond_since
        out.append(Transition(rule.id, "firing", rule.severity, *rule.cause, rule.cond_since, at))

    def _resolve(self, rule: _Rule, at: float, out: list[Transition]) -> None:
        rule.firing = False
        out.append(Transition(rule.id, "resolved", rule.severity, *rule.cause, rule.cond_since, at))
