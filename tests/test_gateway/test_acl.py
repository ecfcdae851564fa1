"""The broker ACL of docs/operations.md ("The broker's ACL"), on a real Mosquitto: with it the
gateway delivers and takes its commands, the IOC's command user commands it, and a client
without that user cannot."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from helpers import TEST_SECRETS, Broker, Subscriber, agent_config, agent_running, run_tepi

pytestmark = pytest.mark.timeout(90)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_acl() -> str:
    text = DOCS.read_text()
    section = text[text.index("### The broker's ACL") :]
    start = section.index("```\n") + 4
    return section[start : section.index("```", start)]


async def test_the_documented_acl_lets_the_gateway_work_and_only_the_ioc_command_it(
    tmp_path: Path,
) -> None:
    acl = tmp_path / "acl"
    # The first line is the test's own: its anonymous observer reads everything.
    acl.write_text("topic read ioc/v1/#\n\n" + documented_acl())
    passwd = tmp_path / "passwd"
    passwd.write_text(f"gw-test:{TEST_SECRETS[0]}\nioc-commands:{TEST_SECRETS[1]}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
    ioc_password = tmp_path / "ioc-password"
    ioc_password.write_text(TEST_SECRETS[1] + "\n")
    broker = Broker(tmp_path, extra=f"password_file {passwd}\nacl_file {acl}")
    await broker.start()
    devices = [{"id": "s1", "driver": "synthetic", "metrics": 2, "poll_interval": "500ms"}]
    # The gateway's broker user is its id: the ACL's %u.
    cfg = agent_config(tmp_path, broker.port, devices, uplink__username="gw-test")
    async with (
        Subscriber(broker.port, "ioc/v1/#") as sub,
        agent_running(cfg, sub, broker, lambda s: len(s.readings()) >= 4),
    ):
        url = f"mqtt://127.0.0.1:{broker.port}"
        # Anyone but the IOC's command user (here anonymous) may not publish a command: the
        # broker drops it, and no answer comes.
        denied = await asyncio.to_thread(
            run_tepi, "remote", "--url", url, "--gateway", "gw-test", "--timeout", "3",
            "--id", "anonymous", "ping",
        )  # fmt: skip
        assert denied.returncode == 5, denied.stdout + denied.stderr
        ok = await asyncio.to_thread(
            run_tepi, "remote", "--url", url, "--username", "ioc-commands",
            "--password-file", str(ioc_password), "--gateway", "gw-test", "--timeout", "20",
            "--id", "from-the-ioc", "ping",
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert '"pong": true' in ok.stdout
        # The observer gets messages in the broker's order: once it has the IOC's request,
        # it would have had the anonymous one before it.
        await sub.wait_for(lambda s: bool(s.on("/cmd/ping")))
        assert [m["id"] for m in sub.on("/cmd/ping")] == ["from-the-ioc"]
        assert [m["id"] for m in sub.on("/cmd_result")] == ["from-the-ioc"]
        # The gateway's telemetry and status went through its own patterns.
        assert sub.readings()
        assert any(m["state"] == "online" for m in sub.on("/status"))
