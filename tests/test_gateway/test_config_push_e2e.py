"""Config pushed over MQTT (and by a technician on the box), on trial, kept or rolled back:
``tepi remote`` / ``tepi config`` -> a real Mosquitto -> ``tepi run`` -> the Modbus simulator.

The broker checks the agent's password (anonymous clients, the test's, may connect). A meter
with a counter is polled every 200 ms throughout, and the completeness checker shows that no
reading is lost across any of the pushes, the rollbacks and the kill -9.

Checked: an invalid config is refused with its errors and their lines, and nothing changes;
a valid one applies and is confirmed; a merge patch applies; one with a wrong broker
password is rolled back within confirm_timeout and the box answers again; one that breaks a
device is rolled back; a kill -9 during a trial goes back at the next start and answers the
request; config.rollback goes back by hand; ``tepi config apply`` does the same on the box;
an edit of the base file on the box wins over a pushed config."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    TEST_SECRETS,
    AgentProc,
    Broker,
    Subscriber,
    agent_config,
    agent_running,
    remote,
    run_tepi,
)
from rig import validator

from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(240)

RESULT = validator("command_result")
CONFIRM_S = 5

SIM: dict[str, Any] = {
    "seed": 7,
    "devices": [
        {"id": "meter", "transport": "tcp", "unit": 1,
         "registers": [{"address": 10, "table": "holding", "kind": "counter", "type": "uint16"}]},
        {"id": "gauge", "transport": "tcp", "unit": 1,
         "registers": [{"address": 100, "table": "input", "kind": "constant", "value": 1.5,
                        "type": "int16", "scale": 0.01}]},
    ],
}  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def devices(sim: Simulator, gauge_port: int | None = None) -> list[dict[str, Any]]:
    def port(dev: str) -> int:
        return int(sim.endpoint(dev).rsplit(":", 1)[1])

    return [
        {"id": "meter", "driver": "modbus-tcp", "host": "127.0.0.1", "port": port("meter"),
         "unit": 1, "poll_interval": "200ms",
         "registers": [{"name": "counter", "address": 10, "table": "holding", "type": "uint16"}]},
        {"id": "gauge", "driver": "modbus-tcp", "host": "127.0.0.1",
         "port": gauge_port or port("gauge"), "unit": 1, "poll_interval": "1s", "timeout": "300ms",
         "registers": [{"name": "level", "address": 100, "table": "input", "type": "int16",
                        "scale": 0.01}]},
    ]  # fmt: skip


@dataclass
class Box:
    tmp: Path
    broker: Broker
    sim: Simulator
    sub: Subscriber
    agent: AgentProc
    base: dict[str, Any]

    async def command(self, *args: str, wait: float = 60) -> tuple[int, dict[str, Any]]:
        code, res, err = await asyncio.to_thread(remote, self.broker.port, *args, timeout=wait)
        assert res is not None, err
        RESULT.validate(res)
        return code, res

    async def push(self, cfg: dict[str, Any] | str, *extra: str) -> tuple[int, dict[str, Any]]:
        path = self.tmp / f"push-{time.monotonic_ns()}.yaml"
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
        return await self.command("config.apply", f"config=@{path}", *extra)

    async def get(self) -> dict[str, Any]:
        code, res = await self.command("config.get")
        assert code == 0, res
        out: dict[str, Any] = res["output"]
        return out

    def with_(self, **change: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(json.dumps(self.base))
        for key, value in change.items():
            section, _, name = key.partition("__")
            if name:
                cfg[section][name] = value
            else:
                cfg[section] = value
        return cfg

    def online(self) -> int:
        return sum(m["state"] == "online" for m in self.sub.on("/status"))

    def results(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.sub.on("/cmd_result") if r["id"] == request_id]

    def assert_nothing_lost(self) -> None:
        counter = self.sim.device("meter").counter_value(address=10, table="holding")
        check = self.sub.completeness()
        (row,) = [r for r in check.table({"meter": counter}) if r.device == "meter"]
        assert row.lost == 0, row
        assert row.out_of_order == 0, row


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"tepi-test:{TEST_SECRETS[0]}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
    broker = Broker(tmp_path, extra=f"password_file {passwd}", persistence=True)
    await broker.start()
    async with Simulator(SIM) as sim, Subscriber(broker.port, "ioc/v1/#") as sub:
        path = agent_config(
            tmp_path, broker.port, devices(sim), status__socket=str(tmp_path / "status.sock")
        )
        base = yaml.safe_load(path.read_text())
        base["commands"] = {
            "allow_unsigned_changes": True,
            "confirm_timeout": f"{CONFIRM_S}s",
            "policy": {
                "config.get": "unsigned", "config.apply": "unsigned", "config.rollback": "unsigned"
            },
        }  # fmt: skip
        path.write_text(yaml.safe_dump(base, sort_keys=False))
        async with agent_running(
            path, sub, broker, lambda s: any(r["device"] == "gauge" for r in s.readings())
        ) as agent:
            yield Box(tmp_path, broker, sim, sub, agent, base)


async def test_push_confirm_refuse_and_roll_back(box: Box) -> None:
    assert (await box.get())["version"] == "base"

    # Invalid: refused with every error and its line, and nothing changes.
    bad = yaml.safe_dump(box.with_(devices=[{**box.base["devices"][0], "poll_interval": "fast"}]))
    code, res = await box.push(bad + "bogus: 1\n")
    assert (code, res["reason"]) == (6, "config_refused"), res
    errors = res["output"]["errors"]
    assert len(errors) == 2, errors
    assert any("poll_interval" in e and ":" in e.split(" ")[0] for e in errors), errors
    assert any("bogus" in e for e in errors), errors
    assert (await box.get())["version"] == "base"
    # The gateway's identity cannot be pushed.
    code, res = await box.push(box.with_(gateway={**box.base["gateway"], "id": "other"}))
    assert (code, res["reason"]) == (6, "config_refused"), res

    # Valid: the gauge polled twice as often; confirmed, and running.
    faster = box.with_(devices=[box.base["devices"][0], {**box.base["devices"][1],
                                                         "poll_interval": "500ms"}])  # fmt: skip
    started = time.monotonic()
    code, res = await box.push(faster)
    assert code == 0, str(res)
    assert res["output"]["version"] == "v1"
    assert res["output"]["confirm_s"] < CONFIRM_S
    took = time.monotonic() - started
    got = await box.get()
    assert (got["version"], got["sha256"], got["trial"]) == ("v1", res["output"]["sha256"], None)
    assert "500ms" in got["config"]
    assert TEST_SECRETS[0] not in got["config"]
    print(f"config push: confirmed in {res['output']['confirm_s']} s, {took:.2f} s end to end")

    # A merge patch: only what it names changes.
    code, res = await box.command("config.apply", 'patch={"uplink": {"health_interval": "30s"}}')
    assert code == 0, str(res)
    assert res["output"]["version"] == "v2"
    assert "health_interval: 30s" in (await box.get())["config"]

    # A wrong broker password: the new uplink never connects; back to v2 within the
    # timeout, and the box answers again (this very result comes over the old uplink).
    wrong = box.tmp / "wrong-password"
    wrong.write_text(TEST_SECRETS[2] + "\n")
    wrong.chmod(0o600)
    broken = yaml.safe_load((box.tmp / "data" / "config" / "v2.yaml").read_text())
    broken["uplink"]["password_file"] = str(wrong)
    onlines = box.online()
    started = time.monotonic()
    code, res = await box.push(broken)
    recovered = time.monotonic() - started
    assert (code, res["reason"]) == (6, "rolled_back"), res
    assert "uplink is not connected" in res["detail"], res
    assert res["output"]["back_to"] == "v2"
    assert res["output"]["recovered"] is True
    assert CONFIRM_S <= recovered < CONFIRM_S + 15, recovered
    await box.sub.wait_for(lambda s: box.online() > onlines)
    assert (await box.get())["version"] == "v2"
    print(
        f"rollback of a broken uplink: trial {res['output']['trial_s']} s, back and connected "
        f"{res['output']['recover_s']} s later, {recovered:.2f} s end to end"
    )

    # A device broken by the change (its port): rolled back, and it polls again.
    code, res = await box.push(box.with_(devices=devices(box.sim, gauge_port=_closed_port())))
    assert (code, res["reason"]) == (6, "rolled_back"), res
    assert "do not work: gauge (" in res["detail"], res
    assert (await box.get())["version"] == "v2"
    back = time.time()
    await box.sub.wait_for(
        lambda s: any(r["device"] == "gauge" and r["ts"] > back for r in s.readings())
    )

    # By hand: back to the base file.
    code, res = await box.command("config.rollback", "to=base")
    assert code == 0, str(res)
    assert (await box.get())["version"] == "base"

    # Nothing lost through all of it.
    await box.sub.wait_for(lambda s: s.max_counter.get("meter", 0) >= _counter(box))
    box.assert_nothing_lost()


def _counter(box: Box) -> int:
    return int(box.sim.device("meter").counter_value(address=10, table="holding"))


async def test_a_kill_during_the_trial_goes_back_at_the_next_start(box: Box) -> None:
    faster = box.with_(devices=[box.base["devices"][0], {**box.base["devices"][1],
                                                         "poll_interval": "500ms"}])  # fmt: skip
    code, res = await box.push(faster)
    assert code == 0, str(res)
    # A change that cannot confirm (the gauge's port), with a long trial: killed during it.
    slow = box.tmp / "slow.yaml"
    slow.write_text(yaml.safe_dump(box.with_(devices=devices(box.sim, _closed_port()))))
    state = box.tmp / "data" / "config" / "state.json"
    pushing = asyncio.create_task(
        box.command(
            "config.apply", f"config=@{slow}", "confirm_timeout=120", "--id", "push-killed",
            wait=90,
        )
    )  # fmt: skip
    await box.sub.wait_for(
        lambda s: state.exists() and (json.loads(state.read_text())["trial"] or {}).get(
            "request") == "push-killed"
    )  # fmt: skip
    assert box.agent.proc is not None
    box.agent.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(box.agent.proc.wait, 10)
    onlines = box.online()
    box.agent.start()
    await box.sub.wait_for(lambda s: box.online() > onlines)
    # The request is answered: rolled back at the start, to v1.
    code, res = await pushing
    assert (code, res["reason"], res["output"]["back_to"]) == (6, "rolled_back", "v1"), res
    assert "stopped during the trial" in res["detail"]
    got = await box.get()
    assert (got["version"], got["trial"]) == ("v1", None)
    assert got["history"][-1]["state"] == "rolled_back"
    assert "stopped during the trial of v2: back to v1" in box.agent.log_text()
    # Readings taken before the kill and committed are all there (a kill -9 loses at most
    # what was not yet committed: the last commit_interval).
    await box.sub.wait_for(lambda s: s.max_counter.get("meter", 0) >= _counter(box))
    counter = _counter(box)
    (row,) = [r for r in box.sub.completeness().table({"meter": counter}) if r.device == "meter"]
    assert row.lost <= 3, row  # commit_interval 200 ms at a 200 ms poll: one or two


async def test_tepi_config_on_the_box_and_a_local_edit_wins(box: Box) -> None:
    new = box.tmp / "new.yaml"
    new.write_text(yaml.safe_dump(box.with_(uplink__health_interval="20s"), sort_keys=False))
    args = ("--config", str(box.agent.config))
    out = await asyncio.to_thread(run_tepi, "config", "apply", str(new), "--dry-run", *args)
    assert out.returncode == 0, out.stderr
    assert '"valid": true' in out.stdout
    out = await asyncio.to_thread(run_tepi, "config", "apply", str(new), *args)
    assert out.returncode == 0, out.stderr
    assert '"version": "v1"' in out.stdout
    out = await asyncio.to_thread(run_tepi, "config", "get", *args)
    assert out.returncode == 0, out.stderr
    assert "health_interval: 20s" in out.stdout
    assert "version v1" in out.stderr
    bad = box.tmp / "bad.yaml"
    bad.write_text("gateway: {id: gw-test}\nnonsense: [\n")
    out = await asyncio.to_thread(run_tepi, "config", "apply", str(bad), *args)
    assert out.returncode == 1, out.stdout
    assert "not valid YAML" in out.stderr

    # A technician edits the base file and reloads: the edit wins over v1.
    edited = box.with_(uplink__health_interval="45s")
    box.agent.config.write_text(yaml.safe_dump(edited, sort_keys=False))
    assert box.agent.proc is not None
    box.agent.proc.send_signal(signal.SIGHUP)
    await box.sub.wait_for(lambda s: "an edit on the box wins" in box.agent.log_text())
    got = await box.get()
    assert got["version"] == "base"
    assert "health_interval: 45s" in got["config"]
