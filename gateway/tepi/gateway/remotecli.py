"""``tepi remote``: the IOC's side of a command, for operators, scripts and tests.

    tepi remote --url mqtt://broker:1883 --gateway hue-bridge-01 ping
    tepi remote --url ... --gateway ... --key ioc.key --key-id ioc-2026 alarms.ack rule=flood-high
    tepi remote --keygen ioc.key          # a new key: prints the line for commands.keys

It subscribes to the gateway's ``cmd_result``, publishes the request (QoS 1) on
``cmd/{command}``, signed with ``--key`` when given, and waits for the result with its id:
printed as JSON; exit 0 when it is ``done``, 6 when it ``failed`` (or was refused), 5 when no
result came within ``--timeout``. Arguments are ``name=value``; a value that is JSON (a number,
true, false, an object) is sent as such, ``name=@FILE`` sends the file's text (``config.apply
config=@new.yaml``), anything else is sent as a string. An ``accepted`` result (a config push
on trial) is shown on stderr, and the wait goes on for the end. ``--username`` and
``--password-file`` (or ``TEPI_REMOTE_PASSWORD``) log in as the IOC's command user;
``mqtts://`` connects over TLS, the broker's certificate verified (``--ca-file``, or the
system's CAs).

An agent update with no HTTP server, the bundle sent in parts over the broker
(docs/update.md, "Over MQTT")::

    tepi remote --url ... --gateway ... --key ioc.key \\
        update version=0.2.0 --file tepi-bundle-0.2.0.tar.gz

``--file`` adds ``transfer=mqtt``, ``size`` and ``sha256`` to the signed request; once the
agent answers ``accepted`` with where to send, the parts go at QoS 1, at most
``--inflight`` awaiting their PUBACK, with the progress on stderr; then the wait goes on for
the end (``--timeout`` covers it all).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiomqtt

EXIT_DONE, EXIT_NO_ANSWER, EXIT_FAILED = 0, 5, 6
MAX_PART = 1 << 20  # the largest part size an agent's answer is followed for


def parse_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"argument {pair!r}: give name=value")
        if value.startswith("@"):
            try:
                out[name] = Path(value[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise SystemExit(f"argument {name}: cannot read {value[1:]}: {err}") from err
            continue
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def keygen(path: Path) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    print(f"private key written to {path} (keep it at the IOC; mode 0600)")
    print("for the gateways' config, under commands.keys:")
    print(f"  - {{id: {path.stem}, public_key: {public.decode()}}}")
    return EXIT_DONE


def read_key(path: Path) -> bytes:
    raw = path.read_bytes().strip()
    seed = base64.b64decode(raw) if len(raw) != 32 else raw
    if len(seed) != 32:
        raise SystemExit(f"{path}: not an Ed25519 private key (32 bytes, or their base64)")
    return seed


def bundle_args(path: Path) -> dict[str, Any]:
    """``transfer``, ``size`` and ``sha256`` of the bundle at ``path`` (read once)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise SystemExit(f"--file: cannot read {path}: {err.strerror}") from err
    return {"transfer": "mqtt", "size": size, "sha256": digest.hexdigest()}


async def send_parts(
    client: aiomqtt.Client, path: Path, accepted: dict[str, Any], inflight: int
) -> None:
    """The bundle at ``path`` on the topic and in the part size the agent's ``accepted``
    asked for, at QoS 1, at most ``inflight`` awaiting their PUBACK."""
    topic, part_size = accepted.get("topic"), accepted.get("part_size")
    if (
        not isinstance(topic, str)
        or not topic.endswith("/{offset}")
        or not isinstance(part_size, int)
        or not 0 < part_size <= MAX_PART
    ):
        raise SystemExit(f"the agent's answer does not say where to send: {accepted!r:.200}")
    base = topic.removesuffix("{offset}")
    f = await asyncio.to_thread(path.open, "rb")
    size = os.fstat(f.fileno()).st_size
    slots = asyncio.Semaphore(max(1, inflight))
    sent = shown = 0
    t0 = time.monotonic()

    async def one(offset: int, data: bytes) -> None:
        nonlocal sent, shown
        try:
            await client.publish(f"{base}{offset}", data, qos=1)
        finally:
            slots.release()
        sent += len(data)
        if sent * 10 // size > shown or sent == size:
            shown = sent * 10 // size
            rate = sent / max(time.monotonic() - t0, 1e-6) / 1e6
            print(f"sent {sent}/{size} bytes ({rate:.1f} MB/s)", file=sys.stderr)

    with f:
        async with asyncio.TaskGroup() as tg:
            offset = 0
            while data := await asyncio.to_thread(f.read, part_size):
                await slots.acquire()
                tg.create_task(one(offset, data))
                offset += len(data)


@dataclass(frozen=True)
class Login:
    """How ``tepi remote`` logs in to the broker: the IOC's own user, and TLS for mqtts://
    (the certificate always verified, against ``ca_file`` or the system's CAs)."""

    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


def _tls(url: str, login: Login) -> ssl.SSLContext | None:
    if urlsplit(url).scheme != "mqtts":
        return None
    return ssl.create_default_context(cafile=str(login.ca_file) if login.ca_file else None)


async def send(
    url: str,
    gateway: str,
    prefix: str,
    command: str,
    args: dict[str, Any],
    *,
    key: tuple[bytes, str] | None,
    lifetime: float,
    wait_s: float,
    request_id: str | None = None,
    bundle: Path | None = None,
    inflight: int = 8,
    login: Login = Login(),
) -> dict[str, Any] | None:
    """Send one command and wait for its result (None: none came within ``wait_s``)."""
    import aiomqtt

    from tepi.gateway.commands import sign

    parts = urlsplit(url)
    now = time.time()
    req: dict[str, Any] = {
        "id": request_id or f"remote-{uuid.uuid4().hex[:16]}",
        "issued_at": round(now, 3),
        "expires_at": round(now + lifetime, 3),
        "args": args,
    }
    if key is not None:
        req = sign(key[0], gateway, command, req, key[1])
    base = f"{prefix}/{gateway}"
    tls = _tls(url, login)
    async with aiomqtt.Client(
        parts.hostname or "127.0.0.1",
        parts.port or (8883 if tls else 1883),
        identifier=f"tepi-remote-{uuid.uuid4().hex[:8]}",
        username=login.username,
        password=login.password,
        tls_context=tls,
    ) as client:
        await client.subscribe(f"{base}/cmd_result", qos=1)
        await client.publish(f"{base}/cmd/{command}", json.dumps(req).encode(), qos=1)
        sender: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(wait_s):
                async for msg in client.messages:
                    if sender is not None and sender.done():
                        sender.result()  # a failed publish ends the wait with its error
                    if not isinstance(msg.payload, bytes):
                        continue
                    result: dict[str, Any] = json.loads(msg.payload)
                    if result.get("id") != req["id"]:
                        continue
                    if result.get("status") == "accepted":
                        output = result.get("output")
                        print(f"accepted: {json.dumps(output)}", file=sys.stderr)
                        if bundle is not None and sender is None and isinstance(output, dict):
                            sender = asyncio.create_task(
                                send_parts(client, bundle, output, inflight)
                            )
                        continue
                    return result
        except TimeoutError:
            return None
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tepi remote", description=__doc__.split("\n\n")[0])
    p.add_argument("--keygen", type=Path, help="write a new private key here and stop")
    p.add_argument(
        "--url", default="mqtt://127.0.0.1:1883", help="the broker: mqtt:// or mqtts:// (TLS)"
    )
    p.add_argument("--username", help="the IOC's broker user (see the ACL, docs/operations.md)")
    p.add_argument(
        "--password-file",
        type=Path,
        help="its password, from a file (or the variable TEPI_REMOTE_PASSWORD)",
    )
    p.add_argument("--ca-file", type=Path, help="mqtts://: the CA to verify the broker with")
    p.add_argument("--gateway", help="the gateway's id")
    p.add_argument("--prefix", default="ioc/v1", help="uplink.topic_prefix (default ioc/v1)")
    p.add_argument("--key", type=Path, help="sign with this private key file")
    p.add_argument("--key-id", help="the key's id in the gateway's commands.keys")
    p.add_argument("--lifetime", type=float, default=60.0, help="seconds the request is valid")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result")
    p.add_argument("--id", help="the request's id (default: a new one)")
    p.add_argument(
        "--file", type=Path, help="update: send this bundle in parts over MQTT (transfer=mqtt)"
    )
    p.add_argument(
        "--inflight", type=int, default=8, help="--file: parts awaiting their PUBACK at once"
    )
    p.add_argument("command", nargs="?", help="e.g. ping, health, snapshot, alarms.ack")
    p.add_argument("args", nargs="*", help="name=value")
    a = p.parse_args(argv)
    if a.keygen is not None:
        return keygen(a.keygen)
    if not a.gateway or not a.command:
        p.error("--gateway and a command are required")
    key = None
    if a.key is not None:
        key = (read_key(a.key), a.key_id or a.key.stem)
    password = os.environ.get("TEPI_REMOTE_PASSWORD")
    if a.password_file is not None:
        try:
            password = a.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise SystemExit(f"--password-file: cannot read {a.password_file}: {err}") from err
    login = Login(a.username, password, a.ca_file)
    args = parse_args(a.args)
    if a.file is not None:
        if a.command != "update":
            p.error("--file goes with the update command")
        args = {**bundle_args(a.file), **args}
    import aiomqtt

    try:
        result = asyncio.run(
            send(
                a.url, a.gateway, a.prefix, a.command, args, key=key,
                lifetime=a.lifetime, wait_s=a.timeout, request_id=a.id, bundle=a.file,
                inflight=a.inflight, login=login,
            )
        )  # fmt: skip
    except (aiomqtt.MqttError, OSError) as err:  # refused, unreachable, TLS
        print(f"cannot reach the broker at {a.url}: {err}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if result is None:
        print(f"no result within {a.timeout:g} s (is the gateway connected?)", file=sys.stderr)
        return EXIT_NO_ANSWER
    print(json.dumps(result, indent=2))
    return EXIT_DONE if result.get("status") == "done" else EXIT_FAILED
