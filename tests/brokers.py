"""MQTT brokers other than Mosquitto, each a private instance the test owns on free ports,
with the same ``port``, ``start()`` and ``stop()`` as helpers.Broker (so ``running_rig`` can
take one): nats-server's MQTT listener and RabbitMQ's MQTT plugin. Never the shared services
of the machine (nats on 4222, RabbitMQ on 5672): their state is not the test's.

Both are Debian 12 packages (nats-server, rabbitmq-server), installed by .ci/setup.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

from ports import restartable_port

from tepi.gateway.localbroker import wait_port


def nats_bin() -> str:
    found = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(found).exists():
        raise RuntimeError(
            "nats-server is not installed: run .ci/setup (apt-get install nats-server)"
        )
    return found


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # not Debian's su wrapper


def rabbitmq_bin() -> str:
    if not RABBITMQ_SERVER.exists():
        raise RuntimeError(
            "rabbitmq-server is not installed: run .ci/setup (apt-get install rabbitmq-server)"
        )
    return str(RABBITMQ_SERVER)


class _Process:
    """A broker process in its own process group (stopped with SIGTERM to the group)."""

    name = "broker"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = restartable_port()  # not free_port(): see ports.py
        self.log = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    async def start(self, timeout_s: float = 10.0) -> None:
        cmd, env = self.command()
        self.proc = proc = subprocess.Popen(
            cmd,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=self.workdir,
            start_new_session=True,
        )
        try:
            await wait_port(self.port, timeout_s=timeout_s, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as err:
            await self.stop()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} did not start ({err}); its log:\n{tail}") from err

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)


class NatsBroker(_Process):
    """nats-server with JetStream (its MQTT listener needs it, for QoS 1, retained messages
    and sessions) and an MQTT listener; its store survives a restart."""

    name = "nats"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.client_port = restartable_port()

    def command(self) -> tuple[list[str], dict[str, str]]:
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f"server_name: tepi-test-{self.port}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
        )
        return [nats_bin(), "-c", str(conf)], {}


class RabbitBroker(_Process):
    """A private RabbitMQ node (its own name, ports, data, logs, plugins file and Erlang
    cookie) with the MQTT plugin: anonymous MQTT on ``port``, no AMQP listener. It boots in
    several seconds, so a test module shares one. ``user`` and ``password``: its one user
    (made at the first boot), also the one an MQTT client without credentials logs in as."""

    name = "rabbitmq"

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        super().__init__(workdir)
        self.user, self.password = user, password
        self.dist_port = restartable_port()
        self.node = f"tepi-test-{self.port}@localhost"

    def command(self) -> tuple[list[str], dict[str, str]]:
        w = self.workdir
        home = w / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"tepi-test-{self.port}")
            cookie.chmod(0o400)
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (w / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            f"mqtt.default_user = {self.user}\n"
            f"mqtt.default_pass = {self.password}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
        )
        (w / "rabbitmq.conf").chmod(0o600)
        env = {
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"),
        }
        return [rabbitmq_bin()], env

    async def start(self, timeout_s: float = 90.0) -> None:
        await super().start(timeout_s)
