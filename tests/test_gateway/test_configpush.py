"""The pushed-config store and its pure parts: which file runs (a trial cut short goes back,
an edit of the base on the box wins, a lost version falls back to the base), the bounded
version history, the merge patch (hypothesis), and the log ring's redaction."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi.gateway.configpush import BASE, KEEP, ConfigStore, merge_patch
from tepi.gateway.logring import LogRing, redact, secret

pytestmark = pytest.mark.timeout(60)


def store(tmp_path: Path) -> ConfigStore:
    base = tmp_path / "tepi.yaml"
    if not base.exists():
        base.write_text("gateway: {id: gw}\n")
    return ConfigStore(base, tmp_path / "data", sync=False)


def push(s: ConfigStore, text: str, *, trial: bool = False, request: str = "r1") -> str:
    state = s.state()
    state["base_sha256"] = hashlib.sha256(s.base.read_bytes()).hexdigest()
    previous = state["active"]
    version = s.write_version(state, text)
    state["active"] = version
    if trial:
        state["trial"] = {"version": version, "previous": previous, "request": request,
                          "command": "config.apply", "received": 1.0}  # fmt: skip
    s.save(state)
    return version


def test_no_push_runs_the_base(tmp_path: Path) -> None:
    s = store(tmp_path)
    r = s.resolve(start=True)
    assert (r.path, r.version, r.notes, r.settled) == (s.base, BASE, [], {})
    assert not s.state_path.exists()


def test_a_confirmed_push_runs_and_survives_restarts(tmp_path: Path) -> None:
    s = store(tmp_path)
    v = push(s, "gateway: {id: gw}\n# v1\n")
    for start in (True, False, True):
        r = s.resolve(start=start)
        assert (r.version, r.path.read_text()) == (v, "gateway: {id: gw}\n# v1\n")


def test_a_trial_cut_short_goes_back_at_the_start_and_is_answered(tmp_path: Path) -> None:
    s = store(tmp_path)
    v1 = push(s, "# v1\n")
    push(s, "# v2\n", trial=True, request="push-9")
    # A reload during the trial is the trial's own: it runs v2.
    assert s.resolve(start=False).version == "v2"
    r = s.resolve(start=True)
    assert r.version == v1
    assert r.settled["push-9"]["reason"] == "rolled_back"
    assert r.settled["push-9"]["output"] == {"version": "v2", "back_to": v1}
    state = s.state()
    assert state["trial"] is None
    assert state["history"][-1]["state"] == "rolled_back"
    # Only once: the next start runs v1 with nothing to answer.
    again = s.resolve(start=True)
    assert (again.version, again.settled) == (v1, {})


def test_the_first_push_cut_short_goes_back_to_the_base(tmp_path: Path) -> None:
    s = store(tmp_path)
    push(s, "# v1\n", trial=True)
    assert s.resolve(start=True).version == BASE


def test_an_edit_of_the_base_on_the_box_wins(tmp_path: Path) -> None:
    s = store(tmp_path)
    push(s, "# v1\n")
    s.base.write_text("gateway: {id: gw}\n# edited on site\n")
    r = s.resolve(start=False)
    assert r.version == BASE
    assert any("an edit on the box wins" in n for n in r.notes)
    # And a later push runs again.
    assert s.resolve(start=True).version == BASE
    v = push(s, "# v2\n")
    assert s.resolve(start=True).version == v


def test_a_lost_version_or_a_damaged_state_runs_the_base(tmp_path: Path) -> None:
    s = store(tmp_path)
    v = push(s, "# v1\n")
    s.path(v).unlink()
    r = s.resolve(start=True)
    assert r.version == BASE
    assert any("unreadable" in n for n in r.notes)
    s.state_path.write_text("{not json")
    assert s.resolve(start=True).version == BASE


def test_versions_are_bounded_and_never_reused(tmp_path: Path) -> None:
    s = store(tmp_path)
    names = [push(s, f"# {i}\n") for i in range(KEEP + 5)]
    assert names[-1] == f"v{KEEP + 5}"
    kept = sorted(p.stem for p in s.dir.glob("v*.yaml"))
    assert len(kept) == KEEP
    assert names[-1] in kept
    assert names[0] not in kept
    assert json.loads(s.state_path.read_text())["next"] == KEEP + 6


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values, json_values)
def test_merge_patch_follows_rfc_7386(target: Any, patch: Any) -> None:
    out = merge_patch(target, patch)
    if not isinstance(patch, dict):
        assert out == patch
        return
    assert isinstance(out, dict)
    for key, value in patch.items():
        if value is None:
            assert key not in out
        elif not isinstance(value, dict):
            assert out[key] == value
    for key, value in (target if isinstance(target, dict) else {}).items():
        if key not in patch:
            assert out[key] == value
    # Idempotent: the same patch again changes nothing.
    assert merge_patch(out, patch) == out


def test_merge_patch_examples_from_the_rfc() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}


def test_the_log_ring_redacts_and_is_bounded() -> None:
    secret("hunter2-very-secret")
    ring = LogRing(capacity=5)
    logger = logging.getLogger("tepi.test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("connecting with hunter2-very-secret to the broker")
        logger.warning("url mqtt://user:pa55word@broker:1883 password=abc token: xyz")
        logger.error("boom", exc_info=ValueError("the key is hunter2-very-secret"))
        for i in range(5):
            logger.debug("line %d", i)
    finally:
        logger.removeHandler(ring)
    assert ring.seen == 8
    assert len(ring.lines) == 5
    everything = LogRing(capacity=10)
    for text in ("a hunter2-very-secret b", "mqtt://user:pa55word@broker", "password=abc"):
        everything.emit(logging.LogRecord("x", logging.INFO, "", 0, text, None, None))
    tail = everything.tail(10)["lines"]
    joined = " ".join(line["message"] for line in tail)
    for leaked in ("hunter2-very-secret", "pa55word", "abc"):
        assert leaked not in joined
    assert "mqtt://user:***@broker" in joined
    assert redact("token: xyz and api_key='k'") == "token: *** and api_key=***"
    errors = ring.tail(5, "error")
    assert errors["lines"] == []  # the error rolled out of the 5 kept
    with pytest.raises(ValueError, match="level"):
        ring.tail(5, "loud")
