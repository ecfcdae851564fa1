"""Power cuts on the alarm store: after losing everything that was not synced, the file is never
corrupt, no transition whose call returned is gone, none is half there, and no seq comes back.

The writer is ``alarms_child.py`` (fsyncs on) under the readings buffer's power-cut shim
(``tests/shims/powercut.c``), killed at a random moment, often inside a sync; the disk image a
power cut may leave is built as test_powercut.py builds it (the durable copies, plus any
subset of the sectors written since), and opened as the agent would once the power is back.
Each image is where the next writer starts.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_buffer.test_alarms_crash import Model, apply
from test_buffer.test_powercut import (
    power_cut_image,
    powercut_shim,  # noqa: F401 - the fixture, built once a session
    seed_durable,
)

from tepi.buffer.alarms import AlarmStore

CHILD = Path(__file__).with_name("alarms_child.py")
CUTS = 12


def run_writer(
    shim: Path, data: Path, seed: int, rng: random.Random, *, sync: bool = True
) -> list[list[str]]:
    """A writer on ``data`` under the shim, killed at a random moment; the lines it printed."""
    env = {
        **os.environ,
        "LD_PRELOAD": str(shim),
        "POWERCUT_DIR": str(data),
        "POWERCUT_SYNC_DELAY_US": str(rng.choice([0, 5000, 20000])),
    }
    if rng.random() < 0.5:  # the cut comes in a sync, if it comes before the timer's
        env["POWERCUT_KILL_AT_SYNC"] = str(rng.randint(1, 80))
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data), str(seed), str(int(sync))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=rng.uniform(0.3, 1.5))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == -9, f"the writer ended by itself: {err.decode()[-2000:]}"
    # A line the kill cut short was never printed.
    return [line.split() for line in out.decode().splitlines(keepends=True) if line[-1:] == "\n"]


@pytest.mark.timeout(120)
def test_power_cuts_lose_no_returned_transition(powercut_shim: Path, tmp_path: Path) -> None:  # noqa: F811
    """Fsyncs on: every cut must pass every check."""
    seed = int(os.environ.get("POWERCUT_SEED", random.randrange(2**32)))
    cuts(powercut_shim, tmp_path, seed, sync=True)


@pytest.mark.timeout(120)
def test_power_cuts_find_the_loss_when_commits_are_not_synced(
    powercut_shim: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The control: with ``sync`` off a commit is not synced, and the same cuts and checks
    find returned transitions lost (a message missing, or a state change gone with its acked
    message), and nothing else wrong: no seq comes back, the file is never corrupt."""
    seed = int(os.environ.get("POWERCUT_SEED", random.randrange(2**32)))
    # The cuts land at random moments, and 12 of them with sync off once lost nothing (CI):
    # up to three runs, the next seeds, before the control is called blind.
    for attempt in range(3):
        where = tmp_path / f"try{attempt}"
        where.mkdir()
        try:
            cuts(powercut_shim, where, seed + attempt, sync=False)
        except AssertionError as err:
            if re.search(r"was lost|states disagree", str(err)):
                return  # found; anything else wrong is a failure
            raise
    pytest.fail(f"3 runs of {CUTS} power cuts lost nothing with sync off (POWERCUT_SEED={seed})")


def cuts(shim: Path, tmp_path: Path, seed: int, *, sync: bool) -> None:
    rng = random.Random(seed)
    data = tmp_path / "cut00"
    data.mkdir()
    model: dict[str, Model] = {}
    returned: dict[int, tuple[str, str]] = {}
    acked: set[int] = set()
    highest = 0
    transitions = 0
    for run in range(1, CUTS + 1):
        seed_durable(data)
        lines = run_writer(shim, data, seed + run, rng, sync=sync)
        where = f"cut {run}, POWERCUT_SEED={seed}, writer in {data}"
        for w in lines:
            if w[0] == "ready":
                assert int(w[1]) > highest, f"{where}: a seq came back"
            elif w[0] == "ack":
                acked.add(int(w[1]))
            else:
                seq = int(w[1])
                assert seq > highest, f"{where}: seq {seq} handed out twice"
                highest = seq
                returned[seq] = (w[0], w[2])
                apply(model, w[0], seq, w[2])
                transitions += 1
        image = tmp_path / f"cut{run:02d}"
        power_cut_image(data, image, rng)
        where += f", image in {image}"

        with AlarmStore(image) as store:
            stats = store.stats()
            assert stats.quarantined == 0, where
            assert stats.next_seq > highest, f"{where}: seqs would come back"
            messages = {m.seq: m for m in store.pending(10**6)}
            for seq, (transition, rule) in returned.items():
                if seq not in acked:
                    assert seq in messages, f"{where}: returned {transition} {seq} was lost"
                    assert (messages[seq].transition, messages[seq].rule) == (transition, rule)
            extra = sorted(s for s in messages if s not in returned)
            assert len(extra) <= 1, f"{where}: messages nobody was given: {extra}"
            if extra:
                m = messages[extra[0]]
                assert m.seq > highest, where
                apply(model, m.transition, m.seq, m.rule)
                returned[m.seq] = (m.transition, m.rule)
                highest = m.seq
            states = {
                r: Model(s.state, s.acknowledged, s.count, s.fire_seq, s.last_seq)
                for r, s in store.states().items()
            }
            assert states == model, f"{where}: the states disagree with the messages"
        con = sqlite3.connect(image / "alarms.db")
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], where
        con.close()
        data = image
    assert transitions >= CUTS, f"POWERCUT_SEED={seed}: the writers hardly ran"
