"""SIGHUP re-reads the config (``systemctl reload tepi``), against a real broker and a real
``tepi run``: a change to one device restarts only that device and keeps the broker
connection; an invalid file changes nothing and says why, with file:line, in the log and in
health; an uplink change reconnects. Nothing buffered is lost across any of it."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from helpers import AgentProc, Broker, Subscriber, agent_config, start_tls_broker
from rig import validator

from tepi.gateway.localbroker import free_port
from tepi.gateway.status import fetch

pytestmark = pytest.mark.timeout(90)


def device(dev_id: str, metrics: int) -> dict[str, Any]:
    return {"id": dev_id, "driver": "synthetic", "metrics": metrics, "poll_interval": "100ms"}


def counters(sub: Subscriber, dev: str) -> list[int]:
    """The poll numbers (the synthetic counter) of one device's m0, in seq order, each seq
    once, as the IOC keeps them: a batch in flight when the uplink reconnects is sent again
    with the same seqs (at least once), which is not a duplicate poll."""
    rows = {
        r["seq"]: r["value"]
        for r in sub.readings()
        if r["device"] == dev and r["metric"] == "m0" and r["quality"] == "good"
    }
    return [rows[seq] for seq in sorted(rows)]


def last_health(sub: Subscriber) -> dict[str, Any]:
    return sub.on("/health")[-1]


async def test_reload_restarts_only_what_changed_and_refuses_a_bad_file(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.start()
    try:
        async with Subscriber(broker.port, "ioc/v1/#") as sub:
            path = agent_config(
                tmp_path, broker.port, [device("a", 2), device("b", 2)], health_interval="1s"
            )
            agent = AgentProc(path, tmp_path / "agent.log")
            agent.start()
            assert agent.proc is not None
            await sub.wait_for(lambda s: len(counters(s, "a")) >= 5 and len(counters(s, "b")) >= 5)

            # 1. b gets a third metric, c is added: a and the connection are left alone
            cfg = yaml.safe_load(path.read_text())
            cfg["devices"] = [device("a", 2), device("b", 3), device("c", 1)]
            path.write_text(yaml.safe_dump(cfg))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(
                lambda s: (
                    last_health(s)["config"]["last_reload_ok"] is True
                    and len(counters(s, "c")) >= 3
                    and any(r["metric"] == "m2" for r in s.readings() if r["device"] == "b")
                )
            )
            h = last_health(sub)
            assert h["config"]["reloads"] == 1
            assert h["uplink"]["connects"] == 1  # the broker connection was kept
            a = counters(sub, "a")
            assert a == list(range(1, len(a) + 1))  # a's poller ran on: no restart, no gap
            b = counters(sub, "b")
            assert b.count(1) == 2  # b restarted: its poll count began again
            assert "reload: config applied (2 devices restarted: b, c)" in agent.log_text()

            # 2. an invalid file: nothing changes, the errors are logged and in health
            path.write_text(path.read_text().replace("metrics: 1", "metrics: many"))
            seen = len(counters(sub, "c"))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(lambda s: last_health(s)["config"]["last_reload_ok"] is False)
            errors = last_health(sub)["config"]["errors"]
            assert any(f"{path}:" in e and "devices[2].metrics" in e for e in errors), errors
            assert "reload refused: 1 problem in the config" in agent.log_text()
            await sub.wait_for(lambda s: len(counters(s, "c")) > seen + 3)  # c runs on

            # 3. an uplink setting changes: the uplink reconnects, the devices run on
            cfg["uplink"]["health_interval"] = "2s"
            path.write_text(yaml.safe_dump(cfg))
            agent.proc.send_signal(signal.SIGHUP)
            await sub.wait_for(
                lambda s: (
                    last_health(s)["config"]["reloads"] == 3
                    and last_health(s)["uplink"]["connects"] == 2
                )
            )
            assert last_health(sub)["config"]["last_reload_ok"] is True
            assert await agent.stop() == 0

            # nothing lost: every poll of a, from first to last, arrived
            a = counters(sub, "a")
            assert a == list(range(1, len(a) + 1))
            seqs = sorted({r["seq"] for r in sub.readings()})
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            for msg in sub.on("/health"):
                validator("health").validate(msg)
    finally:
        await broker.stop()
    assert "Traceback" not in agent.log_text()


async def test_a_bad_certificate_refuses_the_whole_reload(tmp_path: Path) -> None:
    """A certificate or key that is readable but not valid (garbage, a key of another
    certificate, a CA file that is no certificate) refuses the reload as a whole: the
    uplink runs on as it was, a device change in the same file is not applied either."""
    broker, mosq = await start_tls_broker(tmp_path, require_cert=True, auth=False)
    try:
        async with Subscriber(broker.plain_port, "ioc/v1/#") as sub:
            path = agent_config(tmp_path, 1883, [device("a", 1)], health_interval="1s")
            cfg = yaml.safe_load(path.read_text())
            good_tls = {
                "ca_file": str(broker.ca),
                "cert_file": str(broker.client_cert),
                "key_file": str(broker.client_key),
            }
            cfg["uplink"] = {
                **cfg["uplink"],
                "url": f"mqtts://localhost:{broker.tls_port}",
                "tls": good_tls,
            }
            del cfg["uplink"]["username"], cfg["uplink"]["password_file"]
            path.write_text(yaml.safe_dump(cfg))
            agent = AgentProc(path, tmp_path / "agent.log")
            agent.start()
            assert agent.proc is not None
            await sub.wait_for(lambda s: len(counters(s, "a")) >= 3 and bool(s.on("/health")))

            garbage = tmp_path / "garbage.pem"
            garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n")
            other_key = tmp_path / "other.key"
            trustme.CA().issue_cert("gw-test").private_key_pem.write_to_path(str(other_key))
            not_a_ca = tmp_path / "not-a-ca.pem"
            not_a_ca.write_text("this is not a certificate\n")
            bad = [
                ("cert_file", garbage),
                ("key_file", other_key),  # readable, valid, but not the certificate's key
                ("ca_file", not_a_ca),
            ]
            for n, (key, file) in enumerate(bad, start=1):
                cfg["uplink"]["tls"] = {**good_tls, key: str(file)}
                cfg["devices"] = [device("a", 1), device("c", 1)]
                path.write_text(yaml.safe_dump(cfg))
                seen = len(counters(sub, "a"))
                agent.proc.send_signal(signal.SIGHUP)

                def reloaded(s: Subscriber, n: int = n) -> bool:
                    return bool(last_health(s)["config"]["reloads"] == n)

                def delivered(s: Subscriber, seen: int = seen) -> bool:
                    return len(counters(s, "a")) > seen + 3

                await health_or_exit(sub, agent, reloaded)
                assert agent.proc.poll() is None, agent.log_text()[-3000:]  # it did not crash
                h = last_health(sub)
                assert h["config"]["last_reload_ok"] is False
                assert any(str(file) in e for e in h["config"]["errors"]), h["config"]
                assert h["uplink"]["connects"] == 1  # the old connection was kept
                # the old uplink delivers on; the device added in the refused file never ran
                await sub.wait_for(delivered)
                assert not [r for r in sub.readings() if r["device"] == "c"]
            assert "reload refused" in agent.log_text()
            assert await agent.stop() == 0
            a = counters(sub, "a")
            assert a == list(range(1, len(a) + 1))  # a was never restarted
    finally:
        mosq.terminate()
        mosq.wait(10)
    assert "Traceback" not in agent.log_text()


async def test_a_status_change_is_applied(tmp_path: Path) -> None:
    """status.socket and status.tcp_port change on a reload: the API moves to them."""
    broker = Broker(tmp_path)
    await broker.start()
    first, second = tmp_path / "first.sock", tmp_path / "second.sock"
    try:
        path = agent_config(tmp_path, broker.port, [device("a", 1)], status__socket=str(first))
        agent = AgentProc(path, tmp_path / "agent.log")
        agent.start()
        assert agent.proc is not None
        health = await until(lambda: fetch(first, "/health", timeout=2))
        assert health["config"]["reloads"] == 0
        port = free_port()
        cfg = yaml.safe_load(path.read_text())
        cfg["status"] = {"socket": str(second), "tcp_port": port}
        path.write_text(yaml.safe_dump(cfg))
        agent.proc.send_signal(signal.SIGHUP)
        health = await until(lambda: fetch(second, "/health", timeout=2))
        assert health["config"]["last_reload_ok"] is True
        assert health["config"]["restart_needed"] == []
        assert not first.exists()  # the old socket is gone, not left answering stale

        def over_tcp() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())

        assert (await until(over_tcp))["config"]["reloads"] == 1
        assert await agent.stop() == 0
    finally:
        await broker.stop()
    assert "Traceback" not in agent.log_text()


async def until(get: Callable[[], Any], timeout: float = 20.0) -> Any:
    """What ``get`` returns once it stops raising OSError (polled: a socket has no event)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await asyncio.to_thread(get)
            except OSError:
                await asyncio.sleep(0.1)


async def health_or_exit(
    sub: Subscriber, agent: AgentProc, pred: Callable[[Subscriber], bool]
) -> None:
    """Wait for ``pred`` on what the subscriber receives, or for the agent to exit."""
    proc = agent.proc
    assert proc is not None
    waits = [
        asyncio.create_task(sub.wait_for(pred)),
        asyncio.create_task(asyncio.to_thread(proc.wait, 20)),
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    for t in done:
        t.result()
