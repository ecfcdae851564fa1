"""A Debian 12 with systemd 252 as PID 1, booted with systemd-nspawn, for the ``field`` tests.

The root is made once with debootstrap (minbase and the few packages a Raspberry Pi OS image
has that tepi needs) and cached outside the checkout, under ``$TEPI_FIELD_CACHE`` (default
/var/cache/tepi-field), keyed by the release, the packages and what ``_finish_root`` writes:
later runs boot it in about a second. Each boot uses it read-only, with ``--volatile=overlay``:
what the guest writes goes to a tmpfs and is gone when it stops, so every run starts from the
same fresh system and two runs can share the cache.

How it boots on a machine whose PID 1 is not systemd (a container-like VM with the cgroup v1
hybrid layout), and why each option:

- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``: the guest gets a cgroup v2 tree of its own. In the
  hybrid layout nspawn would hand over the host's v1 controllers read-only, and systemd inside
  could then not apply ``DevicePolicy=`` at all. On v2 it applies it with a BPF program per
  cgroup, which needs no controller.
- ``--system-call-filter=bpf``: nspawn's own seccomp filter refuses bpf(), and systemd then
  silently runs every unit without its device policy.
- ``--register=no --keep-unit``: with no systemd on the host there is no machined and no bus
  to ask for a scope; nspawn uses the cgroup it is started in. ``_Cgroups`` makes a fresh one
  per boot (v2 and the v1 ``name=systemd`` tree), so a guest never shares the host's root
  cgroup with another guest, and removes it afterwards.
- ``--network-veth``: the guest's only link is a /30 to the host, with no route beyond it: the
  broker on the host is all the network it has, as on a site whose APN reaches only the IOC.

Not enforceable here, and so not checked: ``MemoryMax=`` and ``TasksMax=``. This host binds
the memory and pids controllers to cgroup v1, so the guest's v2 tree has neither (systemd
accepts the settings and cannot apply them). A Raspberry Pi OS image boots with cgroup v2
and has both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
RELEASE = "bookworm"
# minbase has apt, dpkg, tar, util-linux (setpriv, runuser), passwd (useradd) and coreutils.
# systemd and dbus boot it; python3 and python3-venv make the venv; openssl verifies the
# bundle's signature. No procps: the unit must not need /bin/kill (issue 15, point 12).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "openssl")
CACHE = Path(os.environ.get("TEPI_FIELD_CACHE", "/var/cache/tepi-field"))
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# uname -m to Debian's name for the architecture, and the qemu-user binfmt entry for each.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")

# What _finish_root writes into the cached root; a change here makes a new cache key.
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_MASKED = (
    # A login prompt on the console, and apt's timers: neither has a use in a test guest.
    "console-getty.service",
    "getty@.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
)


def mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE) or re.search(
                rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+{RELEASE}\s", text, re.MULTILINE
            )
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def why_not() -> str | None:
    """Why a guest cannot boot here, or None."""
    if os.geteuid() != 0:
        return "the field tests boot a Debian root with systemd-nspawn: they need root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"no {tool}: apt-get install {package}"
    if shutil.which("ip") is None:
        return "no ip (iproute2) to give the guest's link its address"
    return None


def why_not_foreign(arch: str) -> str | None:
    """Why a root of the foreign ``arch`` cannot be made and run here, or None.

    It runs through qemu-user: the kernel hands each of the root's binaries to
    qemu-ARCH-static by its binfmt_misc entry, whose F flag (Debian's qemu-user-static sets
    it) has the kernel open the interpreter once, at registration, so a chroot needs no copy
    of it. Where the package is installed but binfmt_misc is not mounted, or the entry is
    disabled (a container-like VM whose PID 1 is not systemd mounts none), they are set up
    here: the same two commands docs/operations.md gives."""
    install = "apt-get install -y qemu-user-static binfmt-support debootstrap"
    if os.geteuid() != 0:
        return f"the {arch} field tests chroot into a Debian root: they need root"
    name = QEMU_BINFMT.get(arch)
    if name is None:
        return f"no qemu-user emulation known for {arch}"
    for tool in ("debootstrap", f"{name}-static", "update-binfmts"):
        if shutil.which(tool) is None:
            return f"no {tool}, to run an {arch} root emulated: {install}"
    if not (BINFMT_MISC / "register").exists():
        res = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            return (f"binfmt_misc is not mounted and could not be ({res.stderr.strip()}): "
                    f"without it the kernel cannot hand {arch} binaries to qemu")  # fmt: skip
    entry = BINFMT_MISC / name
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        subprocess.run(
            ["update-binfmts", "--enable", name],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        return f"no enabled {entry}: {install}, then update-binfmts --enable {name}"
    flags = re.search(r"^flags: *(\S*)$", entry.read_text(), re.MULTILINE)
    if flags is None or "F" not in flags.group(1):
        return (f"{entry} lacks the F flag: a chroot would need the interpreter copied in "
                f"(qemu-user-static's own entry has it: {install})")  # fmt: skip
    return None


def native_arch() -> str:
    """This machine's Debian architecture (amd64, arm64)."""
    return DEBIAN_ARCH.get(os.uname().machine, os.uname().machine)


def root_key(arch: str | None = None) -> str:
    """The cache key of the root; a foreign architecture's root has its own key (the native
    one's is what it always was, so an existing cache stays valid)."""
    parts = [RELEASE, *PACKAGES, _HOSTS, *_MASKED]
    if arch is not None and arch != native_arch():
        parts.append(f"arch={arch}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


@dataclass
class Timings:
    """Seconds each step took, and other figures, printed with ``-s``."""

    steps: dict[str, float] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - t0, 1)


def cached_root(log: Callable[[str], None] = print, *, arch: str | None = None) -> Path:
    """The Debian root for guests: made with debootstrap the first time (a few minutes and
    Debian's mirror), then reused. A lock keeps two runs from making it at once.

    ``arch`` (a Debian architecture, default this machine's): a foreign one is made with
    ``debootstrap --foreign`` here, then its second stage runs inside it, emulated by
    qemu-user through binfmt_misc (see ``why_not_foreign``)."""
    foreign = arch is not None and arch != native_arch()
    name = f"debian-12-{arch}-{root_key(arch)}" if foreign else f"debian-12-{root_key()}"
    base = CACHE / name
    root = base / "root"
    base.mkdir(parents=True, exist_ok=True)
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".tepi-field-ready").exists():
            return root
        work = base / "root.partial"
        if work.exists():
            shutil.rmtree(work)
        url = mirror()
        how = f" --foreign --arch={arch}" if foreign else ""
        log(f"field: making the Debian 12 root in {root} with debootstrap{how} from {url}")
        t0 = time.monotonic()
        res = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             *(["--foreign", f"--arch={arch}"] if foreign else []),
             RELEASE, str(work), url],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({res.returncode}):\n{res.stdout[-3000:]}")
        if foreign:
            log(f"field: debootstrap's first stage took {time.monotonic() - t0:.0f} s")
            t0 = time.monotonic()
            # In a mount namespace of its own: the second stage mounts /proc and /sys in the
            # root, and those mounts go with the namespace even if it fails half-way.
            res = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "chroot", str(work), "/debootstrap/debootstrap", "--second-stage"],
                capture_output=True, text=True, timeout=3600, check=False,
                env={"PATH": GUEST_PATH, "LANG": "C.UTF-8"},
            )  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(
                    f"debootstrap --second-stage failed ({res.returncode}):\n"
                    f"{(res.stdout + res.stderr)[-3000:]}"
                )
            log(f"field: its second stage, emulated, took {time.monotonic() - t0:.0f} s")
        _finish_root(work)
        arch_note = f"{arch} " if foreign else ""
        (work / ".tepi-field-ready").write_text(f"{RELEASE} {arch_note}{' '.join(PACKAGES)}\n")
        work.rename(root)
    return root


def _finish_root(root: Path) -> None:
    """What a Debian installer leaves that debootstrap does not: /etc/hosts and a host name;
    and no console login or apt timers, which a test guest has no use for."""
    (root / "etc/hosts").write_text(_HOSTS)
    (root / "etc/hostname").write_text("tepi-field\n")
    for unit in _MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


class _Cgroups:
    """A cgroup of its own for one nspawn process, in the v2 tree and in v1's name=systemd
    tree where the host mounts them; removed once the guest has stopped."""

    def __init__(self, name: str) -> None:
        candidates = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd")]
        if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
            candidates = [Path("/sys/fs/cgroup")]  # a pure v2 host
        if Path("/run/systemd/system").is_dir():
            candidates = []  # a host systemd gives nspawn a scope: its tree is not ours to change
        self.dirs = [c / name for c in candidates if (c / "cgroup.procs").exists()]

    def make(self) -> None:
        for d in self.dirs:
            d.mkdir(exist_ok=True)

    def enter(self) -> None:
        """In the child, before exec: move itself in (nspawn makes its sub-cgroups there)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text("0\n")

    def remove(self) -> None:
        for top in self.dirs:
            if not top.exists():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _free_subnet() -> int:
    """A third octet n such that 10.231.n.0/30 is on no interface here."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    for n in itertools.chain([os.getpid() % 200 + 20], range(20, 250)):
        if f" 10.231.{n}." not in out:
            return n
    raise RuntimeError("no free 10.231.n.0/30 for the guest's link")


class Guest:
    """One booted guest. ``run`` executes a command in it as root, in all of PID 1's
    namespaces, with a clean environment: what a technician's root shell would run."""

    def __init__(
        self,
        root: Path,
        share: Path,
        workdir: Path,
        *,
        host_network: bool = False,
        volatile: bool = True,
        env: dict[str, str] | None = None,
        tmp: Path | None = None,
    ) -> None:
        """``host_network``: the guest shares the host's network (no link of its own; what it
        binds, the host's ports, hence no broker started by a package install: see
        tests/test_field/test_suite_in_root.py). ``volatile=False``: the guest writes into
        ``root`` itself, which must then be a copy of its own. ``env``: added to every
        command's clean environment. ``tmp``: a directory of the host bound at /tmp, where
        nspawn would mount a tmpfs of a tenth of the host's memory: Debian 12 keeps /tmp on
        the disk (a tmpfs only from Debian 13), and the whole suite's bundles need more."""
        self.root = root
        self.share = share  # bound read-only at /srv/field
        self.workdir = workdir
        self.host_network = host_network
        self.volatile = volatile
        self.env = dict(env or {})
        self.tmp = tmp
        self.name = f"tepif{os.getpid() % 100000}"
        self.veth = f"ve-{self.name}"[:15]
        n = _free_subnet()
        self.host_ip = f"10.231.{n}.1"
        self.guest_ip = f"10.231.{n}.2"
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._cgroups = _Cgroups(f"tepi-field-{self.name}")

    # ---- boot and stop ---------------------------------------------------------------------

    def boot(self, timeout: float = 90) -> None:
        self._cgroups.make()
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        cmd = [
            "systemd-nspawn", "--boot", "--directory", str(self.root),
            *(["--volatile=overlay"] if self.volatile else []),
            "--machine", self.name, "--register=no", "--keep-unit",
            "--system-call-filter=bpf", "--console=read-only",
            *([] if self.host_network else ["--network-veth"]),
            f"--bind-ro={self.share}:/srv/field",
            *([f"--bind={self.tmp}:/tmp"] if self.tmp is not None else []),
        ]  # fmt: skip
        if Path("/run/systemd/system").is_dir():
            cmd.remove("--keep-unit")  # a host systemd gives nspawn a scope of its own
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self.console.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=self._cgroups.enter,  # noqa: PLW1509 (no threads are started before it)
        )
        deadline = time.monotonic() + timeout
        self.leader = self._wait(self._find_leader, deadline, "the guest's PID 1")
        state = self._wait(self._booted, deadline, "systemctl is-system-running: running")
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend"]).stdout
            raise AssertionError(f"the guest booted {state}: failed units:\n{failed}")
        if not self.host_network:
            self._link()

    def _wait(self, probe: Callable[[], T], deadline: float, what: str) -> T:
        while True:
            got = probe()
            if got:
                return got
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited while waiting for {what}:\n"
                                     f"{self.console_text()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.console_text()}")
            time.sleep(0.1)

    def _find_leader(self) -> int:
        """The guest's PID 1, once nspawn's child has become systemd (before that, the child
        may be one of nspawn's own, which exits)."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return 0

    def _booted(self) -> str:
        res = self.run(["systemctl", "is-system-running"], timeout=20)
        state = res.stdout.strip()
        return state if state in {"running", "degraded"} else ""

    def _link(self) -> None:
        """The /30 between host and guest: addresses set from the host, with the host's ip in
        the guest's network namespace only (the guest runs no network manager)."""
        host: list[list[str]] = [
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
        ]
        into = ["nsenter", "--target", str(self.leader), "--net", "--"]
        guest = [
            [*into, "ip", "addr", "add", f"{self.guest_ip}/30", "dev", "host0"],
            [*into, "ip", "link", "set", "host0", "up"],
        ]
        for cmd in host + guest:
            subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)

    def stop(self, timeout: float = 60) -> None:
        """Power off (systemd stops every unit, as at a real shutdown); kill if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            if self.leader > 0:
                self.run(["systemctl", "poweroff", "--no-block"], timeout=20)
            else:
                self.proc.terminate()  # not booted yet: nspawn stops its child on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader > 0:  # the guest's PID 1: its whole pid namespace goes with it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, 9)
                self.proc.kill()
                self.proc.wait(10)
        self._cgroups.remove()

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")[-4000:]

    # ---- in the guest ----------------------------------------------------------------------

    def run(
        self, cmd: Sequence[str], *, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` as root in the guest; its result (never raises for an exit code)."""
        return subprocess.run(
            self.argv(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """The host's command line that runs ``cmd`` as root in the guest (for a process the
        test starts and signals itself); ``run`` uses the same."""
        into = ["nsenter", "--target", str(self.leader), "--all", "--"]
        return [*into, *self.env_argv(), *cmd]

    def env_argv(self) -> list[str]:
        """``env -i`` and the clean environment a command in the guest starts with."""
        base = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        return ["env", "-i", *(f"{k}={v}" for k, v in {**base, **self.env}.items())]

    def sh(self, script: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], timeout=timeout)

    def path(self, guest_path: str) -> Path:
        """A file of the guest, seen from the host (through PID 1's root)."""
        return Path(f"/proc/{self.leader}/root") / guest_path.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)])
        assert res.returncode == 0, res.stderr
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def journal(self, unit: str, since_cursor: str | None = None) -> str:
        cmd = ["journalctl", "--unit", unit, "--no-pager", "--output", "short-unix"]
        if since_cursor:
            cmd += ["--after-cursor", since_cursor]
        return self.run(cmd).stdout

    def cursor(self) -> str:
        out = self.run(["journalctl", "--lines", "0", "--show-cursor", "--no-pager"]).stdout
        found = re.search(r"-- cursor: (\S+)", out)
        return found.group(1) if found else ""


class Chroot:
    """A Debian root of any architecture, entered with chroot: where systemd cannot boot
    (qemu-user emulates a process, not a machine), the commands a technician runs as root.
    ``run``, ``sh`` and ``path`` work as a booted ``Guest``'s do.

    The cached root is only read: an overlay on it takes what the commands write, in a mount
    namespace of its own that a sleeping process holds, with /proc, /sys, /dev and the
    share (read-only at /srv/field). It all goes when ``stop`` ends that namespace's
    processes. The commands use the host's network, so a broker on the host's loopback is
    reached as on the box itself; ``network=False`` gives one a network namespace of its own
    with nothing in it (no link, no route: the offline install)."""

    def __init__(self, root: Path, share: Path, workdir: Path) -> None:
        self.root = root
        self.share = share
        self.workdir = workdir
        self.merged = workdir / "chroot"
        self._upper = workdir / "chroot.upper"
        self._ovl = workdir / "chroot.work"
        self.holder: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> None:
        for d in (self.merged, self._upper, self._ovl):
            d.mkdir(parents=True, exist_ok=True)
        m = shlex.quote(str(self.merged))
        lower, upper, ovl = (shlex.quote(str(p)) for p in (self.root, self._upper, self._ovl))
        script = f"""set -e
mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={ovl} {m}
mount -t proc proc {m}/proc
mount -t sysfs sysfs {m}/sys
mount --rbind /dev {m}/dev
mkdir -p {m}/srv/field
mount --bind {shlex.quote(str(self.share))} {m}/srv/field
mount -o remount,bind,ro {m}/srv/field
echo ready
exec sleep infinity
"""
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            _, err = self.holder.communicate(timeout=timeout)
            raise AssertionError(f"could not set up the chroot's mounts:\n{err}")

    def processes(self) -> list[int]:
        """The processes in the chroot's mount namespace, but for the one that holds it."""
        if self.holder is None:
            return []
        ns = Path(f"/proc/{self.holder.pid}/ns/mnt").readlink()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == self.holder.pid:
                continue
            with contextlib.suppress(OSError):
                if (proc / "ns/mnt").readlink() == ns:
                    found.append(int(proc.name))
        return found

    def stop(self) -> None:
        """End every process in the chroot's mount namespace, then the namespace; remove
        what the overlay took."""
        if self.holder is None:
            return
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        self.holder.kill()
        self.holder.communicate(timeout=30)
        self.holder = None
        for d in (self._upper, self._ovl):
            shutil.rmtree(d, ignore_errors=True)

    def argv(self, cmd: Sequence[str], *, network: bool = True) -> list[str]:
        """The host's command line that runs ``cmd`` as root in the chroot, with a clean
        environment."""
        assert self.holder is not None, "start() first"
        netns = [] if network else ["unshare", "--net", "--"]
        return [
            "nsenter", f"--target={self.holder.pid}", "--mount", "--", *netns,
            "chroot", str(self.merged),
            "env", "-i", f"PATH={GUEST_PATH}", "LANG=C.UTF-8", "HOME=/root", "TERM=dumb", *cmd,
        ]  # fmt: skip

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 60,
        input: str | None = None,
        network: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` as root in the chroot; its result (never raises for an exit code)."""
        return subprocess.run(
            self.argv(cmd, network=network),
            capture_output=True, text=True, timeout=timeout, check=False, input=input,
        )  # fmt: skip

    def sh(
        self, script: str, *, timeout: float = 60, network: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], timeout=timeout, network=network)

    def path(self, guest_path: str) -> Path:
        """A file of the chroot, seen from the host (through the namespace holder's root)."""
        assert self.holder is not None, "start() first"
        inside = self.merged / guest_path.lstrip("/")
        return Path(f"/proc/{self.holder.pid}/root") / str(inside).lstrip("/")


def result(res: subprocess.CompletedProcess[str]) -> str:
    """A command's exit code and output, for an assertion's message."""
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
