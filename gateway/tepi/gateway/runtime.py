"""The agent: one event loop, one TaskGroup, everything under it.

Tasks: the buffer's group-commit loop, the uplink, one poller per device. A device's
failure stays in its poller. A component's failure (the buffer writer, the uplink's own
code) ends the TaskGroup and the process exits non-zero, for systemd to restart. On SIGTERM
or SIGINT the pollers stop, what is pending is committed, the uplink says offline, and the
process exits 0 within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepi.buffer import Buffer, BufferSettings
from tepi.core import __version__
from tepi.core.clock import WallClock, clock_synced
from tepi.core.errors import ConfigError, DeviceUnavailable, WriteRefused
from tepi.core.records import Value
from tepi.core.tasks import TaskGroup, cancel_and_wait
from tepi.drivers.base import Driver, SharedResources
from tepi.drivers.registry import DeviceConfig, make_driver
from tepi.gateway.commands import result_payload
from tepi.gateway.config import Config
from tepi.gateway.configload import load_config
from tepi.gateway.configpush import ConfigPush, ConfigStore, Resolved, start_config
from tepi.gateway.health import (
    BufferHealth,
    ClockHealth,
    ConfigHealth,
    DeviceHealth,
    Health,
    ProcessHealth,
    UplinkHealth,
)
from tepi.gateway.images import ImageHub, disk_reserve
from tepi.gateway.logring import LogRing
from tepi.gateway.notify import Notifier
from tepi.gateway.operations import Operations
from tepi.gateway.pacing import Bell, Rounds
from tepi.gateway.poller import DeviceStats, poll_device
from tepi.gateway.remote import Call, CommandFailed, CommandHub, current
from tepi.gateway.rules import alarms_wanted
from tepi.gateway.statusapi import AlarmAccess, CameraAccess, StatusServer
from tepi.gateway.sysinfo import boot_id as read_boot_id
from tepi.gateway.sysinfo import cpu_seconds, free_disk_bytes, rss_bytes
from tepi.gateway.update import Updater, UpdateTrial, healthy_within
from tepi.gateway.updateparts import PartSink
from tepi.gateway.uplink import Uplink, UplinkSetupError

if TYPE_CHECKING:
    from tepi.drivers.camera.driver import Stored
    from tepi.gateway.alarms import AlarmHub
    from tepi.gateway.dashboard import Dashboard

log = logging.getLogger(__name__)
audit = logging.getLogger("tepi.audit")


STOP_DEADLINE_S = 8.0


STATUS_EVERY_S = 10.0  # how often the STATUS= line for systemctl is refreshed
DRAIN_S = 2.0  # at a stop, how long the polls in flight may take to finish
LINK_HISTORY = 500  # link changes kept (for the web console's strip of the last 24 h)


class _Stop(Exception):
    """Raised inside the TaskGroup to end it on a stop request."""


class Agent:
    """The tepi agent for one config."""

    def __init__(
        self,
        cfg: Config,
        *,
        boot_id: str | None = None,
        config_path: Path | None = None,
        running: Resolved | None = None,
        drivers: Callable[[Any, SharedResources], Driver] = make_driver,
    ) -> None:
        self.cfg = cfg
        self._make_driver = drivers  # the registry's; a test adds its own drivers here
        # The config file: ``config_path`` is the base (the service's --config); the file
        # running is a pushed version of it when there is one (tepi.gateway.configpush),
        # re-resolved and re-read on SIGHUP.
        self.config_path = running.path if running is not None else config_path
        self.config_version = running.version if running is not None else "base"
        self.config_store: ConfigStore | None = None
        self.config_push: ConfigPush | None = None
        if config_path is not None:
            self.config_store = ConfigStore(
                config_path, cfg.gateway.data_dir, sync=cfg.buffer.sync == "full"
            )
            self.config_push = ConfigPush(self, self.config_store)
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
        # The image buffer, only with a camera (or images left from an earlier run).
        self.images: ImageHub | None = None
        cameras = sum(1 for d in cfg.devices if getattr(d, "driver", "") == "camera")
        if ImageHub.wanted(cfg.gateway.data_dir, cameras):
            self.images = self._image_hub(cfg)
        self._cameras: dict[str, Any] = {}  # camera drivers by device id (request_snapshot)
        self._drivers: dict[str, Driver] = {}  # every device's driver (a rule's write)
        # A rule's poll_rate actions: device -> rule -> interval while the rule fires.
        self._poll_rates: dict[str, dict[str, float]] = {}
        self._recent_snapshots: dict[int, bytes] = {}  # the last few taken on request
        # Set when the link or a device's state changes: the STATUS= line is sent at once.
        self._status_changed = asyncio.Event()
        self.devices = {d.id: DeviceStats(on_state=self._status_changed.set) for d in cfg.devices}
        # The polls of each tick under way: the uplink sends a tick's readings together.
        self.rounds = Rounds(cfg.uplink.batch.round_wait)
        # The rules and their alarms, only with rules (or alarms left from an earlier run).
        self.alarms: AlarmHub | None = None
        if alarms_wanted(cfg.gateway.data_dir, cfg.rules):
            self.alarms = self._alarm_hub(cfg)
        self.update = UpdateTrial(cfg.gateway.data_dir)  # an update's trial (docs/update.md)
        # Commands from the IOC (docs/payload.md#commands), unless the config turns them off.
        self.log_ring = LogRing()  # the last log lines, for logs.tail
        self.ops = Operations(self)
        self._changing = asyncio.Lock()  # one reload, restart or config change at a time
        self.commands: CommandHub | None = None
        # An update bundle sent in parts over MQTT: the updater's and the uplink's.
        self.update_parts = PartSink(f"{cfg.uplink.topic_prefix}/{cfg.gateway.id}/update_part")
        if cfg.commands.enabled:
            self.commands = CommandHub(
                cfg.commands,
                cfg.gateway.id,
                cfg.gateway.data_dir,
                self._executors(),
                sync=cfg.buffer.sync == "full",
            )
            for request_id, end in (running.settled if running is not None else {}).items():
                self.commands.settled[request_id] = result_payload(
                    cfg.gateway.id, end["command"], request_id, "failed",
                    received=end["received"], finished=time.time(), reason=end["reason"],
                    detail=end["detail"], output=end["output"],
                )  # fmt: skip
        self.uplink = Uplink(
            cfg,
            self.buffer,
            self.boot_id,
            self.health,
            self.images,
            alarms=self.alarms,
            commands=self.commands,
            rounds=self.rounds,
        )
        self.uplink.on_link = self._on_link
        # The link's changes (time, connected), for the web console's 24 h strip: a few
        # hundred tuples, appended only when the link changes.
        self.link_history: deque[tuple[float, bool]] = deque(maxlen=LINK_HISTORY)
        self.dashboard: Dashboard | None = None
        if self.commands is not None:
            self.uplink.update_parts = self.update_parts
        self.started = time.monotonic()
        self._stopping = asyncio.Event()  # set at a stop: pollers finish their poll and end
        self.ready = asyncio.Event()  # set once the buffer is open and every task started
        self.notify = Notifier()
        self._stuck_logged: str | None = None
        self._rate = (time.monotonic(), 0)  # (when, readings acked): for the status line
        self._reload_wanted = asyncio.Event()
        self.reloads: dict[str, Any] = {
            "count": 0,
            "last_ts": None,
            "ok": None,
            "errors": [],
            "restart_needed": [],
        }
        self._tg: asyncio.TaskGroup | None = None
        self.status_server: StatusServer | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._uplink_task: asyncio.Task[None] | None = None
        self._resources = SharedResources(gps_time=self.clock.gps_update)
        self._resources.images = self.images
        self._last_cpu = (time.monotonic(), cpu_seconds(), 0)

    def _on_link(self) -> None:
        self._status_changed.set()
        self.link_history.append((time.time(), self.uplink.stats.connected))

    def _start_dashboard(self) -> None:
        """The web console, when dashboard.listen is set (imported only then)."""
        if self.cfg.dashboard.listen is None:
            return
        assert self._tg is not None
        from tepi.gateway.dashboard import Dashboard, DashboardAccess
        from tepi.gateway.dashconfig import ConsoleActions

        wall_start = time.time() - (time.monotonic() - self.started)
        self.dashboard = Dashboard(
            self.cfg.dashboard,
            self.cfg.gateway.data_dir,
            DashboardAccess(
                gateway=self.cfg.gateway.id,
                health=lambda: self.snapshot(mark=False),
                devices=self.device_status,
                logs=self.log_ring.tail,
                link_history=lambda: list(self.link_history),
                started=wall_start,
                reload=self.reload,
                actions=ConsoleActions(self),
                cameras=CameraAccess(self._api_snapshot, self._api_image),
            ),
        )
        self._tg.create_task(self.dashboard.run(), name="tepi.dashboard")

    def _image_hub(self, cfg: Config) -> ImageHub:
        return ImageHub(
            cfg.images,
            cfg.gateway.data_dir,
            boot_id=self.boot_id,
            reserve_bytes=disk_reserve(cfg.buffer.max_bytes, self.buffer.settings.path),
            sync=cfg.buffer.sync == "full",
        )

    def _alarm_hub(self, cfg: Config) -> AlarmHub:
        from tepi.gateway.alarms import AlarmHub  # with the first rule (docs/performance.md)

        hub = AlarmHub(
            cfg.rules,
            cfg.gateway.data_dir,
            _Targets(self),
            boot_id=self.boot_id,
            sync=cfg.buffer.sync == "full",
        )
        self.buffer.tap = hub.on_run
        return hub

    def _executors(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """The commands the IOC may run (each also allowed by commands.policy)."""
        table = self.ops.table()
        table["update"] = Updater(
            self.cfg.commands.update,
            self.cfg.gateway.data_dir,
            working=lambda: [d for d, st in self.devices.items() if st.state == "ok"],
            parts=self.update_parts,
        )
        return table

    async def _healthy(self, timeout: float) -> str | None:  # noqa: ASYNC109
        """An update's confirmation (docs/update.md): None once the uplink is connected and
        the devices that worked before the switch work; else why not."""
        return await healthy_within(
            timeout,
            lambda: self.uplink.stats.connected,
            lambda: {d: st.state for d, st in self.devices.items()},
            self.update.needed,
        )

    async def _close_commands(self) -> None:
        self.ops.close()
        if self.commands is not None:
            await self.commands.close()

    async def _close_alarms(self) -> None:
        if self.alarms is not None:
            await self.alarms.close()

    async def _close_images(self) -> None:
        if self.images is not None:
            await self.images.close()

    async def request_snapshot(self, camera: str, reason: str) -> Stored:
        """Take a snapshot of ``camera`` now and store it in the image buffer (``tepi
        snapshot``; later motion events, alarms and remote commands). KeyError for a device
        that is not a camera; DeviceError when the camera gives no frame; OSError when the
        image buffer refuses it."""
        driver = self._cameras[camera]
        stored: Stored = await driver.snapshot(reason)
        return stored

    async def _api_snapshot(self, camera: str, reason: str) -> dict[str, Any]:
        stored = await self.request_snapshot(camera, reason)
        # Kept a little, for GET /images/{seq} (tepi snapshot -o): the broker may have it,
        # and the buffer have deleted it, before the technician's tool asks.
        self._recent_snapshots[stored.seq] = stored.data
        while len(self._recent_snapshots) > 4:
            del self._recent_snapshots[next(iter(self._recent_snapshots))]
        return {
            "camera": camera,
            "seq": stored.seq,
            "thumbnail": stored.thumbnail,
            "width": stored.width,
            "height": stored.height,
            "size": stored.size,
            "path": stored.path,
            # In RAM within the image window (written to ``path`` only if the broker has
            # not acknowledged it in time), or already in that file.
            "held": self.images is not None and self.images.held(stored.seq),
            "window_s": self.images.cfg.commit_interval if self.images is not None else 0.0,
        }

    async def _api_image(self, seq: int) -> tuple[bytes, str] | None:
        if seq in self._recent_snapshots:
            return self._recent_snapshots[seq], "image/jpeg"
        if self.images is None or self.images.store_ is None:
            return None
        data = await self.images.read(seq)
        return None if data is None else (data, "image/jpeg")

    async def alarms_status(self) -> dict[str, Any]:
        hub = self.alarms
        if hub is None:
            raise LookupError("no rules configured")
        states = await asyncio.to_thread(hub.store.states)
        out: list[dict[str, Any]] = []
        for rule_id, st in states.items():
            rule = hub.rules.get(rule_id)
            out.append(
                {
                    "rule": rule_id,
                    "state": st.state,
                    "severity": st.severity,
                    "description": rule.description if rule is not None else None,
                    "in_config": rule is not None,
                    "acknowledged": st.acknowledged,
                    "ack_by": st.ack_by,
                    "since": st.since_ts,
                    "fired": st.fired_ts,
                    "resolved": st.resolved_ts,
                    "device": st.device or None,
                    "metric": st.metric or None,
                    "value": st.value,
                    "resolved_value": st.resolved_value,
                    "count": st.count,
                    "labels": st.labels,
                    "actions": st.actions,
                }
            )
        out.sort(key=lambda a: (a["state"] != "firing", -float(a["fired"] or 0)))
        return {"alarms": out, "rules": len(hub.rules), "health": hub.health()}

    async def _api_config(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """``tepi config get|apply|rollback``: the IOC's config command, run for a technician
        on the box (the status socket is the service's user's and root's only)."""
        by = args.pop("by", None)
        who = f"local:{by}"[:64] if isinstance(by, str) and by else "local"
        return await self.config_command(action, args, who, "the status socket")

    async def config_command(
        self, action: str, args: dict[str, Any], who: str, origin: str
    ) -> dict[str, Any]:
        """The IOC's config command ``action`` run on the box for ``who`` (``local:ana``,
        ``dashboard:ana``: the request's id starts with it, so the audit line and the config
        history name them), asked through ``origin``."""
        push = self.config_push
        assert push is not None
        run = {"get": push.get, "apply": push.apply, "rollback": push.rollback}[action]
        request_id = f"{who}:{uuid.uuid4().hex[:8]}"

        async def progress(output: Any) -> None:
            log.info("config.%s %s: %s", action, request_id, output)

        audit.info("command config.%s id=%s from %s", action, request_id, origin)
        current.set(Call(request_id, f"config.{action}", time.time(), progress))
        try:
            return {"status": "done", "output": await run(args)}
        except CommandFailed as err:
            return {
                "status": "failed",
                "reason": err.reason,
                "detail": err.detail,
                "output": err.output,
            }
        except (LookupError, ValueError, TypeError, OSError) as err:
            return {"status": "failed", "reason": "failed", "detail": str(err)}

    async def acknowledge(self, rule: str, by: str) -> bool:
        hub = self.alarms
        if hub is None:
            raise LookupError("no rules configured")
        if await asyncio.to_thread(hub.store.get, rule) is None:
            raise LookupError(f"no alarm for rule {rule!r} (it never fired, or was forgotten)")
        done = await hub.acknowledge(rule, by)
        if done:
            log.info("alarm %s acknowledged by %s", rule, by)
        return done

    def health(self, *, mark: bool = True) -> dict[str, Any]:
        """The health message as published (docs/payload.md#health)."""
        return self.snapshot(mark=mark).payload()

    def snapshot(self, *, mark: bool = True) -> Health:
        """The agent's health now. Its rates run from the previous health message;
        ``mark=False`` (the status API) reads them without starting a new span."""
        now_m, cpu = time.monotonic(), cpu_seconds()
        last_m, last_cpu, last_acked = self._last_cpu
        acked = self.uplink.stats.readings_acked
        span = max(now_m - last_m, 1e-6)
        if mark:
            self._last_cpu = (now_m, cpu, acked)
        up = self.uplink.stats
        return Health(
            gateway=self.cfg.gateway.id,
            boot=self.boot_id,
            version=__version__,
            previous_version=self.update.previous_version,
            ts=round(time.time(), 3),
            uptime_s=round(time.monotonic() - self.started, 1),
            clock_synced=clock_synced(),
            clock=ClockHealth.model_validate(self.clock.health()),
            buffer=BufferHealth.of(self.buffer.stats(), time.time()),
            uplink=UplinkHealth(
                connected=up.connected,
                connects=up.connects,
                messages=up.messages,
                readings_acked=up.readings_acked,
                publish_rate=round((acked - last_acked) / span, 2),
                last_ack_ts=up.last_ack_ts,
                errors=up.errors,
                broker=up.broker,
            ),
            devices={k: DeviceHealth.of(v) for k, v in self.devices.items()},
            images=None if self.images is None else self.images.health(),
            alarms=None if self.alarms is None else self.alarms.health(),
            commands=None if self.commands is None else self.commands.health(),
            config=ConfigHealth(
                reloads=self.reloads["count"],
                last_reload_ts=self.reloads["last_ts"],
                last_reload_ok=self.reloads["ok"],
                errors=list(self.reloads["errors"]),
                restart_needed=list(self.reloads["restart_needed"]),
                version=self.config_version,
                trial=self.config_push is not None and self.config_push.on_trial,
            ),
            process=ProcessHealth(
                cpu_percent=round(100 * (cpu - last_cpu) / span, 2),
                cpu_seconds=round(cpu, 2),
                rss_bytes=rss_bytes(),
                disk_free_bytes=free_disk_bytes(self.cfg.gateway.data_dir),
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; commit what is pending before returning."""
        tasks = self._tasks
        async with self.buffer, contextlib.AsyncExitStack() as stack:
            logging.getLogger().addHandler(self.log_ring)
            stack.callback(logging.getLogger().removeHandler, self.log_ring)
            if self.images is not None:
                await self.images.open()
            stack.push_async_callback(self._close_images)
            if self.alarms is not None:
                await self.alarms.open()
            stack.push_async_callback(self._close_alarms)
            if self.commands is not None:
                await self.commands.open()
            stack.push_async_callback(self._close_commands)
            try:
                # The stop's _Stop fails the group; the task goes on to close the stores, and
                # must not be left counted as cancelling there (tepi.core.tasks).
                async with TaskGroup() as tg:
                    self._tg = tg
                    tasks.append(tg.create_task(self.buffer.run(), name="tepi.buffer.commit"))
                    self._uplink_task = tg.create_task(self.uplink.run(), name="tepi.uplink")
                    tasks.append(self._uplink_task)
                    if self.alarms is not None:
                        tasks.append(tg.create_task(self.alarms.run(), name="tepi.rules"))
                    for dev in self.cfg.devices:
                        self._start_device(dev)
                    self.ops.restore()
                    tg.create_task(
                        self._until(stop, tasks, self._pollers, self._stopping, self._on_stop),
                        name="tepi.stop",
                    )
                    tg.create_task(self._notify_loop(), name="tepi.notify")
                    tg.create_task(self._reload_loop(), name="tepi.reload")
                    self._start_status(self.cfg)
                    self._start_dashboard()
                    self.ready.set()
                    tg.create_task(self.update.on_start(self._healthy), name="tepi.update.trial")
                    self.notify.ready(self.status_line())
                    log.info(
                        "tepi %s running: gateway %s, %d devices",
                        __version__,
                        self.cfg.gateway.id,
                        len(self.cfg.devices),
                    )
            except* _Stop:
                log.info("stopping: committing %d pending readings", self.buffer.stats().pending)
            finally:
                self._tg = None

    def device_status(self) -> dict[str, Any]:
        """``/devices`` of the status API: each device's health and its latest readings."""
        out: dict[str, Any] = {}
        for dev_id, st in self.devices.items():
            d = DeviceHealth.of(st).payload()
            d["last"] = st.latest_view()
            out[dev_id] = d
        return out

    def _start_device(self, dev: DeviceConfig) -> None:
        assert self._tg is not None
        hub = self.alarms
        camera = getattr(dev, "driver", "") == "camera"
        stats = self.devices[dev.id] = DeviceStats()

        def state_changed() -> None:
            self._status_changed.set()
            if hub is not None and not camera:  # a camera's rules watch its own state
                hub.on_state(dev.id, stats.state)

        stats.on_state = state_changed
        stats.wake = Bell()  # a new interval, a poll asked for now, the stop
        rates = self._poll_rates.get(dev.id)
        if rates:
            stats.interval = min(rates.values())
        driver = self._make_driver(dev, self._resources)
        self._drivers[dev.id] = driver
        self._cameras.pop(dev.id, None)
        if camera:
            self._cameras[dev.id] = driver
            if hub is not None:
                driver.on_state = lambda state, reason: hub.on_state(dev.id, state, reason)  # type: ignore[attr-defined]
        task = self._tg.create_task(
            poll_device(
                dev,
                driver,
                self.buffer,
                stats,
                clock=self.clock,
                stopping=self._stopping,
                rounds=self.rounds,
            ),
            name=f"tepi.device[{dev.id}]",
        )
        self._pollers[dev.id] = task
        self._tasks.append(task)

    # ---- reload (SIGHUP) ----------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read the config at the next turn of the loop (one reload at a time)."""
        self._reload_wanted.set()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read and validate the config file. A valid one is applied: only the devices
        whose config changed restart, the uplink only if its settings changed, the buffer
        and what it holds are untouched. An invalid one changes nothing; every problem is
        logged with file:line and kept in health. Whether the new config was applied."""
        async with self._changing:
            return await self._reload()

    async def restart_device(self, dev_id: str) -> None:
        """Close the device's driver and open it again (the IOC's ``restart``); its counters
        start again. KeyError for a device not running."""
        async with self._changing:
            dev = next(d for d in self.cfg.devices if d.id == dev_id)
            await self._stop_device(dev_id)
            self._start_device(dev)

    async def _stop_device(self, dev_id: str) -> None:
        await cancel_and_wait(self._pollers.pop(dev_id))
        self.devices.pop(dev_id, None)
        self._cameras.pop(dev_id, None)
        self._drivers.pop(dev_id, None)

    async def _reload(self) -> bool:
        self.notify.reloading()
        self.reloads["count"] += 1
        self.reloads["last_ts"] = round(time.time(), 3)
        if self.config_path is None:
            return self._reload_failed(["no config file to re-read"])
        path, version = self.config_path, self.config_version
        if self.config_store is not None:
            try:
                resolved = await asyncio.to_thread(self.config_store.resolve, start=False)
            except OSError as err:
                return self._reload_failed([f"{self.config_store.base}: cannot read it: {err}"])
            for note in resolved.notes:
                log.warning("%s", note)
            path, version = resolved.path, resolved.version
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as err:
            return self._reload_failed([str(i) for i in err.issues])
        old = self.cfg
        restart_needed = [
            key
            for key, a, b in (
                ("gateway.id", old.gateway.id, new.gateway.id),
                ("gateway.data_dir", old.gateway.data_dir, new.gateway.data_dir),
                ("buffer", old.buffer, new.buffer),
                ("images", old.images, new.images),
                ("commands", old.commands, new.commands),
                ("dashboard", old.dashboard, new.dashboard),
            )
            if a != b
        ]
        # What cannot change live keeps its old value until a restart, and says so.
        applied = new.model_copy(
            update={
                "gateway": old.gateway.model_copy(update={"log_level": new.gateway.log_level}),
                "buffer": old.buffer,
                "images": old.images,
                "commands": old.commands,
            }
        )
        # The first camera, added by a reload: the image buffer opens now, and the uplink
        # reconnects with its image lane.
        new_hub: ImageHub | None = None
        if self.images is None and any(
            getattr(d, "driver", "") == "camera" for d in applied.devices
        ):
            new_hub = self._image_hub(applied)
            try:
                await new_hub.open()
            except Exception as err:  # noqa: BLE001 - refused like any other reload problem
                return self._reload_failed([f"images: cannot open the image buffer: {err}"])
        # The first rules, added by a reload: the alarm store opens now, and the uplink
        # reconnects with its alarm lane.
        new_alarms: AlarmHub | None = None
        if self.alarms is None and applied.rules:
            from tepi.gateway.alarms import AlarmHub

            new_alarms = AlarmHub(
                applied.rules,
                applied.gateway.data_dir,
                _Targets(self),
                boot_id=self.boot_id,
                sync=applied.buffer.sync == "full",
            )
            try:
                await new_alarms.open()
            except Exception as err:  # noqa: BLE001 - refused like any other reload problem
                if new_hub is not None:
                    await new_hub.close()
                return self._reload_failed([f"rules: cannot open the alarm store: {err}"])
        # All or nothing: the new uplink (password read, TLS files loaded) is built before
        # anything changes; a file it cannot use refuses the whole reload.
        uplink: Uplink | None = None
        if applied.uplink != old.uplink or new_hub is not None or new_alarms is not None:
            try:
                uplink = Uplink(
                    applied,
                    self.buffer,
                    self.boot_id,
                    self.health,
                    new_hub or self.images,
                    alarms=new_alarms or self.alarms,
                    commands=self.commands,
                    rounds=self.rounds,
                )
                uplink.on_link = self._on_link
                if self.commands is not None:
                    uplink.update_parts = self.update_parts
            except UplinkSetupError as err:
                if new_hub is not None:
                    await new_hub.close()
                if new_alarms is not None:
                    await new_alarms.close()
                return self._reload_failed([str(err)])
        if new_hub is not None:
            self.images = self._resources.images = new_hub
        if new_alarms is not None:
            assert self._tg is not None
            self.alarms = new_alarms
            self.buffer.tap = new_alarms.on_run
            self._tasks.append(self._tg.create_task(new_alarms.run(), name="tepi.rules"))
        elif self.alarms is not None and applied.rules != old.rules:
            self.alarms.reconfigure(applied.rules)
        if new.gateway.log_level != old.gateway.log_level:
            logging.getLogger().setLevel(new.gateway.log_level.upper())
        restarted = await self._apply_devices(old, applied)
        self.reloads["restarted"] = restarted
        self.config_path, self.config_version = path, version
        if uplink is not None:
            await self._restart_uplink(uplink)
            log.info("reload: uplink settings changed: reconnecting")
        if applied.status != old.status:
            await self._restart_status(applied)
        self.cfg = applied
        self.rounds.limit = applied.uplink.batch.round_wait
        self.reloads.update(ok=True, errors=[], restart_needed=restart_needed)
        log.info(
            "reload: config applied (%d devices restarted: %s)%s",
            len(restarted),
            ", ".join(restarted) or "none",
            f"; needs a restart to change {', '.join(restart_needed)}" if restart_needed else "",
        )
        self.notify.ready(self.status_line())
        return True

    def _reload_failed(self, errors: list[str]) -> bool:
        for e in errors:
            log.error("reload: %s", e)
        log.error(
            "reload refused: %d problem%s in the config; still running the previous one",
            len(errors),
            "" if len(errors) == 1 else "s",
        )
        self.reloads.update(ok=False, errors=errors[:20])
        self.notify.ready(f"reload failed ({len(errors)} problems); {self.status_line()}")
        return False

    async def _apply_devices(self, old: Config, new: Config) -> list[str]:
        """Stop removed and changed devices, start new and changed ones; the ids touched."""
        before = {d.id: d for d in old.devices}
        after = {d.id: d for d in new.devices}
        gone = [i for i in before if i not in after or before[i] != after[i]]
        for dev_id in gone:
            await self._stop_device(dev_id)
        for dev in new.devices:
            if dev.id not in self._pollers:
                self._start_device(dev)
        return sorted(set(gone) | (set(after) - set(before)))

    async def _restart_uplink(self, uplink: Uplink) -> None:
        assert self._tg is not None
        if self._uplink_task is not None:
            await cancel_and_wait(self._uplink_task)
        uplink.stats = self.uplink.stats  # counters run on across a reconnect
        self.uplink = uplink
        self._uplink_task = self._tg.create_task(self.uplink.run(), name="tepi.uplink")
        self._tasks.append(self._uplink_task)

    def _start_status(self, cfg: Config) -> None:
        assert self._tg is not None
        self.status_server = None
        self._status_task = None
        if cfg.status.enabled:
            self.status_server = StatusServer(
                lambda: self.snapshot(mark=False),
                self.device_status,
                cfg.status_socket(),
                cfg.status.tcp_port,
                CameraAccess(self._api_snapshot, self._api_image),
                AlarmAccess(self.alarms_status, self.acknowledge),
                self._api_config if self.config_push is not None else None,
                lambda: self.dashboard.info() if self.dashboard is not None else None,
            )
            self._status_task = self._tg.create_task(self.status_server.run(), name="tepi.status")

    async def _restart_status(self, cfg: Config) -> None:
        """The status API moves to the new socket and port (or stops, or starts)."""
        if self._status_task is not None:
            await cancel_and_wait(self._status_task)
        self._start_status(cfg)
        log.info(
            "reload: status API settings changed: %s",
            self.status_server.where() if self.status_server else "not served",
        )

    def _on_stop(self) -> None:
        for st in self.devices.values():
            if st.wake is not None:
                st.wake.set()
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
        fresh STATUS= line every STATUS_EVERY_S and at once when the link or a device's state
        changes (woken by the uplink and the pollers, not by a timer)."""
        if not self.notify.enabled:
            return
        wd = self.notify.watchdog_s
        tick = min(wd / 4, STATUS_EVERY_S) if wd else STATUS_EVERY_S
        last_status = last_ping = time.monotonic()
        shown = self._status_key()
        while True:
            why = self.stuck()
            if why is None and self._status_key() != shown:
                # The link or the failing devices changed: say so now, not at the next refresh.
                last_status = -STATUS_EVERY_S
            # (0.9: a wake-up for a change may come just before the tick: no ping a step late)
            if why is None and wd and time.monotonic() - last_ping >= 0.9 * tick:
                self.notify.watchdog()
                last_ping = time.monotonic()
            if why is None:
                if self._stuck_logged is not None:
                    log.warning("pipeline moving again; watchdog pings resume")
                    self._stuck_logged = None
            elif why != self._stuck_logged:
                log.error("pipeline stuck: %s; not pinging the watchdog", why)
                self._stuck_logged = why
                self.notify.status(f"stuck: {why}")
            if why is None and time.monotonic() - last_status >= STATUS_EVERY_S:
                shown = self._status_key()
                self.notify.status(self.status_line())
                last_status = time.monotonic()
            # Sleep until the next ping or refresh is due, or a change wakes the loop.
            due = last_status + STATUS_EVERY_S
            if wd and why is None:
                due = min(due, last_ping + tick)
            wait = tick if why is not None else min(max(due - time.monotonic(), 0.05), tick)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._status_changed.wait()
            self._status_changed.clear()

    def _status_key(self) -> tuple[object, ...]:
        """What a change of makes the STATUS= line stale: the link and the failing devices."""
        up = self.uplink.stats
        failing = sorted(
            d for d, st in self.devices.items() if st.state in ("failing", "quarantined")
        )
        return (up.connected, up.last_error, tuple(failing))

    @staticmethod
    async def _until(
        stop: asyncio.Event,
        tasks: list[asyncio.Task[None]],
        pollers: dict[str, asyncio.Task[None]] | None = None,
        stopping: asyncio.Event | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        await stop.wait()
        # First the polls in flight finish (a device that answered has handed out its
        # value: keep it), for at most DRAIN_S; then everything is cancelled.
        if stopping is not None:
            stopping.set()
        if on_stop is not None:
            on_stop()  # (after ``stopping``: it wakes the pollers, which then see it)
        if pollers:
            _, late = await asyncio.wait(list(pollers.values()), timeout=DRAIN_S)
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


class _Targets:
    """What the rules' actions may do in the agent (tepi.gateway.alarms.ActionTargets)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def write(self, device: str, metric: str, value: Value) -> Value:
        driver = self.agent._drivers.get(device)
        write = getattr(driver, "write", None)
        if write is None:
            raise WriteRefused("not writable", f"{device} is not running, or takes no writes")
        try:
            got: Value = await write(metric, value)
        except RuntimeError as err:  # the driver is between connections: not open now
            raise DeviceUnavailable("not connected", f"{device}: {err}") from err
        return got

    async def snapshot(self, camera: str, reason: str) -> int:
        stored = await self.agent.request_snapshot(camera, reason)
        return stored.seq

    def poll_rate(self, rule: str, device: str, interval: float | None) -> None:
        agent = self.agent
        rates = agent._poll_rates.setdefault(device, {})
        if interval is None:
            rates.pop(rule, None)
        else:
            rates[rule] = interval
        fastest = min(rates.values()) if rates else None
        if not rates:
            del agent._poll_rates[device]
        stats = agent.devices.get(device)
        if stats is not None and stats.interval != fastest:
            log.info(
                "device %s: polled every %s (%s)",
                device,
                f"{fastest:g} s" if fastest is not None else "poll_interval again",
                "the IOC's poll_rate" if rule == ":ioc" else f"rule {rule}",
            )
            stats.set_interval(fastest)


SWITCH_INTERVAL_S = 0.0005


async def run_agent(cfg: Config, config_path: Path | None = None) -> None:
    """Run with SIGTERM/SIGINT wired to a clean stop, and SIGHUP to a reload."""
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
    loop.set_exception_handler(loop_exception)
    running = None
    if config_path is not None:  # a pushed config, unless a trial was cut short
        cfg, running = await asyncio.to_thread(start_config, cfg, config_path)
    agent = Agent(cfg, config_path=config_path, running=running)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    await agent.run(stop)


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's handler for errors in callbacks. One is known and harmless: aiomqtt asks
    the loop to watch the MQTT socket with ``call_soon_threadsafe(add_writer, fd)``, and
    when the connection drops in between the socket is closed by the time that runs (EBADF;
    the fifth soak logged it as a traceback), or was closed already when aiomqtt asked for
    its number (fd -1: a ValueError, seen in CI on Python 3.11.2). The session is being torn
    down anyway and the uplink reconnects: one debug line. Anything else keeps the default
    report."""
    exc = context.get("exception")
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    name = getattr(callback, "__name__", "")
    args = getattr(handle, "_args", None) or (None,)
    closed = (isinstance(exc, OSError) and exc.errno == errno.EBADF) or (
        isinstance(exc, ValueError) and args[0] == -1
    )
    if closed and name in _WATCHERS:
        log.debug("a socket closed before the loop could watch it (%s): ignored", name)
        return
    loop.default_exception_handler(context)


_WATCHERS = frozenset({"add_writer", "add_reader", "remove_writer", "remove_reader"})


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
