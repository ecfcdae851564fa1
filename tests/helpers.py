"""Real parts for the tests: a Mosquitto broker on a free port, an MQTT subscriber that
records what arrives, and the agent as a real subprocess (``tepi run``).

Everything here waits on events (a port accepting, a message arriving, a line printed),
never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import trustme
import yaml
from completeness import Completeness
from ports import restartable_port
from sqlite_utils import Database

from tepi.gateway.compact import ZSTD_MAGIC, decode_compact
from tepi.gateway.configload import parse_config
from tepi.gateway.localbroker import (
    find_mosquitto,
    free_port,
    keep_user_line,
    mosquitto_conf,
    wait_port,
)
from tepi.gateway.runtime import Agent

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "gateway" / "tepi" / "gateway" / "payload.schema.json"
SHIMS = Path(__file__).resolve().parent / "shims"

# Secrets every agent the tests start is given (MQTT password from a file; Mosquitto without
# a password file lets any credentials in). No agent log may ever contain one: the session's
# last step (conftest.py) reads every log in AGENT_LOGS and fails the run if it finds one.
TEST_SECRETS = (
    "pw-7f3a9c1e-never-logged",
    "s3cret-Pa55-never-logged",
    "wrong-password-also-secret",
)
AGENT_LOGS: list[Path] = []
# Agents started and not yet stopped: a wait that times out dumps each one's log and task
# stacks into its failure message (``dump_running``), so an intermittent failure explains
# itself.
RUNNING: list[AgentProc] = []


async def dump_running() -> str:
    """Every running agent's task stacks (SIGUSR1 makes it log them) and its log's end."""
    return "\n".join([await agent.dump() for agent in list(RUNNING)])


def find_secrets(paths: list[Path], secrets: tuple[str, ...]) -> list[str]:
    """Each "file:line: secret" where a secret appears in one of ``paths``."""
    found = []
    for path in paths:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path}:{n}: {s}" for s in secrets if s in line]
    return found


def mount_namespace(setup: str) -> list[str]:
    """A prefix that runs the agent in a mount namespace of its own, after the shell commands
    ``setup`` (a small tmpfs as its data dir, a read-only bind mount...). The machine's mounts
    are untouched; the test sees the agent's through /proc/PID/root (the agent is the same
    process: unshare and sh exec). Needs root, or unprivileged user namespaces (``-r``)."""
    user = [] if os.geteuid() == 0 else ["-r"]
    return [
        "unshare",
        *user,
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{setup} && exec "$@"',
        "sh",
    ]


def compile_shim(name: str, out_dir: Path) -> Path:
    """Build tests/shims/NAME.c into an LD_PRELOAD library (gcc: .ci/setup installs it)."""
    out = out_dir / f"{name}.so"
    cmd = ["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC"]
    subprocess.run([*cmd, "-o", str(out), str(SHIMS / f"{name}.c"), "-ldl"], check=True)
    return out


@contextlib.contextmanager
def read_db(path: Path) -> Iterator[Database]:
    """A SQLite file (the buffer) opened to look into: read-only (``mode=ro``), so it can sit
    beside a running agent and never change what it reads."""
    db = Database(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5),
        recursive_triggers=False,
        execute_plugins=False,
    )
    try:
        yield db
    finally:
        db.close()


def run_tepi(
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the ``tepi`` CLI as a person would, and capture what it says. One that does not
    finish in ``timeout`` is asked for its task stacks (SIGUSR1: ``tepi run`` and the demo
    log them), then killed, and the failure shows what it said. ``env`` adds variables;
    ``input`` is its stdin (a pipe, not a terminal)."""
    cmd = [sys.executable, "-m", "tepi.gateway.cli", *args]
    with subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    ) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            try:
                out, err = proc.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise AssertionError(
                f"tepi {' '.join(args)} did not finish in {timeout} s; it said:\n"
                f"---- stdout\n{out[-6000:]}\n---- stderr (task stacks at the end)\n"
                f"{err[-12000:]}"
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def mosquitto_bin() -> str:
    found = find_mosquitto()
    if found is None:
        raise RuntimeError("mosquitto is not installed: run .ci/setup (apt-get install mosquitto)")
    return found


class Broker:
    """A Mosquitto process the test owns. ``stop()`` and ``start()`` make an outage."""

    def __init__(self, workdir: Path, *, extra: str = "", persistence: bool = False) -> None:
        self.workdir = workdir
        self.port = restartable_port()  # not free_port(): see ports.py
        self.extra = extra
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def conf(self) -> Path:
        path = self.workdir / "mosquitto.conf"
        path.write_text(
            mosquitto_conf(
                self.port,
                persistence_dir=self.workdir if self.persistence else None,
                extra=[
                    "log_type error",
                    "log_type warning",
                    "max_queued_messages 100000",
                    self.extra,
                ],
            )
        )
        return path

    async def start(self) -> None:
        self.proc = proc = subprocess.Popen(
            [mosquitto_bin(), "-c", str(self.conf())],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        await wait_port(self.port, alive=lambda: proc.poll() is None)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None


class Subscriber:
    """Records every message under a topic filter, with conditions to wait on."""

    def __init__(self, port: int, topic: str) -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self.received_at: list[float] = []  # wall time each message arrived, for delays
        self.max_counter: dict[str, int] = {}  # device -> highest counter value, kept as they come
        self.connects = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # Reconnects by itself so it survives broker restarts in outage tests.
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier=f"sub-{id(self)}", clean_session=False
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    async with self._changed:
                        self.connects += 1
                        self._changed.notify_all()
                    self._ready.set()
                    async for msg in client.messages:
                        payload = (
                            msg.payload
                            if isinstance(msg.payload, bytes)
                            else str(msg.payload).encode()
                        )
                        async with self._changed:
                            self.messages.append((str(msg.topic), payload, bool(msg.retain)))
                            self.received_at.append(time.time())
                            self._track(str(msg.topic), payload)
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def _track(self, topic: str, payload: bytes) -> None:
        """Keep each device's highest counter as messages come: waits stay O(1) per message
        however long the run (a soak receives hundreds of thousands of readings)."""
        if not topic.endswith("/telemetry"):
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            msg = decode_compact(payload) if payload.startswith(ZSTD_MAGIC) else json.loads(payload)
            top = self.max_counter
            for r in msg["readings"]:
                if r["metric"] == "counter" and r["quality"] == "good":
                    top[r["device"]] = max(top.get(r["device"], 0), int(r["value"]))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def readings(self) -> list[dict[str, Any]]:
        return [r for m in self.on("/telemetry") for r in m["readings"]]

    def completeness(self) -> Completeness:
        """The completeness checker, fed with everything received so far."""
        check = Completeness()
        for (topic, payload, _), at in zip(self.messages, self.received_at, strict=True):
            check.feed(topic, payload, at)
        return check

    async def wait_for(self, pred: Callable[[Subscriber], bool], timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: pred(self))
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {pred.__qualname__} "
                f"({len(self.messages)} messages received)\n{await dump_running()}"
            ) from None


def secret_file(tmp: Path) -> Path:
    path = tmp / "mqtt-password"
    path.write_text(TEST_SECRETS[0] + "\n")
    path.chmod(0o600)
    return path


def agent_config(tmp: Path, broker_port: int, devices: list[dict[str, Any]], **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "gateway": {"id": over.pop("gateway_id", "gw-test"), "data_dir": str(tmp / "data")},
        "uplink": {
            "url": f"mqtt://127.0.0.1:{broker_port}",
            "username": "tepi-test",
            "password_file": str(secret_file(tmp)),
            "topic_prefix": "ioc/v1",
            "keepalive": "5s",
            "publish_timeout": "5s",
            "reconnect": {"min_delay": "200ms", "max_delay": "1s"},
            "health_interval": over.pop("health_interval", "60s"),
        },
        "buffer": {"commit_interval": "200ms"},
        "devices": devices,
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp / "tepi.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class AgentProc:
    """``tepi run`` as a real process, with its log kept for the secret and error checks."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.env = env or {}
        self.prefix = prefix or []  # a command the agent runs under (see ``mount_namespace``)
        self.proc: subprocess.Popen[bytes] | None = None
        AGENT_LOGS.append(log)

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "tepi.gateway.cli",
                "run",
                "--config",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env=env,
            cwd=REPO,
        )
        RUNNING.append(self)

    def _gone(self) -> None:
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)

    async def dump(self, timeout: float = 5.0) -> str:
        """Its task stacks (SIGUSR1: runtime.dump_tasks logs them), then its log's end."""
        head = f"---- agent {self.config} (log {self.log})"
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            return f"{head}: not running (exit {code})\n{self.log_text()[-6000:]}"
        start = self.log.stat().st_size if self.log.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        # The stacks come as one log record per task: wait until they stop coming.
        size, still = -1, 0
        async with asyncio.timeout(timeout):
            while still < 3:
                await asyncio.sleep(0.1)
                now = self.log.stat().st_size if self.log.exists() else 0
                still = still + 1 if now == size and now > start else 0
                size = now
        text = self.log.read_bytes()[start:].decode(errors="replace")
        return (
            f"{head}: task stacks\n{text[-12000:]}\n"
            f"---- its log before\n{self.log_text()[max(0, start - 6000) : start]}"
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._gone()

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait. An agent that does not stop is killed, and that is a failure."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            dump = self.log_text()[-6000:]
            with contextlib.suppress(TimeoutError):
                dump = await self.dump()  # where its tasks are stuck
            self.proc.kill()
            self.proc.wait(10)
            self._gone()
            raise AssertionError(
                f"agent did not stop within {timeout} s of SIGTERM:\n{dump}"
            ) from None
        self._gone()
        if code != 0:  # the test asserts the code; its output then says why (pytest shows it)
            print(f"agent exited {code}; the end of its log:\n{self.log_text()[-6000:]}")
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def restart(self, sub: Subscriber) -> None:
        """Stop (cleanly) and start again, until its next ``online`` status reached ``sub``."""
        assert await self.stop() == 0
        onlines = sum(m["state"] == "online" for m in sub.on("/status"))
        self.start()
        await sub.wait_for(lambda s: sum(m["state"] == "online" for m in s.on("/status")) > onlines)


@contextlib.asynccontextmanager
async def agent_running(
    config: Path, sub: Subscriber, broker: Broker, ready: Callable[[Subscriber], bool]
) -> AsyncIterator[AgentProc]:
    """``tepi run`` on ``config`` until ``ready`` holds at ``sub``; at the end the agent is
    stopped, then ``broker``, and its log must hold no traceback."""
    agent = AgentProc(config, config.parent / "agent.log")
    agent.start()
    try:
        await sub.wait_for(ready)
        yield agent
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            await agent.stop()
        await broker.stop()
    assert "Traceback" not in agent.log_text(), agent.log_text()


def remote_keygen(path: Path) -> str:
    """A new IOC signing key at ``path`` (``tepi remote --keygen``); its public key."""
    made = run_tepi("remote", "--keygen", str(path))
    assert made.returncode == 0, made.stderr
    return made.stdout.split("public_key: ")[1].split("}")[0].strip()


def remote(
    port: int, *args: str, timeout: float = 30, key: Path | None = None
) -> tuple[int, dict[str, Any] | None, str]:
    """``tepi remote`` to gateway gw-test on the broker at ``port`` (signed with ``key``, its
    id the file's stem): exit code, the result (None when none came) and stderr."""
    extra = ["--key", str(key), "--key-id", key.stem] if key is not None else []
    out = run_tepi(
        "remote", "--url", f"mqtt://127.0.0.1:{port}", "--gateway", "gw-test",
        "--timeout", f"{timeout:g}", *extra, *args, timeout=timeout + 30,
    )  # fmt: skip
    result = json.loads(out.stdout) if out.stdout.strip().startswith("{") else None
    return out.returncode, result, out.stderr


class FaultProxy:
    """A TCP proxy between the agent and the broker that can fail like a 4G link.

    ``blackhole()`` keeps every connection open but forwards nothing in either direction (a
    half-open link: no reset, packets swallowed). ``heal()`` drops the stuck connections and
    forwards new ones again. ``drop()`` resets every connection (the link went down);
    ``refuse`` turns new connections away. ``latency_s`` delays each direction and
    ``bytes_per_s`` caps each direction's rate, as a 4G link would.
    """

    def __init__(
        self, upstream_port: int, *, latency_s: float = 0.0, bytes_per_s: float | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.latency_s = latency_s  # one way, like a 4G link
        self.bytes_per_s = bytes_per_s
        self.port = 0
        self.refuse = False
        self.holes = False
        self.connections = 0  # connections forwarded to the broker
        self.attempts = 0  # connections the agent opened, forwarded or not
        self.swallowed = 0  # bytes from the agent that never reached the broker
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def blackhole(self) -> None:
        self.holes = True

    def heal(self) -> None:
        self._close_all()
        self.holes = False

    def drop(self) -> None:
        self._close_all()

    async def wait_connections(self, n: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.connections >= n)

    async def wait_attempts(self, n: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.attempts >= n)

    async def wait_swallowed(self, n_bytes: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.swallowed >= n_bytes)

    def _close_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changed:
            self.attempts += 1
            self._changed.notify_all()
        if self.refuse:
            writer.transport.abort()
            return
        if self.holes:
            self._writers.add(writer)  # accept, then swallow everything
            return
        self._writers.add(writer)  # from now on drop() resets it
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_w)
        async with self._changed:
            self.connections += 1
            self._changed.notify_all()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            # Latency without throttling: stamp each chunk on arrival, release it later.
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            async def release() -> None:
                free_at = 0.0  # when the capped link has sent what it was given
                while True:
                    due, data = await queue.get()
                    if self.bytes_per_s:
                        free_at = max(free_at, loop.time()) + len(data) / self.bytes_per_s
                        due = max(due, free_at)
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    dst.write(data)
                    await dst.drain()

            sender = asyncio.create_task(release())
            try:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    while data := await src.read(65536):
                        if self.holes:
                            if dst is not writer:
                                async with self._changed:
                                    self.swallowed += len(data)
                                    self._changed.notify_all()
                            continue  # swallowed: no reset, no error
                        await queue.put((loop.time() + self.latency_s, data))
            finally:
                sender.cancel()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


@dataclass
class TlsBroker:
    tls_port: int
    plain_port: int
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


async def start_tls_broker(
    tmp: Path, *, require_cert: bool, auth: bool
) -> tuple[TlsBroker, subprocess.Popen[bytes]]:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("gw-test")
    paths = {
        n: tmp / n
        for n in ("ca.pem", "other.pem", "server.pem", "server.key", "client.pem", "client.key")
    }
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    other.cert_pem.write_to_path(str(paths["other.pem"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server.pem"]))
    server.private_key_pem.write_to_path(str(paths["server.key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client.pem"]))
    client.private_key_pem.write_to_path(str(paths["client.key"]))
    tls_port, plain_port = free_port(), free_port()
    conf = [
        "per_listener_settings true",
        keep_user_line(),
        f"listener {tls_port} 127.0.0.1",
        f"cafile {paths['ca.pem']}",
        f"certfile {paths['server.pem']}",
        f"keyfile {paths['server.key']}",
        f"require_certificate {'true' if require_cert else 'false'}",
    ]
    if auth:
        pwfile = tmp / "passwd"
        pwfile.write_text(f"gw-test:{TEST_SECRETS[1]}\n")
        subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True, timeout=30)
        conf += ["allow_anonymous false", f"password_file {pwfile}"]
    else:
        conf += ["allow_anonymous true"]
    conf += [f"listener {plain_port} 127.0.0.1", "allow_anonymous true"]
    (tmp / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    proc = subprocess.Popen(
        [mosquitto_bin(), "-c", str(tmp / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "mosq.log").open("wb"),
    )
    await wait_port(tls_port)
    await wait_port(plain_port)
    return TlsBroker(
        tls_port,
        plain_port,
        paths["ca.pem"],
        paths["client.pem"],
        paths["client.key"],
        paths["other.pem"],
    ), proc


def images_received(messages: list[tuple[str, bytes, bool]]) -> list[tuple[dict[str, Any], bytes]]:
    """The images among received messages, as the IOC decodes them (docs/payload.md#images):
    each metadata message with its bytes, from one image message or its parts joined by their
    offsets. Every resend counts again."""
    out: list[tuple[dict[str, Any], bytes]] = []
    last_meta: dict[str, dict[str, Any]] = {}  # camera -> its latest metadata
    by_seq: dict[int, dict[str, Any]] = {}
    parts: dict[int, dict[int, bytes]] = {}
    for topic, payload, _ in messages:
        levels = topic.split("/")
        if "image_meta" in levels:
            meta = json.loads(payload)
            last_meta[meta["camera"]] = by_seq[meta["seq"]] = meta
        elif "image" in levels:
            out.append((last_meta[levels[levels.index("image") + 1]], payload))
        elif "image_part" in levels:
            i = levels.index("image_part")
            seq, offset = int(levels[i + 2]), int(levels[i + 3])
            got = parts.setdefault(seq, {})
            got[offset] = payload
            joined = b"".join(got[k] for k in sorted(got))
            meta = by_seq[seq]
            if len(joined) == meta["size"]:
                out.append((meta, joined))
                del parts[seq]
    return out


async def start_agent(
    tmp: Path,
    port: int,
    devices: list[dict[str, Any]],
    env: dict[str, str] | None = None,
    **over: Any,
) -> AgentProc:
    sock = tmp / "status.sock"
    sock.unlink(missing_ok=True)  # a killed agent's is left behind
    config = agent_config(tmp, port, devices, status__socket=str(sock), **over)
    agent = AgentProc(config, tmp / "agent.log", env=env)
    agent.start()
    await until(sock.exists, 20, agent)
    return agent


async def until(pred: Callable[[], bool], timeout: float, agent: AgentProc | None = None) -> None:
    """Wait for a condition of a process we can only look at from outside (its status API,
    its files)."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        dump = await agent.dump() if agent is not None else ""
        raise AssertionError(f"timed out waiting for {pred.__qualname__}\n{dump}") from None


async def wait_listening(port: int, agent: AgentProc, timeout: float = 30) -> None:
    """Until something accepts on 127.0.0.1:``port``; fails at once if ``agent`` exits."""

    async def up() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    async with asyncio.timeout(timeout):
        while not await up():
            if agent.proc is not None and agent.proc.poll() is not None:
                raise AssertionError(f"agent exited:\n{agent.log_text()[-4000:]}")
            await asyncio.sleep(0.05)


def in_process_agent(tmp: Path, port: int, gateway: str = "gw-caps", **uplink: object) -> Agent:
    """An agent to run in the test's own loop (``Agent.run``), without devices, on the broker
    at ``port``, reconnecting within 300 ms; ``uplink`` adds to its uplink section."""
    up = {
        "url": f"mqtt://127.0.0.1:{port}",
        "reconnect": {"min_delay": "100ms", "max_delay": "300ms"},
        **uplink,
    }
    cfg = parse_config(
        json.dumps({"gateway": {"id": gateway, "data_dir": str(tmp / "data")}, "uplink": up}),
        "t.yaml",
        check_files=False,
    )
    return Agent(cfg)
