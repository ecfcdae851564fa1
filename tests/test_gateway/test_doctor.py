"""``tepi doctor`` against real parts: a Mosquitto that wants a password, a pty as a serial
port, a buffer file; then a missing port, a broker that is down, a host that does not
resolve, a damaged buffer file and an invalid config, each reported with its fix."""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import tty
from pathlib import Path

import pytest
import yaml
from helpers import (
    REPO,
    TEST_SECRETS,
    Broker,
    TlsBroker,
    agent_config,
    run_tepi,
    start_tls_broker,
)

from tepi.gateway.config import PASSWORD_CREDENTIAL, SECRETS_DIR
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
        me = pwd.getpwuid(os.geteuid()).pw_name  # the pty is this user's own
        out = run_tepi("doctor", "--config", str(cfg), "--service-user", me)
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
        bad = run_tepi("doctor", "--config", str(cfg), "--service-user", me)
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


async def test_every_broker_of_a_failover_list_is_checked(tmp_path: Path) -> None:
    """A list of two: the first works, the second is down. The second fails the check (a
    failover broker that cannot be used is found at the install), and the first's login
    line names it."""
    broker = password_broker(tmp_path)
    await broker.start()
    try:
        down = free_port()
        cfg = agent_config(
            tmp_path,
            broker.port,
            [],
            uplink__url=[f"mqtt://127.0.0.1:{broker.port}", f"mqtt://127.0.0.1:{down}"],
        )
        out = run_tepi("doctor", "--config", str(cfg))
    finally:
        await broker.stop()
    assert out.returncode == 6, out.stdout
    assert f"MQTT login as tepi-test accepted by 127.0.0.1:{broker.port}" in out.stdout
    assert re.search(rf"FAIL  tcp +127\.0\.0\.1:{down}: ", out.stdout), out.stdout


def sample_for_site(tmp: Path, broker: TlsBroker, ports: tuple[str, str]) -> Path:
    """The config the installer ships, edited for this site as a technician would: the
    broker, its CA, the user name, the two serial ports. ``password_file: mqtt-password``
    (a credential the unit loads) is left as shipped."""
    text = (REPO / "systemd" / "tepi.yaml.sample").read_text()
    edits = [
        ("url: mqtts://ioc.example.org:8883", f"url: mqtts://localhost:{broker.tls_port}"),
        ("username: site-gateway-01", "username: gw-test"),
        ("  # tls:\n  #   ca_file: /etc/tepi/ca.pem\n", f"  tls:\n    ca_file: {broker.ca}\n"),
        ("data_dir: /var/lib/tepi", f"data_dir: {tmp / 'data'}"),
        ("port: /dev/ttyUSB0", f"port: {ports[0]}"),
        ("port: /dev/serial0", f"port: {ports[1]}"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    assert "password_file: mqtt-password\n" in text
    path = tmp / "tepi.yaml"
    path.write_text(text)
    return path


def pty(group: int, mode: int) -> tuple[int, int, str]:
    """A real pty standing in for a serial port, with the group and mode given."""
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    os.chown(name, -1, group)
    Path(name).chmod(mode)
    return master, slave, name


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a pty another group needs root")
async def test_the_shipped_sample_reads_the_password_and_checks_ports_as_the_service(
    tmp_path: Path,
) -> None:
    """Doctor, run by hand (no $CREDENTIALS_DIRECTORY, as root), reads the password where the
    unit's LoadCredential= loads it from, and checks the serial ports for the service's user
    (here ``nobody``: it is in no group of the ports; root could open them all)."""
    broker, mosq = await start_tls_broker(tmp_path, require_cert=False, auth=True)
    dialout, root, nogroup = grp.getgrnam("dialout").gr_gid, 0, grp.getgrnam("nogroup").gr_gid
    fds: list[int] = []
    try:
        m1, s1, by_unit = pty(dialout, 0o660)  # the unit's SupplementaryGroups=dialout
        m2, s2, closed = pty(root, 0o660)
        fds += [m1, s1, m2, s2]
        cfg = sample_for_site(tmp_path, broker, (by_unit, closed))
        secrets = tmp_path / "secrets"
        secrets.mkdir(mode=0o750)
        (secrets / "mqtt-password").write_text(TEST_SECRETS[1] + "\n")
        (secrets / "mqtt-password").chmod(0o600)

        def doctor(user: str = "nobody") -> subprocess.CompletedProcess[str]:
            args = ("--config", str(cfg), "--service-user", user, "--secrets-dir", str(secrets))
            return run_tepi("doctor", *args)

        out = doctor()
        text = out.stdout + out.stderr
        assert out.returncode == 6, text
        assert (
            f"ok    password   {secrets}/mqtt-password (the unit's LoadCredential=mqtt-password"
        ) in text
        assert "ok    login      MQTT login as gw-test accepted" in text
        assert TEST_SECRETS[1] not in text
        lines = text.splitlines()
        assert any(f"ok    serial     {by_unit} " in ln and "user nobody" in ln for ln in lines)
        assert any(
            f"FAIL  serial     {closed} " in ln
            and "is not readable and writable by user nobody" in ln
            for ln in lines
        ), text
        assert "sudo usermod -aG root nobody" in text

        # the port given a group of the user: nothing fails any more
        os.chown(closed, -1, nogroup)
        out = doctor()
        assert out.returncode == 0, out.stdout + out.stderr
        assert "FAIL" not in out.stdout

        # a service user that does not exist is said, not taken for the one running doctor
        out = doctor("no-such-tepi-user")
        assert out.returncode == 6
        assert "the service user no-such-tepi-user does not exist" in out.stdout

        # the password missing: the file looked at is named, with how to create it
        (secrets / "mqtt-password").unlink()
        out = doctor()
        assert f"FAIL  password   cannot read {secrets}/mqtt-password" in out.stdout
        assert f"umask 077; cat > {secrets}/mqtt-password" in out.stdout
    finally:
        for fd in fds:
            os.close(fd)
        mosq.terminate()
        mosq.wait(10)


def test_the_credential_doctor_reads_is_the_one_the_unit_loads() -> None:
    """Doctor's default (config.SECRETS_DIR, PASSWORD_CREDENTIAL) is the unit's own line."""
    unit = (REPO / "systemd" / "tepi.service").read_text()
    loads = re.findall(r"^LoadCredential=-?([^:\s]+):(\S+)$", unit, re.MULTILINE)
    assert (PASSWORD_CREDENTIAL, str(SECRETS_DIR / PASSWORD_CREDENTIAL)) in loads, loads
    sample = (REPO / "systemd" / "tepi.yaml.sample").read_text()
    assert f"password_file: {PASSWORD_CREDENTIAL}\n" in sample
