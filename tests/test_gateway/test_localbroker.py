"""The local broker helpers that the demo, the bench and the tests share."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import mosquitto_bin

from tepi.gateway.localbroker import free_port, mosquitto_conf, wait_port


async def test_a_broker_that_exits_fails_fast_not_at_the_timeout(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "bad.conf"
    conf.write_text(mosquitto_conf(port, extra=["no_such_option 1"]))
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="has exited"):
        await wait_port(port, timeout_s=30, alive=lambda: proc.poll() is None)
    assert time.monotonic() - started < 10


async def test_config_starts_a_broker_that_listens(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(mosquitto_conf(port, persistence_dir=tmp_path))
    proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        await wait_port(port, alive=lambda: proc.poll() is None)
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "mosquitto.db").exists(), "persistence writes into the scratch dir"
