"""The alarm store against real SQLite files: the lifecycle, messages and their seqs, restarts,
the bound and its drop policy, a damaged file, and a model-based test. ``kill -9`` is in
test_alarms_crash.py."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.buffer.alarms import (
    ACKNOWLEDGED,
    DROP_REASONS,
    FIRING,
    RESOLVED,
    SEQ_BLOCK,
    AlarmStore,
    AlarmStoreError,
    AlarmWriteError,
    Message,
)

pytestmark = pytest.mark.timeout(30)


def fire(store: AlarmStore, rule: str, value: float = 2.6, **kw: object) -> Message | None:
    args: dict[str, object] = {
        "severity": "critical",
        "since_ts": 1000.0,
        "since_mono": 50.0,
        "value": value,
        "device": "river-level-3",
        "metric": "level",
        "labels": {"site": "hue", "river": "perfume"},
        "ts": 1030.0,
        "mono": 80.0,
    }
    args.update(kw)
    return store.fire(rule, **args)  # type: ignore[arg-type]


def seqs(store: AlarmStore) -> list[tuple[int, str, str]]:
    return [(m.seq, m.transition, m.rule) for m in store.pending(10**6)]


# ---- the lifecycle ---------------------------------------------------------------------------


def test_fire_resolve_acknowledge_and_their_messages(tmp_path: Path) -> None:
    with AlarmStore(tmp_path, boot_id="boot-a") as store:
        fired = fire(store, "flood-high")
        assert fired is not None
        assert fired.transition == FIRING
        assert (fired.rule, fired.severity, fired.value) == ("flood-high", "critical", 2.6)
        assert (fired.since_ts, fired.since_mono, fired.ts, fired.mono) == (1000, 50, 1030, 80)
        assert fired.labels == {"site": "hue", "river": "perfume"}
        assert (fired.device, fired.metric, fired.boot, fired.by) == (
            "river-level-3",
            "level",
            "boot-a",
            None,
        )
        assert fire(store, "flood-high", 2.9) is None, "a firing rule never fires again"

        state = store.get("flood-high")
        assert state is not None
        assert state.firing
        assert (state.count, state.value, state.fire_seq, state.acknowledged) == (
            1,
            2.6,
            fired.seq,
            False,
        )
        assert store.firing() == {"flood-high": state}

        acked = store.acknowledge("flood-high", "operator-1", 1040.0, mono=90.0)
        assert acked is not None
        assert (acked.transition, acked.by, acked.value, acked.since_ts) == (
            ACKNOWLEDGED,
            "operator-1",
            2.6,
            1000,
        )
        assert store.acknowledge("flood-high", "operator-2", 1041.0) is None
        state = store.get("flood-high")
        assert state is not None
        assert (state.acknowledged, state.ack_by, state.ack_ts) == (True, "operator-1", 1040)

        resolved = store.resolve(
            "flood-high", ts=1100.0, mono=150.0, value=2.2, since_ts=1090.0, since_mono=140.0
        )
        assert resolved is not None
        assert (resolved.transition, resolved.value, resolved.ts) == (RESOLVED, 2.2, 1100)
        # Its since: when the condition became false, not when the alarm fired.
        assert (resolved.since_ts, resolved.since_mono) == (1090, 140)
        assert store.resolve("flood-high", ts=1101.0, value=2.1) is None
        assert store.resolve("never-fired", ts=1101.0) is None
        assert store.acknowledge("never-fired", "x", 1.0) is None
        assert store.firing() == {}
        state = store.get("flood-high")
        assert state is not None
        assert (state.state, state.resolved_ts, state.resolved_value) == (RESOLVED, 1100, 2.2)
        assert state.acknowledged, "acknowledged until it fires again"

        # It fires again: a new episode, count 2, not acknowledged.
        again = fire(store, "flood-high", 3.1, since_ts=2000.0)
        assert again is not None
        state = store.get("flood-high")
        assert state is not None
        assert (state.count, state.acknowledged, state.value, state.since_ts) == (
            2,
            False,
            3.1,
            2000,
        )
        assert (state.resolved_ts, state.fire_seq) == (None, again.seq)

        assert seqs(store) == [
            (fired.seq, FIRING, "flood-high"),
            (acked.seq, ACKNOWLEDGED, "flood-high"),
            (resolved.seq, RESOLVED, "flood-high"),
            (again.seq, FIRING, "flood-high"),
        ]
        assert fired.seq < acked.seq < resolved.seq < again.seq
        assert store.pending(2) == store.pending(10)[:2]
        assert store.pending_count() == 4
        stats = store.stats()
        assert (stats.fired, stats.resolved_transitions, stats.acknowledged) == (2, 1, 1)


def test_values_of_every_kind_round_trip(tmp_path: Path) -> None:
    with AlarmStore(tmp_path) as store:
        for i, value in enumerate([True, 0, -3, 2.5, "offline", None]):
            fire(store, f"r{i}", value, labels=None)  # type: ignore[arg-type]
        got = [m.value for m in store.pending()]
        assert got == [True, 0, -3, 2.5, "offline", None]
        assert [type(v) for v in got] == [bool, int, int, float, str, type(None)]
        assert store.pending()[0].labels == {}


def test_ack_deletes_only_what_it_names(tmp_path: Path) -> None:
    with AlarmStore(tmp_path) as store:
        msgs = [fire(store, f"r{i}") for i in range(5)]
        s = [m.seq for m in msgs if m is not None]
        assert store.ack([s[0], s[2]]) == 2
        assert store.ack([s[0], 999_999]) == 0, "acked twice or unknown: not an error"
        assert store.ack([]) == 0
        assert [m.seq for m in store.pending()] == [s[1], s[3], s[4]]
        assert store.pending_count() == 3
        assert store.stats().acks == 2
        assert len(store.firing()) == 5, "acking a message does not touch the state"


def test_seqs_survive_reopen_and_are_never_reused(tmp_path: Path) -> None:
    with AlarmStore(tmp_path) as store:
        a = fire(store, "a")
        b = fire(store, "b")
        assert a is not None
        assert b is not None
        store.ack([a.seq, b.seq])
    with AlarmStore(tmp_path) as store:
        assert store.stats().next_seq == b.seq + 1
        c = store.resolve("a", ts=1.0, value=0.0)
        assert c is not None
        assert c.seq == b.seq + 1, "everything acked: the file still knows the last seq"
    # A crash (no clean close): numbering resumes above the reservation.
    store = AlarmStore(tmp_path).open()
    d = fire(store, "d")
    assert d is not None
    store._close_db()
    store._release_dir_lock()
    with AlarmStore(tmp_path) as store:
        assert store.stats().next_seq > d.seq
        e = fire(store, "e")
        assert e is not None
        assert e.seq > d.seq


def test_a_restart_never_refires_and_never_forgets(tmp_path: Path) -> None:
    with AlarmStore(tmp_path, boot_id="boot-1") as store:
        fire(store, "flood-high", since_mono=12.5)
        fire(store, "pm25")
        store.resolve("pm25", ts=2000.0, value=10.0)
        fire(store, "gate-stuck")
        store.acknowledge("gate-stuck", "op", 1050.0)
        before = store.firing()
        count = store.pending_count()
    with AlarmStore(tmp_path, boot_id="boot-2") as store:
        after = store.firing()
        assert after == before
        assert set(after) == {"flood-high", "gate-stuck"}
        assert after["flood-high"].since_mono == 12.5
        assert after["flood-high"].boot == "boot-1", "since_mono belongs to the boot it fired in"
        assert after["gate-stuck"].acknowledged
        # The engine, restoring, sees the condition still true and calls fire again: no-op.
        assert fire(store, "flood-high") is None
        assert fire(store, "gate-stuck") is None
        assert store.pending_count() == count
        assert store.states()["pm25"].state == RESOLVED
        resolved = store.resolve("flood-high", ts=3000.0, value=2.0)
        assert resolved is not None
        assert resolved.boot == "boot-2"
        # Without a since of its own, a resolve is dated at the transition (this boot's
        # clock), not at the firing's since of the earlier boot (12.5 there).
        assert (resolved.since_ts, resolved.since_mono) == (3000.0, resolved.mono)
        assert store.get("flood-high").since_mono == 12.5  # type: ignore[union-attr]


def test_one_store_per_directory(tmp_path: Path) -> None:
    with AlarmStore(tmp_path), pytest.raises(AlarmStoreError, match="in use"):
        AlarmStore(tmp_path).open()
    with AlarmStore(tmp_path) as store:  # released at close
        assert store.pending() == []
    with pytest.raises(AlarmStoreError, match="not open"):
        store.pending()


def test_threads_share_a_store(tmp_path: Path) -> None:
    with AlarmStore(tmp_path, sync=False) as store:

        def work(t: int) -> None:
            for i in range(50):
                rule = f"t{t}-r{i % 5}"
                if fire(store, rule) is None:
                    store.resolve(rule, ts=float(i), value=0.0)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        got = [s for s, _, _ in seqs(store)]
        assert len(got) == 200
        assert got == sorted(set(got))
        assert got == list(range(got[0], got[0] + 200)), "no seq skipped or doubled"


async def test_async_wrappers(tmp_path: Path) -> None:
    with AlarmStore(tmp_path, sync=False) as store:
        m = await store.afire(
            "r", severity="warning", since_ts=1.0, since_mono=1.0, value=1.0, device="d",
            metric="m",
        )  # fmt: skip
        assert m is not None
        assert await store.aacknowledge("r", "op", 2.0) is not None
        assert await store.aresolve("r", ts=3.0, value=0.5) is not None
        pending = await store.apending(10)
        assert [p.transition for p in pending] == [FIRING, ACKNOWLEDGED, RESOLVED]
        assert await store.aack(p.seq for p in pending) == 3


# ---- the bound -------------------------------------------------------------------------------


def test_when_full_resolved_alarms_go_first_oldest_first(tmp_path: Path) -> None:
    with AlarmStore(tmp_path, max_alarms=10) as store:
        for r in "abcde":
            fire(store, r)  # seqs 1-5; 5 states + 5 messages: full
        assert store.stats().rows == 10
        # 11 rows: a's state row goes first (memory only); its messages stay to be delivered.
        assert store.resolve("a", ts=1.0, value=0.0) is not None  # seq 6
        stats = store.stats()
        assert (stats.rows, stats.dropped["resolved_state"], stats.over_bound) == (10, 1, 0)
        assert "a" not in store.states()
        assert [s for s, _, _ in seqs(store)] == [1, 2, 3, 4, 5, 6]
        assert store.resolve("b", ts=2.0, value=0.0) is not None  # seq 7: b's state goes
        fire(store, "f")  # seq 8: the two oldest messages of resolved alarms go, a's and b's
        assert [s for s, _, _ in seqs(store)] == [3, 4, 5, 6, 7, 8]
        fire(store, "g")  # seq 9: then the next two
        assert seqs(store) == [
            (s, FIRING, r) for s, r in zip([3, 4, 5, 8, 9], "cdefg", strict=True)
        ]
        stats = store.stats()
        assert stats.rows == 10
        assert stats.dropped == {"resolved_state": 2, "resolved_message": 4, "firing_followup": 0}
        assert set(store.firing()) == set("cdefg")
        assert set(stats.dropped) == set(DROP_REASONS)


def test_many_rules_firing_and_resolving_keep_every_firing_one(tmp_path: Path) -> None:
    max_alarms = 60
    with AlarmStore(tmp_path, max_alarms=max_alarms, sync=False) as store:
        firing: set[str] = set()
        returned: list[int] = []
        for i in range(400):
            rule = f"r{i % 13}"
            if rule in firing:
                msg = store.resolve(rule, ts=float(i), value=0.0)
                firing.discard(rule)
            else:
                msg = fire(store, rule)
                firing.add(rule)
            assert msg is not None
            returned.append(msg.seq)
            if i % 7 == 0 and (ack := store.acknowledge(f"r{i % 11}", "op", float(i))):
                returned.append(ack.seq)
            stats = store.stats()
            assert stats.rows <= max_alarms
            assert set(store.firing()) == firing
            pending = {s for s, _, _ in seqs(store)}
            states = store.states()
            for rule in firing:
                assert states[rule].fire_seq in pending, "a firing alarm's firing message stays"
            # The newest are kept: what goes is the oldest.
            assert set(returned[-10:]) <= pending
        stats = store.stats()
        assert stats.dropped["resolved_message"] > 0
        assert stats.dropped["resolved_state"] > 0
        assert stats.refused_drops == 0
        assert stats.over_bound == 0


def test_all_firing_the_store_goes_over_rather_than_drop_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with AlarmStore(tmp_path, max_alarms=4) as store:
        for i in range(6):
            assert fire(store, f"r{i}") is not None
        stats = store.stats()
        assert len(store.firing()) == 6
        assert stats.rows == 12
        assert stats.over_bound == 8
        assert stats.refused_drops >= 1
        assert sum(stats.dropped.values()) == 0
        assert "over its bound" in caplog.text
        # An acknowledgement of a firing alarm is droppable, and goes at once.
        assert store.acknowledge("r0", "op", 1.0) is not None
        assert store.stats().dropped["firing_followup"] == 1
        assert store.get("r0").acknowledged  # type: ignore[union-attr]
        # Delivered: only the state rows are left, still over, still all kept.
        store.ack(m.seq for m in store.pending(100))
        assert store.stats().rows == 6
        assert len(store.firing()) == 6
        # Resolving lets the store shrink back: the resolved ones go.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tepi.buffer.alarms"):
            for i in range(3):
                store.resolve(f"r{i}", ts=2.0, value=0.0)
        stats = store.stats()
        assert stats.rows == 4
        assert stats.over_bound == 0
        assert set(store.firing()) == {"r3", "r4", "r5"}
        assert "back within" in caplog.text


def test_a_lowered_bound_applies_at_open(tmp_path: Path) -> None:
    with AlarmStore(tmp_path) as store:
        for i in range(10):
            fire(store, f"r{i}")
            store.resolve(f"r{i}", ts=1.0, value=0.0)
        fire(store, "keep")
    with AlarmStore(tmp_path, max_alarms=5) as store:
        stats = store.stats()
        assert stats.rows == 5
        assert sum(stats.dropped.values()) == 32 - 5
        assert set(store.firing()) == {"keep"}
        assert [t for _, t, _ in seqs(store)][-1] == FIRING


def test_a_refused_write_records_nothing_of_the_transition(tmp_path: Path) -> None:
    """The disk refusing a transition (here SQLite itself, by a trigger on the real file)
    leaves no state change without its message: the whole transition is rolled back."""
    with AlarmStore(tmp_path) as store:
        first = fire(store, "a")
        assert first is not None
        other = sqlite3.connect(tmp_path / "alarms.db")
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages"
            " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        other.commit()
        before = (store.states(), store.pending(), store.stats().rows)
        with pytest.raises(AlarmWriteError, match="firing of b not recorded: disk says no"):
            fire(store, "b")
        with pytest.raises(AlarmWriteError, match="resolving of a"):
            store.resolve("a", ts=1.0, value=0.0)
        with pytest.raises(AlarmWriteError, match="acknowledgement of a"):
            store.acknowledge("a", "op", 1.0)
        assert (store.states(), store.pending(), store.stats().rows) == before
        assert store.stats().write_errors == 3
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        again = fire(store, "b")
        assert again is not None
        assert again.seq > first.seq + 3, "seqs of refused transitions are skipped, not reused"
        assert set(store.firing()) == {"a", "b"}


# ---- a damaged file --------------------------------------------------------------------------


def test_a_damaged_file_is_moved_aside_and_seqs_stay_above(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with AlarmStore(tmp_path) as store:
        last = fire(store, "a")
        assert last is not None
    (tmp_path / "alarms.db").write_bytes(b"this is not a database" * 100)
    with AlarmStore(tmp_path) as store:
        stats = store.stats()
        assert stats.quarantined == 1
        assert store.states() == {}
        m = fire(store, "b")
        assert m is not None
        assert m.seq > last.seq
        assert m.seq == SEQ_BLOCK + 2, "resumed above the reservation"
    assert len(list(tmp_path.glob("alarms.db.corrupt-*"))) == 1
    assert "moved aside" in caplog.text
    # The reservation lost too: the clock in milliseconds is above any seq handed out.
    (tmp_path / "alarms.seq").unlink()
    (tmp_path / "alarms.db").write_bytes(b"garbage" * 100)
    with AlarmStore(tmp_path) as store:
        assert store.stats().next_seq > int(time.time() * 1000) - 60_000


def test_a_foreign_schema_is_moved_aside(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "alarms.db")
    con.execute("CREATE TABLE alarms (rule TEXT PRIMARY KEY)")
    con.commit()
    con.close()
    with AlarmStore(tmp_path) as store:
        assert store.stats().quarantined == 1
        assert fire(store, "a") is not None


# ---- against a model -------------------------------------------------------------------------

RULES = ["r0", "r1", "r2", "r3"]
op = st.one_of(
    st.tuples(st.just("fire"), st.sampled_from(RULES)),
    st.tuples(st.just("resolve"), st.sampled_from(RULES)),
    st.tuples(st.just("acknowledge"), st.sampled_from(RULES)),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("reopen"), st.booleans()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=40))
def test_against_a_model(ops: list[tuple[str, object]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        store = AlarmStore(path, sync=False).open()
        states: dict[str, tuple[str, bool, int]] = {}  # rule -> (state, acknowledged, count)
        messages: list[tuple[int, str, str]] = []
        last = 0
        try:
            for name, arg in ops:
                msg: Message | None = None
                if name == "fire":
                    rule = str(arg)
                    msg = fire(store, rule)
                    s = states.get(rule)
                    if s is not None and s[0] == FIRING:
                        assert msg is None
                    else:
                        assert msg is not None
                        states[rule] = (FIRING, False, (s[2] if s else 0) + 1)
                elif name == "resolve":
                    rule = str(arg)
                    msg = store.resolve(rule, ts=1.0, value=0.0)
                    s = states.get(rule)
                    if s is None or s[0] != FIRING:
                        assert msg is None
                    else:
                        assert msg is not None
                        states[rule] = (RESOLVED, s[1], s[2])
                elif name == "acknowledge":
                    rule = str(arg)
                    msg = store.acknowledge(rule, "op", 1.0)
                    s = states.get(rule)
                    if s is None or s[1]:
                        assert msg is None
                    else:
                        assert msg is not None
                        states[rule] = (s[0], True, s[2])
                elif name == "ack":
                    n = int(arg)  # type: ignore[call-overload]
                    assert store.ack(s for s, _, _ in messages[:n]) == min(n, len(messages))
                    del messages[:n]
                else:
                    if arg:
                        store.close()
                    else:  # as after a kill: no clean close
                        store._close_db()
                        store._release_dir_lock()
                    store = AlarmStore(path, sync=False).open()
                if msg is not None:
                    assert msg.seq > last
                    last = msg.seq
                    messages.append((msg.seq, msg.transition, msg.rule))
                    assert msg.transition == states[msg.rule][0] or msg.transition == ACKNOWLEDGED
                assert seqs(store) == messages
                got = {r: (s.state, s.acknowledged, s.count) for r, s in store.states().items()}
                assert got == states
                assert set(store.firing()) == {r for r, s in states.items() if s[0] == FIRING}
                assert store.stats().next_seq > last
        finally:
            store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 8), st.lists(op, max_size=40))
def test_a_small_bound_never_drops_a_firing_alarm(
    max_alarms: int, ops: list[tuple[str, object]]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        store = AlarmStore(path, sync=False, max_alarms=max_alarms).open()
        firing: dict[str, bool] = {}  # firing rule -> acknowledged
        acked: set[int] = set()
        last = 0
        try:
            for name, arg in ops:
                msg: Message | None = None
                rule = str(arg)
                if name == "fire":
                    msg = fire(store, rule)
                    assert (msg is None) == (rule in firing)
                    firing.setdefault(rule, False)
                elif name == "resolve":
                    msg = store.resolve(rule, ts=1.0, value=0.0)
                    assert (msg is None) == (rule not in firing)
                    firing.pop(rule, None)
                elif name == "acknowledge":
                    msg = store.acknowledge(rule, "op", 1.0)
                    if rule in firing:  # a resolved one's row may have been dropped
                        assert (msg is None) == firing[rule]
                        firing[rule] = True
                elif name == "ack":
                    n = int(arg)  # type: ignore[call-overload]
                    gone = [m.seq for m in store.pending(n)]
                    store.ack(gone)
                    acked.update(gone)
                else:
                    store.close()
                    store = AlarmStore(path, sync=False, max_alarms=max_alarms).open()
                if msg is not None:
                    assert msg.seq > last
                    last = msg.seq
                states = store.firing()
                assert {r: s.acknowledged for r, s in states.items()} == firing
                pending = [m.seq for m in store.pending(10**6)]
                assert pending == sorted(set(pending))
                for s in states.values():
                    assert s.fire_seq in pending or s.fire_seq in acked
                stats = store.stats()
                assert stats.rows == len(store.states()) + len(pending)
                assert stats.rows <= max(max_alarms, 2 * len(firing))
                assert stats.over_bound == max(stats.rows - max_alarms, 0)
        finally:
            store.close()


def test_opening_the_store_does_not_load_numpy(tmp_path: Path) -> None:
    """sqlite-utils would import numpy (installed beside OpenCV): about 11 MB of RSS that a
    box with rules and no camera does not need."""
    code = (
        "import sys, pathlib\n"
        "from tepi.buffer.alarms import AlarmStore\n"
        f"with AlarmStore(pathlib.Path({str(tmp_path)!r})) as s:\n"
        "    s.fire('r', severity='info', since_ts=1.0, since_mono=1.0, value=1, device='d',"
        " metric='m')\n"
        "assert 'sqlite_utils' in sys.modules\n"
        "assert 'numpy' not in sys.modules, 'numpy loaded'\n"
        "import numpy\n"  # and numpy still works for whoever needs it later (OpenCV)
        "print(numpy.zeros(2).sum())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.0"
