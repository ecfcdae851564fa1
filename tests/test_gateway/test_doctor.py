"""``tepi doctor`` against real parts: a Mosquitto that wants a password, a pty as a serial
port, a buffer file; then a missing port, a broker that is down, a host that does not
resolve, a damaged buffer file and an invalid config, each reported with its fix."""

from __future__ import annotations

import os
import subprocess
import tty
from pathlib import Path

import pytest
import yaml
from helpers import TEST_SECRETS, Broker, agent_config, run_tepi, start_tls_broker

from tepi.gateway.localbroker import free_port

pytestmark = pytest.mark.timeout(60)


def password_broker(tmp: Path) -> Broker:
    pw = tmp / "passwd"
    pw.write_text(f"tepi-test:{TEST_SECRETS[0]}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
    return Broker(tmp, extra=f"allow_anonymous false\npassword_file {pw}\n")


async def test_a_healthy_setup_passes_and_each_problem_has_its_fix(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    broker = password_broker(tmp_path)
    await broker.start()
    try:
        dev = {"id": "pm", "driver": "serial", "protocol": "pms5003", "port": port}
        cfg = agent_config(tmp_path, broker.port, [dev])
        out = run_tepi("doctor", "--config", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        for check in ("config", "serial", "dns", "tcp", "login", "clock", "disk"):
            assert any(line.split()[1:2] == [check] for line in out.stdout.splitlines()), (
                check,
                out.stdout,
            )
        assert "MQTT login as tepi-test accepted" in out.stdout
        assert TEST_SECRETS[0] not in out.stdout + out.stderr

        # a wrong password is a failed login, with what to check
        data = yaml.safe_load(cfg.read_text())
        Path(data["uplink"]["password_file"]).write_text("wrong\n")
        bad = run_tepi("doctor", "--config", str(cfg))
        assert bad.returncode == 6
        assert "FAIL  login" in bad.stdout
        assert "check uplink.username and the password" in bad.stdout
    finally:
        await broker.stop()
        os.close(master)
        os.close(slave)

    # the adapter unplugged, the broker down, a damaged buffer file
    data["devices"][0]["port"] = "/dev/serial/by-id/usb-nothing-here"
    data["uplink"]["url"] = f"mqtt://127.0.0.1:{free_port()}"
    cfg.write_text(yaml.safe_dump(data))
    db = Path(data["gateway"]["data_dir"]) / "buffer.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    out = run_tepi("doctor", "--config", str(cfg))
    assert out.returncode == 6
    assert "FAIL  serial     /dev/serial/by-id/usb-nothing-here does not exist" in out.stdout
    assert "ls -l /dev/serial/by-id/" in out.stdout
    assert "FAIL  tcp" in out.stdout
    assert "FAIL  buffer" in out.stdout
    assert "WARN  service" in out.stdout

    # a host that does not resolve
    data["uplink"]["url"] = "mqtt://broker.invalid:1883"
    cfg.write_text(yaml.safe_dump(data))
    out = run_tepi("doctor", "--config", str(cfg))
    assert "FAIL  dns" in out.stdout


def test_an_invalid_config_is_reported_first(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, 1883, [{"id": "x", "driver": "synthetic", "metrics": 0}])
    out = run_tepi("doctor", "--config", str(cfg))
    assert out.returncode == 6
    assert "FAIL  config" in out.stdout
    assert "devices[0].metrics" in out.stdout


async def test_the_tls_check_verifies_the_certificate_and_the_host_name(tmp_path: Path) -> None:
    broker, proc = await start_tls_broker(tmp_path, require_cert=False, auth=False)
    try:

        def doctor(host: str, ca: Path) -> str:
            data = {
                "gateway": {"id": "gw-test", "data_dir": str(tmp_path / "data")},
                "uplink": {"url": f"mqtts://{host}:{broker.tls_port}", "tls": {"ca_file": str(ca)}},
            }
            cfg = tmp_path / "tls.yaml"
            cfg.write_text(yaml.safe_dump(data))
            return run_tepi("doctor", "--config", str(cfg)).stdout

        good = doctor("localhost", broker.ca)
        assert "ok    tls        localhost: certificate and host name verified" in good
        assert "ok    login" in good
        wrong_ca = doctor("localhost", broker.other_ca)
        assert "FAIL  tls" in wrong_ca
        assert "certificates are always verified" in wrong_ca
        assert "login" not in wrong_ca  # no fallback to anything after a failed handshake
        wrong_host = doctor("127.0.0.1", broker.ca)  # the certificate is for localhost
        assert "FAIL  tls" in wrong_host
    finally:
        proc.terminate()
        proc.wait(10)
