"""The writer that tests/test_buffer/test_alarms_crash.py kills.

It opens a real AlarmStore (fsyncs on), fires, resolves and acknowledges alarms of a few
rules at random in a loop, acks some delivered messages, and prints each fact the test may
rely on, flushed, only once it is true:

    ready NEXT_SEQ                    the store is open
    firing|resolved|acknowledged SEQ RULE
                                      the call returned this message: it is committed
    ack SEQ                           printed before the ack: from here on it may be gone

Usage: alarms_child.py DIR SEED [SYNC(1|0)]
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from tepi.buffer.alarms import AlarmStore, Message

RULES = [f"rule-{i}" for i in range(6)]


def say(*words: object) -> None:
    """One line in one write(2): a kill cannot leave half of it in the pipe."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


def main(data: Path, seed: int, sync: bool) -> None:
    rng = random.Random(seed)
    with AlarmStore(data, sync=sync, boot_id=f"boot-{seed}") as store:
        say("ready", store.stats().next_seq)
        while True:
            rule = rng.choice(RULES)
            state = store.get(rule)
            now = time.time()
            msg: Message | None
            if rng.random() < 0.2 and state is not None and not state.acknowledged:
                msg = store.acknowledge(rule, "tester", now)
            elif state is not None and state.firing:
                msg = store.resolve(rule, ts=now, value=rng.random())
            else:
                msg = store.fire(
                    rule,
                    severity=rng.choice(["info", "warning", "critical"]),
                    since_ts=now - 30,
                    since_mono=time.monotonic() - 30,
                    value=rng.uniform(2.5, 3.5),
                    device="river-level-3",
                    metric="level",
                    labels={"site": "hue"},
                )
            assert msg is not None, f"{rule}: a transition that should change state did not"
            say(msg.transition, msg.seq, msg.rule)
            if rng.random() < 0.3:
                for m in store.pending(rng.randint(1, 3)):
                    say("ack", m.seq)
                    store.ack([m.seq])


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:4] != ["0"])
