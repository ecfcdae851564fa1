"""The aarch64 bundle on an arm64 Debian 12, emulated (issue 21, point 2): the release's
offline bundle (aarch64 and x86_64 wheels) installed with no network, ``tepi check`` on the
installed config, and a 30 s ``tepi demo`` whose readings reach a Mosquitto on the host.

The root is an arm64 Debian 12 made with ``debootstrap --foreign`` and its second stage run
emulated (tests/test_field/guest.py, cached like the x86_64 root). Its binaries run through
qemu-user (binfmt_misc), so this is a chroot, not a booted system: qemu-user emulates
processes, not a machine with systemd as PID 1 (test_booted.py does that on x86_64). The
commands share the host's network, so the demo reaches the host's broker on loopback, as
on a box whose broker runs beside the agent; the install alone runs in a network namespace
with nothing in it.

Each step is timed, and the emulated agent's CPU is measured, with the same demo run natively
for comparison, so that the figures for a real Raspberry Pi can be estimated
(docs/operations.md, "On arm64, emulated"). Outside the default run (root; qemu-user-static,
binfmt-support and debootstrap; Debian's mirror the first time):

    .venv/bin/python -m pytest -m field -s tests/test_field/test_aarch64.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from helpers import Broker, Subscriber
from test_field.guest import Chroot, Timings, cached_root, result, why_not_foreign
from updatekit import Keys, build_bundle, keys

from tepi.core import __version__

__all__ = ["keys"]  # a fixture, used by name

pytestmark = [pytest.mark.field, pytest.mark.asyncio(loop_scope="module")]

ARCH = "arm64"
TEPI = "/opt/tepi/venv/bin/tepi"
CONFIG = "/etc/tepi/tepi.yaml"
AS_TEPI = ("setpriv", "--reuid=tepi", "--regid=tepi", "--init-groups")
BUNDLE_DIR = f"/root/tepi-bundle-{__version__}"
REPO = Path(__file__).resolve().parents[2]
DEMO_DEVICES = {"aq-station-1", "noise-meter-2", "river-level-3", "siren-1", "pm-sensor-4", "cam-1"}
DEMO_SECONDS = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Arm:
    chroot: Chroot
    broker: Broker
    timings: Timings
    work: Path

    async def run(
        self, *cmd: str, timeout: float = 120, network: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.chroot.run, list(cmd), timeout=timeout, network=network)

    async def sh(
        self, script: str, timeout: float = 120, network: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.chroot.sh, script, timeout=timeout, network=network)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def arm(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arm]:
    problem = why_not_foreign(ARCH)
    if problem:
        pytest.skip(problem)
    timings = Timings()
    work = tmp_path_factory.mktemp("arm64")
    share = work / "share"
    share.mkdir()
    with timings.step("root (debootstrap --foreign + emulated second stage, or the cache)"):
        root = await asyncio.to_thread(cached_root, arch=ARCH)
    with timings.step("bundle (bundle.sh: aarch64 and x86_64, as released)"):
        await asyncio.to_thread(
            build_bundle, share / "bundle.tar.gz", keys.private, native=False, timeout=900
        )
    await asyncio.to_thread(simulator_wheel, share, work)
    shutil.copy(keys.public, share / "signing.pub")
    chroot = Chroot(root, share, work)
    broker = Broker(work)
    try:
        await asyncio.to_thread(chroot.start)
        await broker.start()
        yield Arm(chroot, broker, timings, work)
    finally:
        await broker.stop()
        await asyncio.to_thread(chroot.stop)
        print("\narm64 (emulated) timings (s):")
        for name, seconds in timings.steps.items():
            print(f"  {seconds:7.1f}  {name}")
        for name, fact in timings.facts.items():
            print(f"  {name}: {fact}")


def simulator_wheel(share: Path, work: Path) -> None:
    """tepi-sim's wheel (pure Python), for the demo: a gateway does not carry the simulator,
    and its dependencies are all in the bundle. Built from a copy (pip leaves build/)."""
    src = work / "hw-sim"
    shutil.copytree(
        REPO / "hw-sim", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--quiet", "--wheel-dir", str(share), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.timeout(3600)  # the first run makes the root, emulated
async def test_install_from_the_bundle_with_no_network(arm: Arm) -> None:
    res = await arm.run("uname", "-m")
    assert res.stdout.strip() == "aarch64", result(res)
    # The install's network namespace has no link and no route: nothing is reachable.
    res = await arm.sh(
        "exec python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 443), timeout=3)'",
        network=False,
    )
    assert res.returncode != 0
    assert "Network is unreachable" in res.stderr, result(res)

    with arm.timings.step("unpack the bundle (tar -xzf, emulated)"):
        res = await arm.run("tar", "-xzf", "/srv/field/bundle.tar.gz", "-C", "/root", timeout=600)
    assert res.returncode == 0, result(res)
    with arm.timings.step("install (install.sh --bundle, emulated: signature, venv, pip)"):
        res = await arm.run(
            f"{BUNDLE_DIR}/install.sh", "--bundle", "/srv/field/bundle.tar.gz",
            "--key", "/srv/field/signing.pub",
            timeout=1800, network=False,
        )  # fmt: skip
    assert res.returncode == 0, result(res)
    for attempt in ("Retrying", "NewConnectionError", "name resolution"):
        assert attempt not in res.stderr, result(res)
    assert f"not started: {CONFIG} is the unedited sample" in res.stdout, result(res)
    assert (await arm.run("id", "-nG", "tepi")).stdout.split() == ["tepi", "dialout"]
    res = await arm.run(TEPI, "--version")
    assert res.stdout.strip().endswith(__version__), result(res)
    # The venv's Python and its compiled wheels are aarch64 ones.
    probe = (
        "import platform, numpy, cv2, av, orjson, pydantic_core; print(platform.machine(), "
        "numpy.__file__, cv2.__file__, sep='\\n')"
    )
    res = await arm.run("/opt/tepi/venv/bin/python", "-c", probe)
    assert res.returncode == 0, result(res)
    machine, *modules = res.stdout.split()
    assert machine == "aarch64", result(res)
    # numpy's and OpenCV's compiled modules: ELF files for AArch64 (e_machine 183).
    for module in modules:
        for so in arm.chroot.path(module).parent.glob("**/*.so"):
            with so.open("rb") as f:
                header = f.read(20)
            assert int.from_bytes(header[18:20], "little") == 183, so


@pytest.mark.timeout(300)
async def test_check_passes_on_the_installed_config(arm: Arm) -> None:
    # As install.sh's "Next:" says (sudo -u tepi ... --no-files: the sample names the
    # unit's credential, mqtt-password, which the install does not create).
    with arm.timings.step("tepi check on the installed sample (--no-files)"):
        res = await arm.run(*AS_TEPI, TEPI, "check", "--config", CONFIG, "--no-files")
    assert res.returncode == 0, result(res)
    res = await arm.run(*AS_TEPI, TEPI, "check", "--config", CONFIG)
    assert res.returncode == 1, result(res)
    assert "uplink.password_file: mqtt-password does not exist" in res.stderr, result(res)

    # The site's config, as a technician writes it: the host's broker, one synthetic device.
    site = yaml.safe_dump(
        {
            "gateway": {"id": "arm64-gw-01", "data_dir": "/var/lib/tepi"},
            "uplink": {"url": f"mqtt://127.0.0.1:{arm.broker.port}", "topic_prefix": "ioc/v1"},
            "devices": [{"id": "arm-dev-1", "driver": "synthetic", "poll_interval": "1s"}],
        },
        sort_keys=False,
    )
    res = await asyncio.to_thread(
        arm.chroot.run, ["sh", "-c", f"cat > {CONFIG}"], input=site, timeout=30
    )
    assert res.returncode == 0, result(res)
    with arm.timings.step("tepi check on the site's config"):
        res = await arm.run(*AS_TEPI, TEPI, "check", "--config", CONFIG)
    assert res.returncode == 0, result(res)
    # And it finds a problem, with its line, as it does natively.
    res = await asyncio.to_thread(
        arm.chroot.run,
        ["sh", "-c", "cat > /root/bad.yaml"],
        input=site.replace("poll_interval: 1s", "poll_interval: soon"),
        timeout=30,
    )
    res = await arm.run(TEPI, "check", "--config", "/root/bad.yaml")
    assert res.returncode == 1, result(res)
    assert "poll_interval" in res.stdout + res.stderr, result(res)


@dataclass
class DemoRun:
    startup_s: float
    agent_startup_cpu_s: float
    readings: int
    window_s: float
    agent_cpu_s: float
    sim_cpu_s: float
    demo_cpu_s: float
    stop_s: float
    gaps: list[tuple[int, int]]
    devices: set[str]
    stdout: str

    @property
    def per_s(self) -> float:
        return self.readings / self.window_s

    def cpu(self, seconds: float) -> str:
        return f"{100 * seconds / self.window_s:.1f} % of one core"


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (under qemu-user: the emulator running it)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def find(pids: Sequence[int], *words: str) -> int:
    for pid in pids:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if all(w in cmd for w in words):
                return pid
    return 0


def as_from_a_terminal() -> None:
    """Ctrl-C's SIGINT as a terminal's foreground job has it (see test_demo.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def run_demo(argv: list[str], port: int, seconds: float = DEMO_SECONDS) -> DemoRun:
    """``tepi demo --broker-port`` for ``seconds`` after its first reading at the broker, then
    Ctrl-C; what arrived, and the CPU its processes used meanwhile."""
    async with Subscriber(port, "ioc/v1/#") as sub:
        started = time.monotonic()
        demo = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=as_from_a_terminal,  # noqa: PLW1509 (no threads are started before it)
        )
        try:

            def telemetry(s: Subscriber) -> bool:
                return any(t.endswith("/telemetry") for t, _, _ in s.messages)

            await sub.wait_for(telemetry, timeout=300)
            first_at = time.monotonic()
            tree = descendants(demo.pid)
            agent, sim = find(tree, "tepi.gateway.cli", "run"), find(tree, "tepi_sim.cli")
            assert agent, f"no agent among {tree}"
            assert sim, f"no simulator among {tree}"
            cpu0 = {p: cpu_seconds(p) for p in (agent, sim, demo.pid)}
            startup_cpu = cpu0[agent]  # from its start to the first reading at the broker
            n0 = len(sub.readings())
            t0 = time.monotonic()

            def lasted(s: Subscriber) -> bool:
                return time.monotonic() - t0 >= seconds

            # Synced on readings: a message that arrives after the window (readings come
            # every second or two, so this fails if they stop).
            await sub.wait_for(lasted, timeout=seconds + 60)
            window = time.monotonic() - t0
            cpu = {p: cpu_seconds(p) - c for p, c in cpu0.items()}
            n = len(sub.readings()) - n0
            stop_at = time.monotonic()
            demo.send_signal(signal.SIGINT)
            out, _ = await asyncio.to_thread(demo.communicate, timeout=120)
            stop_s = time.monotonic() - stop_at
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        assert demo.returncode == 0, out[-4000:]
        assert "stopped." in out, out[-4000:]
        check = sub.completeness()
        assert check.undecodable == 0
        return DemoRun(
            startup_s=first_at - started,
            agent_startup_cpu_s=startup_cpu,
            readings=n,
            window_s=window,
            agent_cpu_s=cpu[agent],
            sim_cpu_s=cpu[sim],
            demo_cpu_s=cpu[demo.pid],
            stop_s=stop_s,
            gaps=check.seq_gaps(),
            devices={r["device"] for r in sub.readings()},
            stdout=out,
        )


def record(arm: Arm, how: str, run: DemoRun) -> None:
    arm.timings.steps[f"demo start-up to the first reading at the broker, {how}"] = round(
        run.startup_s, 1
    )
    arm.timings.steps[f"demo stop (Ctrl-C to exit), {how}"] = round(run.stop_s, 1)
    arm.timings.facts[f"readings/s, {how}"] = (
        f"{run.per_s:.1f} ({run.readings} in {run.window_s:.0f} s)"
    )
    arm.timings.facts[f"CPU of the agent's start (to its first reading), {how}"] = (
        f"{run.agent_startup_cpu_s:.1f} s"
    )
    arm.timings.facts[f"CPU of the agent, {how}"] = run.cpu(run.agent_cpu_s)
    arm.timings.facts[f"CPU of the simulator, {how}"] = run.cpu(run.sim_cpu_s)
    arm.timings.facts[f"CPU of the demo's viewer, {how}"] = run.cpu(run.demo_cpu_s)


@pytest.mark.timeout(900)
async def test_the_demo_delivers_readings_emulated(arm: Arm) -> None:
    with arm.timings.step("tepi-sim from its wheel, offline (pip, emulated)"):
        res = await arm.sh(
            f"/opt/tepi/venv/bin/pip install --no-index --disable-pip-version-check --quiet "
            f"--find-links {BUNDLE_DIR}/wheels /srv/field/tepi_sim-*.whl",
            timeout=600,
            network=False,
        )
    assert res.returncode == 0, result(res)

    argv = arm.chroot.argv(
        [TEPI, "demo", "--dir", "/root/demo", "--broker-port", str(arm.broker.port)]
    )
    run = await run_demo(argv, arm.broker.port)
    record(arm, "emulated", run)
    assert f"broker: the one on 127.0.0.1:{arm.broker.port}" in run.stdout, run.stdout[-4000:]
    assert run.gaps == [], run.gaps
    assert run.devices == DEMO_DEVICES, run.devices
    assert run.readings > 0
    # The demo stopped everything it started (the simulator, the agent): nothing is left
    # in the chroot.
    assert arm.chroot.processes() == [], arm.chroot.processes()


@pytest.mark.timeout(300)
async def test_the_same_demo_natively_for_comparison(arm: Arm) -> None:
    """The same demo from this checkout's venv on the host's own CPU: the emulated figures
    over these are the emulation's cost, which the estimate for a Pi starts from."""
    work = arm.work / "native-demo"
    argv = [sys.executable, "-m", "tepi.gateway.cli", "demo", "--dir", str(work)]
    run = await run_demo([*argv, "--broker-port", str(arm.broker.port)], arm.broker.port)
    record(arm, "native x86_64", run)
    assert run.gaps == [], run.gaps
    assert run.devices == DEMO_DEVICES, run.devices
    emulated = arm.timings.facts.get("CPU of the agent, emulated")
    if emulated:
        ratio = float(emulated.split()[0]) / max(0.1, 100 * run.agent_cpu_s / run.window_s)
        arm.timings.facts["the agent's CPU, emulated over native"] = f"{ratio:.1f}x"
