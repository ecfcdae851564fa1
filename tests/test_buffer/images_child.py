"""The writer that tests/test_buffer/test_images_crash.py kills, or fills a disk under.

``loop`` opens a real ImageStore (fsyncs on) and puts images of random sizes and classes in
a loop, acking some, and prints each fact the test may rely on, flushed, only once it is true:

    ready NEXT_SEQ      the store is open
    put SEQ SHA256      put() returned this image: it is durable
    ack SEQ             printed before the ack: from here on it may be gone

``enospc`` (run on a small tmpfs) puts images until the disk is full, frees room, puts again,
and prints what it saw as one JSON object.

Usage: images_child.py loop DIR SEED MAX_BYTES | images_child.py enospc DIR
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from tepi.buffer.images import CLASSES, ImageRefused, ImageStore, ImageWriteError
from tepi.core.clock import boottime


def say(*words: object) -> None:
    """One line in one write(2): a kill cannot leave half of it in the pipe."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


def loop(data: Path, seed: int, max_bytes: int) -> None:
    rng = random.Random(seed)
    with ImageStore(data, max_bytes, boot_id=f"boot-{seed}") as store:
        say("ready", store.stats().next_seq)
        while True:
            jpeg = rng.randbytes(rng.randint(1, 60_000))
            try:
                meta = store.put(
                    "cam1",
                    rng.choice(CLASSES),
                    jpeg,
                    reason="periodic",
                    ts=time.time(),
                    mono=boottime(),
                    width=640,
                    height=480,
                )
            except ImageRefused:
                continue
            say("put", meta.seq, meta.sha256)
            if rng.random() < 0.3:
                nxt = store.next()
                if nxt is not None:
                    say("ack", nxt.seq)
                    store.ack(nxt.seq)


def enospc(data: Path) -> None:
    out: dict[str, object] = {}
    # A negative reserve lets a put past the free-space check, as a race with another writer
    # would (or root's reserved blocks): the write itself must then meet the full disk.
    with ImageStore(data, 1 << 30, boot_id="b", reserve_bytes=lambda: -(1 << 30)) as store:

        def put(size: int) -> int:
            return store.put(
                "cam1", "event", os.urandom(size), reason="r", ts=0, mono=0, width=1, height=1
            ).seq

        first = put(20_000)
        ballast = data / "ballast"
        with ballast.open("wb", buffering=0) as f:  # fill what is left of the disk
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        try:
            put(30_000)
        except ImageWriteError as err:
            out["error"] = str(err)
            out["errno"] = err.errno
        out["files"] = sorted(p.name for p in store.images_dir.iterdir())
        out["first"] = f"{first:012d}.jpg"
        ballast.unlink()
        out["after"] = put(30_000)
        stats = store.stats()
        out["write_errors"] = stats.write_errors
        out["dropped"] = stats.dropped
        out["total_bytes"] = stats.total_bytes
    say(json.dumps(out))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "loop":
        loop(Path(args[0]), int(args[1]), int(args[2]))
    else:
        enospc(Path(args[0]))
