"""The rule engine (tepi.gateway.rules_engine): every condition type, hysteresis, holds,
flapping, rates, stale, states, nesting, quality, deadlines and restarts; and properties over
random series: transitions alternate, holds are exact, and when advance() is called does not
change what happens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi.core.records import Value
from tepi.gateway.rules import RuleConfig
from tepi.gateway.rules_engine import RuleEngine, Transition


def rule(**kw: Any) -> RuleConfig:
    return RuleConfig.model_validate({"id": "r", **kw})


LEVEL = {"device": "gauge", "metric": "level"}


def engine(**kw: Any) -> RuleEngine:
    return RuleEngine([rule(**kw)])


def feed(e: RuleEngine, series: Sequence[tuple[float, Value]], quality: str = "good") -> list[str]:
    """Readings of gauge.level; the transitions as 'firing@t' / 'resolved@t'."""
    out: list[str] = []
    for t, v in series:
        out += [f"{x.state}@{x.at_mono:g}" for x in e.on_reading("gauge", "level", v, quality, t)]
    return out


def states(ts: list[Transition]) -> list[str]:
    return [t.state for t in ts]


# ---- thresholds ------------------------------------------------------------------------


def test_above_fires_and_resolves_with_what_changed_it() -> None:
    e = engine(**LEVEL, above=2.5, severity="critical")
    assert e.on_reading("gauge", "level", 2.4, "good", 10.0) == []
    (t,) = e.on_reading("gauge", "level", 2.6, "good", 11.0)
    assert t == Transition("r", "firing", "critical", 2.6, "gauge", "level", 11.0, 11.0)
    assert e.firing() == {"r": 11.0}
    assert e.on_reading("gauge", "level", 2.7, "good", 12.0) == []
    assert e.on_reading("gauge", "level", 2.5, "good", 13.0)[0] == Transition(
        "r", "resolved", "critical", 2.5, "gauge", "level", 13.0, 13.0
    )
    assert e.firing() == {}


def test_below_with_clear_above() -> None:
    e = engine(**LEVEL, below=0.5, clear_above=0.8)
    got = feed(e, [(0, 1.0), (1, 0.4), (2, 0.6), (3, 0.8), (4, 0.81), (5, 0.49)])
    assert got == ["firing@1", "resolved@4", "firing@5"]


def test_hysteresis_fires_over_the_level_and_clears_only_under_the_clear_level() -> None:
    e = engine(**LEVEL, above=2.5, clear_below=2.3)
    series = [(0, 2.4), (1, 2.51), (2, 2.45), (3, 2.31), (4, 2.3), (5, 2.49), (6, 2.29)]
    assert feed(e, series) == ["firing@1", "resolved@6"]
    # Starting inside the band, the condition is unknown: nothing fires until it is over.
    e = engine(**LEVEL, above=2.5, clear_below=2.3)
    assert feed(e, [(0, 2.4), (1, 2.2), (2, 2.4), (3, 2.6)]) == ["firing@3"]


def test_a_threshold_on_a_bool_reads_it_as_0_or_1_and_text_is_ignored() -> None:
    e = engine(device="relay", metric="alarm", above=0.5)
    assert states(e.on_reading("relay", "alarm", "on", "good", 0)) == []
    assert states(e.on_reading("relay", "alarm", True, "good", 1)) == ["firing"]
    assert states(e.on_reading("relay", "alarm", float("nan"), "good", 2)) == []
    assert states(e.on_reading("relay", "alarm", False, "good", 3)) == ["resolved"]


@pytest.mark.parametrize("quality", ["bad", "uncertain"])
def test_bad_and_uncertain_readings_never_fire_nor_clear(quality: str) -> None:
    e = engine(**LEVEL, above=2.5)
    assert feed(e, [(0, 9.9), (1, 9.9)], quality) == []
    assert feed(e, [(2, 3.0)]) == ["firing@2"]
    assert feed(e, [(3, 0.0), (4, None)], quality) == []
    assert e.firing() == {"r": 2.0}
    assert feed(e, [(5, 0.0)]) == ["resolved@5"]


# ---- holds -----------------------------------------------------------------------------


def test_for_holds_before_firing_and_since_is_when_it_became_true() -> None:
    e = engine(**LEVEL, above=2.5, clear_below=2.3, **{"for": "30s"})
    assert feed(e, [(100, 2.6)]) == []
    assert e.next_deadline() == 130.0
    assert feed(e, [(110, 2.4)]) == []  # in the band: still true, the hold goes on
    assert e.advance(129.9) == []
    (t,) = e.advance(130.0)
    assert (t.state, t.since_mono, t.at_mono, t.value) == ("firing", 100.0, 130.0, 2.6)
    assert e.next_deadline() is None
    assert e.firing() == {"r": 100.0}


def test_a_hold_broken_before_it_ends_fires_nothing() -> None:
    e = engine(**LEVEL, above=2.5, **{"for": "30s"})
    assert feed(e, [(0, 2.6), (20, 2.0), (25, 2.6)]) == []
    assert e.next_deadline() == 55.0  # from zero again
    assert e.advance(54) == []
    assert states(e.advance(60)) == ["firing"]


def test_a_hold_that_ran_out_between_readings_fires_at_its_deadline() -> None:
    """No advance() call: the next reading brings the firing, dated when the hold ended,
    before the reading itself resolves it."""
    e = engine(**LEVEL, above=2.5, **{"for": "30s"})
    assert feed(e, [(0, 2.6), (300, 1.0)]) == ["firing@30", "resolved@300"]


def test_clear_for_holds_before_resolving() -> None:
    e = engine(**LEVEL, above=2.5, clear_for="1m")
    assert feed(e, [(0, 3.0), (10, 2.0), (40, 3.0), (50, 2.0)]) == ["firing@0"]
    assert e.next_deadline() == 110.0
    (t,) = e.advance(200)
    assert (t.state, t.since_mono, t.at_mono, t.value) == ("resolved", 50.0, 110.0, 2.0)


def test_flapping_around_the_level_raises_no_storm() -> None:
    flaps = [(float(t), 2.49 if t % 2 else 2.51) for t in range(600)]  # 10 min, every second
    bare = engine(**LEVEL, above=2.5)
    assert len(feed(bare, flaps)) == 600  # neither hysteresis nor a hold: every crossing
    hysteresis = engine(**LEVEL, above=2.5, clear_below=2.3)
    assert feed(hysteresis, flaps) == ["firing@0"]
    clear_hold = engine(**LEVEL, above=2.5, clear_for="5s")
    assert feed(clear_hold, flaps) == ["firing@0"]
    hold = engine(**LEVEL, above=2.5, **{"for": "5s"})
    assert feed(hold, flaps) == []
    assert len(hold._heap) <= 2 * 1 + 16  # superseded deadlines do not pile up


# ---- rate ------------------------------------------------------------------------------


def ramp(
    start: float, per_minute: float, minutes: float, t0: float = 0.0
) -> list[tuple[float, Value]]:
    """A reading every 10 s changing by ``per_minute`` a minute."""
    n = int(minutes * 6)
    return [(t0 + 10.0 * i, round(start + per_minute * i / 6, 6)) for i in range(n + 1)]


def test_a_rise_faster_than_the_limit_fires_once_half_the_window_is_seen() -> None:
    e = engine(**LEVEL, rate={"above": 0.1, "per": "1m", "window": "10m"})
    got = feed(e, ramp(1.0, 0.2, 20))
    assert got == ["firing@300"]  # known at 5 min, half the window
    # Level again: the rate over the window falls under 0.1 a minute when the window holds
    # less than half a rise.
    got = feed(e, [(1200 + 10 * i, 5.0) for i in range(1, 61)])
    assert len(got) == 1
    assert got[0].startswith("resolved@")
    assert 1200 < float(got[0].split("@")[1]) <= 1200 + 600


def test_a_fall_fires_on_below_and_a_slow_one_does_not() -> None:
    e = engine(**LEVEL, rate={"below": -0.1, "window": "10m"})
    assert feed(e, ramp(3.0, -0.05, 20)) == []
    e = engine(**LEVEL, rate={"below": -0.1, "window": "10m"})
    assert feed(e, ramp(3.0, -0.2, 20)) == ["firing@300"]


def test_rate_hysteresis_and_bad_readings() -> None:
    e = engine(**LEVEL, rate={"above": 0.2, "clear_below": 0.05, "window": "2m"})
    assert feed(e, ramp(0.0, 0.3, 4)) == ["firing@60"]
    assert feed(e, ramp(1.2, 0.1, 4, t0=250)) == []  # 0.1 a minute: still over the clear level
    assert feed(e, [(600 + i, 99.0) for i in range(10)], "bad") == []
    got = feed(e, ramp(1.6, 0.0, 4, t0=700))
    assert got == ["resolved@760"]


def test_the_rate_window_stays_bounded() -> None:
    e = engine(**LEVEL, rate={"above": 1, "window": "1h"})
    feed(e, [(i * 0.1, 0.0) for i in range(50_000)])  # 10 readings a second for 83 min
    leaf = e._readings[("gauge", "level")][0]
    assert len(leaf.points) <= 260  # type: ignore[union-attr]


# ---- stale -----------------------------------------------------------------------------


def test_stale_counts_from_the_start_and_only_good_readings_refresh_it() -> None:
    e = engine(**LEVEL, stale="15m")
    assert e.next_deadline() is None  # no clock yet
    assert e.advance(1000.0) == []
    assert e.next_deadline() == 1900.0
    assert feed(e, [(1500, 1.0)], "bad") == []
    assert feed(e, [(1600, None)], "uncertain") == []
    (t,) = e.advance(2000.0)
    assert (t.state, t.since_mono, t.at_mono, t.value, t.metric) == (
        "firing",
        1900.0,
        1900.0,
        None,
        "level",
    )
    assert feed(e, [(2100, 1.5)]) == ["resolved@2100"]
    assert e.next_deadline() == 3000.0


def test_regular_readings_keep_stale_quiet_with_one_timer() -> None:
    e = engine(**LEVEL, stale="1m")
    for i in range(1000):
        assert feed(e, [(10.0 * i, 1.0)]) == []
        assert e.next_deadline() == 10.0 * i + 60
        assert e.advance(10.0 * i + 5) == []
    assert len(e._heap) <= 1


def test_stale_and_a_hold() -> None:
    e = engine(**LEVEL, stale="5m", **{"for": "1m"})
    e.advance(0)
    assert e.advance(300) == []
    (t,) = e.advance(360)
    assert (t.state, t.since_mono, t.at_mono) == ("firing", 300.0, 360.0)


# ---- states ----------------------------------------------------------------------------


def test_device_states() -> None:
    e = RuleEngine(
        [
            rule(id="failing", device="meter", state="failing"),
            rule(id="quarantined", device="meter", state="quarantined"),
            rule(id="offline", device="meter", state="offline"),
        ]
    )
    assert e.on_state("meter", "ok", None, 0) == []
    assert [(t.rule, t.state) for t in e.on_state("meter", "failing", None, 1)] == [
        ("failing", "firing"),
        ("offline", "firing"),
    ]
    got = e.on_state("meter", "quarantined", None, 2)
    assert [(t.rule, t.state, t.value) for t in got] == [("quarantined", "firing", "quarantined")]
    got = e.on_state("meter", "ok", None, 3)
    assert sorted(t.rule for t in got) == ["failing", "offline", "quarantined"]
    assert {t.state for t in got} == {"resolved"}
    assert e.on_state("other", "failing", None, 4) == []


def test_camera_degraded_with_a_reason() -> None:
    e = RuleEngine(
        [
            rule(id="black", device="cam", state="degraded", reason="black"),
            rule(id="any", device="cam", state="degraded"),
            rule(id="auth", device="cam", state="auth_failed"),
        ]
    )
    fired = [t.rule for t in e.on_state("cam", "degraded", "frozen", 0)]
    assert fired == ["any"]
    got = [(t.rule, t.state) for t in e.on_state("cam", "degraded", "black", 1)]
    assert got == [("black", "firing")]
    got = [(t.rule, t.state) for t in e.on_state("cam", "auth_failed", None, 2)]
    assert got == [("black", "resolved"), ("any", "resolved"), ("auth", "firing")]


# ---- all / any -------------------------------------------------------------------------


def test_all_and_any_nest_with_unknown_leaves() -> None:
    e = engine(
        any=[
            {"all": [{**LEVEL, "above": 2.0}, {**LEVEL, "rate": {"above": 0.1, "window": "2m"}}]},
            {**LEVEL, "above": 3.0},
            {"device": "gauge", "state": "offline"},
        ]
    )
    assert feed(e, [(0, 2.5)]) == []  # over 2.0; the rate unknown, the state unknown
    got = e.on_reading("gauge", "level", 3.5, "good", 10)
    assert [(t.state, t.value) for t in got] == [("firing", 3.5)]
    assert e.on_state("gauge", "ok", None, 20) == []
    assert feed(e, [(30, 2.6)]) == []  # over 3.0 no more, the rate still unknown: stays
    assert feed(e, [(70, 2.6), (100, 2.6)]) == ["resolved@70"]  # rate known: flat, all false
    (t,) = e.on_state("gauge", "failing", None, 110)
    assert (t.state, t.device, t.metric, t.value) == ("firing", "gauge", None, "failing")


def test_all_needs_every_one() -> None:
    e = engine(all=[{**LEVEL, "above": 1}, {"device": "pump", "metric": "on", "below": 0.5}])
    assert feed(e, [(0, 2)]) == []
    assert states(e.on_reading("pump", "on", 0, "good", 1)) == ["firing"]
    assert feed(e, [(2, 0.5)]) == ["resolved@2"]


# ---- deadlines, cost, restart ----------------------------------------------------------


def test_next_deadline_is_the_earliest_of_holds_and_stale() -> None:
    e = RuleEngine(
        [
            rule(id="slow", **LEVEL, above=1, **{"for": "1h"}),
            rule(id="quick", **LEVEL, above=1, **{"for": "10s"}),
            rule(id="silent", **LEVEL, stale="30m"),
        ]
    )
    feed(e, [(0, 2.0)])
    assert e.next_deadline() == 10.0
    assert [t.rule for t in e.advance(10)] == ["quick"]
    assert e.next_deadline() == 1800.0
    feed(e, [(1000, 2.0)])
    assert e.next_deadline() == 2800.0  # stale moved on; slow's hour ends at 3600
    assert [t.rule for t in e.advance(5000)] == ["silent", "slow"]  # in time order
    assert e.next_deadline() is None


def test_a_reading_no_rule_names_changes_nothing() -> None:
    e = engine(**LEVEL, above=1, **{"for": "10s"})
    feed(e, [(0, 2.0)])
    assert e.on_reading("gauge", "other", 5.0, "good", 100) == []
    assert e.on_reading("meter", "level", 5.0, "good", 100) == []
    assert e.next_deadline() == 10.0  # not even time moved


def test_restore_never_fires_twice_and_resolves_when_the_condition_is_known_false() -> None:
    cfg = [rule(id="flood", **LEVEL, above=2.5, clear_below=2.3, **{"for": "30s"})]
    e = RuleEngine(cfg)
    feed(e, [(0, 2.6)])
    e.advance(30)
    saved = e.firing()
    assert saved == {"flood": 0.0}

    e = RuleEngine(cfg)  # restarted
    assert e.restore({**saved, "gone": 5.0}) == ["gone"]
    assert e.firing() == saved
    assert feed(e, [(100, 2.7), (200, 2.4)]) == []  # over, then in the band: still firing
    assert e.advance(1000) == []
    (t,) = e.on_reading("gauge", "level", 2.0, "good", 1100)
    assert (t.state, t.since_mono) == ("resolved", 1100.0)
    assert feed(e, [(1200, 2.6)]) == []  # a new alarm holds again
    assert e.advance(1230)[0].since_mono == 1200.0


def test_a_restored_state_rule_waits_for_the_state() -> None:
    e = engine(device="cam", state="offline")
    e.restore({"r": 7.0})
    assert e.advance(10_000) == []
    assert e.on_state("cam", "offline", None, 10_001) == []
    assert states(e.on_state("cam", "ok", None, 10_002)) == ["resolved"]


# ---- properties ------------------------------------------------------------------------

QUALITY = st.sampled_from(["good", "good", "good", "bad", "uncertain"])
EVENTS = st.lists(
    st.tuples(
        st.floats(0, 60), st.sampled_from(["level", "level", "state"]), st.floats(0, 5), QUALITY
    ),
    max_size=60,
)
HOLDS = st.sampled_from([0, 0, 5, 30, 90])


@st.composite
def rule_sets(draw: st.DrawFn) -> list[RuleConfig]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["above", "below", "rate", "stale", "state", "any", "all"]))
        level = draw(st.floats(1, 4))
        gap = draw(st.sampled_from([0, 0.1, 0.5]))
        leaf: dict[str, Any]
        if kind == "above":
            leaf = {**LEVEL, "above": level, "clear_below": level - gap}
        elif kind == "below":
            leaf = {**LEVEL, "below": level, "clear_above": level + gap}
        elif kind == "rate":
            leaf = {**LEVEL, "rate": {"above": draw(st.floats(-1, 1)), "window": "3m"}}
        elif kind == "stale":
            leaf = {**LEVEL, "stale": draw(st.sampled_from([30, 200]))}
        elif kind == "state":
            leaf = {"device": "gauge", "state": "failing"}
        else:
            leaf = {
                kind: [
                    {**LEVEL, "above": level},
                    {"device": "gauge", "state": "offline"},
                    {**LEVEL, "below": level / 2},
                ]
            }
        hold = {"for": draw(HOLDS), "clear_for": draw(HOLDS)}
        out.append(rule(**{**leaf, **hold, "id": f"r{i}"}))
    return out


def play(
    rules: list[RuleConfig], events: list[tuple[float, str, float, str]], timer: bool
) -> list[Transition]:
    """Run the events (gaps in seconds); with ``timer``, call advance() at each deadline as
    the agent's one timer would; at the end, advance far ahead."""
    e = RuleEngine(rules)
    out: list[Transition] = []
    now = 0.0
    out += e.advance(now)
    for gap, what, value, quality in events:
        now += gap
        while timer and (due := e.next_deadline()) is not None and due <= now:
            out += e.advance(due)
        if what == "level":
            out += e.on_reading("gauge", "level", value, quality, now)
        else:
            out += e.on_state("gauge", "failing" if value > 2.5 else "ok", None, now)
    out += e.advance(now + 10_000)
    last = {t.rule: t for t in out}
    assert e.firing() == {r: t.since_mono for r, t in last.items() if t.state == "firing"}
    return out


@settings(max_examples=300, deadline=None)
@given(rules=rule_sets(), events=EVENTS)
def test_transitions_alternate_from_firing_and_holds_are_exact(
    rules: list[RuleConfig], events: list[tuple[float, str, float, str]]
) -> None:
    out = play(rules, events, timer=True)
    by_id = {r.id: r for r in rules}
    for r in rules:
        mine = [t for t in out if t.rule == r.id]
        assert [t.state for t in mine] == ["firing", "resolved"] * (len(mine) // 2) + (
            ["firing"] if len(mine) % 2 else []
        )
    for t in out:
        r = by_id[t.rule]
        hold = r.for_ if t.state == "firing" else r.clear_for
        assert t.at_mono == pytest.approx(t.since_mono + hold), t  # fired when the hold ended
        assert t.severity == r.severity
    for r in rules:  # each rule's transitions in time order
        ats = [t.at_mono for t in out if t.rule == r.id]
        assert ats == sorted(ats)


@settings(max_examples=200, deadline=None)
@given(rules=rule_sets(), events=EVENTS)
def test_when_advance_is_called_changes_nothing(
    rules: list[RuleConfig], events: list[tuple[float, str, float, str]]
) -> None:
    """The agent's timer may be late or never come: the events then bring the same
    transitions, with the same times."""
    assert play(rules, events, timer=True) == play(rules, events, timer=False)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.tuples(st.floats(0.1, 60), st.floats(0, 5), QUALITY), max_size=80),
    above=st.floats(1, 4),
    gap=st.floats(0, 1),
    hold=HOLDS,
)
def test_a_threshold_fires_exactly_when_its_good_readings_say(
    values: list[tuple[float, float, str]], above: float, gap: float, hold: float
) -> None:
    """Against a plain model: the latched level from the good readings alone, and the rule
    firing once it has been true for the hold."""
    e = engine(**LEVEL, above=above, clear_below=above - gap, **{"for": hold})
    now, latched, since, firing = 0.0, False, 0.0, False
    expected: list[tuple[str, float]] = []
    got: list[tuple[str, float]] = []
    for dt, v, quality in values:
        now += dt
        if latched and not firing and now >= since + hold:
            firing = True
            expected.append(("firing", since + hold))
        got += [(t.state, t.at_mono) for t in e.on_reading("gauge", "level", v, quality, now)]
        if quality != "good":
            continue
        new = v > above or (latched and v >= above - gap)
        if new != latched:
            latched, since = new, now
            if new and hold == 0:
                firing = True
                expected.append(("firing", now))
            elif not new and firing:
                firing = False
                expected.append(("resolved", now))
    assert got == expected
