"""What the web console may change in the agent (docs/dashboard.md): the config and alarms.

Nothing here has a way of its own. The config goes through the remote operations' path
(`tepi.gateway.configpush`): checked as ``tepi check`` checks a file, applied on trial and
kept only once the uplink and the devices that worked are confirmed, else rolled back by
itself; the request's id names the console's user (``dashboard:ana:1f3c9a2e``), so the
``tepi.audit`` line and the config's history say who. Alarms are acknowledged through the
alarm hub, as ``tepi alarms ack`` does.

The editor shows the running config redacted (`tepi.gateway.logring.redact`): a line left
as shown, ``***`` and all, gets its secret back before the check (:func:`unredact`), so a
technician can change a poll interval without retyping the broker's password.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from tepi.gateway.logring import redact

if TYPE_CHECKING:
    from tepi.gateway.runtime import Agent

__all__ = ["ConsoleActions", "unredact"]

audit = logging.getLogger("tepi.audit")


def unredact(edited: str, original: str) -> str:
    """``edited`` with each line that is still exactly a redacted line of ``original`` put
    back as it was (a line that two different secrets redact alike stays as it is)."""
    back: dict[str, str | None] = {}
    for line in original.splitlines():
        shown = redact(line)
        if shown != line:
            back[shown] = line if back.get(shown, line) == line else None
    lines = [back.get(x) or x for x in edited.splitlines()]
    return "\n".join(lines) + ("\n" if edited.endswith("\n") else "")


class ConsoleActions:
    """The console's config and alarm actions on one agent; ``user`` is the console's."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @property
    def can_apply(self) -> bool:
        """False when the agent was started without a config file (nothing to apply to)."""
        return self.agent.config_push is not None

    @property
    def confirm_timeout(self) -> float:
        return float(self.agent.cfg.commands.confirm_timeout)

    def device(self, device_id: str) -> Any:
        """The running config of device ``device_id`` (its driver's model); None if none."""
        return next((d for d in self.agent.cfg.devices if d.id == device_id), None)

    async def config(self) -> dict[str, Any]:
        """The running config redacted, its version and its recent history (``config.get``)."""
        push = self.agent.config_push
        if push is None:
            return {"version": None, "config": "", "history": [], "trial": None, "file": None}
        out = await push.get({})
        out["file"] = str(self.agent.config_path)
        return out

    async def _text(self, edited: str) -> str:
        path = self.agent.config_path
        assert path is not None
        return unredact(edited, await asyncio.to_thread(path.read_text, encoding="utf-8"))

    async def check(self, edited: str) -> list[str]:
        """Every problem of the edited config as ``tepi check`` words them (the file named as
        the running one, which the editor shows); empty when it may be applied."""
        push = self.agent.config_push
        assert push is not None
        text = await self._text(edited)
        return await asyncio.to_thread(push.check, text, str(self.agent.config_path))

    async def apply(self, edited: str, user: str) -> dict[str, Any]:
        """Check, then apply on trial for ``user``: the status API's answer (``status``
        ``done`` with the version; ``failed`` with ``reason`` ``config_refused`` and the
        errors, nothing changed; ``rolled_back``; ``conflict`` while another is on trial)."""
        errors = await self.check(edited)
        if errors:
            audit.warning(
                "dashboard: %s's config apply refused: %d problem(s), nothing changed",
                user, len(errors),
            )  # fmt: skip
            return {"status": "failed", "reason": "config_refused", "output": {"errors": errors}}
        text = await self._text(edited)
        return await self.agent.config_command(
            "apply", {"config": text}, f"dashboard:{user}", "the web console"
        )

    async def rollback(self, to: str, user: str) -> dict[str, Any]:
        """Back to version ``to`` (``v3``, ``base``) for ``user``, on trial: the status API's
        answer, as :meth:`apply` gives it."""
        return await self.agent.config_command(
            "rollback", {"to": to}, f"dashboard:{user}", "the web console"
        )

    async def alarms(self) -> dict[str, Any] | None:
        """The alarms as ``tepi alarms`` lists them; None without rules."""
        try:
            return await self.agent.alarms_status()
        except LookupError:
            return None

    async def ack(self, rule: str, user: str) -> bool:
        """Acknowledge ``rule``'s alarm for ``user``; False when it was not firing or already
        acknowledged. LookupError: no such alarm."""
        audit.info("dashboard: %s acknowledges the alarm of rule %s", user, rule)
        return await self.agent.acknowledge(rule, f"dashboard:{user}")
