"""The privileged half of an agent update (docs/update.md): ``tepi-switch``, run as root by
``tepi-update.service`` when ``tepi-update.path`` sees ``/var/lib/tepi/update/request.json``;
runnable by hand and in a test harness (``--prefix``, ``--restart``).

What it does with a request the agent wrote (:mod:`tepi.gateway.update`)::

    read request.json (small, parsed, every field checked: it comes from the agent)
    copy the staged bundle into its own directory (root, 0700) and check the copy: sha256,
        MANIFEST signature with /etc/tepi/bundle-signing.pub, every file against MANIFEST
    install.sh --bundle COPY --key KEY --no-start    beside the running venv; switches
    write trial.json, restart the agent               (systemctl restart tepi.service)
    wait up to confirm_timeout for confirmed.json with the trial's id
    confirmed: done.  Not started, or not confirmed: switch /opt/tepi/venv back to the
        previous venv, put the previous unit files back, restart, and record why

Its own state (``/var/lib/tepi-update/state.json``, root's) says which trial runs. If this
process dies during a trial (a power cut, a kill), the request file is still there, so the
path unit starts it again at the next boot: it finds the trial in its state, counts the
start, and goes back unless the new version had confirmed (the boot counter of A/B updates).

What the agent cannot make it do: it never runs anything from the agent's directory, never
follows a link there (every file is opened relative to a directory descriptor with
O_NOFOLLOW: :class:`tepi.gateway.switchfiles.AgentDir`), installs only a bundle whose
signature verifies with root's key (checked here and again by install.sh), and switches only
between venvs it recorded itself.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepi.gateway.bundle import BundleError, BundleInfo, verify
from tepi.gateway.switchfiles import (
    BUNDLE_NAME,
    CONFIRMED,
    REQUEST,
    STATUS,
    TRIAL,
    UPDATE_DIR,
    AgentDir,
    Request,
    SwitchError,
    parse_request,
    venv_version,
    write_json_durably,
)

__all__ = ["Request", "SwitchError", "Switcher", "main", "parse_request"]

MAX_BUNDLE = 4 * 1024 * 1024 * 1024

log = logging.getLogger("tepi.switch")

UNITS = ("tepi.service", "tepi-update.service", "tepi-update.path")
SYSTEMCTL = "/usr/bin/systemctl"  # Debian 12's (usrmerge): no PATH lookup as root
MAX_STARTS = 1  # starts of a new version without a confirmation before it is reverted


@dataclass
class Paths:
    data_dir: Path
    state_dir: Path
    opt: Path
    key: Path
    installer: Path
    units: Path  # /etc/systemd/system
    prefix: Path | None


class Switcher:
    """One run of ``tepi-switch`` (the module docstring)."""

    def __init__(
        self,
        paths: Paths,
        *,
        restart: list[str] | None,
        poll: float = 0.25,
        max_bytes: int = MAX_BUNDLE,
    ) -> None:
        self.p = paths
        self.restart_cmd = restart  # None: systemd (reset-failed, restart tepi.service)
        self.poll = poll
        self.max_bytes = max_bytes
        self.state_file = paths.state_dir / "state.json"
        self.copy = paths.state_dir / "bundle.tar.gz"

    # ---- state --------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_bytes())
        except FileNotFoundError:
            return {"phase": "idle"}
        except (OSError, ValueError) as err:
            log.error("state file %s unreadable (%s): starting from idle", self.state_file, err)
            return {"phase": "idle"}
        return data if isinstance(data, dict) else {"phase": "idle"}

    def _save(self, state: dict[str, Any]) -> None:
        write_json_durably(self.state_file, state)

    def _status(self, d: AgentDir, versions: dict[str, Any], outcome: str, **extra: Any) -> None:
        """status.json for the agent (health's previous_version) and for people."""
        out = {
            "state": outcome,
            "running": versions.get("current"),
            "previous": versions.get("previous"),
            "ts": round(time.time(), 3),
            **extra,
        }
        d.write_json(STATUS, out)

    # ---- the run ------------------------------------------------------------------------

    def run(self) -> int:
        self.p.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.p.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another tepi-switch runs: nothing to do")
                return 0
            try:
                d = AgentDir(self.p.data_dir / UPDATE_DIR)
            except FileNotFoundError:
                log.info("no %s: nothing requested", self.p.data_dir / UPDATE_DIR)
                return 0
            try:
                self._recover(d)
                self._handle(d)
            finally:
                d.close()
        finally:
            os.close(lock)
        return 0

    def _recover(self, d: AgentDir) -> None:
        """A trial (or an install) that a previous run did not finish: the process died."""
        state = self._state()
        phase = state.get("phase")
        if phase not in {"installing", "trial"}:
            return
        state["starts"] = int(state.get("starts", 0)) + 1
        self._save(state)
        confirmed = d.read_json(CONFIRMED)
        if phase == "trial" and confirmed is not None and confirmed.get("id") == state.get("id"):
            log.info("tepi %s had confirmed before the switcher stopped", state.get("version"))
            self._confirmed(d, state, {})
            self._done(d, None, state)
            return
        if phase == "trial" and state["starts"] <= MAX_STARTS:
            return  # not reached with MAX_STARTS = 1: kept for a longer boot counter
        why = (
            f"the trial of tepi {state.get('version')} was cut short (power cut, crash or "
            f"kill) before it confirmed: start {state['starts']} of at most {MAX_STARTS}"
        )
        if phase == "installing":
            why = f"the install of tepi {state.get('version')} was cut short"
        self._rollback(d, state, why, {})
        self._done(d, None, state)

    def _handle(self, d: AgentDir) -> None:
        raw = d.read(REQUEST)
        if raw is None:
            return
        state = self._state()
        try:
            req = parse_request(raw)
        except SwitchError as err:
            log.error("refused: %s", err)
            self._status(d, state, "refused", tried=None, reason=str(err))
            d.remove(REQUEST)
            return
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            self._take(d, req)
            info = self._verify(req)
        except (SwitchError, BundleError, OSError) as err:
            log.error("refused tepi %s: %s", req.version, err)
            self._status(d, state, "refused", tried=req.version, id=req.id, reason=str(err))
            self._done(d, req)
            return
        timings["verify_s"] = round(time.monotonic() - t0, 3)
        log.info("tepi %s verified (%d files): installing", req.version, info.files)
        link = self.p.opt / "venv"
        prev = str(link.readlink()) if link.is_symlink() else None
        if prev is None or venv_version(prev) is None or not (self.p.opt / prev).is_dir():
            self._status(
                d, state, "refused", tried=req.version, id=req.id,
                reason=f"{link} is not a link to an installed venv-VERSION-TIME: install by hand",
            )  # fmt: skip
            self._done(d, req)
            return
        prev_version = venv_version(prev)
        if state.get("current") != prev_version:  # installed by hand since: unknown history
            state.update(current=prev_version, previous=None)
        state.update(
            phase="installing", id=req.id, version=req.version, bundle=req.bundle, prev_venv=prev,
            prev_version=prev_version, starts=0, new_venv=None,
        )  # fmt: skip
        self._save_units()
        self._save(state)
        t1 = time.monotonic()
        res = self._run_installer()
        timings["install_s"] = round(time.monotonic() - t1, 3)
        new = str(link.readlink()) if link.is_symlink() else None
        if res.returncode != 0 or new is None or new == prev or venv_version(new) is None:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            why = f"install.sh failed (exit {res.returncode}): {' / '.join(tail)}"
            log.error("tepi %s not installed: %s", req.version, why)
            if new != prev:
                self._switch_to(prev)
            state.update(phase="idle")
            self._save(state)
            self._status(d, state, "failed", tried=req.version, id=req.id, reason=why)
            self._done(d, req)
            return
        deadline = time.time() + req.confirm_timeout
        state.update(phase="trial", new_venv=new, starts=1, deadline=deadline)
        self._save(state)
        d.remove(CONFIRMED)
        d.write_json(
            TRIAL,
            {
                "id": req.id, "version": req.version, "previous_version": prev_version,
                "confirm_timeout": req.confirm_timeout, "deadline": round(deadline, 3),
                "devices": req.devices,
            },
        )  # fmt: skip
        self._status(
            d, {"current": req.version, "previous": prev_version}, "trial",
            tried=req.version, id=req.id, reason=None,
        )  # fmt: skip
        log.info("switched to %s: restarting the agent for its trial", new)
        t2 = time.monotonic()
        ok, why = self._restart()
        timings["restart_s"] = round(time.monotonic() - t2, 3)
        if not ok:
            self._rollback(d, state, f"tepi {req.version} did not start: {why}", timings)
            self._done(d, req)
            return
        t3 = time.monotonic()
        limit = t3 + req.confirm_timeout
        while time.monotonic() < limit:
            confirmed = d.read_json(CONFIRMED)
            if confirmed is not None and confirmed.get("id") == req.id:
                timings["confirm_s"] = round(time.monotonic() - t3, 3)
                self._confirmed(d, state, timings)
                self._done(d, req)
                return
            time.sleep(self.poll)
        self._rollback(
            d, state,
            f"tepi {req.version} did not confirm within {req.confirm_timeout:.0f} s (the uplink "
            "not connected, or a device that worked before does not)",
            timings,
        )  # fmt: skip
        self._done(d, req)

    # ---- steps --------------------------------------------------------------------------

    def _verify(self, req: Request) -> BundleInfo:
        info = verify(self.copy, self._key(), max_unpacked=4 * self.max_bytes)
        if info.version != req.version:
            raise SwitchError(f"the bundle is {info.version}, the request says {req.version}")
        return info

    def _key(self) -> bytes:
        try:
            return self.p.key.read_bytes()[:65536]
        except OSError as err:
            raise SwitchError(f"no bundle signing key {self.p.key}: {err.strerror}") from None

    def _take(self, d: AgentDir, req: Request) -> None:
        """The staged bundle copied into root's own directory, its sha256 checked."""
        try:
            fd = d.open_read(req.bundle)
        except FileNotFoundError:
            raise SwitchError(f"no staged bundle {req.bundle}") from None
        except OSError as err:  # ELOOP: a link
            raise SwitchError(f"cannot open the staged bundle: {err.strerror}") from None
        digest = hashlib.sha256()
        part = self.copy.with_suffix(".part")
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SwitchError(f"{req.bundle} is not a regular file")
            if st.st_size > self.max_bytes:
                raise SwitchError(f"{req.bundle} is larger than {self.max_bytes} bytes")
            size = 0
            with part.open("wb") as dst:
                while chunk := src.read(1024 * 1024):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise SwitchError(f"{req.bundle} grew past {self.max_bytes} bytes")
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        part.replace(self.copy)
        if digest.hexdigest() != req.sha256:
            raise SwitchError(f"the staged bundle's sha256 is not {req.sha256}")

    def _run_installer(self) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.p.installer), "--bundle", str(self.copy), "--key", str(self.p.key)]
        cmd.append("--no-start")
        if self.p.prefix is not None:
            cmd += ["--prefix", str(self.p.prefix)]
        log.info("running %s", " ".join(cmd))
        try:
            return subprocess.run(  # noqa: S603 (root's own installer, an argument list)
                cmd, capture_output=True, text=True, timeout=1800, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return subprocess.CompletedProcess(cmd, 127, "", str(err))

    def _restart(self) -> tuple[bool, str]:
        """Restart the agent; (started, why not)."""
        cmds = (
            [
                ["systemctl", "reset-failed", "tepi.service"],
                ["systemctl", "restart", "tepi.service"],
            ]
            if self.restart_cmd is None
            else [self.restart_cmd]
        )
        res: subprocess.CompletedProcess[str] | None = None
        for cmd in cmds:
            try:
                res = subprocess.run(  # noqa: S603 (a fixed command or the harness's)
                    cmd, capture_output=True, text=True, timeout=300, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as err:
                return False, f"{cmd[0]}: {err}"
        assert res is not None
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-2:]
            return False, f"restart exit {res.returncode}: {' / '.join(tail)}"[:500]
        return True, ""

    def _switch_to(self, venv: str) -> None:
        tmp = self.p.opt / f".venv-switch-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(venv)
        tmp.replace(self.p.opt / "venv")
        dfd = os.open(self.p.opt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _save_units(self) -> None:
        """The unit files before the install (install.sh replaces them with the bundle's)."""
        keep = self.p.state_dir / "units"
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(mode=0o700)
        for name in UNITS:
            src = self.p.units / name
            if src.is_file() and not src.is_symlink():
                shutil.copy2(src, keep / name)

    def _restore_units(self) -> None:
        keep = self.p.state_dir / "units"
        for name in UNITS:
            if (keep / name).is_file():
                shutil.copy2(keep / name, self.p.units / name)
        if self.restart_cmd is None:
            subprocess.run(  # noqa: S603 (fixed arguments)
                [SYSTEMCTL, "daemon-reload"], capture_output=True, timeout=120, check=False
            )

    def _confirmed(self, d: AgentDir, state: dict[str, Any], timings: dict[str, float]) -> None:
        log.info("tepi %s confirmed: the update is done", state.get("version"))
        state.update(phase="idle", current=state.get("version"), previous=state.get("prev_version"))
        self._save(state)
        d.remove(TRIAL)
        self._status(
            d, state, "confirmed", tried=state.get("version"), id=state.get("id"),
            reason=None, timings=timings,
        )  # fmt: skip

    def _rollback(
        self, d: AgentDir, state: dict[str, Any], why: str, timings: dict[str, float]
    ) -> None:
        log.error("rolling back to %s: %s", state.get("prev_venv"), why)
        t0 = time.monotonic()
        prev = state.get("prev_venv")
        if not isinstance(prev, str) or venv_version(prev) is None:
            raise SwitchError(f"internal: no previous venv recorded ({prev!r})")
        self._switch_to(prev)
        self._restore_units()
        d.remove(TRIAL)
        state.update(phase="idle")
        state.setdefault("current", state.get("prev_version"))
        self._save(state)
        ids = {"tried": state.get("version"), "id": state.get("id")}
        # Written before the restart too: the previous version reads it when it starts.
        self._status(d, state, "rolled_back", reason=why, timings=timings, **ids)
        ok, restart_why = self._restart()
        timings["rollback_s"] = round(time.monotonic() - t0, 3)
        if not ok:
            log.error("the previous version did not start either: %s", restart_why)
            why += f"; the previous version did not start either: {restart_why}"
        self._status(d, state, "rolled_back", reason=why, timings=timings, **ids)

    def _done(self, d: AgentDir, req: Request | None, state: dict[str, Any] | None = None) -> None:
        """The request is answered: its files go (a newer request written meanwhile stays,
        and the path unit starts this again for it)."""
        rid = req.id if req is not None else (state or {}).get("id")
        current = d.read(REQUEST)
        if current is not None:
            try:
                if parse_request(current).id == rid:
                    d.remove(REQUEST)
            except SwitchError:
                d.remove(REQUEST)
        bundle = req.bundle if req is not None else (state or {}).get("bundle")
        if isinstance(bundle, str) and BUNDLE_NAME.match(bundle):
            d.remove(bundle)
        with contextlib.suppress(FileNotFoundError):
            self.copy.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tepi-switch",
        description="Install a staged, signed tepi bundle, switch to it, and go back if the "
        "new version does not confirm (run as root by tepi-update.service; docs/update.md).",
    )
    ap.add_argument("--prefix", type=Path, help="a scratch root (tests): every path under it")
    ap.add_argument("--data-dir", type=Path, help="the agent's data_dir (/var/lib/tepi)")
    ap.add_argument(
        "--restart", help="the agent's restart command, a JSON list (default: systemctl)"
    )
    ap.add_argument("--poll", type=float, default=0.25, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    root = args.prefix.resolve() if args.prefix else Path("/")
    restart: list[str] | None = None
    if args.restart is not None:
        restart = json.loads(args.restart)
        if (
            not isinstance(restart, list)
            or not restart
            or not all(isinstance(a, str) for a in restart)
        ):
            ap.error("--restart is a JSON list of strings")
    elif args.prefix is not None:
        ap.error("--prefix needs --restart: there is no systemd in a scratch root")
    if args.prefix is None and os.geteuid() != 0:
        print("tepi-switch: run it as root (tepi-update.service does)", file=sys.stderr)
        return 2
    paths = Paths(
        data_dir=args.data_dir or root / "var/lib/tepi",
        state_dir=root / "var/lib/tepi-update",
        opt=root / "opt/tepi",
        key=root / "etc/tepi/bundle-signing.pub",
        installer=root / "opt/tepi/share/install.sh",
        units=root / "etc/systemd/system",
        prefix=args.prefix.resolve() if args.prefix else None,
    )
    try:
        return Switcher(paths, restart=restart, poll=args.poll).run()
    except (OSError, SwitchError) as err:
        log.error("failed: %s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
