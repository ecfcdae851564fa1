"""The web console's security parts without HTTP: password hashes, the users file and
``tepi dashboard passwd``, sessions, the login limiter and its lockout's end, the Host check,
the certificate and its fingerprint, the config section's errors with file:line, and the
recent-values rings."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import run_tepi

from tepi.core.errors import ConfigError
from tepi.gateway.configload import parse_config
from tepi.gateway.dashauth import (
    LoginLimiter,
    Sessions,
    Users,
    certificate,
    fingerprint,
    hash_password,
    host_allowed,
    verify_password,
)
from tepi.gateway.dashhistory import POINTS, STEP_S, History

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A clock the test moves: the lockout's end without waiting minutes."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_password_hash_verifies_only_its_password() -> None:
    h = hash_password("correct horse")
    assert h.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert not verify_password("correct horse", "scrypt$garbage")
    assert hash_password("correct horse") != h  # salted


def test_users_file_is_0600_and_checks_passwords(tmp_path: Path) -> None:
    users = Users(tmp_path / "d" / "users")
    assert users.load() == {}
    assert users.set("ana", "admin", "pass-one-1") is True
    assert users.set("bo", "viewer", "pass-two-2") is True
    assert users.set("ana", "viewer", "pass-three") is False  # changed, not added
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    assert "pass" not in users.path.read_text()
    assert users.check("ana", "pass-one-1") is None  # the old password is gone
    ana = users.check("ana", "pass-three")
    assert ana is not None
    assert ana.role == "viewer"
    assert users.check("nobody", "pass-two-2") is None
    with pytest.raises(ValueError, match="user name"):
        users.set("a b", "admin", "whatever1")


def test_tepi_dashboard_passwd_reads_the_password_from_stdin(tmp_path: Path) -> None:
    cfg = tmp_path / "tepi.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw", "data_dir": str(tmp_path / "data")},
                "uplink": {"url": "mqtt://127.0.0.1:1883"},
                "dashboard": {"listen": "127.0.0.1:8443"},
            }
        )
    )
    out = run_tepi(
        "dashboard", "passwd", "tech", "--role", "admin", "-c", str(cfg), input="s3cret-pw\n"
    )
    assert out.returncode == 0, out.stderr
    users = Users(tmp_path / "data" / "dashboard" / "users")
    tech = users.check("tech", "s3cret-pw")
    assert tech is not None
    assert tech.role == "admin"
    # The role is kept when not given; a short password is refused (exit 2), nothing changes.
    out = run_tepi("dashboard", "passwd", "tech", "-c", str(cfg), input="new-password\n")
    assert out.returncode == 0, out.stderr
    tech = users.check("tech", "new-password")
    assert tech is not None
    assert tech.role == "admin"
    out = run_tepi("dashboard", "passwd", "tech", "-c", str(cfg), input="short\n")
    assert out.returncode == 2
    assert "at least 8" in out.stderr
    assert users.check("tech", "new-password") is not None
    # There is no way to give it on the command line.
    out = run_tepi("dashboard", "passwd", "tech", "--password", "x", "-c", str(cfg))
    assert out.returncode == 2


def test_sessions_expire_and_are_bounded() -> None:
    clock = Clock()
    sessions = Sessions(60, clock)
    s = sessions.create("ana", "admin")
    assert sessions.get(s.token) is s
    assert s.csrf != s.token
    assert sessions.get("made-up") is None
    clock.now += 61
    assert sessions.get(s.token) is None
    many = [sessions.create(f"u{i}", "viewer") for i in range(70)]
    assert sessions.get(many[0].token) is None  # the oldest went first
    assert sessions.get(many[-1].token) is many[-1]


def test_login_lockout_ends_by_itself() -> None:
    clock = Clock()
    lim = LoginLimiter(3, 300, clock)
    assert lim.locked("10.0.0.5") == 0
    assert lim.failed("10.0.0.5") is False
    assert lim.failed("10.0.0.5") is False
    assert lim.failed("10.0.0.5") is True  # the third: locked out
    assert lim.locked("10.0.0.5") == pytest.approx(300)
    assert lim.locked("10.0.0.6") == 0  # per client
    clock.now += 299
    assert lim.locked("10.0.0.5") == pytest.approx(1)
    clock.now += 2
    assert lim.locked("10.0.0.5") == 0  # over, and the count starts afresh
    assert lim.failed("10.0.0.5") is False
    # Failures spread wider than the lockout window do not add up.
    clock.now += 301
    assert lim.failed("10.0.0.5") is False
    lim.succeeded("10.0.0.5")
    assert lim.locked("10.0.0.5") == 0


@pytest.mark.parametrize(
    ("host", "any_ip", "ok"),
    [
        ("127.0.0.1:8443", False, True),
        ("localhost", False, True),
        ("[::1]:9100", False, True),
        ("192.168.1.20:8443", False, False),
        ("192.168.1.20:8443", True, True),
        ("[fe80::1]:8443", True, True),
        ("gateway.example", True, True),
        ("GATEWAY.example:8443", True, True),
        ("evil.example", True, False),
        ("evil.example:8443", True, False),
        ("127.0.0.1.evil.example", True, False),
        ("", True, False),
        (None, True, False),
    ],
)
def test_host_check(host: str | None, any_ip: bool, ok: bool) -> None:
    names = {"localhost", "127.0.0.1", "::1", "gateway.example"}
    assert host_allowed(host, names, any_ip=any_ip) is ok


def test_certificate_is_ec_p256_made_once_and_its_fingerprint_is_sha256(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path / "dash")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    pub = loaded.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.curve.name == "secp256r1"
    want = hashlib.sha256(loaded.public_bytes(Encoding.DER)).hexdigest().upper()
    fp = fingerprint(cert)
    assert fp.replace(":", "") == want
    assert certificate(tmp_path / "dash") == (cert, key)  # reused, not made again
    assert fingerprint(cert) == fp


def _config(dashboard: str) -> str:
    return (
        "gateway:\n  id: gw\n  data_dir: /tmp/x\n"
        "uplink:\n  url: mqtt://127.0.0.1:1883\n"
        f"dashboard:\n{dashboard}"
    )


@pytest.mark.parametrize(
    ("section", "line", "words"),
    [
        ("  listen: 8443\n", 7, "HOST:PORT"),
        ("  listen: example.com:8443\n", 7, "IP address"),
        ("  listen: 0.0.0.0:99999\n", 7, "HOST:PORT"),
        ("  listen: 0.0.0.0:8443\n  cert_file: /etc/c.pem\n", 6, "go together"),
        ('  listen: 0.0.0.0:8443\n  hosts: ["a b"]\n', 8, "host name"),
        ("  listen: 0.0.0.0:8443\n  lockout: 0s\n", 8, "lockout"),
        ("  listne: 0.0.0.0:8443\n", 7, "listen"),
    ],
)
def test_dashboard_config_errors_have_file_and_line(section: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(section), "tepi.yaml", check_files=False)
    text = str(err.value)
    assert f"tepi.yaml:{line}" in text, text
    assert words in text, text


def test_dashboard_is_off_by_default_and_listen_parses() -> None:
    cfg = parse_config(_config("  hosts: [Gw-01.Site]\n"), "tepi.yaml", check_files=False)
    assert cfg.dashboard.listen is None
    assert cfg.dashboard.hosts == ["gw-01.site"]
    cfg = parse_config(_config("  listen: '[::]:8443'\n"), "tepi.yaml", check_files=False)
    assert cfg.dashboard.listen == "[::]:8443"
    assert cfg.dashboard.users(Path("/d")) == Path("/d/dashboard/users")


def test_history_keeps_one_point_a_step_and_an_hour() -> None:
    h = History()
    h.add("d", "m", 1000.0, 1.0)
    h.add("d", "m", 1000.0, 9.0)  # the same reading again (a second page): skipped
    h.add("d", "m", 1003.0, 2.0)  # the same 10 s step: replaces
    h.add("d", "m", 1011.0, 3.0)
    h.add("d", "flag", 1011.0, True)  # not a number to plot
    h.add("d", "bad", 1011.0, 5.0, "bad")
    assert h.series("d") == {"m": [(1003.0, 2.0), (1011.0, 3.0)]}
    assert h.series("d", since=1003.0) == {"m": [(1011.0, 3.0)]}
    for i in range(POINTS + 50):
        h.add("d", "m", 2000.0 + i * STEP_S, float(i))
    pts = h.series("d")["m"]
    assert len(pts) == POINTS
    assert pts[-1] == (2000.0 + (POINTS + 49) * STEP_S, float(POINTS + 49))
    assert h.changed_since(pts[-2][0]) == {"d": {"m": [pts[-1]]}}
