"""The command log (tepi.buffer.commands): a request runs at most once, its result is kept and
sent at least once, across restarts and kill -9; bounded; a damaged file is moved aside."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tepi.buffer.commands import CommandLog, CommandLogError

pytestmark = pytest.mark.timeout(60)


def result(rid: str, status: str = "done") -> dict[str, object]:
    return {"id": rid, "command": "ping", "status": status, "received": 1.0, "output": {}}


def test_a_request_runs_once_and_its_result_is_kept_and_resent(tmp_path: Path) -> None:
    with CommandLog(tmp_path, sync=False) as cl:
        assert cl.begin("r1", "ping", 1.0) is None  # new: it may run
        again = cl.begin("r1", "ping", 2.0)
        assert again is not None
        assert (again.running, again.result) == (True, None)  # still running: do not run
        cl.finish("r1", result("r1"))
        assert cl.pending() == [result("r1")]
        cl.sent(["r1"])
        assert cl.pending() == []
        known = cl.begin("r1", "ping", 3.0)
        assert known is not None
        assert (known.running, known.result) == (False, result("r1"))
        # A replay is answered again from the log: its result recorded again, to send.
        cl.finish("r1", {**result("r1"), "replayed": True})
        assert cl.pending() == [{**result("r1"), "replayed": True}]
        assert cl.begin("r1", "ping", 3.5) is not None  # still known: never runs again
        # A refusal that had an id: recorded without a begin, and then known.
        cl.finish("r2", result("r2", "failed"))
        known = cl.begin("r2", "write", 4.0)
        assert known is not None
        assert known.result == result("r2", "failed")
        stats = cl.stats()
        assert (stats.requests, stats.running, stats.pending) == (2, 0, 2)


def test_a_restart_remembers_every_request(tmp_path: Path) -> None:
    with CommandLog(tmp_path, sync=False) as cl:
        cl.begin("r1", "ping", 1.0)
        cl.finish("r1", result("r1"))
    with CommandLog(tmp_path, sync=False) as cl:
        known = cl.begin("r1", "ping", 2.0)
        assert known is not None
        assert known.result == result("r1")
        assert cl.pending() == [result("r1")]  # not sent before the restart: still to send
        assert cl.begin("r2", "ping", 3.0) is None


CHILD = """
import sys, time
from pathlib import Path
from tepi.buffer.commands import CommandLog
cl = CommandLog(Path(sys.argv[1])).open()
cl.begin("gate-open", "write", 1.0)
print("running", flush=True)
time.sleep(60)
"""


def test_a_request_cut_by_kill_9_is_interrupted_never_run_again(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "running"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with CommandLog(tmp_path) as cl:  # the kernel released the dead one's lock
        cut = cl.interrupted()
        assert [(k.id, k.command, k.running) for k in cut] == [("gate-open", "write", True)]
        known = cl.begin("gate-open", "write", 2.0)
        assert known is not None
        assert known.running, "a redelivery of it must not run it"
        cl.finish("gate-open", result("gate-open", "failed"))
        assert cl.interrupted() == []


def test_bounded_sent_ones_go_first_unsent_ones_are_kept_up_to_ten_times(
    tmp_path: Path,
) -> None:
    with CommandLog(tmp_path, keep=5, sync=False) as cl:
        for i in range(20):
            cl.begin(f"s{i}", "ping", float(i))
            cl.finish(f"s{i}", result(f"s{i}"))
            cl.sent([f"s{i}"])
        assert cl.stats().requests == 5
        assert cl.begin("s19", "ping", 0.0) is not None  # the newest are remembered
        assert cl.begin("s0", "ping", 0.0) is None  # the oldest forgotten: new again
        for i in range(60):  # results the broker never acknowledged
            cl.finish(f"u{i}", result(f"u{i}"))
        stats = cl.stats()
        assert stats.requests <= 50
        assert stats.dropped >= 10
        assert len(cl.pending(1000)) == stats.pending
        assert cl.pending(1000)[-1]["id"] == "u59"


def test_a_damaged_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "commands.db").write_bytes(b"not a database at all" * 100)
    with CommandLog(tmp_path, sync=False) as cl:
        assert cl.begin("r1", "ping", 1.0) is None
        assert cl.stats().quarantined == 1
    assert list(tmp_path.glob("commands.db.corrupt-*"))


def test_one_log_per_directory(tmp_path: Path) -> None:
    with CommandLog(tmp_path), pytest.raises(CommandLogError, match="in use"):
        CommandLog(tmp_path).open()
    with pytest.raises(CommandLogError, match="not open"):
        CommandLog(tmp_path).pending()
