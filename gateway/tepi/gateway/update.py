"""Agent updates, the agent's half (issue 19 point 4; docs/update.md).

The agent runs as user ``tepi`` and cannot install anything (the unit's ProtectSystem=strict):
it fetches and checks, and asks. The privileged half, :mod:`tepi.gateway.switcher` (root,
started by ``tepi-update.path``), checks again, installs, switches, restarts and waits for the
confirmation, or switches back.

:class:`Updater` is the ``update`` command: ``{"url": "https://…", "sha256": "…",
"version": "…"}``. It downloads the bundle over HTTPS (TLS verified, bounded in size and
time, retried by :data:`tepi.core.retry.UPDATE_DOWNLOAD`) into ``{data_dir}/update/``,
checks its sha256, the Ed25519 signature of its MANIFEST and every file against MANIFEST
(:func:`tepi.gateway.bundle.verify`), and only then stages it and writes the switch request
atomically. A bundle that fails a check is removed and the command fails with why.

:class:`UpdateTrial` is the new version's side of the trial: at start, if the switcher left
a trial for this version, it waits until the agent is healthy (``healthy``, given by the
agent) and writes the confirmation. Nothing written: the switcher goes back on its own.

The files of ``{data_dir}/update/`` (who writes them)::

    bundle-<sha256[:16]>.tar.gz   the staged bundle (agent)
    request.json                  the switch request (agent); the path unit watches it
    trial.json                    a trial is running: id, version, deadline (switcher)
    confirmed.json                the trial's id, confirmed by the new version (agent)
    status.json                   the last outcome, the running and previous versions (switcher)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tepi.buffer.db import write_atomic
from tepi.core import __version__
from tepi.core.retry import UPDATE_DOWNLOAD, Outage
from tepi.gateway.bundle import VERSION_RE, BundleError, verify
from tepi.gateway.config import UpdateSection
from tepi.gateway.remote import current
from tepi.gateway.switchfiles import CONFIRMED, REQUEST, STATUS, TRIAL, UPDATE_DIR, json_object
from tepi.gateway.updateparts import PART_SIZE, PartSink, Transfer

__all__ = [
    "CONFIRMED",
    "REQUEST",
    "STATUS",
    "TRIAL",
    "UPDATE_DIR",
    "UpdateRefused",
    "UpdateTrial",
    "Updater",
    "healthy_within",
    "read_json",
    "write_json",
]

log = logging.getLogger(__name__)

PART = "download.part"
MAX_JSON = 64 * 1024
RESERVE = 64 * 1024 * 1024  # free space left after the download (the buffer's, the logs')
PART_IDLE = 120.0  # seconds without a part (while linked) that abandon an MQTT transfer
_SHA = re.compile(r"^[0-9a-f]{64}$")


class UpdateRefused(ValueError):
    """The update is not staged; the message says why (a ``failed`` result)."""


class _Retry(Exception):
    """A download attempt that may work the next time (a 5xx, a cut connection)."""


def write_json(directory: Path, name: str, data: dict[str, Any]) -> None:
    """``directory/name`` replaced atomically and durably (temp file, fsync, rename, fsync of
    the directory): a crash leaves the old file or the new, never half of one. Mode 0644:
    the switcher (root) reads it, and people."""
    write_atomic(directory / name, json.dumps(data, sort_keys=True).encode(), mode=0o644)


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object, or None if there is none (or it is not one: never trusted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        log.warning("cannot read %s: %s", path, err)
        return None
    with os.fdopen(fd, "rb") as f:
        return json_object(f.read(MAX_JSON + 1))


def check_args(args: dict[str, Any]) -> tuple[str, str, str]:
    """The command's (url, sha256, version), or UpdateRefused."""
    url = args.get("url")
    if not isinstance(url, str) or len(url) > 2048:
        raise UpdateRefused("args.url is required: the bundle's https URL")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UpdateRefused("args.url must be https://HOST/…: a bundle is never fetched in clear")
    return (url, *_digest_version(args))


def check_mqtt_args(args: dict[str, Any], max_bytes: int) -> tuple[int, str, str]:
    """An MQTT transfer's (size, sha256, version), or UpdateRefused: before anything is
    written, a size over ``max_bytes`` is refused."""
    size = args.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise UpdateRefused("args.size is required with transfer=mqtt: the bundle's bytes")
    if size > max_bytes:
        raise UpdateRefused(f"the bundle is {size} bytes; commands.update.max_bytes is {max_bytes}")
    return (size, *_digest_version(args))


def _digest_version(args: dict[str, Any]) -> tuple[str, str]:
    digest, version = args.get("sha256"), args.get("version")
    if not isinstance(digest, str) or not _SHA.match(digest.lower()):
        raise UpdateRefused("args.sha256 is required: the bundle's sha256, 64 hex digits")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise UpdateRefused("args.version is required: the bundle's version, e.g. 0.2.0")
    return digest.lower(), version


def _where(url: str) -> str:
    """The URL without its query, fragment or user info (which may hold a token)."""
    p = urlsplit(url)
    return f"https://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}"


class Updater:
    """The ``update`` command (the module docstring)."""

    def __init__(
        self,
        cfg: UpdateSection,
        data_dir: Path,
        *,
        working: Callable[[], list[str]] = list,
        parts: PartSink | None = None,
        part_idle: float = PART_IDLE,
    ) -> None:
        self.cfg = cfg
        self.dir = data_dir / UPDATE_DIR
        self.working = working  # the devices that work now: they must still work after
        # Where MQTT parts come in (the uplink delivers them); None: transfer=mqtt refused.
        self.parts = parts
        self.part_idle = part_idle
        self._lock = asyncio.Lock()

    async def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("transfer", "https") == "mqtt":
            size, digest, version = check_mqtt_args(args, self.cfg.max_bytes)
            sink = self.parts
            if sink is None:
                raise UpdateRefused("this agent takes no bundle over MQTT (no uplink)")
            call = current.get(None)
            request_id = call.id if call is not None else f"local-{secrets.token_hex(4)}"
            fetch = functools.partial(self._receive, sink, request_id, size)
            where = f"MQTT ({sink.topic}/{request_id})"
        elif "transfer" in args and args["transfer"] != "https":
            raise UpdateRefused("args.transfer is https (the default, with url) or mqtt")
        else:
            url, digest, version = check_args(args)
            fetch, where = functools.partial(self._download, url), _where(url)
        if self._lock.locked():
            raise UpdateRefused("an update is being downloaded; try again when it is done")
        async with self._lock:
            return await self._stage(fetch, where, digest, version)

    async def _stage(
        self,
        fetch: Callable[[Path], Awaitable[tuple[int, str]]],
        where: str,
        digest: str,
        version: str,
    ) -> dict[str, Any]:
        await asyncio.to_thread(self.dir.mkdir, mode=0o750, parents=True, exist_ok=True)
        if (self.dir / TRIAL).exists():
            raise UpdateRefused("an update is in its trial; send it again once it is decided")
        pending = read_json(self.dir / REQUEST)
        if pending is not None:
            raise UpdateRefused(
                f"a switch to {pending.get('version')!s:.40} is already requested and not yet done"
            )
        key = await asyncio.to_thread(self._public_key)
        part = self.dir / PART
        t0 = time.monotonic()
        try:
            size, got = await fetch(part)
            t1 = time.monotonic()
            if got != digest:
                raise UpdateRefused(f"the download's sha256 is {got}, not the {digest} asked for")
            try:
                info = await asyncio.to_thread(
                    verify, part, key, max_unpacked=4 * self.cfg.max_bytes
                )
            except BundleError as err:
                raise UpdateRefused(f"refusing the bundle: {err}") from None
            if info.version != version:
                raise UpdateRefused(
                    f"the bundle is version {info.version}, not the {version} asked for"
                )
            t2 = time.monotonic()
            name = f"bundle-{digest[:16]}.tar.gz"
            await asyncio.to_thread(self._commit, part, name, digest, version)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(part.unlink)
        log.info(
            "update: staged tepi %s (%d bytes, %d files verified) from %s; switch requested",
            version, size, info.files, where,
        )  # fmt: skip
        return {
            "state": "staged",
            "version": version,
            "running": __version__,
            "bundle": name,
            "sha256": digest,
            "bytes": size,
            "files_verified": info.files,
            "download_ms": round((t1 - t0) * 1000, 1),
            "verify_ms": round((t2 - t1) * 1000, 1),
            "confirm_timeout": self.cfg.confirm_timeout,
            "next": "the switcher installs it, restarts the agent and waits for it to "
            "confirm; health's version and previous_version tell the outcome",
        }

    async def _receive(
        self, sink: PartSink, request_id: str, size: int, dest: Path
    ) -> tuple[int, str]:
        """(bytes, sha256) of a bundle received in parts over MQTT into ``dest``
        (tepi.gateway.updateparts): the uplink subscribes, the IOC is told where to send,
        and every part must come, with no pause over ``part_idle`` while the uplink is
        connected and within ``download_timeout`` in all."""
        need = size + RESERVE
        free = (await asyncio.to_thread(shutil.disk_usage, self.dir)).free
        if free < need:
            raise UpdateRefused(
                f"{free} bytes free in {self.dir}; the bundle needs {need} (with a "
                f"reserve of {RESERVE})"
            )
        transfer = await asyncio.to_thread(Transfer, request_id, dest, size, PART_SIZE)
        dropped = sink.dropped.copy()
        sink.open(transfer)
        try:
            # Subscribed before the IOC is told to send: a part before it would be lost.
            try:
                async with asyncio.timeout(self.part_idle):
                    await sink.subscribed.wait()
            except TimeoutError:
                raise UpdateRefused(
                    "the uplink did not subscribe to the update parts within "
                    f"{self.part_idle:g} s (is it connected?)"
                ) from None
            if sink.refused is not None:
                raise UpdateRefused(
                    f"{sink.refused}: its ACL must let the gateway read "
                    f"{sink.topic}/# (docs/update.md)"
                )
            call = current.get(None)
            if call is not None:
                await call.progress(
                    {
                        "state": "receiving",
                        "transfer": "mqtt",
                        "topic": f"{sink.topic}/{request_id}/{{offset}}",
                        "part_size": PART_SIZE,
                        "parts": transfer.parts,
                        "size": size,
                        "idle_timeout": self.part_idle,
                        "timeout": self.cfg.download_timeout,
                    }
                )
            log.info(
                "update: receiving %d bytes in %d parts over MQTT (request %s)",
                size, transfer.parts, request_id,
            )  # fmt: skip
            await self._await_parts(sink, transfer)
            await asyncio.to_thread(transfer.finish)
        finally:
            sink.close()
            lost = sink.dropped - dropped
            if lost:
                log.warning("update: parts dropped during the transfer: %s", dict(lost))
        digest = await asyncio.to_thread(_sha256, dest)
        return size, digest

    async def _await_parts(self, sink: PartSink, t: Transfer) -> None:
        deadline = t.opened + self.cfg.download_timeout
        while not t.complete.is_set():
            now = time.monotonic()
            if not sink.linked:
                t.last = now  # parts wait in the broker's session meanwhile
            if now >= deadline:
                raise UpdateRefused(
                    f"the transfer took more than commands.update.download_timeout "
                    f"({self.cfg.download_timeout:g} s): {t.parts - t.missing} of {t.parts} "
                    "parts came; abandoned and its file removed"
                )
            if now >= t.last + self.part_idle:
                raise UpdateRefused(
                    f"no part came for {self.part_idle:g} s: {t.parts - t.missing} of "
                    f"{t.parts} parts came; the transfer is abandoned and its file removed"
                )
            wake = min(deadline, t.last + self.part_idle) - now
            if not sink.linked:  # looked at again soon: the idle time starts at the reconnect
                wake = min(wake, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake):
                    await t.complete.wait()

    def _public_key(self) -> bytes:
        try:
            return self.cfg.public_key_file.read_bytes()[:65536]
        except OSError as err:
            raise UpdateRefused(
                f"no bundle signing key to check with ({self.cfg.public_key_file}: "
                f"{err.strerror}); see docs/update.md"
            ) from None

    def _commit(self, part: Path, name: str, digest: str, version: str) -> None:
        for old in self.dir.glob("bundle-*.tar.gz"):  # one staged bundle at a time
            if old.name != name:
                old.unlink()
        part.replace(self.dir / name)
        request = {
            "id": secrets.token_hex(8),
            "bundle": name,
            "sha256": digest,
            "version": version,
            "from_version": __version__,
            "confirm_timeout": self.cfg.confirm_timeout,
            "devices": sorted(self.working())[:256],
            "ts": round(time.time(), 3),
        }
        write_json(self.dir, REQUEST, request)

    async def _download(self, url: str, dest: Path) -> tuple[int, str]:
        """(bytes, sha256) of ``url`` written to ``dest``."""
        import aiohttp

        ctx = ssl.create_default_context(
            cafile=None if self.cfg.ca_file is None else str(self.cfg.ca_file)
        )
        outage = Outage(log, f"update download from {_where(url)}", then="retrying")
        timeout = aiohttp.ClientTimeout(total=self.cfg.download_timeout, sock_connect=30)

        async def once() -> tuple[int, str]:
            async with (
                aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(ssl=ctx)
                ) as session,
                session.get(url, allow_redirects=True, max_redirects=3) as resp,
            ):
                if resp.url.scheme != "https":
                    raise UpdateRefused("the server redirected to a URL that is not https")
                if resp.status >= 500:
                    raise _Retry(f"HTTP {resp.status}")
                if resp.status != 200:
                    raise UpdateRefused(f"the server answered HTTP {resp.status}")
                length = resp.content_length
                if length is not None and length > self.cfg.max_bytes:
                    raise UpdateRefused(
                        f"the bundle is {length} bytes; commands.update.max_bytes is "
                        f"{self.cfg.max_bytes}"
                    )
                need = (length or self.cfg.max_bytes) + RESERVE
                free = shutil.disk_usage(self.dir).free
                if free < need:
                    raise UpdateRefused(
                        f"{free} bytes free in {self.dir}; the bundle needs {need} (with a "
                        f"reserve of {RESERVE})"
                    )
                digest = hashlib.sha256()
                size = 0
                with dest.open("wb") as f:
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        size += len(chunk)
                        if size > self.cfg.max_bytes:
                            raise UpdateRefused(
                                f"the bundle is more than commands.update.max_bytes "
                                f"({self.cfg.max_bytes} bytes)"
                            )
                        digest.update(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                return size, digest.hexdigest()

        async def verified() -> tuple[int, str]:
            try:
                return await once()
            except aiohttp.ClientSSLError as err:  # not retried, and never tried in clear
                raise UpdateRefused(f"the server's certificate does not verify: {err}") from None

        try:
            return await UPDATE_DOWNLOAD.call(
                verified, (aiohttp.ClientError, TimeoutError, _Retry), outage
            )
        except (aiohttp.ClientError, TimeoutError, _Retry) as err:
            cause = err.__cause__ if isinstance(err.__cause__, ssl.SSLError) else err
            raise UpdateRefused(
                f"the download failed after {UPDATE_DOWNLOAD.max_attempts} attempts: "
                f"{type(cause).__name__}: {cause}"
            ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class UpdateTrial:
    """The new version's confirmation of a trial (the module docstring), and the versions
    health reports."""

    def __init__(self, data_dir: Path, version: str = __version__) -> None:
        self.dir = data_dir / UPDATE_DIR
        self.version = version
        self.outcome: str | None = None  # confirmed, not_confirmed, none
        self.needed: list[str] = []  # the devices that worked before the switch

    @property
    def previous_version(self) -> str | None:
        """The version this one replaced, as the switcher recorded it; None if unknown."""
        status = read_json(self.dir / STATUS)
        if status is None or status.get("running") != self.version:
            return None
        prev = status.get("previous")
        return prev if isinstance(prev, str) and VERSION_RE.match(prev) else None

    def trial(self) -> dict[str, Any] | None:
        """The trial the switcher runs for this version, if any and not yet confirmed."""
        trial = read_json(self.dir / TRIAL)
        if trial is None or trial.get("version") != self.version:
            return None
        confirmed = read_json(self.dir / CONFIRMED)
        if confirmed is not None and confirmed.get("id") == trial.get("id"):
            return None
        return trial

    async def on_start(self, healthy: Callable[[float], Awaitable[str | None]]) -> None:
        """Once the agent is up: confirm a pending trial if ``healthy(timeout)`` says so
        (None), within the switcher's deadline. Otherwise write nothing."""
        status = await asyncio.to_thread(read_json, self.dir / STATUS)
        if status is not None and status.get("state") == "rolled_back":
            log.warning(
                "update: tepi %s was rolled back to %s: %s",
                status.get("tried"), status.get("running"), status.get("reason"),
            )  # fmt: skip
        trial = await asyncio.to_thread(self.trial)
        if trial is None:
            self.outcome = "none"
            return
        try:
            limit = float(trial.get("confirm_timeout", 60))
            deadline = float(trial.get("deadline", time.time() + limit))
        except (TypeError, ValueError):
            limit, deadline = 60.0, time.time() + 60
        timeout = max(1.0, min(limit, deadline - time.time()) - 2.0)
        devices = trial.get("devices")
        if isinstance(devices, list):
            self.needed = [d for d in devices if isinstance(d, str)][:256]
        log.info("update: trial of tepi %s: confirming within %.0f s", self.version, timeout)
        why = await healthy(timeout)
        if why is not None:
            self.outcome = "not_confirmed"
            log.error("update: tepi %s is not healthy (%s): not confirmed", self.version, why)
            return
        try:
            await asyncio.to_thread(
                write_json,
                self.dir,
                CONFIRMED,
                {"id": trial.get("id"), "version": self.version, "ts": round(time.time(), 3)},
            )
        except OSError as err:  # the switcher goes back: a box that cannot write is not well
            self.outcome = "not_confirmed"
            log.error("update: tepi %s cannot write its confirmation: %s", self.version, err)
            return
        self.outcome = "confirmed"
        log.info("update: tepi %s confirmed", self.version)


async def healthy_within(
    timeout: float,  # noqa: ASYNC109 (a deadline reported on, not an operation cut short)
    connected: Callable[[], bool],
    states: Callable[[], dict[str, str]],
    needed: list[str],
    *,
    every: float = 0.5,
    link_error: Callable[[], str | None] = lambda: None,
) -> str | None:
    """None once the uplink is connected and every device of ``needed`` (those that worked
    before the update, or the config push) is ``ok``; else, after ``timeout``, why not
    (with ``link_error``: the uplink's last error, in brackets)."""
    deadline = time.monotonic() + timeout
    while True:
        now = states()
        bad = [d for d in needed if now.get(d, "removed") != "ok"]
        if connected() and not bad:
            return None
        if time.monotonic() >= deadline:
            if not connected():
                error = link_error()
                return "the uplink is not connected to the broker" + (
                    f" ({error})" if error else ""
                )
            return "devices that worked before do not work: " + ", ".join(
                f"{d} ({now.get(d, 'removed')})" for d in bad[:10]
            )
        await asyncio.sleep(every)
