"""Config pushed to the box (the IOC's ``config.apply``, a technician's ``tepi config apply``),
applied on trial and kept only once the box is confirmed healthy (docs/operations.md, "Remote
operations").

The config file the service is started with (``--config``, /etc/tepi/tepi.yaml) is the
**base**: root's, read-only to the agent. A pushed config is kept in the agent's own data
directory, ``{data_dir}/config/``:

- ``vN.yaml``: each version pushed, the last :data:`KEEP` kept;
- ``state.json``: which version is active (None: the base), the base's sha256 when it was set,
  the trial running, and the history.

Which file the agent runs (:meth:`ConfigStore.resolve`, at the start and at every reload):
the active version, unless the base file changed since that version was pushed (a technician
edited it on site: the edit on the box wins, and the IOC sees it in ``config.get``), or a
trial was running when the agent stopped (a crash, a power cut or a kill -9 during the trial:
it goes back to the version before, like an A/B boot counter that was never confirmed).

A push (:meth:`ConfigPush.apply`):

1. the new text is validated exactly as ``tepi check`` does; a refusal lists every error with
   its line, and nothing changes; the gateway's id and data_dir cannot be pushed;
2. it is written (temp file, fsync, rename), and ``state.json`` names it active with a trial
   (written the same way) before anything is applied: from here a crash goes back;
3. it is applied through the agent's reload path (only what changed restarts);
4. within ``confirm_timeout`` the uplink must be connected (after a new connection if its
   settings changed) and every device that was ``ok`` before must have polled well since,
   unless the push removed it. Then the trial ends and the version stays;
5. otherwise the previous config is applied again (the same way) and the result says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tepi.buffer.db import write_atomic
from tepi.core.errors import ConfigError
from tepi.gateway.logring import redact
from tepi.gateway.remote import CommandFailed, current
from tepi.gateway.update import healthy_within

if TYPE_CHECKING:
    from tepi.gateway.config import Config
    from tepi.gateway.runtime import Agent

__all__ = ["KEEP", "ConfigPush", "ConfigStore", "Resolved", "merge_patch", "start_config"]

log = logging.getLogger(__name__)

KEEP = 10  # pushed versions kept on the box
HISTORY = 50  # entries of state.json's history
MAX_CONFIRM_S = 3600.0
BASE = "base"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a mapping merges key by key, ``null`` removes a key, any
    other value (a list too) replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(frozen=True, slots=True)
class Resolved:
    """The config file to run, and what it is."""

    path: Path
    version: str  # vN, or "base"
    sha256: str
    notes: list[str]  # what resolve() changed and why, for the log
    settled: dict[str, dict[str, Any]]  # results of trials a stop cut short: request id -> out


class ConfigStore:
    """``{data_dir}/config/``: the versions and ``state.json`` (synchronous file work)."""

    def __init__(self, base: Path, data_dir: Path, *, sync: bool = True) -> None:
        self.base = base
        self.dir = data_dir / "config"
        self.state_path = self.dir / "state.json"
        self.sync = sync

    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as err:
            log.error("config: %s unreadable (%s): running the base config", self.state_path, err)
            state = {}
        if not isinstance(state, dict):
            state = {}
        state.setdefault("active", None)
        state.setdefault("base_sha256", None)
        state.setdefault("trial", None)
        state.setdefault("history", [])
        state.setdefault("next", 1)
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state["history"] = state["history"][-HISTORY:]
        write_atomic(self.state_path, json.dumps(state, indent=1).encode(), sync=self.sync)

    def path(self, version: str) -> Path:
        return self.base if version == BASE else self.dir / f"{version}.yaml"

    def text(self, version: str) -> str:
        return self.path(version).read_text(encoding="utf-8")

    def write_version(self, state: dict[str, Any], text: str) -> str:
        """Store ``text`` as a new version; its name. Old versions beyond KEEP go (never the
        active one nor the trial's previous)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        version = f"v{state['next']}"
        state["next"] += 1
        write_atomic(self.path(version), text.encode(), sync=self.sync)
        keep = {state["active"], version}
        if state["trial"]:
            keep.add(state["trial"].get("previous"))
        versions = sorted(
            (p for p in self.dir.glob("v*.yaml") if p.stem[1:].isdigit()),
            key=lambda p: int(p.stem[1:]),
        )
        for old in versions[:-KEEP]:
            if old.stem not in keep:
                old.unlink(missing_ok=True)
        return version

    def resolve(self, *, start: bool) -> Resolved:
        """The config to run now (see the module docstring); ``state.json`` is brought in
        line with it. ``start``: the agent is starting, so a trial found is one a stop cut
        short (at a reload, it is this agent's own, still running)."""
        if not self.state_path.exists():
            text = self.base.read_text(encoding="utf-8")  # OSError: the caller's to report
            return Resolved(self.base, BASE, sha256(text), [], {})
        state = self.state()
        notes: list[str] = []
        settled: dict[str, dict[str, Any]] = {}
        changed = False
        trial = state["trial"]
        if trial and start:
            previous = trial.get("previous")
            notes.append(
                f"config: the agent stopped during the trial of {trial.get('version')}: back "
                f"to {previous or BASE}"
            )
            state["active"] = previous
            state["trial"] = None
            state["history"].append(
                {"version": trial.get("version"), "ts": round(time.time(), 3),
                 "by": trial.get("by"), "state": "rolled_back", "why": "stopped during the trial"}
            )  # fmt: skip
            if trial.get("request"):
                settled[trial["request"]] = {
                    "reason": "rolled_back",
                    "detail": "the gateway stopped during the trial (a crash, a power cut or a "
                    f"kill); back to {previous or BASE} at the next start",
                    "output": {"version": trial.get("version"), "back_to": previous or BASE},
                    "command": trial.get("command", "config.apply"),
                    "received": trial.get("received", time.time()),
                }
            changed = True
        base_text = self.base.read_text(encoding="utf-8")
        base_sha = sha256(base_text)
        if state["active"] and state["base_sha256"] != base_sha and not state["trial"]:
            notes.append(
                f"config: {self.base} changed since {state['active']} was pushed: running it "
                "(an edit on the box wins over the pushed config)"
            )
            state["history"].append(
                {"version": BASE, "ts": round(time.time(), 3), "by": "local edit",
                 "state": "active", "why": f"{self.base} changed"}
            )  # fmt: skip
            state["active"] = None
            changed = True
        if state["base_sha256"] != base_sha and not state["trial"]:
            state["base_sha256"] = base_sha
            changed = True
        version = state["active"] or BASE
        path = self.path(version)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            notes.append(f"config: {path} unreadable ({err}): running the base config")
            state["active"], version, path, text = None, BASE, self.base, base_text
            changed = True
        if changed:
            self.save(state)
        return Resolved(path, version, sha256(text), notes, settled)

    def fall_back(self, why: str) -> None:
        """The active version cannot be used (it no longer validates): the base again."""
        state = self.state()
        state["history"].append(
            {"version": state["active"], "ts": round(time.time(), 3), "by": "start",
             "state": "rolled_back", "why": why}
        )  # fmt: skip
        state["active"] = None
        state["trial"] = None
        self.save(state)


def start_config(cfg: Config, base: Path) -> tuple[Config, Resolved]:
    """At the agent's start, after ``base`` validated as ``cfg``: the config to run (a
    pushed version, or the base again after a trial a stop cut short) and what it is."""
    from tepi.gateway.configload import load_config

    store = ConfigStore(base, cfg.gateway.data_dir, sync=cfg.buffer.sync == "full")
    resolved = store.resolve(start=True)
    for note in resolved.notes:
        log.warning("%s", note)
    if resolved.version == BASE:
        return cfg, resolved
    why = ""
    try:
        pushed = load_config(resolved.path)
    except ConfigError as err:
        why = f"{resolved.path} no longer validates: {err}"
    else:
        if (pushed.gateway.id, pushed.gateway.data_dir) != (cfg.gateway.id, cfg.gateway.data_dir):
            why = f"{resolved.path} names another gateway.id or data_dir than {base}"
    if why:
        log.error("config: %s; running the base config %s", why, base)
        store.fall_back(why)
        text = base.read_text(encoding="utf-8")
        return cfg, Resolved(base, BASE, sha256(text), resolved.notes, resolved.settled)
    log.warning("config: running %s, pushed (the base is %s)", resolved.version, base)
    return pushed, resolved


class ConfigPush:
    """``config.get`` / ``config.apply`` / ``config.rollback`` for one agent."""

    def __init__(self, agent: Agent, store: ConfigStore) -> None:
        self.agent = agent
        self.store = store
        self._trial = asyncio.Lock()  # one push at a time

    @property
    def on_trial(self) -> bool:
        return self._trial.locked()

    @property
    def confirm_timeout(self) -> float:
        return float(self.agent.cfg.commands.confirm_timeout)

    # ---- config.get ----------------------------------------------------------------------

    async def get(self, args: dict[str, Any]) -> dict[str, Any]:
        agent = self.agent
        state = await asyncio.to_thread(self.store.state)
        text = await asyncio.to_thread(agent.config_path.read_text) if agent.config_path else ""
        return {
            "version": agent.config_version,
            "sha256": sha256(text),
            "config": redact(text),
            "base": str(self.store.base),
            "trial": state["trial"],
            "history": state["history"][-10:],
            "kept": sorted(
                (p.stem for p in self.store.dir.glob("v*.yaml")), key=lambda v: int(v[1:])
            )
            if self.store.dir.is_dir()
            else [],
        }

    # ---- config.apply / config.rollback --------------------------------------------------

    async def apply(self, args: dict[str, Any]) -> dict[str, Any]:
        text = await self._new_text(args)
        timeout = self._timeout(args)
        if args.get("dry_run") is True:
            cfg = await asyncio.to_thread(self._validate, text)
            return {"valid": True, "devices": len(cfg.devices), "sha256": sha256(text)}
        return await self._push(text, timeout, what="config.apply")

    async def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        state = await asyncio.to_thread(self.store.state)
        to = args.get("to")
        if to is None:  # the version active before the current one
            current_version = self.agent.config_version
            earlier = [
                h["version"]
                for h in state["history"]
                if h.get("state") == "confirmed" and h["version"] != current_version
            ]
            to = earlier[-1] if earlier else BASE
        if not isinstance(to, str) or not (to == BASE or (to[:1] == "v" and to[1:].isdigit())):
            raise ValueError("args.to: a kept version (v3) or 'base'")
        try:
            text = await asyncio.to_thread(self.store.text, to)
        except OSError as err:
            raise LookupError(f"version {to} is not kept on the box: {err}") from err
        return await self._push(text, self._timeout(args), what="config.rollback", base=to == BASE)

    def _timeout(self, args: dict[str, Any]) -> float:
        value = args.get("confirm_timeout", self.confirm_timeout)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("args.confirm_timeout: seconds")
        if not 1 <= value <= MAX_CONFIRM_S:
            raise ValueError(f"args.confirm_timeout: from 1 to {MAX_CONFIRM_S:g} s")
        return float(value)

    async def _new_text(self, args: dict[str, Any]) -> str:
        whole, patch = args.get("config"), args.get("patch")
        if (whole is None) == (patch is None):
            raise ValueError("args: give config (the whole YAML) or patch (a JSON merge patch)")
        if whole is not None:
            if not isinstance(whole, str):
                raise TypeError("args.config: the YAML text")
            return whole
        if not isinstance(patch, dict):
            raise TypeError("args.patch: an object (RFC 7386 merge patch of the config)")
        path = self.agent.config_path
        assert path is not None
        running = yaml.safe_load(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        return str(yaml.safe_dump(merge_patch(running, patch), sort_keys=False))

    def _validate(self, text: str) -> Config:
        from tepi.gateway.configload import parse_config

        call = current.get(None)
        name = f"config.apply:{call.id}" if call else "config.apply"
        try:
            cfg = parse_config(text, name)
        except ConfigError as err:
            errors = [str(i) for i in err.issues]
            raise CommandFailed(
                "config_refused",
                f"{len(errors)} problem{'s' if len(errors) != 1 else ''}; nothing changed",
                {"errors": errors[:100]},
            ) from None
        running = self.agent.cfg.gateway
        for key in ("id", "data_dir"):
            if getattr(cfg.gateway, key) != getattr(running, key):
                raise CommandFailed(
                    "config_refused",
                    f"gateway.{key} cannot be pushed (it is the box's identity and its data); "
                    "change it on the box",
                    {"errors": [f"{name}: gateway.{key}: differs from the running config"]},
                )
        return cfg

    def check(self, text: str, name: str) -> list[str]:
        """Every problem of ``text`` worded as ``tepi check`` words them, ``name`` standing for
        the file (the console's editor), then the identity a push cannot change; empty when it
        may be applied. Synchronous: run it in a thread."""
        from tepi.gateway.configload import parse_config

        try:
            cfg = parse_config(text, name)
        except ConfigError as err:
            return [str(i) for i in err.issues]
        running = self.agent.cfg.gateway
        return [
            f"{name}: gateway.{key}: differs from the running config: it is the box's identity "
            "and its data, and cannot be pushed (change it on the box)"
            for key in ("id", "data_dir")
            if getattr(cfg.gateway, key) != getattr(running, key)
        ]

    async def _push(
        self, text: str, limit: float, *, what: str, base: bool = False
    ) -> dict[str, Any]:
        if self._trial.locked():
            raise CommandFailed("conflict", "a config change is on trial; send it again later")
        async with self._trial:
            await asyncio.to_thread(self._validate, text)
            return await self._trial_of(text, limit, what=what, base=base)

    async def _trial_of(
        self, text: str, timeout_s: float, *, what: str, base: bool
    ) -> dict[str, Any]:
        timeout = timeout_s
        agent = self.agent
        call = current.get(None)
        request = call.id if call else None
        store = self.store
        state = await asyncio.to_thread(store.state)
        previous = state["active"]
        # The base as it is now: a later edit of it on the box wins over this push.
        base_text = await asyncio.to_thread(store.base.read_text, encoding="utf-8")
        state["base_sha256"] = sha256(base_text)
        if base:
            version = BASE
        else:
            version = await asyncio.to_thread(store.write_version, state, text)
        baseline = sorted(d for d, st in agent.devices.items() if st.state == "ok")
        uplink_before = agent.cfg.uplink
        connects_before = agent.uplink.stats.connects
        started, since = time.monotonic(), time.time()
        state["active"] = None if base else version
        state["trial"] = {
            "version": version, "previous": previous, "request": request, "command": what,
            "received": call.received if call else time.time(), "started": round(time.time(), 3),
            "timeout": timeout, "baseline": baseline, "by": request or "local",
        }  # fmt: skip
        await asyncio.to_thread(store.save, state)  # from here a crash goes back
        log.warning(
            "config: %s %s on trial (%s): confirmed within %.0f s or rolled back",
            what, version, request or "local", timeout,
        )  # fmt: skip
        if call is not None:
            await call.progress({"version": version, "sha256": sha256(text), "timeout": timeout})
        applied = await agent.reload()
        if not applied:
            errors = list(agent.reloads["errors"])
            await self._end(state, version, previous, "refused", errors[0] if errors else "")
            await agent.reload()  # the state names the previous again: keeps it in line
            raise CommandFailed(
                "config_refused", "the agent could not apply it; nothing changed",
                {"errors": errors, "version": version},
            )  # fmt: skip
        new_uplink = agent.cfg.uplink != uplink_before
        restarted = set(agent.reloads.get("restarted", ()))
        why = await self._wait_healthy(
            baseline, started + timeout, new_uplink, connects_before, restarted, since
        )
        took = round(time.monotonic() - started, 3)
        if why is None:
            await self._end(state, version, previous, "confirmed", "")
            log.warning("config: %s %s confirmed in %.1f s", what, version, took)
            return {
                "version": version,
                "sha256": sha256(text),
                "confirm_s": took,
                "restart_needed": agent.reloads["restart_needed"],
            }
        log.error("config: %s %s not confirmed: %s; rolling back", what, version, why)
        await self._end(state, version, previous, "rolled_back", why)
        back = time.monotonic()
        await agent.reload()
        recovered = await self._wait_healthy([], back + timeout, False, 0, set(), time.time())
        raise CommandFailed(
            "rolled_back",
            f"not confirmed within {timeout:g} s: {why}; back to {previous or BASE}",
            {
                "version": version,
                "back_to": previous or BASE,
                "trial_s": took,
                "recover_s": round(time.monotonic() - back, 3),
                "recovered": recovered is None,
            },
        )

    async def _end(
        self, state: dict[str, Any], version: str, previous: str | None, how: str, why: str
    ) -> None:
        trial = state["trial"] or {}
        if how != "confirmed":
            state["active"] = previous
        state["trial"] = None
        state["history"].append(
            {"version": version, "ts": round(time.time(), 3), "by": trial.get("by"),
             "state": how, "why": why}
        )  # fmt: skip
        await asyncio.to_thread(self.store.save, state)

    async def _wait_healthy(  # noqa: PLR0917 - the trial's baseline, as taken
        self,
        baseline: list[str],
        deadline: float,
        new_uplink: bool,
        connects: int,
        restarted: set[str],
        since: float,
    ) -> str | None:
        """None once the uplink is connected (a new connection if its settings changed) and
        every device of ``baseline`` still configured is ``ok`` (and has polled well since,
        if the change restarted it); else why not, at ``deadline`` (monotonic)."""
        agent = self.agent

        def connected() -> bool:
            up = agent.uplink.stats
            return up.connected and (not new_uplink or up.connects > connects)

        def states() -> dict[str, str]:
            out = {}
            for d, st in agent.devices.items():
                fresh = d not in restarted or (st.last_ok_ts or 0) >= since
                out[d] = "ok" if st.state == "ok" and fresh else (
                    f"{st.state}: {st.last_error or 'no good poll since the change'}"
                )  # fmt: skip
            return out

        return await healthy_within(
            max(0.0, deadline - time.monotonic()),
            connected,
            states,
            [d for d in baseline if d in agent.devices],  # not those the change removed
            every=0.2,
            link_error=lambda: agent.uplink.stats.last_error or "connecting",
        )
