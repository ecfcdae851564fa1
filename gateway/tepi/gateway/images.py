"""The agent's side of images: the image buffer behind the cameras, and the link budget.

``ImageHub`` is what a camera driver stores its images through (tepi.drivers.camera.driver
.ImageSink) and what the uplink's image lane takes them from. It owns the image buffer
(tepi.buffer.images.ImageStore: a SQLite index and the files in ``data_dir/images/``),
calling it in a worker thread, and the budget that keeps images to their share of a
metered link (``images.rate`` bytes a second, ``images.daily_bytes`` a UTC day).

The image buffer is opened only when a camera is configured or images are left from an
earlier run: a box without cameras opens no second database and imports nothing for it.

The window. Like the readings buffer (``buffer.commit_interval``), the hub keeps a new image
in RAM and writes it to the image buffer only if the broker has not acknowledged it within
``images.commit_interval``: an image that goes in time never touches the SD card (a durable
put is a file, two fsyncs, an index row, and its delete another row: ~30 kB of writes for a
2 kB event image). Its seq is handed out at once from the store's reservation
(``ImageStore.reserve_seq``), so seqs stay unique and increasing across restarts and crashes
whether or not the image is ever written. RAM is bounded by ``images.ram_bytes``; an image
that would exceed it, or one larger than ``RAM_IMAGE_MAX``, is written at once, and so is
every image while the uplink's image lane is not running (no acknowledgement can come: as the
readings are during an outage). A clean stop
writes what is still in RAM; a kill -9 or a power cut loses at most the images of the last
``commit_interval`` that the broker had not acknowledged. The store's quotas apply when an
image is written: one refused then is dropped and counted like any refused put.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepi.core.clock import clock_synced
from tepi.core.tasks import cancel_and_wait
from tepi.gateway.config import ImagesSection

if TYPE_CHECKING:
    from tepi.buffer.images import ImageMeta, ImageStore

log = logging.getLogger(__name__)

BUDGET_FILE = "image_budget.json"
# Larger images are written at once: the window is for the many small ones (event crops,
# thumbnails); a full-size snapshot would take the room of dozens of them.
RAM_IMAGE_MAX = 64 * 1024


class ImageNotKept(OSError):
    """The image buffer would not keep an image (a quota, the disk's reserve for readings,
    a full disk); its reason is counted in health."""


@dataclass
class Budget:
    """The images' share of the link: a token bucket of ``rate`` bytes a second (a burst of
    one largest image) and ``daily`` bytes a UTC day. The day's count is kept in a small
    file, so that a restart does not hand out the day's allowance again."""

    rate: float
    daily: int
    burst: float
    path: Path | None = None
    day: str = ""
    sent_today: int = 0
    capped: bool = False  # the last image asked about does not fit in the day's allowance
    _tokens: float = 0.0
    _at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self.day = _utc_day()
        if self.path is not None:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                saved = json.loads(self.path.read_text())
                if saved["day"] == self.day:
                    self.sent_today = int(saved["bytes"])

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate > 0:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        day = _utc_day()
        if day != self.day:
            self.day, self.sent_today, self.capped = day, 0, False

    def wait_s(self, size: int) -> tuple[float, str | None]:
        """Seconds until ``size`` bytes may go (0: now), and what holds them: ``budget``
        (the byte rate) or ``daily_cap`` (until the next UTC day)."""
        self._refill()
        if self.daily and self.sent_today + size > self.daily:
            self.capped = True
            return max(0.5, 86400 - time.time() % 86400), "daily_cap"
        self.capped = False
        if self.rate <= 0:
            return 0.0, None
        need = min(size, self.burst)  # an image larger than the burst waits for a full bucket
        if self._tokens >= need:
            return 0.0, None
        return (need - self._tokens) / self.rate, "budget"

    def spend(self, size: int, *, save: bool = True) -> None:
        """``size`` bytes went. ``save``: write the day's count to its file (once an image,
        and only with a daily cap: nothing else reads it)."""
        self._refill()
        if self.rate > 0:
            self._tokens -= size
        self.sent_today += size
        if save and self.daily and self.path is not None:
            with contextlib.suppress(OSError):
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"day": self.day, "bytes": self.sent_today}))
                tmp.replace(self.path)

    def state(self) -> str:
        """daily_cap while the next image waits for the next UTC day."""
        self._refill()
        return "daily_cap" if self.capped and self.daily else "ok"


def _utc_day() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass(slots=True)
class _Held:
    """An image kept in RAM within its window: written to the store at ``due`` (monotonic)
    unless the broker has acknowledged it by then."""

    meta: ImageMeta
    data: bytes
    due: float


@dataclass
class ImageLaneStats:
    sent: int = 0
    bytes_sent: int = 0
    last_sent_ts: float | None = None
    waiting_for: str | None = None  # telemetry | budget | daily_cap | None


class ImageHub:
    """See the module docstring."""

    def __init__(
        self,
        cfg: ImagesSection,
        data_dir: Path,
        *,
        boot_id: str,
        reserve_bytes: Callable[[], int],
        sync: bool = True,
    ) -> None:
        self.cfg = cfg
        self.max_image_bytes = cfg.max_image_bytes
        self.dir = data_dir
        self._boot = boot_id
        self._reserve = reserve_bytes
        self._sync = sync
        self.store_: ImageStore | None = None
        self.arrived = asyncio.Event()  # set when an image is stored (the image lane waits)
        self.lane = ImageLaneStats()
        self.budget = Budget(
            rate=float(cfg.rate),
            daily=cfg.daily_bytes,
            burst=float(max(cfg.rate, cfg.max_image_bytes)),
            path=data_dir / BUDGET_FILE,
        )
        self._lock = asyncio.Lock()
        # The window (see the module docstring). _writing: held images being written now
        # (still in _ram until their put returns); _acked: those the broker acknowledged
        # meanwhile, hidden from next() and deleted from the store once written.
        self._ram: dict[int, _Held] = {}
        self._ram_bytes = 0
        self._writing: set[int] = set()
        self._acked: set[int] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self._lanes = 0  # the uplink's image lanes running (link())
        self._writer: asyncio.Task[None] | None = None
        self.ram_written = 0  # held images written to disk when their window ended

    @staticmethod
    def wanted(data_dir: Path, cameras: int) -> bool:
        """Whether an agent needs the image buffer: a camera, or images left to send."""
        return cameras > 0 or (data_dir / "images.db").exists()

    async def open(self) -> None:
        async with self._lock:
            if self.store_ is not None:
                return
            from tepi.buffer.images import ImageStore

            store = ImageStore(
                self.dir,
                self.cfg.max_bytes,
                max_age_s=self.cfg.max_age,
                reserve_bytes=self._reserve,
                sync=self._sync,
                boot_id=self._boot,
                clock_synced=clock_synced,
            )
            await asyncio.to_thread(store.open)
            self.store_ = store
            st = store.stats()
            count = sum(u.count for u in st.classes.values())
            if count:
                self.arrived.set()
                log.info(
                    "image buffer: %d images (%d bytes) waiting to be sent", count, st.total_bytes
                )

    async def close(self) -> None:
        """Write every image still in RAM (a clean stop loses none), then close the store."""
        if self._ram and self.store_ is not None:
            self._closing = True
            self._wake.set()
            writer, self._writer = self._writer, None
            if writer is None or writer.done():  # none yet, or it failed (logged)
                writer = asyncio.create_task(self._write_loop(), name="tepi.images.writer")
            try:
                await writer
            finally:
                self._closing = False
        elif self._writer is not None:
            writer, self._writer = self._writer, None
            await cancel_and_wait(writer)  # idle: waiting for an image
        if self.store_ is not None:
            store, self.store_ = self.store_, None
            await asyncio.to_thread(store.close)

    async def store(
        self,
        camera: str,
        cls: str,
        jpeg: bytes,
        *,
        reason: str,
        ts: float,
        mono: float,
        width: int,
        height: int,
        parent: int | None = None,
        event: str | None = None,
    ) -> tuple[int, str]:
        """Store one image (ImageSink); its seq and the file it is (or will be) in.
        ImageNotKept when it is not kept. Within the window it is kept in RAM (see the module
        docstring) and its file does not exist yet."""
        from tepi.buffer.images import PRIORITY, ImageMeta, ImageStoreError

        if self.store_ is None:
            await self.open()
        assert self.store_ is not None
        size = len(jpeg)
        if (
            self.cfg.commit_interval > 0
            and size <= RAM_IMAGE_MAX
            and self._ram_bytes + size <= self.cfg.ram_bytes
            and self.link_up
            and not self._closing
        ):
            if cls not in PRIORITY:
                raise ValueError(f"image class must be one of {', '.join(PRIORITY)}, not {cls!r}")
            store = self.store_
            self._ram_bytes += size  # before the await: concurrent puts see the room taken
            try:
                seq = await asyncio.to_thread(store.reserve_seq)  # an fsync per 1000 seqs
            except (ImageStoreError, OSError) as err:
                self._ram_bytes -= size
                raise ImageNotKept(str(err)) from err
            meta = ImageMeta(
                seq=seq,
                camera=camera,
                cls=cls,
                reason=reason,
                ts=ts,
                mono=mono,
                boot=store.boot_id,
                width=width,
                height=height,
                size=size,
                sha256=hashlib.sha256(jpeg).hexdigest(),
                content_type="image/jpeg",
                parent=parent,
                attempts=0,
                event=event,
                path=store.path_for(seq),
            )
            self._ram[seq] = _Held(meta, jpeg, time.monotonic() + self.cfg.commit_interval)
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_loop(), name="tepi.images.writer")
                self._writer.add_done_callback(_writer_ended)
            self._wake.set()
            self.arrived.set()
            return seq, str(meta.path)
        try:
            meta = await asyncio.to_thread(
                self.store_.put,
                camera,
                cls,
                jpeg,
                reason=reason,
                ts=ts,
                mono=mono,
                width=width,
                height=height,
                parent=parent,
                event=event,
            )
        except (ImageStoreError, OSError) as err:
            raise ImageNotKept(str(err)) from err
        self.arrived.set()
        return int(meta.seq), str(meta.path)

    # ---- the uplink's side ------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Write each held image whose window has ended; at close, all of them."""
        while self.store_ is not None:
            self._wake.clear()
            now = time.monotonic()
            all_now = self._closing or not self.link_up
            ready = [
                h
                for seq, h in self._ram.items()
                if seq not in self._writing and (all_now or h.due <= now)
            ]
            if ready:
                await self._write_held(ready)
                continue
            if self._closing:
                return
            dues = [h.due for seq, h in self._ram.items() if seq not in self._writing]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(dues) - now if dues else None):
                    await self._wake.wait()

    async def _write_held(self, held: list[_Held]) -> None:
        store = self.store_
        if store is None:
            return
        seqs = [h.meta.seq for h in held]
        self._writing.update(seqs)
        try:
            written = await asyncio.to_thread(_put_held, store, held)
        finally:
            self._writing.difference_update(seqs)
        for h in held:
            seq = h.meta.seq
            if seq in self._acked:  # the broker took it while it was being written
                self._acked.discard(seq)
                if seq in written:
                    await asyncio.to_thread(store.ack, seq)
                continue
            if self._ram.pop(seq, None) is not None:
                self._ram_bytes -= h.meta.size
        self.ram_written += len(written)

    def link(self, up: bool) -> None:
        """The uplink's image lane started (True) or ended (False). Without it no image can
        be acknowledged, so new images are written at once, and those held are written now:
        during an outage a crash loses no image, as for the readings."""
        # A count: an uplink replaced by a reload may end its lane after the new one began.
        self._lanes = max(0, self._lanes + (1 if up else -1))
        if not self.link_up and self._ram:
            self._wake.set()

    @property
    def link_up(self) -> bool:
        """An image lane runs: an acknowledgement may come."""
        return self._lanes > 0

    def held(self, seq: int) -> bool:
        """Whether image ``seq`` is held in RAM within its window (its file not written)."""
        return seq in self._ram

    def ram(self) -> tuple[int, int]:
        """Images held in RAM within their window, and their bytes."""
        return len(self._ram), self._ram_bytes

    async def next(self, exclude: frozenset[int] = frozenset()) -> ImageMeta | None:
        """The next image to send, from RAM or disk: events, then thumbnails, then snapshots,
        each lowest seq first (the store's order, over both)."""
        from tepi.buffer.images import PRIORITY

        if self.store_ is None:
            return None
        held = min(
            (h.meta for seq, h in self._ram.items() if seq not in exclude),
            key=lambda m: (-PRIORITY[m.cls], m.seq),
            default=None,
        )
        # Held images being written are on disk and in RAM a moment; those acknowledged
        # meanwhile are on disk until deleted: neither is offered from disk.
        skip = exclude | self._writing | self._acked
        stored = await asyncio.to_thread(self.store_.next, skip)
        if held is None or (
            stored is not None
            and (-PRIORITY[stored.cls], stored.seq) < (-PRIORITY[held.cls], held.seq)
        ):
            return stored
        return held

    async def read(self, seq: int) -> bytes | None:
        """The image's bytes, or None when it went meanwhile (a quota, its age)."""
        from tepi.buffer.images import ImageGone

        held = self._ram.get(seq)
        if held is not None:
            return held.data
        assert self.store_ is not None
        try:
            return await asyncio.to_thread(self.store_.read, seq)
        except ImageGone:
            return None

    async def ack(self, seq: int, size: int) -> None:
        """The broker acknowledged all of it: only now does it leave the buffer. (Its bytes
        were spent from the budget as they went.)"""
        held = self._ram.pop(seq, None)
        if held is not None:  # in time: never written, unless it is being written now
            self._ram_bytes -= held.meta.size
            if seq in self._writing:
                self._acked.add(seq)
        else:
            assert self.store_ is not None
            await asyncio.to_thread(self.store_.ack, seq)
        self.lane.sent += 1
        self.lane.bytes_sent += size
        self.lane.last_sent_ts = round(time.time(), 3)

    def health(self) -> dict[str, Any] | None:
        """The ``images`` section of health, or None without an image buffer."""
        if self.store_ is None:
            return None
        st = self.store_.stats()
        by_class = {c: {"count": u.count, "bytes": u.size} for c, u in st.classes.items()}
        oldest = st.oldest_ts
        for h in self._ram.values():
            usage = by_class.setdefault(h.meta.cls, {"count": 0, "bytes": 0})
            usage["count"] += 1
            usage["bytes"] += h.meta.size
            oldest = h.meta.ts if oldest is None else min(oldest, h.meta.ts)
        return {
            "count": sum(u["count"] for u in by_class.values()),
            "bytes": st.total_bytes + self._ram_bytes,
            "max_bytes": st.max_bytes,
            "by_class": by_class,
            "in_ram": {"count": len(self._ram), "bytes": self._ram_bytes},
            "oldest_ts": oldest,
            "dropped": {k: n for k, n in st.dropped.items() if n},
            "reconciled": {
                k: n
                for k, n in (
                    ("orphan_files", st.reconciled_orphan_files),
                    ("missing_files", st.reconciled_missing_files),
                    ("index_moved_aside", st.quarantined),
                )
                if n
            },
            "sent": self.lane.sent,
            "bytes_sent": self.lane.bytes_sent,
            "last_sent_ts": self.lane.last_sent_ts,
            "waiting_for": self.lane.waiting_for,
            "budget": {
                "rate": self.cfg.rate,
                "daily_bytes": self.cfg.daily_bytes,
                "sent_today": self.budget.sent_today,
                "state": self.budget.state(),
            },
        }


def _writer_ended(task: asyncio.Task[None]) -> None:
    """A writer that failed leaves its images in RAM (the next store or the close starts
    another): say why, once, rather than lose the exception."""
    if not task.cancelled() and (err := task.exception()) is not None:
        log.error("image buffer: writing held images failed: %r", err)


def _put_held(store: ImageStore, held: list[_Held]) -> set[int]:
    """Write held images to the store (in a worker thread); the seqs written. One the store
    refuses (a quota, the disk's reserve, a full disk) is dropped: the store counts it."""
    from tepi.buffer.images import ImageStoreError

    written: set[int] = set()
    for h in held:
        m = h.meta
        try:
            store.put(
                m.camera, m.cls, h.data, reason=m.reason, ts=m.ts, mono=m.mono, width=m.width,
                height=m.height, parent=m.parent, content_type=m.content_type, event=m.event,
                seq=m.seq,
            )  # fmt: skip
        except (ImageStoreError, OSError) as err:
            # Counted by the store (health's images.dropped); a line each would flood the
            # journal while a quota refuses every image of an outage.
            log.debug("image %d from %s held in RAM, not kept: %s", m.seq, m.camera, err)
            continue
        written.add(m.seq)
    return written


def disk_reserve(buffer_max: int, buffer_path: Path) -> Callable[[], int]:
    """Bytes the image buffer must leave free: what the readings buffer may still grow by,
    so that images can never take the readings' share of the disk."""

    def reserve() -> int:
        try:
            used = sum(
                p.stat().st_size
                for p in (buffer_path, buffer_path.with_name(buffer_path.name + "-wal"))
                if p.exists()
            )
        except OSError:
            used = 0
        return max(0, buffer_max - used) + 8 * 1024 * 1024

    return reserve
