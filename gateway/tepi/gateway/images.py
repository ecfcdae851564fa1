"""The agent's side of images: the image buffer behind the cameras, and the link budget.

``ImageHub`` is what a camera driver stores its images through (tepi.drivers.camera.driver
.ImageSink) and what the uplink's image lane takes them from. It owns the image buffer
(tepi.buffer.images.ImageStore: a SQLite index and the files in ``data_dir/images/``),
calling it in a worker thread, and the budget that keeps images to their share of a
metered link (``images.rate`` bytes a second, ``images.daily_bytes`` a UTC day).

The image buffer is opened only when a camera is configured or images are left from an
earlier run: a box without cameras opens no second database and imports nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepi.core.clock import clock_synced
from tepi.gateway.config import ImagesSection

if TYPE_CHECKING:
    from tepi.buffer.images import ImageMeta, ImageStore

log = logging.getLogger(__name__)

BUDGET_FILE = "image_budget.json"


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
        """Store one image (ImageSink); its seq and file. ImageNotKept when it is not kept."""
        from tepi.buffer.images import ImageStoreError

        if self.store_ is None:
            await self.open()
        assert self.store_ is not None
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

    async def next(self, exclude: frozenset[int] = frozenset()) -> ImageMeta | None:
        if self.store_ is None:
            return None
        return await asyncio.to_thread(self.store_.next, exclude)

    async def read(self, seq: int) -> bytes | None:
        """The image's bytes, or None when it went meanwhile (a quota, its age)."""
        from tepi.buffer.images import ImageGone

        assert self.store_ is not None
        try:
            return await asyncio.to_thread(self.store_.read, seq)
        except ImageGone:
            return None

    async def ack(self, seq: int, size: int) -> None:
        """The broker acknowledged all of it: only now does it leave the buffer. (Its bytes
        were spent from the budget as they went.)"""
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
        return {
            "count": sum(u.count for u in st.classes.values()),
            "bytes": st.total_bytes,
            "max_bytes": st.max_bytes,
            "by_class": {c: {"count": u.count, "bytes": u.size} for c, u in st.classes.items()},
            "oldest_ts": st.oldest_ts,
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
