"""What each command from the IOC does in the agent (docs/operations.md, "Remote operations").

:class:`tepi.gateway.remote.CommandHub` checks a request and makes sure it runs once; this
module runs it. Each command is an async function of the request's ``args`` that returns its
output (a JSON object), raises :class:`~tepi.gateway.remote.CommandFailed` with a short reason
the IOC can act on, or raises LookupError/ValueError for a request that names what is not
there (``failed``, with the message as the detail).

- ``read``: a poll now, outside the schedule, through the device's own poll loop (so a
  device on a shared serial port waits its turn on the port like any poll); its readings go
  to the buffer like every poll's, and the output shows them.
- ``write``: the driver's checked write (only ``writable: true`` metrics, within min and max,
  read back); the output says what was read back.
- ``poll_rate``: a temporary interval that ends on its own (``for``), kept across a restart
  in ``{data_dir}/poll_rates.json``; with a rule's poll_rate action the fastest wins.
- ``restart``: the device's driver is closed and opened again, and the first poll awaited.
- ``reload``: the config file re-read, as SIGHUP does.
- ``logs.tail``: the last log lines the agent kept, redacted (tepi.gateway.logring).
- ``config.get`` / ``config.apply`` / ``config.rollback``: tepi.gateway.configpush.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tepi.buffer.db import write_atomic
from tepi.core import __version__
from tepi.core.errors import DeviceError, WriteRefused
from tepi.core.units import parse_duration
from tepi.gateway.remote import CommandFailed

if TYPE_CHECKING:
    from tepi.gateway.runtime import Agent

__all__ = ["MAX_POLL_RATE_FOR_S", "MIN_POLL_RATE_S", "Operations"]

log = logging.getLogger(__name__)

Executor = Callable[[dict[str, Any]], Awaitable[Any]]
MIN_POLL_RATE_S = 0.2  # the fastest interval poll_rate may ask for
MAX_POLL_RATE_FOR_S = 7 * 86400.0  # the longest it may last (a flood lasts days)
MAX_TAIL = 1000  # lines logs.tail may ask for
POLL_RATE_KEY = ":ioc"  # the command's key among the rules' (no rule id has a colon)


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"args.{name} is required: a string")
    return value


def _seconds(args: dict[str, Any], name: str, default: float | None = None) -> float:
    value = args.get(name, default)
    if value is None:
        raise ValueError(f"args.{name} is required: seconds, or a duration such as '10s', '1h'")
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"args.{name}: {err}") from err
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"args.{name}: must be more than 0")
    return seconds


class Operations:
    """The executors, bound to one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._rate_timers: dict[str, asyncio.TimerHandle] = {}
        self._rates_file = agent.cfg.gateway.data_dir / "poll_rates.json"
        self._rates: dict[str, dict[str, Any]] = {}  # device -> {interval, until, for, id}

    def table(self) -> dict[str, Executor]:
        table: dict[str, Executor] = {
            "ping": self.ping,
            "health": self.health,
            "buffer.stats": self.buffer_stats,
            "snapshot": self.snapshot,
            "alarms.ack": self.alarms_ack,
            "read": self.read,
            "write": self.write,
            "poll_rate": self.poll_rate,
            "restart": self.restart,
            "reload": self.reload,
            "logs.tail": self.logs_tail,
        }
        push = self.agent.config_push
        if push is not None:  # the agent runs from a config file
            table |= {
                "config.get": push.get,
                "config.apply": push.apply,
                "config.rollback": push.rollback,
            }
        return table

    # ---- diagnostics ---------------------------------------------------------------------

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        agent = self.agent
        return {
            "pong": True,
            "version": __version__,
            "boot": agent.boot_id,
            "uptime_s": round(time.monotonic() - agent.started, 1),
        }

    async def health(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.agent.health(mark=False)

    async def buffer_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.agent.snapshot(mark=False).buffer.model_dump()

    async def logs_tail(self, args: dict[str, Any]) -> dict[str, Any]:
        n = args.get("n", 100)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_TAIL:
            raise ValueError(f"args.n: a whole number of lines from 1 to {MAX_TAIL}")
        level = args.get("level")
        if level is not None and not isinstance(level, str):
            raise ValueError("args.level: debug, info, warning, error or critical")
        return self.agent.log_ring.tail(n, level)

    # ---- devices -------------------------------------------------------------------------

    def _device(self, args: dict[str, Any]) -> str:
        dev = _text(args, "device")
        if dev not in self.agent.devices:
            raise LookupError(f"no device {dev!r} in the running config")
        return dev

    def _wait_s(self, dev: str) -> float:
        """How long a poll of ``dev`` may take (the poller's own guard), at most a minute."""
        cfg = next(d for d in self.agent.cfg.devices if d.id == dev)
        return min(cfg.timeout * 8 + 5.0, 60.0)

    async def _poll(self, dev: str) -> str | None:
        """A poll of ``dev`` now; its error, or None. CommandFailed when none came in time."""
        stats = self.agent.devices[dev]
        ask = stats.poll_now()
        wait = self._wait_s(dev)
        try:
            async with asyncio.timeout(wait):
                return await ask
        except TimeoutError:
            ask.cancel()
            raise CommandFailed(
                "device_error",
                f"{dev}: no poll within {wait:.0f} s; it is {stats.state}"
                + (f" ({stats.last_error})" if stats.last_error else ""),
                {"device": dev, "state": stats.state},
            ) from None

    async def read(self, args: dict[str, Any]) -> dict[str, Any]:
        dev = self._device(args)
        stats = self.agent.devices[dev]
        before = dict(stats.last)
        asked = time.time()
        error = await self._poll(dev)
        readings = stats.latest_view()
        for m, view in readings.items():
            view["fresh"] = stats.last.get(m) is not before.get(m)
        out = {"device": dev, "state": stats.state, "asked": round(asked, 3), "readings": readings}
        if error is not None:
            raise CommandFailed("device_error", f"{dev}: {error}", out)
        return out

    async def write(self, args: dict[str, Any]) -> dict[str, Any]:
        dev = self._device(args)
        metric = _text(args, "metric")
        if "value" not in args:
            raise ValueError("args.value is required: a number, true or false")
        value = args["value"]
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("args.value: not a finite number")
        if not isinstance(value, int | float | bool | str):
            raise TypeError("args.value: a number, true, false or a string")
        from tepi.gateway.runtime import _Targets

        out: dict[str, Any] = {"device": dev, "metric": metric, "value": value}
        try:
            got = await _Targets(self.agent).write(dev, metric, value)
        except WriteRefused as err:
            raise CommandFailed("write_refused", str(err), {**out, "refused": err.reason}) from err
        except DeviceError as err:
            raise CommandFailed("device_error", f"{dev}: {err}", out) from err
        log.info("command write: %s.%s = %r (read back %r)", dev, metric, value, got)
        return {**out, "read_back": got}

    async def restart(self, args: dict[str, Any]) -> dict[str, Any]:
        dev = self._device(args)
        agent = self.agent
        before = agent.devices[dev]
        was = {"state": before.state, "last_error": before.last_error}
        await agent.restart_device(dev)
        log.info("command restart: device %s restarted", dev)
        error = await self._poll(dev)
        stats = agent.devices[dev]
        out = {"device": dev, "before": was, "state": stats.state, "error": error}
        if error is not None:
            raise CommandFailed(
                "device_error", f"{dev} restarted, and its poll failed: {error}", out
            )
        return out

    # ---- poll_rate -----------------------------------------------------------------------

    async def poll_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        dev = self._device(args)
        cfg = next(d for d in self.agent.cfg.devices if d.id == dev)
        if args.get("interval") is None:  # the end, asked for
            ended = self._rates.get(dev)
            self._set_rate(dev, None)
            return {"device": dev, "interval": None, "ended": ended is not None}
        interval = _seconds(args, "interval")
        if interval < MIN_POLL_RATE_S:
            raise ValueError(f"args.interval: at least {MIN_POLL_RATE_S:g} s")
        lasts = _seconds(args, "for")
        if lasts > MAX_POLL_RATE_FOR_S:
            raise ValueError(f"args.for: at most {MAX_POLL_RATE_FOR_S / 86400:g} days")
        until = time.time() + lasts
        from tepi.gateway.remote import current

        self._set_rate(
            dev, {"interval": interval, "until": until, "for": lasts, "id": current.get().id}
        )
        return {
            "device": dev,
            "interval": interval,
            "until": round(until, 3),
            "poll_interval": cfg.poll_interval,
            "effective": self.agent.devices[dev].interval or cfg.poll_interval,
        }

    def _set_rate(self, dev: str, rate: dict[str, Any] | None) -> None:
        from tepi.gateway.runtime import _Targets

        timer = self._rate_timers.pop(dev, None)
        if timer is not None:
            timer.cancel()
        if rate is None:
            self._rates.pop(dev, None)
            _Targets(self.agent).poll_rate(POLL_RATE_KEY, dev, None)
        else:
            self._rates[dev] = rate
            _Targets(self.agent).poll_rate(POLL_RATE_KEY, dev, rate["interval"])
            # Monotonic from now: a clock that jumps (an NTP sync) does not move the end.
            left = max(0.0, min(rate["until"] - time.time(), rate["for"]))
            self._rate_timers[dev] = asyncio.get_running_loop().call_later(
                left, self._expire, dev, rate["id"]
            )
        self._save_rates()

    def _expire(self, dev: str, request_id: str) -> None:
        rate = self._rates.get(dev)
        if rate is not None and rate["id"] == request_id:
            log.info("device %s: the IOC's poll_rate (%s) ended", dev, request_id)
            self._rate_timers.pop(dev, None)
            self._set_rate(dev, None)

    def _save_rates(self) -> None:
        # On the loop: a few hundred bytes, at a command or at a rate's end (rare), and the
        # timers that end a rate are loop callbacks.
        path = self._rates_file
        if not self._rates:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        try:
            write_atomic(path, json.dumps(self._rates).encode())
        except OSError as err:  # the rate applies; only its survival of a restart is lost
            log.error("poll_rate: cannot keep %s for a restart: %s", path, err)

    def restore(self) -> None:
        """At the start: the IOC's poll rates that have not ended yet apply again."""
        try:
            saved = json.loads(self._rates_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.error("poll_rate: %s unreadable, ignored: %s", self._rates_file, err)
            return
        now = time.time()
        for dev, rate in saved.items() if isinstance(saved, dict) else ():
            try:
                kept = {k: rate[k] for k in ("interval", "until", "for", "id")}
            except (KeyError, TypeError):
                continue
            if dev in self.agent.devices and kept["until"] > now:
                log.info(
                    "device %s: the IOC's poll_rate %s s goes on until %s", dev, kept["interval"],
                    time.strftime("%H:%M:%S", time.gmtime(kept["until"])),
                )  # fmt: skip
                self._set_rate(dev, kept)
        if not self._rates:
            self._save_rates()

    def close(self) -> None:
        for timer in self._rate_timers.values():
            timer.cancel()

    # ---- cameras, alarms, config ---------------------------------------------------------

    async def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        camera = _text(args, "camera")
        if camera not in self.agent._cameras:
            raise LookupError(f"no camera {camera!r} in the config")
        out = await self.agent._api_snapshot(camera, "command")
        # Where the box keeps it (its file, or RAM within the image window) is not the
        # IOC's business: the image itself comes on the image topics.
        for local in ("path", "held", "window_s"):
            out.pop(local, None)
        return out

    async def alarms_ack(self, args: dict[str, Any]) -> dict[str, Any]:
        rule = _text(args, "rule")
        by = args.get("by") if isinstance(args.get("by"), str) else "ioc"
        return {"rule": rule, "acknowledged": await self.agent.acknowledge(rule, f"ioc:{by}"[:64])}

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        ok = await self.agent.reload()
        r = self.agent.reloads
        out = {"applied": ok, "errors": r["errors"], "restart_needed": r["restart_needed"]}
        if not ok:
            raise CommandFailed(
                "config_refused", f"{len(r['errors'])} problems; the running config is kept", out
            )
        return out
