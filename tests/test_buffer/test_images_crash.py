"""The image buffer through ``kill -9`` during writes, and on a full disk.

A writer process (``images_child.py loop``) puts images with fsyncs on and prints each seq and
sha256 only after put() returned; the test kills it with SIGKILL at a random moment and opens
the store as the agent would after a restart. Each run starts where the previous one was killed.

A kill keeps the page cache, so this checks the order of the steps (file, rename, row) and the
reconcile at open, not what a power cut would keep: the steps' fsyncs are what makes a
returned put survive that too (the readings buffer's power-cut shim, tests/shims/powercut.c,
could replay them; not done here).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import mount_namespace

from tepi.buffer.images import TMP_PREFIX, ImageGone, ImageStore

pytestmark = pytest.mark.timeout(60)
CHILD = Path(__file__).with_name("images_child.py")
KILLS = 5


def run_and_kill(data: Path, seed: int, max_bytes: int, rng: random.Random) -> list[str]:
    """Start a writer, kill it at a random moment after some puts returned; its lines."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "loop", str(data), str(seed), str(max_bytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    want = rng.randint(3, 40)
    got_enough = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.endswith("\n"):
                break  # cut by the kill (the writer writes each line at once: never seen)
            lines.append(line.strip())
            if sum(x.startswith("put ") for x in lines) >= want:
                got_enough.set()
        got_enough.set()

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        assert got_enough.wait(20), f"the writer printed only {lines[-3:]}"
        time.sleep(rng.uniform(0, 0.05))  # a random moment, likely inside a put
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
    assert proc.returncode == -signal.SIGKILL, lines[-3:]
    return lines


def test_kill_9_during_writes_loses_no_returned_image(tmp_path: Path) -> None:
    seed = int(os.environ.get("IMAGES_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    data = tmp_path / "data"
    highest = 0
    killed_in_put = 0
    run = 0
    # At least KILLS runs, and more (up to 20) until a kill has landed inside a put, leaving
    # a file for the reconcile to delete: most do, as the fsyncs are most of a put's time.
    while run < KILLS or (not killed_in_put and run < 20):
        # Mostly a store that never fills (then every returned put must be there); every
        # third run with evictions, where an image may also have been evicted by a later put.
        max_bytes = 400_000 if run % 3 == 2 else 1 << 30
        run += 1
        lines = run_and_kill(data, seed + run, max_bytes, rng)
        bad = [line for line in lines if len(line.split()) != (3 if line[:3] == "put" else 2)]
        assert not bad, bad
        returned = {int(w[1]): w[2] for w in map(str.split, lines) if w[0] == "put"}
        acked = {int(w[1]) for w in map(str.split, lines) if w[0] == "ack"}
        ready = [int(x.split()[1]) for x in lines if x.startswith("ready")]
        assert ready[0] > highest, f"seed {seed}: a seq came back after a kill"
        assert min(returned) > highest
        highest = max(returned)

        con = sqlite3.connect(data / "images.db")
        assert con.execute("PRAGMA quick_check").fetchall() == [("ok",)], f"seed {seed}"
        con.close()
        with ImageStore(data, max_bytes) as store:
            stats = store.stats()
            assert stats.quarantined == 0
            killed_in_put += stats.reconciled_orphan_files > 0
            names = {e.name for e in os.scandir(store.images_dir)}
            assert not [n for n in names if n.startswith(TMP_PREFIX)]
            indexed: list[int] = []
            while (meta := store.next(indexed)) is not None:
                indexed.append(meta.seq)
                assert meta.path.name in names
            assert len(indexed) == len(names), f"seed {seed}: files and rows disagree"
            assert stats.total_bytes == sum(e.stat().st_size for e in os.scandir(store.images_dir))
            for seq, sha in returned.items():
                if seq in acked:
                    continue
                meta = store.get(seq)
                if meta is None:
                    assert max_bytes < 1 << 30, f"seed {seed}: image {seq} was lost"
                    continue
                assert meta.sha256 == sha
                try:
                    store.read(seq)  # checks the content against the sha256
                except ImageGone:
                    pytest.fail(f"seed {seed}: image {seq} came back damaged")
    assert killed_in_put, f"seed {seed}: no kill landed inside a put in 20 runs"


def test_a_full_disk_is_a_clear_error_that_leaves_nothing_behind(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux)")
    data = tmp_path / "data"
    data.mkdir()
    prefix = mount_namespace(f"mount -t tmpfs -o size=512k,mode=0700 tmpfs {data}")
    res = subprocess.run(
        [*prefix, sys.executable, str(CHILD), "enospc", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if res.returncode != 0 and "unshare" in res.stderr and "not permitted" in res.stderr:
        pytest.skip(f"unshare -m is not permitted here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert out["errno"] == errno.ENOSPC, out
    assert "No space left on device" in out["error"]
    assert out["files"] == [out["first"]], "no temporary file left behind"
    assert out["after"] > 0  # with room again, puts work
    assert out["write_errors"] == 1
    assert out["dropped"]["write_error"] == 1
    assert out["total_bytes"] == 50_000
