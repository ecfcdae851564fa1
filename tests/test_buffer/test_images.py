"""The image buffer against real files: delivery order, seqs, quotas, ages, the disk reserve,
reconciling index and files, and a damaged index. Crashes and a full disk are in
test_images_crash.py."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sqlite3
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.buffer.images import (
    CLASSES,
    DROP_REASONS,
    EVICTION_ORDER,
    PRIORITY,
    SEQ_BLOCK,
    ImageGone,
    ImageMeta,
    ImageRefused,
    ImageStore,
    ImageStoreError,
    Usage,
)
from tepi.core.clock import boottime

pytestmark = pytest.mark.timeout(30)


def image(n: int, seed: int = 0) -> bytes:
    return random.Random(n * 7919 + seed).randbytes(n)


def put(store: ImageStore, cls: str, size: int, *, seed: int = 0, **kw: object) -> ImageMeta:
    args: dict[str, object] = {
        "reason": "periodic",
        "ts": time.time(),
        "mono": boottime(),
        "width": 640,
        "height": 480,
    }
    args.update(kw)
    return store.put("cam1", cls, image(size, seed), **args)  # type: ignore[arg-type]


def drain_order(store: ImageStore) -> list[int]:
    """Every seq in delivery order, as an uplink with everything in flight would see it."""
    out: list[int] = []
    while (meta := store.next(out)) is not None:
        out.append(meta.seq)
    return out


def files(store: ImageStore) -> dict[str, int]:
    return {e.name: e.stat().st_size for e in os.scandir(store.images_dir)}


def disk_bytes(directory: Path) -> int:
    """The sum of the sizes of the files in ``directory`` (temporary ones included), as they
    are at one listing: a file deleted meanwhile counts 0."""
    total = 0
    with os.scandir(directory) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):
                total += e.stat(follow_symlinks=False).st_size
    return total


# ---- put, next, read, ack --------------------------------------------------------------------


def test_round_trip_in_class_priority_then_seq_order(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000_000, boot_id="b1") as store:
        snap = put(store, "snapshot", 1000)
        ev1 = put(store, "event", 2000, reason="alarm:door")
        thumb = put(store, "thumbnail", 300, parent=ev1.seq)
        ev2 = put(store, "event", 500)
        assert [snap.seq, ev1.seq, thumb.seq, ev2.seq] == [1, 2, 3, 4]
        assert drain_order(store) == [ev1.seq, ev2.seq, thumb.seq, snap.seq]
        nxt = store.next()
        assert nxt == ev1  # the row gives back exactly what put returned
        assert nxt.reason == "alarm:door"
        assert nxt.boot == "b1"
        assert nxt.size == 2000
        assert nxt.sha256 == hashlib.sha256(image(2000)).hexdigest()
        assert nxt.path.read_bytes() == image(2000)
        assert store.get(thumb.seq) == thumb
        assert thumb.parent == ev1.seq
        assert store.read(ev1.seq) == image(2000)
        assert store.next(exclude=[ev1.seq]) == ev2
        assert store.next(exclude={ev1.seq, ev2.seq, thumb.seq}) == snap
        assert store.next(exclude=[1, 2, 3, 4]) is None
        assert store.pending() == {
            "event": Usage(2, 2500),
            "thumbnail": Usage(1, 300),
            "snapshot": Usage(1, 1000),
        }
        assert store.ack(ev1.seq) is True
        assert store.ack(ev1.seq) is False  # twice is fine
        assert store.ack(999) is False
        assert not ev1.path.exists()
        with pytest.raises(ImageGone):
            store.read(ev1.seq)
        assert store.next() == ev2
        assert store.attempt(ev2.seq) == 1
        assert store.attempt(ev2.seq) == 2
        assert store.attempt(ev1.seq) == 0
        stats = store.stats()
        assert stats.classes["event"] == Usage(1, 500)
        assert stats.total_bytes == 1800 == sum(files(store).values())
        assert stats.puts == 4
        assert stats.acks == 1
        assert stats.oldest_ts == snap.ts
        assert set(stats.dropped) == set(DROP_REASONS)
        assert not any(stats.dropped.values())
    with ImageStore(tmp_path, 10_000_000) as store:
        again = store.get(ev2.seq)
        assert again is not None
        assert again.attempts == 2


def test_an_unknown_class_is_a_value_error(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000) as store, pytest.raises(ValueError, match="class"):
        put(store, "video", 10)


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, 10_000)
    with pytest.raises(Exception, match="not open"):
        put(store, "event", 10)
    assert list(tmp_path.iterdir()) == []


def test_seq_survives_reopen_and_is_never_reused(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000_000) as store:
        seqs = [put(store, "event", 100).seq for _ in range(3)]
        for seq in seqs:
            store.ack(seq)  # the newest rows are gone: the index still knows seq 3
    with ImageStore(tmp_path, 10_000_000) as store:
        assert put(store, "event", 100).seq == 4
    # A crash (no close): seqs up to the reservation may have been handed out.
    crashed = ImageStore(tmp_path, 10_000_000).open()
    assert put(crashed, "event", 100).seq == 5
    crashed._close_db()  # as a kill would leave it: the clean flag not set
    crashed._release_dir_lock()
    with ImageStore(tmp_path, 10_000_000) as store:
        seq = put(store, "event", 100).seq
        assert seq > 5
        assert seq <= 5 + SEQ_BLOCK + 1
        assert store.stats().next_seq == seq + 1


def test_an_event_image_keeps_its_event_also_in_an_index_from_before_events(
    tmp_path: Path,
) -> None:
    """The ``event`` column came with camera analytics (migration m002): an index made
    before it gains the column at open, its images keep None, and new ones keep theirs."""
    with ImageStore(tmp_path, 10_000_000) as store:
        old = put(store, "snapshot", 100)
    conn = sqlite3.connect(tmp_path / "images.db")
    with conn:  # as the release before events left it
        conn.execute("ALTER TABLE images DROP COLUMN event")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_event'")
    conn.close()
    event = '{"id": "cam1-1-7", "type": "start"}'
    with ImageStore(tmp_path, 10_000_000) as store:
        got = store.get(old.seq)
        assert got is not None
        assert got.event is None
        new = put(store, "event", 100, event=event)
        assert new.event == event
    with ImageStore(tmp_path, 10_000_000) as store:
        again = store.get(new.seq)
        assert again is not None
        assert again.event == event
        assert store.next([]) == again  # events go first


def test_one_store_at_a_time_has_a_directory_open(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000) as store:
        with pytest.raises(ImageStoreError, match="in use"):
            ImageStore(tmp_path, 10_000).open()
        assert put(store, "event", 10).seq == 1  # the first one is unharmed
    with ImageStore(tmp_path, 10_000) as store:  # free again once closed
        assert store.next() is not None


async def test_async_wrappers(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000_000) as store:
        meta = await store.aput(
            "cam1", "event", b"jpeg", reason="request", ts=1.0, mono=2.0, width=1, height=1
        )
        assert await store.anext() == meta
        assert await store.anext([meta.seq]) is None
        assert await store.aread(meta.seq) == b"jpeg"
        assert await store.aack(meta.seq) is True
        assert await store.anext() is None


# ---- quotas ------------------------------------------------------------------------------------


def test_eviction_goes_lowest_class_first_oldest_first(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 1000) as store:
        s1 = put(store, "snapshot", 300)
        t1 = put(store, "thumbnail", 300)
        e1 = put(store, "event", 300)
        e2 = put(store, "event", 300)  # needs 200: the snapshot goes
        assert store.get(s1.seq) is None
        assert not s1.path.exists()
        e3 = put(store, "event", 300)  # the thumbnail goes
        assert store.get(t1.seq) is None
        e4 = put(store, "event", 300)  # only events left: the oldest goes
        assert store.get(e1.seq) is None
        assert drain_order(store) == [e2.seq, e3.seq, e4.seq]
        stats = store.stats()
        assert stats.dropped["quota"] == 3
        assert stats.total_bytes == 900 == sum(files(store).values())


def test_an_image_that_would_evict_a_higher_class_is_refused(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 1000) as store:
        s1 = put(store, "snapshot", 100)
        e1 = put(store, "event", 400)
        e2 = put(store, "event", 400)
        before = files(store)
        # 900 + 300: evicting the snapshot is not enough, the rest are events.
        with pytest.raises(ImageRefused, match="higher classes") as err:
            put(store, "thumbnail", 300)
        assert err.value.reason == "refused_priority"
        assert files(store) == before  # nothing evicted for it, nothing written
        t1 = put(store, "thumbnail", 150)  # fits after evicting the snapshot
        assert store.get(s1.seq) is None
        s2 = put(store, "snapshot", 50)  # fits without evicting anything
        with pytest.raises(ImageRefused):
            put(store, "snapshot", 300)  # a snapshot evicts only snapshots
        t2 = put(store, "thumbnail", 200)  # evicts the snapshot and the older thumbnail
        assert drain_order(store) == [e1.seq, e2.seq, t2.seq]
        stats = store.stats()
        assert stats.dropped["refused_priority"] == 2
        assert stats.dropped["quota"] == 3
        assert {t1.seq, s2.seq}.isdisjoint(drain_order(store))


def test_a_lowered_max_bytes_evicts_at_open(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000) as store:
        e1 = put(store, "event", 300)
        s1 = put(store, "snapshot", 300)
        t1 = put(store, "thumbnail", 300)
        e2 = put(store, "event", 300)
    with ImageStore(tmp_path, 650) as store:
        assert drain_order(store) == [e1.seq, e2.seq]
        assert sum(files(store).values()) == 600
        assert store.stats().dropped["quota"] == 2
    assert not s1.path.exists()
    assert not t1.path.exists()


def test_an_image_larger_than_max_bytes_is_refused(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 1000) as store:
        keep = put(store, "snapshot", 900)
        with pytest.raises(ImageRefused, match="larger than max_bytes") as err:
            put(store, "event", 1001)
        assert err.value.reason == "too_large"
        assert store.stats().dropped["too_large"] == 1
        assert store.get(keep.seq) == keep
        assert put(store, "event", 1000).size == 1000  # exactly max_bytes fits


def test_total_on_disk_never_exceeds_max_bytes_under_load(tmp_path: Path) -> None:
    """Two threads put random-size images of mixed classes, a third acks, while this thread
    sums the file sizes in the images directory (temporary files included) as fast as it
    can: the largest sum it ever sees is within max_bytes."""
    max_bytes = 200_000
    store = ImageStore(tmp_path, max_bytes, sync=True).open()
    stop = threading.Event()
    errors: list[BaseException] = []
    refused = 0

    def writer(seed: int) -> None:
        nonlocal refused
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                cls = rng.choice(CLASSES)
                try:
                    put(store, cls, rng.randint(1, 60_000), seed=seed)
                except ImageRefused:
                    refused += 1
        except BaseException as err:
            errors.append(err)
            raise

    def acker() -> None:
        try:
            while not stop.is_set():
                meta = store.next()
                if meta is not None:
                    with contextlib.suppress(ImageGone):  # evicted between next and read
                        store.read(meta.seq)
                    store.ack(meta.seq)
                time.sleep(0.005)
        except BaseException as err:
            errors.append(err)
            raise

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    threads.append(threading.Thread(target=acker))
    for t in threads:
        t.start()
    samples = []
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            samples.append(disk_bytes(store.images_dir))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    stats = store.stats()
    store.close()
    assert not errors
    assert len(samples) > 1000
    assert max(samples) <= max_bytes
    assert max(samples) > max_bytes * 0.6, "the store was never near its limit: a weak test"
    assert stats.puts > 50
    assert stats.dropped["quota"] > 0
    assert stats.total_bytes <= max_bytes
    assert stats.in_flight_bytes == 0


# ---- age ---------------------------------------------------------------------------------------


def test_images_older_than_max_age_go_on_put_and_on_expire(tmp_path: Path) -> None:
    now = boottime()
    with ImageStore(tmp_path, 1_000_000, max_age_s=60, boot_id="b1") as store:
        old = put(store, "event", 100, mono=now - 100)
        young = put(store, "snapshot", 100, mono=now - 30)
        put(store, "event", 100)  # this put expires the old one
        assert store.get(old.seq) is None
        assert not old.path.exists()
        assert store.get(young.seq) is not None
        assert store.expire(now_mono=now + 31) == 1
        assert store.get(young.seq) is None
        stats = store.stats()
        assert stats.dropped["age"] == 2
        assert stats.classes["snapshot"] == Usage(0, 0)


def test_earlier_boots_expire_by_wall_clock_only_when_it_is_synced(tmp_path: Path) -> None:
    wall = time.time()
    with ImageStore(tmp_path, 1_000_000, boot_id="b1") as store:
        old = put(store, "event", 100, ts=wall - 7200, mono=5.0)
    with ImageStore(tmp_path, 1_000_000, max_age_s=3600, boot_id="b2") as store:
        assert store.expire(now_mono=10_000.0) == 0  # the clock is not known to be synced
        assert store.get(old.seq) is not None
        store.clock_synced = lambda: True
        assert store.expire(now_mono=10_000.0) == 1
        assert store.stats().dropped["age"] == 1


# ---- the readings' share of the disk -----------------------------------------------------------


def test_a_put_that_would_eat_the_readings_reserve_is_refused(tmp_path: Path) -> None:
    free = 0

    def reserve() -> int:
        st = os.statvfs(tmp_path)
        return st.f_bavail * st.f_frsize + free

    with ImageStore(tmp_path, 10_000_000, reserve_bytes=reserve) as store:
        free = 1 << 30  # more than is free
        with pytest.raises(ImageRefused, match="must stay free for the readings") as err:
            put(store, "event", 1000)
        assert err.value.reason == "disk_reserve"
        assert files(store) == {}
        stats = store.stats()
        assert stats.dropped["disk_reserve"] == 1
        assert stats.puts == 0
        assert stats.total_bytes == 0
        free = -(1 << 20)  # a megabyte to spare
        assert put(store, "event", 1000).seq > 0


# ---- reconciling the index with the files ------------------------------------------------------


def test_open_reconciles_orphans_missing_and_mismatched_files(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 1_000_000) as store:
        gone = put(store, "event", 100)
        resized = put(store, "event", 100)
        kept = put(store, "snapshot", 100)
    images = tmp_path / "images"
    (images / "000000000999.jpg").write_bytes(b"no row")
    (images / ".tmp-77").write_bytes(b"half written")
    gone.path.unlink()
    with resized.path.open("ab") as f:
        f.write(b"more")
    with ImageStore(tmp_path, 1_000_000) as store:
        stats = store.stats()
        assert stats.reconciled_orphan_files == 2
        assert stats.reconciled_missing_files == 2
        assert drain_order(store) == [kept.seq]
        assert sorted(files(store)) == [kept.path.name]
        assert stats.total_bytes == 100
        assert store.read(kept.seq) == image(100)
    with ImageStore(tmp_path, 1_000_000) as store:  # nothing left to fix
        assert store.stats().reconciled_orphan_files == 0
        assert store.stats().reconciled_missing_files == 0


def test_a_damaged_file_is_dropped_when_read(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 1_000_000) as store:
        meta = put(store, "event", 100)
        meta.path.write_bytes(bytes(100))  # same size, other content
        with pytest.raises(ImageGone, match="damaged"):
            store.read(meta.seq)
        assert store.get(meta.seq) is None
        assert not meta.path.exists()
        stats = store.stats()
        assert stats.dropped["damaged"] == 1
        assert stats.total_bytes == 0


def test_a_garbage_index_is_moved_aside_and_the_store_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ImageStore(tmp_path, 1_000_000) as store:
        last = [put(store, "event", 100) for _ in range(3)][-1]
    (tmp_path / "images.db").write_bytes(b"garbage " * 1000)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path}/images.db{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR), ImageStore(tmp_path, 1_000_000) as store:
        stats = store.stats()
        assert stats.quarantined == 1
        assert stats.reconciled_orphan_files == 3  # their metadata went with the index
        assert files(store) == {}
        meta = put(store, "event", 100)
        assert meta.seq > last.seq  # the reservation in images.seq survives the index
        assert store.read(meta.seq) == image(100)
    aside = list(tmp_path.glob("images.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"garbage")
    assert "moved aside" in caplog.text


def test_a_damaged_page_in_the_index_is_moved_aside(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 100_000_000, sync=False) as store:
        for i in range(400):
            put(store, CLASSES[i % 3], 10, reason="periodic " * 20)
    index = tmp_path / "images.db"
    con = sqlite3.connect(index)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    assert pages > 8
    with index.open("r+b") as f:  # scribble over the middle pages, keep the header
        f.seek(page * 3)
        f.write(random.Random(1).randbytes(page * (pages - 5)))
    with ImageStore(tmp_path, 100_000_000) as store:
        stats = store.stats()
        assert stats.quarantined == 1
        assert stats.total_bytes == 0
        assert files(store) == {}
        assert put(store, "event", 10).seq > 400


def test_an_index_that_fails_quick_check_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damage SQLite only finds when it checks (a wrong free-page count in the header):
    every statement still works, quick_check says what is wrong."""
    with ImageStore(tmp_path, 100_000_000, sync=False) as store:
        metas = [put(store, "event", 10, reason="periodic " * 20) for _ in range(300)]
        for meta in metas[:200]:
            store.ack(meta.seq)
    index = tmp_path / "images.db"
    assert not Path(f"{index}-wal").exists()  # checkpointed at close: the header is current
    header = bytearray(index.read_bytes()[:100])
    free = struct.unpack(">I", header[36:40])[0]
    assert free > 0
    with index.open("r+b") as f:
        f.seek(36)
        f.write(struct.pack(">I", free + 1))
    with caplog.at_level(logging.ERROR), ImageStore(tmp_path, 100_000_000) as store:
        assert store.stats().quarantined == 1
        assert store.stats().reconciled_orphan_files == 100
        assert put(store, "event", 10).seq > 300
    assert "quick_check: " in caplog.text
    assert "freelist" in caplog.text


# ---- a model: random operations, the total never over max_bytes, the order right ---------------


Op = tuple[str, int, int]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 2), st.integers(0, 400)),
            st.tuples(st.just("ack"), st.integers(0, 20), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        ),
        max_size=40,
    )
)
def test_random_operations_agree_with_a_model(ops: list[Op]) -> None:
    max_bytes = 1000
    model: dict[int, tuple[str, int]] = {}  # seq -> (class, size)
    last_seq = 0
    with tempfile.TemporaryDirectory() as d:
        store = ImageStore(Path(d), max_bytes, sync=False).open()
        try:
            for op, a, b in ops:
                if op == "put":
                    cls, size = CLASSES[a], b
                    need = sum(s for _, s in model.values()) + size - max_bytes
                    victims: list[int] = []
                    for victim_cls in EVICTION_ORDER:
                        if need <= 0 or PRIORITY[victim_cls] > PRIORITY[cls]:
                            break
                        for seq in sorted(s for s, (c, _) in model.items() if c == victim_cls):
                            if need <= 0:
                                break
                            victims.append(seq)
                            need -= model[seq][1]
                    if size > max_bytes or need > 0:
                        with pytest.raises(ImageRefused):
                            put(store, cls, size)
                        continue
                    meta = put(store, cls, size)
                    assert meta.seq > last_seq
                    last_seq = meta.seq
                    for seq in victims:
                        del model[seq]
                    model[meta.seq] = (cls, size)
                elif op == "ack":
                    order = drain_order(store)
                    if order:
                        seq = order[a % len(order)]
                        assert store.ack(seq)
                        del model[seq]
                else:
                    store.close()
                    store = ImageStore(Path(d), max_bytes, sync=False).open()
                expected = sorted(model, key=lambda s: (-PRIORITY[model[s][0]], s))
                assert drain_order(store) == expected
                total = sum(s for _, s in model.values())
                assert store.stats().total_bytes == total == disk_bytes(store.images_dir)
                assert total <= max_bytes
        finally:
            store.close()


# ---- seqs handed out before the image is stored (the agent's window) ----------------------


def test_a_reserved_seq_is_stored_later_in_its_place(tmp_path: Path) -> None:
    with ImageStore(tmp_path, 10_000_000, boot_id="b1") as store:
        held = store.reserve_seq()
        after = put(store, "event", 800, seed=1)
        assert after.seq == held + 1
        late = put(store, "event", 700, seed=2, seq=held)  # its window ended unacknowledged
        assert late.seq == held
        assert late.path == store.path_for(held)
        assert store.read(held) == image(700, 2)
        assert drain_order(store) == [held, after.seq]  # seq order within the class
        assert store.stats().puts == 2
        with pytest.raises(ValueError, match="not handed out"):
            put(store, "event", 100, seq=after.seq + 1)
        assert store.stats().dropped == dict.fromkeys(DROP_REASONS, 0)


def test_reserved_seqs_are_never_handed_out_again(tmp_path: Path) -> None:
    """Neither after a clean close nor after a crash (the index lost with its last_seq):
    a seq handed out and never stored is still taken."""
    with ImageStore(tmp_path, 10_000_000) as store:
        reserved = [store.reserve_seq() for _ in range(5)]
    with ImageStore(tmp_path, 10_000_000) as store:
        assert put(store, "event", 100).seq > max(reserved)
        reserved += [store.reserve_seq() for _ in range(5)]
    (tmp_path / "images.db").unlink()  # as a crash that lost the index would leave it
    with ImageStore(tmp_path, 10_000_000) as store:
        assert put(store, "event", 100).seq > max(reserved)
