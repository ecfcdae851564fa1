"""Commands from the IOC at run time (issue 19): a request in, checked, run once, answered.

The uplink hands each message of ``{prefix}/{id}/cmd/{name}`` to :meth:`CommandHub.receive`;
the hub checks it (:func:`tepi.gateway.commands.check`: size, shape, policy, times,
signature), records it in the command log before it runs
(:class:`tepi.buffer.commands.CommandLog`: a redelivery or a replay is answered from the log
and never runs twice), runs it, and records its result, which the uplink's command lane
publishes on ``cmd_result`` (and, with MQTT 5, on the request's response topic with its
correlation data) and marks sent after the PUBACK. Every request is audited: one log line
(accepted or refused, and why) and a counter in health.

What each command does in the agent is in :mod:`tepi.gateway.operations`; a command this
version has no executor for is answered ``failed``/``not_implemented``. A long command
(``config.apply``) reports ``accepted`` first through :func:`Call.progress`, then its end.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepi.buffer.commands import CommandLog, CommandLogError
from tepi.gateway.commands import Keyring, Refused, Request, check, result_payload
from tepi.gateway.config import CommandsSection

__all__ = ["Call", "CommandFailed", "CommandHub", "Executor", "current"]

log = logging.getLogger(__name__)
audit = logging.getLogger("tepi.audit")

Executor = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_RUNNING = 8  # commands running at once; more are refused as busy (the IOC retries)


class CommandFailed(Exception):
    """An executor's failure the IOC can act on: ``reason`` short and stable (for example
    ``device_error``, ``write_refused``, ``config_refused``, ``rolled_back``), ``detail`` for
    a person, ``output`` what is known (the config's errors, the value read back)."""

    def __init__(self, reason: str, detail: str, output: Any = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.output = output


@dataclass(frozen=True, slots=True)
class Call:
    """The request an executor runs for (``current.get()`` inside it)."""

    id: str
    command: str
    received: float
    progress: Callable[[Any], Awaitable[None]]  # an ``accepted`` result with this output


current: ContextVar[Call] = ContextVar("tepi_command")


@dataclass(frozen=True, slots=True)
class Reply:
    """Where a result goes besides cmd_result: MQTT 5's response topic and correlation."""

    topic: str | None = None
    correlation: bytes | None = None


class CommandHub:
    """See the module docstring."""

    def __init__(
        self,
        cfg: CommandsSection,
        gateway: str,
        directory: Path,
        executors: dict[str, Executor],
        *,
        sync: bool = True,
    ) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.executors = executors
        self.log = CommandLog(directory, keep=cfg.keep_results, sync=sync)
        self.keys = (
            Keyring({k.id: base64.b64decode(k.public_key) for k in cfg.keys}) if cfg.keys else None
        )
        self.changed = asyncio.Event()  # a result waits for the uplink's command lane
        self.counts: Counter[str] = Counter()  # accepted, refused reasons, done, failed
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False
        self._opening = asyncio.Lock()
        # Results the agent settled before the log opened (a config trial that a crash cut
        # short, rolled back at the start): recorded instead of "interrupted".
        self.settled: dict[str, dict[str, Any]] = {}
        # ``accepted`` results not yet handed to the uplink (bounded: the oldest go).
        self._interim: deque[tuple[dict[str, Any], Reply]] = deque(maxlen=16)

    async def open(self) -> None:
        """Open the command log if there is one (a box never commanded opens it, and loads
        SQLite's tooling, at its first command), and fail what a crash cut short."""
        if self.log.path.exists():
            try:
                await self._open_log()
            except (CommandLogError, OSError, sqlite3.Error) as err:
                # Commands wait for it (tried again at the first one); the rest runs.
                log.error("the command log %s cannot be opened: %s", self.log.path, err)

    async def _open_log(self) -> None:
        async with self._opening:
            if self._opened:
                return
            await asyncio.to_thread(self.log.open)
            self._opened = True
        for cut in await asyncio.to_thread(self.log.interrupted):
            settled = self.settled.pop(cut.id, None)
            if settled is not None:
                await self._finish(cut.id, settled, _reply(cut.result))
                continue
            log.error(
                "command %s (%s) was running when the gateway stopped; it is not run again",
                cut.id,
                cut.command,
            )
            await self._finish(
                cut.id,
                result_payload(
                    self.gateway, cut.command, cut.id, "failed", received=cut.received,
                    finished=time.time(), reason="interrupted",
                    detail="the gateway stopped while it ran; it was not run again, and what "
                    "it did before is not known",
                ),
                Reply(),
            )  # fmt: skip

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._opened:
            await asyncio.to_thread(self.log.close)

    # ---- in ------------------------------------------------------------------------------

    def receive(self, command: str, payload: bytes, reply: Reply) -> None:
        """A message on cmd/{command} (from the uplink's message loop: never blocks)."""
        task = asyncio.get_running_loop().create_task(
            self._handle(command, payload, reply), name=f"tepi.command[{command[:32]}]"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, command: str, payload: bytes, reply: Reply) -> None:
        received = time.time()
        try:
            await self._open_log()
        except (CommandLogError, OSError, sqlite3.Error) as err:
            self.counts["log_errors"] += 1
            log.error("command %s not run: the command log cannot be opened: %s", command[:32], err)
            return
        try:
            req = check(
                command,
                payload,
                gateway=self.gateway,
                now=received,
                policy=self.cfg.policy,
                keys=self.keys,
                max_lifetime=self.cfg.max_lifetime,
                clock_skew=self.cfg.clock_skew,
            )
        except Refused as err:
            self.counts[f"refused:{err.reason}"] += 1
            audit.warning(
                "command %s id=%s refused: %s: %s", command[:32], err.request_id, err.reason,
                err.detail,
            )  # fmt: skip
            if err.request_id is not None:  # unreadable requests are not answered
                await self._finish(
                    err.request_id,
                    result_payload(
                        self.gateway, command[:32], err.request_id, "failed", received=received,
                        finished=time.time(), reason=err.reason, detail=err.detail,
                    ),
                    reply,
                )  # fmt: skip
            return
        try:
            await self._run(req, received, reply)
        except CommandLogError as err:  # the disk refused: the command did not run
            self.counts["log_errors"] += 1
            log.error("command %s id=%s not run: the command log: %s", command, req.id, err)

    async def _run(self, req: Request, received: float, reply: Reply) -> None:
        known = await asyncio.to_thread(self.log.begin, req.id, req.command, received)
        if known is not None:
            self.counts["replayed"] += 1
            audit.info("command %s id=%s again: answered from the log", req.command, req.id)
            if known.result is not None:  # the first answer again, marked, to this request
                await self._finish(req.id, {**known.result["payload"], "replayed": True}, reply)
            return
        self.counts["accepted"] += 1
        audit.info(
            "command %s id=%s accepted (%s)", req.command, req.id,
            f"signed by {req.key}" if req.key else "unsigned",
        )  # fmt: skip
        run = self.executors.get(req.command)
        if run is None:
            out = result_payload(
                self.gateway, req.command, req.id, "failed", received=received,
                finished=time.time(), reason="not_implemented",
                detail=f"{req.command} is not implemented in this version",
            )  # fmt: skip
        elif self._running >= MAX_RUNNING:
            out = result_payload(
                self.gateway, req.command, req.id, "failed", received=received,
                finished=time.time(), reason="busy",
                detail=f"{MAX_RUNNING} commands are running; send it again later",
            )  # fmt: skip
        else:
            self._running += 1

            async def progress(output: Any) -> None:
                accepted = result_payload(
                    self.gateway, req.command, req.id, "accepted", received=received,
                    output=output,
                )  # fmt: skip
                # Best effort, not in the log: once the end is known it says more, and it
                # is what waits while the link is down.
                self._interim.append((accepted, reply))
                self.changed.set()

            current.set(Call(req.id, req.command, received, progress))
            try:
                output = await run(req.args)
            except CommandFailed as err:
                out = result_payload(
                    self.gateway, req.command, req.id, "failed", received=received,
                    finished=time.time(), reason=err.reason, detail=err.detail,
                    output=err.output,
                )  # fmt: skip
            except (LookupError, ValueError, TypeError, OSError) as err:
                out = self._failed(req, received, str(err))
            except Exception as err:  # a bug in one command stays with it
                log.exception("command %s id=%s: internal error", req.command, req.id)
                out = self._failed(req, received, f"internal error: {err}")
            else:
                out = result_payload(
                    self.gateway, req.command, req.id, "done", received=received,
                    finished=time.time(), output=output,
                )  # fmt: skip
            finally:
                self._running -= 1
        self.counts[out["status"]] += 1
        await self._finish(req.id, out, reply)

    def _failed(self, req: Request, received: float, why: str) -> dict[str, Any]:
        return result_payload(
            self.gateway, req.command, req.id, "failed", received=received,
            finished=time.time(), reason="failed", detail=why,
        )  # fmt: skip

    @staticmethod
    def _stored(out: dict[str, Any], reply: Reply) -> dict[str, Any]:
        return {
            "payload": out,
            "reply_topic": reply.topic,
            "correlation": (
                None if reply.correlation is None else base64.b64encode(reply.correlation).decode()
            ),
        }

    async def _finish(self, request_id: str, out: dict[str, Any], reply: Reply) -> None:
        await asyncio.to_thread(
            self.log.finish,
            request_id,
            self._stored(out, reply),
            command=out["command"],
            received=out["received"],
        )
        self.changed.set()

    # ---- out (the uplink's command lane) ------------------------------------------------

    async def pending(self, limit: int = 50) -> list[tuple[str, dict[str, Any], Reply]]:
        """Results to send: (request id, payload, reply); the id is "" for an ``accepted``
        notice, sent once and not recorded."""
        if not self._opened:
            return []
        out = [("", payload, reply) for payload, reply in self._interim]
        self._interim.clear()
        rows = await asyncio.to_thread(self.log.pending, limit)
        return out + [(str(row["payload"]["id"]), row["payload"], _reply(row)) for row in rows]

    async def sent(self, request_ids: list[str]) -> None:
        await asyncio.to_thread(self.log.sent, [i for i in request_ids if i])

    def health(self) -> dict[str, Any]:
        """The health message's ``commands`` (tepi.gateway.health.CommandsHealth)."""
        c = self.counts
        return {
            "requests": {k: c[k] for k in ("accepted", "replayed", "done", "failed") if c[k]},
            "refused": {
                k.removeprefix("refused:"): n for k, n in c.items() if k.startswith("refused:")
            },
            "log_errors": c["log_errors"],
        }


def _reply(stored: dict[str, Any] | None) -> Reply:
    """Where a stored result goes (its request's MQTT 5 response topic and correlation)."""
    if not stored:
        return Reply()
    corr = stored.get("correlation")
    return Reply(stored.get("reply_topic"), None if corr is None else base64.b64decode(corr))
