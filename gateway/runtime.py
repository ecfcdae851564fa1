"""The agent: one event loop, one TaskGroup, everything under it.

Tasks: the buffer's group-commit loop, the uplink, one poller per device. A device's
failure stays in its poller. A component's failure (the buffer writer, the uplink's own
code) ends the TaskGroup and the process exits non-zero, for systemd to restart. On SIGTERM
or SIGINT the pollers stop, what is pending is committed, the uplink says offline, and the
process exits 0 within a few seconds.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from buffer import Buffer, BufferSettings
from drivers.base import SharedResources
from drivers.registry import make_driver
from gateway import __version__
from gateway.clock import WallClock
from gateway.config import Config
from gateway.notify import Notifier
from gateway.poller import DeviceStats, poll_device
from gateway.sysinfo import boot_id as read_boot_id
from gateway.sysinfo import clock_synced, cpu_seconds, free_disk_bytes, rss_bytes
from gateway.uplink import Uplink

log = logging.getLogger(__name__)


STOP_DEADLINE_S = 8.0
STATUS_EVERY_S = 10.0  # how often the STATUS= line for systemctl is refreshed
DRAIN_S = 2.0  # at a stop, how long the polls in flight may take to finish


class _Stop(Exception):
    """Raised inside the TaskGroup to end it on a stop request."""


class Agent:
    """The tepi agent for one config."""

    def __init__(self, cfg: Config, *, boot_id: str | None = None) -> None:
        self.cfg = cfg
        self.boot_id = boot_id or read_boot_id()
        b = cfg.buffer
        self.buffer = Buffer(
            BufferSettings(
                path=cfg.gateway.data_dir / "buffer.db",
                max_bytes=b.max_bytes,
                max_age_s=b.max_age,
                commit_interval_s=b.commit_interval,
                commit_max_readings=b.commit_max_readings,
                sync_full=b.sync == "full",
                max_pending=b.max_pending,
            ),
            self.boot_id,
            clock_synced=clock_synced,
        )
        self.clock = WallClock()
        self.devices = {d.id: DeviceStats() for d in cfg.devices}
        self.uplink = Uplink(cfg, self.buffer, self.boot_id, self.health)
        self.started = time.monotonic()
        self._stopping = asyncio.Event()  # set at a stop: pollers finish their poll and end
        self.ready = asyncio.Event()  # set once the buffer is open and every task started
        self.notify = Notifier()
        self._stuck_logged: str | None = None
        self._rate = (time.monotonic(), 0)  # (when, readings acked): for the status line
        self._last_cpu = (time.monotonic(), cpu_seconds(), 0)

    def health(self) -> dict[str, Any]:
        """The health message (docs/payload.md#health)."""
        now_m, cpu = time.monotonic(), cpu_seconds()
        last_m, last_cpu, last_acked = self._last_cpu
        acked = self.uplink.stats.readings_acked
        span = max(now_m - last_m, 1e-6)
        self._last_cpu = (now_m, cpu, acked)
        bs = self.buffer.stats()
        up = self.uplink.stats
        return {
            "v": 1,
            "gateway": self.cfg.gateway.id,
            "boot": self.boot_id,
            "version": __version__,
            "ts": round(time.time(), 3),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "clock_synced": clock_synced(),
            "clock": self.clock.health(),
            "buffer": {
                "readings": bs.depth,
                "bytes": bs.bytes_used,
                "max_bytes": bs.max_bytes,
                "oldest_age_s": None
                if bs.oldest_ts is None
                else round(max(time.time() - bs.oldest_ts, 0), 1),
                "pending": bs.pending,
                "dropped": bs.dropped,
                "quarantined_files": bs.quarantined_files,
                "write_errors": bs.write_errors,
                "acked_in_memory": bs.acked_in_memory,
                "written": bs.written,
                "commits": bs.commits,
                "file_error": bs.file_error,
            },
            "uplink": {
                "connected": up.connected,
                "connects": up.connects,
                "messages": up.messages,
                "readings_acked": up.readings_acked,
                "publish_rate": round((acked - last_acked) / span, 2),
                "last_ack_ts": up.last_ack_ts,
                "errors": up.errors,
            },
            "devices": {k: v.as_dict() for k, v in self.devices.items()},
            "process": {
                "cpu_percent": round(100 * (cpu - last_cpu) / span, 2),
                "cpu_seconds": round(cpu, 2),
                "rss_bytes": rss_bytes(),
                "disk_free_bytes": free_disk_bytes(self.cfg.gateway.data_dir),
            },
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; commit what is pending before returning."""
        resources = SharedResources(gps_time=self.clock.gps_update)
        tasks: list[asyncio.Task[None]] = []
        async with self.buffer:
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks.append(tg.create_task(self.buffer.run(), name="tepi.buffer.commit"))
                    tasks.append(tg.create_task(self.uplink.run(), name="tepi.uplink"))
                    pollers: list[asyncio.Task[None]] = []
                    for dev in self.cfg.devices:
                        driver = make_driver(dev, resources)
                        self.devices[dev.id].protocol = getattr(driver, "protocol_stats", None)
                        pollers.append(
                            tg.create_task(
                                poll_device(
                                    dev,
                                    driver,
                                    self.buffer,
                                    self.devices[dev.id],
                                    clock=self.clock,
                                    stopping=self._stopping,
                                ),
                                name=f"tepi.device[{dev.id}]",
                            )
                        )
                    tasks += pollers
                    tg.create_task(
                        self._until(stop, tasks, pollers, self._stopping, self._on_stop),
                        name="tepi.stop",
                    )
                    tg.create_task(self._notify_loop(), name="tepi.notify")
                    self.ready.set()
                    self.notify.ready(self.status_line())
                    log.info(
                        "tepi %s running: gateway %s, %d devices",
                        __version__,
                        self.cfg.gateway.id,
                        len(self.cfg.devices),
                    )
            except* _Stop:
                log.info("stopping: committing %d pending readings", self.buffer.stats().pending)

    def _on_stop(self) -> None:
        self.notify.stopping(f"stopping: committing {self.buffer.stats().pending} readings")

    def stuck(self) -> str | None:
        """Why the pipeline is stuck, or None while it works or waits for a reason. The
        event loop turning is shown by this being asked at all (from a loop task)."""
        limit = max(1.0, (self.notify.watchdog_s or 30.0) / 2)
        writing = self.buffer.writing_for()
        if writing is not None and writing > limit:
            return f"the buffer's writer has been in one write for {writing:.0f} s"
        stalled = self.uplink.stalled_for()
        if stalled > self.cfg.uplink.publish_timeout + limit:
            return f"the uplink has waited {stalled:.0f} s for an acknowledgement"
        return None

    def status_line(self) -> str:
        """One line for ``systemctl status``: link, rate, buffer."""
        now, acked = time.monotonic(), self.uplink.stats.readings_acked
        then, before = self._rate
        self._rate = (now, acked)
        per_min = (acked - before) * 60 / (now - then) if now - then >= 1 else 0.0
        up = self.uplink.stats
        bs = self.buffer.stats()
        link = "online" if up.connected else f"offline ({up.last_error or 'connecting'})"
        text = f"{link}, {per_min:,.0f} readings/min, buffer {bs.depth:,}"
        if bs.oldest_ts is not None and bs.depth:
            text += f" (oldest {max(time.time() - bs.oldest_ts, 0):.0f} s)"
        failing = [d for d, st in self.devices.items() if st.state in ("failing", "quarantined")]
        if failing:
            text += f", {len(failing)} of {len(self.devices)} devices failing"
        return text

    async def _notify_loop(self) -> None:
        """WATCHDOG=1 while the pipeline is alive (every quarter of WatchdogSec), and a
        fresh STATUS= line every STATUS_EVERY_S."""
        if not self.notify.enabled:
            return
        wd = self.notify.watchdog_s
        tick = min(wd / 4, STATUS_EVERY_S) if wd else STATUS_EVERY_S
        last_status = time.monotonic()
        while True:
            why = self.stuck()
            if why is None:
                if wd:
                    self.notify.watchdog()
                if self._stuck_logged is not None:
                    log.warning("pipeline moving again; watchdog pings resume")
                    self._stuck_logged = None
            elif why != self._stuck_logged:
                log.error("pipeline stuck: %s; not pinging the watchdog", why)
                self._stuck_logged = why
                self.notify.status(f"stuck: {why}")
            if why is None and time.monotonic() - last_status >= STATUS_EVERY_S:
                self.notify.status(self.status_line())
                last_status = time.monotonic()
            await asyncio.sleep(tick)

    @staticmethod
    async def _until(
        stop: asyncio.Event,
        tasks: list[asyncio.Task[None]],
        pollers: list[asyncio.Task[None]] | None = None,
        stopping: asyncio.Event | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        await stop.wait()
        if on_stop is not None:
            on_stop()
        # First the polls in flight finish (a device that answered has handed out its
        # value: keep it), for at most DRAIN_S; then everything is cancelled.
        if stopping is not None:
            stopping.set()
        if pollers:
            _, late = await asyncio.wait(pollers, timeout=DRAIN_S)
            if late:
                log.info("stop: %d polls still in flight after %.0f s", len(late), DRAIN_S)
        loop = asyncio.get_running_loop()
        started = loop.time()

        def reap() -> None:
            # The TaskGroup cancels each task once. A library that swallows that cancellation
            # (Python 3.11's wait_for can) would keep the agent alive forever: cancel again,
            # and past the deadline log where each task is stuck and exit for systemd.
            stuck = [t for t in tasks if not t.done()]
            if not stuck:
                return
            if loop.time() - started > STOP_DEADLINE_S:
                log.critical(
                    "stop: %d tasks did not finish in %.0f s; exiting", len(stuck), STOP_DEADLINE_S
                )
                dump_tasks()
                os._exit(3)
            for t in stuck:
                t.cancel()
            loop.call_later(1.0, reap)

        loop.call_later(1.0, reap)
        raise _Stop


SWITCH_INTERVAL_S = 0.0005


async def run_agent(cfg: Config) -> None:
    """Run with SIGTERM/SIGINT wired to a clean stop."""
    # The buffer's writer thread releases the GIL in every SQLite call and must win it back
    # from the event loop; at the default 5 ms a busy loop made each retake cost up to 5 ms
    # (the "GIL convoy", docs/performance.md). 0.5 ms bounds that; with no other thread
    # waiting, the interval costs nothing.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await Agent(cfg).run(stop)


def dump_tasks() -> None:
    """On SIGUSR1: log every task and where it waits (for diagnosing a stuck agent)."""
    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning(
            "task %s (%s):\n%s",
            task.get_name(),
            "done" if task.done() else "pending",
            out.getvalue(),
        )
