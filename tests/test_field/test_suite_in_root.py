"""The README's two commands in a fresh Debian 12, with Debian's own Python 3.11.2 (issue 21,
point 8): ``bash .ci/setup && .venv/bin/tepi demo``, then ``bash .ci/run``, in a clone of
this checkout's HEAD inside the booted Debian 12 of tests/test_field/guest.py.

The guest is booted with systemd-nspawn, as test_booted.py's, but on the host's network
rather than on a /30 of its own: ``.ci/setup`` installs with apt and pip from Debian's mirror
and PyPI, and the guest's link would need the host to route and masquerade for it (a change
to the firewall of a machine other work shares). Sharing the network has two consequences,
both set up here and nowhere in the product:

- what the guest binds is the host's port: a package install must not start the broker it
  installs (mosquitto.service on 1883, rabbitmq-server.service on 5672 and epmd's 4369 are
  the host's already, or would be taken from it). A ``policy-rc.d`` that answers 101
  (Debian's "action forbidden by policy", which deb-systemd-invoke honours) keeps every
  installed service stopped; the suite starts private brokers on free ports, as on CI;
- the host's own CA for pip, when it has one (``PIP_CERT``, ``SSL_CERT_FILE``, or pip's
  ``global.cert``: an egress proxy that re-signs HTTPS), is handed to pip in the guest as
  ``PIP_CERT``. A box with a direct route to PyPI needs nothing of the sort.

The root is the cached one (minbase with systemd and dbus to boot, python3, openssl: what
guest.py's PACKAGES name), copied so that the run can write to disk rather than to a tmpfs
(the venv, the packages and the suite's files take gigabytes), and with python3-venv removed
again before the first command: a fresh Debian 12 with python3 and apt, as the README says.
Its /tmp is a directory on the disk, as Debian 12's is, not nspawn's tmpfs of a tenth of
the host's memory, which the suite's bundles filled.

Outside the default run (root, debootstrap and systemd-nspawn, Debian's mirror and PyPI, and
about 20 minutes of both cores):

    .venv/bin/python -m pytest -m field -s tests/test_field/test_suite_in_root.py

``-s`` prints the time each step took and the suite's counts. It tests the commit checked
out (HEAD), not uncommitted changes.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_field.guest import Guest, Timings, cached_root, result, why_not

pytestmark = [pytest.mark.field]

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = "/root/tepi"
DEMO_WINDOW_S = 20.0
READING = re.compile(r"^\d\d:\d\d:\d\d  (\S+)\s+(\S+)\s+(\S+)\s+(\S*)\s+seq (\d+)$")
# The README's sample output: the demo's devices that read at once.
DEMO_DEVICES = {"aq-station-1", "river-level-3", "pm-sensor-4", "cam-1"}
# Packages that a fresh Debian 12 with python3 and apt does not have, and .ci/setup installs.
NOT_THERE_YET = ("python3-venv", "mosquitto", "gcc", "nats-server", "rabbitmq-server")
POLICY_RC_D = """#!/bin/sh
# tests/test_field/test_suite_in_root.py: this guest shares the host's network, so no service
# a package installs is started (101: action forbidden by policy).
exit 101
"""


@dataclass
class Debian:
    guest: Guest
    timings: Timings
    work: Path


def host_pip_cert() -> Path | None:
    """The CA file this host gives pip, if any (an egress proxy's, which re-signs HTTPS)."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    conf = configparser.ConfigParser()
    conf.read(["/etc/pip.conf", "/etc/xdg/pip/pip.conf", Path.home() / ".config/pip/pip.conf"])
    cert = conf.get("global", "cert", fallback="")
    return Path(cert) if cert and Path(cert).is_file() else None


def clone_head(dest: Path) -> str:
    """A clone of this checkout with HEAD's commit checked out; that commit."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip
    for cmd in (
        ["git", "clone", "-q", "--no-hardlinks", "--no-checkout", str(REPO), str(dest)],
        ["git", "-C", str(dest), "checkout", "-q", "--detach", head],
    ):
        subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    return head


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian]:
    problem = why_not()
    if problem:
        pytest.skip(problem)
    if shutil.which("git") is None:
        pytest.skip("no git, to clone the checkout into the root")
    timings = Timings()
    work = tmp_path_factory.mktemp("suite-in-root")
    share = work / "share"
    share.mkdir()
    with timings.step("root (debootstrap, or the cache)"):
        cached = cached_root()
    root = work / "root"
    with timings.step("a writable copy of the root"):
        subprocess.run(["cp", "-a", str(cached), str(root)], timeout=900, check=True)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    env = {"CI": "true"}
    cert = host_pip_cert()
    if cert is not None:
        shutil.copy(cert, root / "root/pip-ca.crt")
        env["PIP_CERT"] = "/root/pip-ca.crt"
        timings.facts["pip's CA in the guest"] = f"{cert} (PIP_CERT)"
    with timings.step("git clone of HEAD"):
        head = clone_head(root / CHECKOUT.lstrip("/"))
    timings.facts["commit"] = head
    tmp = work / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    guest = Guest(root, share, work, host_network=True, volatile=False, env=env, tmp=tmp)
    try:
        with timings.step("boot (to systemctl is-system-running: running)"):
            guest.boot()
        # The cached root has python3-venv for test_booted.py's install; a fresh Debian 12
        # with python3 and apt has not.
        res = guest.run(
            ["dpkg", "--purge", "python3-venv", "python3.11-venv", "python3-pip-whl",
             "python3-setuptools-whl"],
            timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, result(res)
        yield Debian(guest, timings, work)
    finally:
        guest.stop()
        for big in (root, tmp):  # gigabytes; the logs stay in work
            shutil.rmtree(big, ignore_errors=True)
        print("\nsuite-in-root timings (s):")
        for name, seconds in timings.steps.items():
            print(f"  {seconds:7.1f}  {name}")
        for name, fact in timings.facts.items():
            print(f"  {name}: {fact}")


@pytest.mark.timeout(2400)  # the first run makes the root with debootstrap
def test_setup_on_python3_and_apt_alone(debian: Debian) -> None:
    guest = debian.guest
    res = guest.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"])
    installed = {line.split()[0] for line in res.stdout.splitlines() if line.endswith(" installed")}
    assert {"python3", "apt"} <= installed, res.stdout
    assert not installed & set(NOT_THERE_YET), sorted(installed & set(NOT_THERE_YET))
    version = guest.run(["/usr/bin/python3", "--version"]).stdout.strip()
    assert version == "Python 3.11.2", version
    debian.timings.facts["system Python"] = version

    with debian.timings.step("bash .ci/setup (apt-get and pip over the network)"):
        res = guest.run(["sh", "-c", f"cd {CHECKOUT} && bash .ci/setup"], timeout=2000)
    (debian.work / "setup.log").write_text(res.stdout + res.stderr)
    assert res.returncode == 0, result(res)
    assert "setup done: .venv ready (Python 3.11.2)" in res.stdout, result(res)


def as_from_a_terminal() -> None:
    """Ctrl-C's SIGINT as a terminal's foreground job has it (see test_demo.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_of(pid: int) -> int:
    """The one child of ``pid`` (nsenter's, which runs the command in the guest)."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                return int(child)
    return 0


def demo_processes(guest: Guest) -> list[str]:
    """The command lines in the guest of what the demo starts: simulator, broker, agent."""
    res = guest.sh("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done")
    return [
        line
        for line in res.stdout.splitlines()
        if any(name in line for name in ("tepi_sim", "tepi-sim", "mosquitto", "tepi.gateway"))
    ]


@pytest.mark.timeout(300)
def test_demo_prints_readings_at_once_and_stops_on_ctrl_c(debian: Debian) -> None:
    guest = debian.guest
    argv = guest.argv(["sh", "-c", f"cd {CHECKOUT} && exec .venv/bin/tepi demo"])
    started = time.monotonic()
    demo = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_terminal,  # noqa: PLW1509 (no threads are started before it)
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    out: list[str] = []
    first_at: float | None = None
    try:
        # Until DEMO_WINDOW_S after the first reading: each wait is on the demo's next line.
        while first_at is None or time.monotonic() - first_at < DEMO_WINDOW_S:
            limit = 120.0 if first_at is None else DEMO_WINDOW_S - (time.monotonic() - first_at)
            try:
                line = lines.get(timeout=max(limit, 0.01))
            except queue.Empty:
                assert first_at is not None, "no reading within 120 s:\n" + "\n".join(out)
                break
            assert line is not None, "the demo ended on its own:\n" + "\n".join(out)
            out.append(line)
            if first_at is None and READING.match(line):
                first_at = time.monotonic()
        inside = child_of(demo.pid)
        assert inside, "no demo process under nsenter"
        stop_at = time.monotonic()
        os.kill(inside, signal.SIGINT)
        code = demo.wait(30)
        stop_s = time.monotonic() - stop_at
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    text = "\n".join(out)
    (debian.work / "demo.log").write_text(text)
    assert first_at is not None
    debian.timings.steps["demo: start to the first reading printed"] = round(first_at - started, 1)
    debian.timings.steps["demo: Ctrl-C to exit"] = round(stop_s, 1)
    rows = [m.groups() for line in out if (m := READING.match(line))]
    debian.timings.facts["demo: readings printed"] = f"{len(rows)} in {DEMO_WINDOW_S:.0f} s"
    assert code == 0, text[-4000:]
    assert stop_s < 5, f"Ctrl-C took {stop_s:.1f} s"
    assert {row[0] for row in rows} >= DEMO_DEVICES, text[-4000:]
    assert " ERROR " not in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert demo_processes(guest) == [], "left behind by the demo"


SUITE_COUNT = re.compile(r"(\d+) (failed|passed|skipped|errors?|xfailed|xpassed)\b")
SUITE_SUMMARY = re.compile(r"^=*\s*(\d+ (?:failed|passed).*) in ([\d.]+)s")


@pytest.mark.timeout(5400)
def test_the_whole_suite_passes(debian: Debian) -> None:
    guest = debian.guest
    log = "/root/suite.log"
    with debian.timings.step("bash .ci/run (CI=true: lint, types, the whole suite)"):
        res = guest.run(["sh", "-c", f"cd {CHECKOUT} && bash .ci/run > {log} 2>&1"], timeout=5000)
    text = guest.path(log).read_text(errors="replace")
    (debian.work / "suite.log").write_text(text)
    summary = [m for line in text.splitlines() if (m := SUITE_SUMMARY.match(line))]
    short = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if summary:
        counts = {kind: int(n) for n, kind in SUITE_COUNT.findall(summary[-1].group(1))}
        debian.timings.facts["suite"] = f"{counts} in {float(summary[-1].group(2)):.0f} s"
    for line in short:
        print(line)
    assert res.returncode == 0, "\n".join(short) or text[-6000:]
    assert summary, text[-6000:]
