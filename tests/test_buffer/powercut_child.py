"""The writer that tests/test_buffer/test_powercut.py runs under the powercut shim and kills.

It opens a real Buffer in the given directory, puts readings in bursts, sends and acks
some batches (so rows are deleted, and resends start from the oldest), and prints each fact
the test may rely on, flushed, only once it is true:

    ready NEXT_SEQ      the buffer is open
    start SEQ           its first reading has this seq; reading i has seq SEQ + i and value i
    durable SEQ         every reading up to SEQ is committed (or was acked, or evicted)
    sent FIRST LAST     a batch was fetched to be sent: the IOC may have seen these seqs
    acked FIRST LAST    printed before the ack: from here on these rows may be deleted
    evicted N           N readings were evicted for room so far (printed when N changes)

Usage: powercut_child.py DIR RUN SEED MAX_BYTES SYNC_FULL(0|1) CHECKPOINT_PAGES
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import tepi.buffer.store
from tepi.buffer import Buffer, BufferSettings
from tepi.core.records import Reading


def say(*words: object) -> None:
    print(*words, flush=True)


async def produce(buf: Buffer, rng: random.Random, run: int) -> None:
    i = 0
    while True:
        for _ in range(rng.randint(1, 100)):
            seq = buf.put(Reading(f"run{run}", "m", i, None, float(i), float(i)))
            if i == 0:
                say("start", seq)
            i += 1
        await asyncio.sleep(rng.uniform(0, 0.02))


async def report(buf: Buffer) -> None:
    reported = buf.last_seq  # what is in the file already was made durable before this run
    evicted = 0
    while True:
        await buf.wait_for_data(reported)
        target = buf.last_seq
        await buf.wait_committed(target)
        say("durable", target)
        reported = target
        n = buf.stats().dropped.get("buffer_full", 0)
        if n != evicted:
            evicted = n
            say("evicted", n)


async def send(buf: Buffer, rng: random.Random) -> None:
    cursor = 0  # a new session resends from the oldest reading in the buffer
    ack_share = rng.choice([0.3, 0.7, 1.0])
    while True:
        await buf.wait_for_data(cursor)
        batch = await buf.fetch(cursor, rng.choice([10, 100, 1000]))
        if batch is None:  # everything after cursor was acked or evicted
            cursor = buf.last_seq
            continue
        say("sent", batch.first_seq, batch.last_seq)
        cursor = batch.last_seq
        if rng.random() < ack_share:
            say("acked", batch.first_seq, batch.last_seq)
            buf.ack(batch)
        await asyncio.sleep(rng.uniform(0, 0.03))


async def main(
    data: Path, run: int, seed: int, max_bytes: int, sync_full: bool, pages: int
) -> None:
    rng = random.Random(seed)
    tepi.buffer.store.SEQ_BLOCK = rng.choice([500, 5000, 100_000])  # the .seq ceiling moves too
    settings = BufferSettings(
        path=data / "buffer.db",
        max_bytes=max_bytes,
        commit_interval_s=rng.uniform(0.02, 0.05),
        sync_full=sync_full,
    )
    async with Buffer(settings, f"boot-{run}") as buf:
        # Often a checkpoint every few pages, not SQLite's 1,000, so that power is also cut in
        # checkpoints and WAL restarts within the second this process lives. A test knob: the
        # Buffer has no setting for it, so it goes to the connection, in the writer thread.
        await buf._call(buf._db.conn.execute, f"PRAGMA wal_autocheckpoint={pages}")
        say("ready", buf.last_seq + 1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(buf.run())
            tg.create_task(report(buf))
            tg.create_task(send(buf, rng))
            await produce(buf, rng, run)


if __name__ == "__main__":
    d, r, s, m, f, p = sys.argv[1:]
    asyncio.run(main(Path(d), int(r), int(s), int(m), f == "1", int(p)))
