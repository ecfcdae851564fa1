"""systemd/tepi.service: systemd's own checks, the settings the agent relies on, and the agent
run under the unit's seccomp policy.

``systemd-analyze verify`` and ``systemd-analyze security --offline=true`` read the unit file
without a service manager, so they run where PID 1 is not systemd (a container). ``verify``
checks that every Exec command exists, so it reads a copy whose ``/opt/tepi/venv/bin/tepi``
points at this interpreter; the security score reads the unit as shipped.

Without systemd as PID 1 nothing can start the unit here, so the last tests rebuild what the
unit does to the process with the same kernel tools (libseccomp, prctl, a mount namespace)
and run the agent, its ``tepi check`` and a probe under it. Emulated: SystemCallFilter= (the
groups expanded by this systemd's own ``systemd-analyze syscall-filter``),
SystemCallErrorNumber=, SystemCallArchitectures=native, RestrictAddressFamilies=,
RestrictNamespaces=, LockPersonality=, MemoryDenyWriteExecute= (systemd 252's seccomp rules),
the system calls that ProtectClock=, ProtectKernelModules=, ProtectKernelLogs= and
ProtectHostname= deny, NoNewPrivileges=, CapabilityBoundingSet= (empty), UMask=, and
ProtectSystem=strict with the state directory the only writable place. Where the emulation
differs from systemd it is stricter (a system call newer than systemd's tables fails with
EPERM, not ENOSYS; /tmp is read-only where PrivateTmp= gives a private writable one).
Not emulated: User=, DevicePolicy= (cgroup BPF), ProtectProc=, MemoryMax=, TasksMax=.

When this file is run as a program it is that sandbox: ``test_unit.py POLICY.json -- CMD...``
applies the policy to itself and executes CMD.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
UNIT = REPO / "systemd" / "tepi.service"
INSTALLED_TEPI = "/opt/tepi/venv/bin/tepi"
MAX_EXPOSURE = 2.0

# What the security table may still flag, and why each one stays. A new entry means a setting
# was weakened or dropped: decide, and write the reason here, rather than let the score drift.
ACCEPTED_EXPOSURE = {
    "PrivateNetwork=": "the broker is remote",
    "IPAddressDeny=": "the broker's address is the config's, not the unit's",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "MQTT over TCP",
    "RestrictAddressFamilies=~AF_UNIX": "sd_notify and the status socket",
    "PrivateDevices=": "the serial ports; DevicePolicy=closed limits /dev instead",
    "DeviceAllow=": "serial ports only",
    "SupplementaryGroups=": "dialout, the serial ports' group",
    "PrivateUsers=": "would map dialout to nobody; not verified on a device",
    "ProtectClock=": "would deny adjtimex, the agent's clock-sync check",
    "SystemCallFilter=~@clock": "adjtimex, read-only without CAP_SYS_TIME",
    "SystemCallFilter=~@privileged": "adjtimex again (@privileged holds @clock)",
    "ProcSubset=": "would hide /proc/sys/kernel/random/boot_id",
    "RootDirectory=/RootImage=": "tepi runs from the host's /opt/tepi/venv",
}

# Character device majors of serial lines (the kernel's Documentation/admin-guide/devices.txt):
# ttyS (4), ttyACM (166), ttyUSB (188), low-density serial ports such as ttyAMA (204).
SERIAL_MAJORS = {"4", "166", "188", "204"}

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 1, 4, 5, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
# systemd 252's RestrictNamespaces= list: cgroup, ipc, net, mnt, pid, user, uts.
CLONE_NEW = (0x02000000, 0x08000000, 0x40000000, 0x00020000, 0x20000000, 0x10000000, 0x04000000)


def scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


# ---- reading the unit ------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned, in order (systemd keys may repeat)."""
    units: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = units.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep:
            raise ValueError(f"{UNIT.name}:{n}: not a key=value line in a section: {raw!r}")
        section.setdefault(key.strip(), []).append(value.strip())
    return units


@cache
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(section: str, key: str) -> str:
    """The value that counts: systemd keeps the last assignment of a single-valued key."""
    values = unit()[section].get(key)
    assert values, f"{UNIT.name}: [{section}] has no {key}="
    return values[-1]


def seconds(span: str) -> float:
    """A systemd time span as the unit uses them ("30s", "10min", "15")."""
    factors = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        assert suffix in factors, f"unknown time unit in {span!r}"
        total += float(number) * factors[suffix]
    return total


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (Debian 12 has it)")
    return found


def run(cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


# ---- systemd's own checks --------------------------------------------------------------------


def verify_findings(text: str, tmp: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit, rc included when it fails."""
    copy = tmp / "tepi.service"
    copy.write_text(text.replace(INSTALLED_TEPI, sys.executable))
    proc = run([analyze(), "verify", "--man=no", str(copy)])
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines if proc.returncode == 0 else [f"exit status {proc.returncode}", *lines]


@pytest.mark.timeout(60)
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    assert verify_findings(UNIT.read_text(), tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("RestartStep=3", "Unknown key"),
        ("DeviceAllow=char-ttyUSB rwx", "Invalid device rights"),
    ],
)
def test_verify_would_catch_a_bad_line(tmp_path: Path, line: str, complaint: str) -> None:
    """verify exits 0 on unknown keys and bad values: only its output tells, so the test
    above compares the output, and this shows the output does tell."""
    text = UNIT.read_text().replace("[Service]\n", f"[Service]\n{line}\n", 1)
    findings = verify_findings(text, tmp_path)
    assert any(complaint in f for f in findings), findings


@pytest.mark.timeout(60)
def test_offline_security_exposure_is_at_most_2() -> None:
    proc = run([analyze(), "security", "--offline=true", "--no-pager", str(UNIT)])
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    flagged = "\n".join(line for line in proc.stdout.splitlines() if "✗" in line)
    assert float(found[1]) <= MAX_EXPOSURE, f"exposure {found[1]} > {MAX_EXPOSURE}:\n{flagged}"


@pytest.mark.timeout(60)
def test_every_remaining_exposure_has_a_reason() -> None:
    proc = run([analyze(), "security", "--offline=true", "--json=short", str(UNIT)])
    table: list[dict[str, Any]] = json.loads(proc.stdout)
    flagged = {row["name"]: row["description"] for row in table if row["exposure"]}
    unexplained = {k: v for k, v in flagged.items() if k not in ACCEPTED_EXPOSURE}
    assert not unexplained, unexplained


# ---- the settings the agent relies on --------------------------------------------------------


def test_notify_watchdog_and_reload_match_the_agent() -> None:
    """The agent (tepi.gateway.notify) sends READY=1, pings at a quarter of WATCHDOG_USEC and
    re-reads its config on SIGHUP."""
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert 10 <= seconds(one("Service", "WatchdogSec")) <= 120
    # /bin/kill is procps, missing on a minimal image: dash's builtin kill instead.
    assert shlex.split(one("Service", "ExecReload")) == ["/bin/sh", "-c", 'kill -HUP "$MAINPID"']
    assert one("Service", "ExecStart") == f"{INSTALLED_TEPI} run --config /etc/tepi/tepi.yaml"
    assert one("Service", "ExecStartPre").startswith(f"{INSTALLED_TEPI} check ")
    assert one("Service", "KillSignal") == "SIGTERM"
    assert seconds(one("Service", "TimeoutStopSec")) == 15


@pytest.mark.timeout(30)
def test_reload_signals_the_main_process_without_procps(tmp_path: Path) -> None:
    """ExecReload= runs with $MAINPID set (systemd.exec(5)) and no /bin/kill (procps) on a
    minimal image: it must signal the agent all the same."""
    argv = shlex.split(one("Service", "ExecReload"))
    hangup = tmp_path / "hup"
    main = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import signal, pathlib, time\n"
            f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(hangup)!r}).touch())\n"
            "print('ready', flush=True)\ntime.sleep(20)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert main.stdout is not None
        assert main.stdout.readline() == b"ready\n"
        # /bin/kill and /usr/bin/kill hidden, as on an image without procps; no PATH either.
        hide = "; ".join(
            f"if [ -e {k} ]; then mount --bind /dev/null {k}; fi"
            for k in ("/bin/kill", "/usr/bin/kill")
        )
        user = [] if os.geteuid() == 0 else ["-r"]
        cmd = [
            "unshare",
            *user,
            "-m",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            f'{hide} && exec env -i MAINPID={main.pid} "$@"',
            "sh",
            *argv,
        ]
        proc = run(cmd)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deadline = time.monotonic() + 10
        while not hangup.exists():
            assert time.monotonic() < deadline, "no SIGHUP reached the main process"
            time.sleep(0.05)
    finally:
        main.kill()
        main.wait()


def test_restarts_stop_at_a_start_limit() -> None:
    """A crash loop reaches the limit well inside its interval, and an invalid config the
    agent finds (exit 1) is not restarted at all (one ``tepi check`` finds is retried: systemd
    reads RestartPreventExitStatus= from the main process only)."""
    assert one("Service", "Restart") == "on-failure"
    assert "1" in one("Service", "RestartPreventExitStatus").split()
    burst = int(one("Unit", "StartLimitBurst"))
    interval = seconds(one("Unit", "StartLimitIntervalSec"))
    delay = seconds(one("Service", "RestartSec"))
    assert 0 < burst <= 10
    assert delay >= 1
    assert burst * delay < interval / 2
    assert one("Service", "LimitCORE") == "0"  # a watchdog SIGABRT leaves no core file


def test_devices_are_serial_lines_only() -> None:
    assert one("Service", "DevicePolicy") in {"closed", "strict"}
    assert one("Service", "PrivateDevices") == "no"
    allowed = unit()["Service"]["DeviceAllow"]
    assert allowed
    for entry in allowed:
        spec, _, rights = entry.partition(" ")
        group = spec.removeprefix("char-")
        assert spec.startswith("char-"), entry
        assert group.startswith("tty") or group in SERIAL_MAJORS, entry
        assert set(rights) <= {"r", "w"}, f"{entry}: no mknod"


def test_paths_credentials_and_limits_match_the_agent() -> None:
    from tepi.gateway.config import RUN_DIR, GatewaySection

    assert one("Service", "User") == "tepi"
    assert "dialout" in one("Service", "SupplementaryGroups").split()
    assert Path("/run") / one("Service", "RuntimeDirectory") == RUN_DIR
    default_data_dir = GatewaySection.model_fields["data_dir"].default
    assert Path("/var/lib") / one("Service", "StateDirectory") == default_data_dir
    assert one("Service", "ConfigurationDirectory") == "tepi"
    assert one("Service", "LogsDirectory") == "tepi"
    assert one("Service", "ProtectSystem") == "strict"
    assert one("Service", "LoadCredential") == "mqtt-password:/etc/tepi/secrets/mqtt-password"
    # A site with no password has no file: SetCredential= of the same ID is the default when
    # LoadCredential= cannot read its file (systemd.exec(5), 252), so the start does not fail
    # with 243/CREDENTIALS. Its value, one newline, reads as an empty password, which
    # `tepi check` explains when the config asks for one.
    assert one("Service", "SetCredential") == "mqtt-password:\\n"
    assert re.fullmatch(r"\d+[KMG]", one("Service", "MemoryMax"))
    assert 16 <= int(one("Service", "TasksMax")) <= 256
    assert one("Service", "CapabilityBoundingSet") == ""
    assert one("Service", "NoNewPrivileges") == "yes"


def test_settings_that_would_break_the_agent_stay_off() -> None:
    """ProtectClock=yes denies adjtimex (readings would all be treated as unsynchronised);
    ProcSubset=pid hides /proc/sys/kernel/random/boot_id (the time fix across reboots). The
    sandbox tests do not rebuild ProcSubset=, so this one says it."""
    assert unit()["Service"].get("ProtectClock", ["no"])[-1] == "no"
    assert unit()["Service"].get("ProcSubset", ["all"])[-1] == "all"


# ---- the unit's sandbox, rebuilt ---------------------------------------------------------------


@cache
def syscall_group(name: str) -> frozenset[str]:
    """A ``@group``'s system calls, as this systemd defines it."""
    proc = run([analyze(), "syscall-filter", "--no-pager", name])
    assert proc.returncode == 0, proc.stderr
    calls: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        item = line.strip()
        if not line.startswith((" ", "\t")) or not item or item.startswith("#"):
            continue
        calls |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def sandbox_policy() -> dict[str, Any]:
    """What the unit asks of the kernel, in the terms the sandbox applies."""
    service = unit()["Service"]
    filters = service["SystemCallFilter"]
    assert not filters[0].startswith("~"), "the filter is an allow list"
    allowed: set[str] = set(syscall_group("@default"))
    for entry in filters:
        deny = entry.startswith("~")
        for name in entry.removeprefix("~").split():
            calls = syscall_group(name) if name.startswith("@") else {name}
            allowed = allowed - calls if deny else allowed | calls
    families = [getattr(socket, f) for f in one("Service", "RestrictAddressFamilies").split()]
    # Settings that add a deny filter of their own, whatever the allow list says.
    denied: set[str] = set()
    for key, calls in (
        ("ProtectClock", syscall_group("@clock")),
        ("ProtectKernelModules", syscall_group("@module")),
        ("ProtectKernelLogs", frozenset({"syslog"})),
        ("ProtectHostname", frozenset({"sethostname", "setdomainname"})),
    ):
        if service.get(key, ["no"])[-1] == "yes":
            denied |= calls
    assert one("Service", "SystemCallArchitectures") == "native"
    return {
        "allow": sorted(allowed),
        "deny": sorted(denied),
        "errno": getattr(errno, one("Service", "SystemCallErrorNumber")),
        "families": [int(f) for f in families],
        "mdwe": one("Service", "MemoryDenyWriteExecute") == "yes",
        "namespaces": one("Service", "RestrictNamespaces") == "yes",
        "personality": one("Service", "LockPersonality") == "yes",
        "umask": int(one("Service", "UMask"), 8),
    }


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


Rule = tuple[int, str, Sequence[tuple[int, int, int, int]]]


def _load_filter(lib: ctypes.CDLL, default: int, rules: Sequence[Rule]) -> None:
    """One seccomp filter for the native architecture (others are killed, as with
    SystemCallArchitectures=native), loaded with no_new_privs set."""
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init")
    try:
        for action, name, cmps in rules:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call of this architecture
            array = (_ArgCmp * max(len(cmps), 1))(*(_ArgCmp(*c) for c in cmps))
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if rc < 0 and rc != -errno.EEXIST:
                raise OSError(-rc, f"seccomp rule for {name}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _enter_sandbox(policy: dict[str, Any]) -> None:
    """Apply ``policy`` to this process, in systemd's order: the allow list comes last, as
    close to execve() as it can be."""
    libc = ctypes.CDLL(None, use_errno=True)
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]

    os.umask(policy["umask"])
    # CapabilityBoundingSet= and AmbientCapabilities= (both empty): even as uid 0 the command
    # then runs with no capability. Not being root, there were none to drop.
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and os.geteuid() == 0:
            raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")

    eperm = scmp_act_errno(errno.EPERM)
    families = set(policy["families"])
    refused = scmp_act_errno(errno.EAFNOSUPPORT)
    _load_filter(
        lib,
        SCMP_ACT_ALLOW,
        [(refused, "socket", [(0, SCMP_CMP_EQ, f, 0)]) for f in range(64) if f not in families]
        + [(refused, "socket", [(0, SCMP_CMP_GE, 64, 0)])],
    )
    if policy["namespaces"]:
        # clone3's flags cannot be inspected: ENOSYS makes libc fall back to clone().
        rules: list[Rule] = [(scmp_act_errno(errno.ENOSYS), "clone3", []), (eperm, "setns", [])]
        for flag in CLONE_NEW:
            rules += [
                (eperm, call, [(0, SCMP_CMP_MASKED_EQ, flag, flag)])
                for call in ("unshare", "clone")
            ]
        _load_filter(lib, SCMP_ACT_ALLOW, rules)
    _load_filter(lib, SCMP_ACT_ALLOW, [(eperm, c, []) for c in policy["deny"]])
    if policy["personality"]:
        _load_filter(lib, SCMP_ACT_ALLOW, [(eperm, "personality", [(0, SCMP_CMP_NE, 0, 0)])])
    if policy["mdwe"]:
        wx = PROT_WRITE | PROT_EXEC
        _load_filter(
            lib,
            SCMP_ACT_ALLOW,
            [
                (eperm, "mmap", [(2, SCMP_CMP_MASKED_EQ, wx, wx)]),
                (eperm, "mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                (eperm, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                (eperm, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
            ],
        )
    _load_filter(
        lib, scmp_act_errno(policy["errno"]), [(SCMP_ACT_ALLOW, c, []) for c in policy["allow"]]
    )


def sandbox_main(argv: list[str]) -> NoReturn:
    """``POLICY.json -- CMD...``: apply the policy, then become CMD."""
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: test_unit.py POLICY.json -- CMD...")
    policy_path, _, *cmd = argv
    _enter_sandbox(json.loads(Path(policy_path).read_text()))
    os.execvp(cmd[0], cmd)


def sandboxed(tmp: Path, *, writable: Path | None = None) -> list[str]:
    """A command prefix that runs a command under the unit's policy. With ``writable``,
    in a mount namespace where the whole tree is read-only but that directory
    (ProtectSystem=strict with StateDirectory=); the machine's mounts are untouched."""
    from helpers import mount_namespace

    policy = tmp / "policy.json"
    policy.write_text(json.dumps(sandbox_policy()))
    inner = [sys.executable, str(HERE), str(policy), "--"]
    if writable is None:
        return inner
    path = shlex.quote(str(writable))
    setup = f"mkdir -p {path} && mount --bind {path} {path} && mount -o remount,bind,ro /"
    return [*mount_namespace(setup), *inner]


def proc_status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def filter_count(policy: dict[str, Any]) -> int:
    """How many seccomp filters ``_enter_sandbox`` loads for ``policy``."""
    return 3 + sum(bool(policy[k]) for k in ("namespaces", "personality", "mdwe"))


def assert_confined(status: dict[str, str]) -> None:
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filter mode
    # A container's own filter may come on top.
    assert int(status["Seccomp_filters"]) >= filter_count(sandbox_policy())
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0


PROBE = """
import ctypes, errno, json, mmap, socket, sys, threading
from pathlib import Path
from tepi.core.clock import clock_synced

libc = ctypes.CDLL(None, use_errno=True)

def fails(fn):
    try:
        fn()
    except OSError as err:
        return err.errno
    return 0

def c_fails(rc):
    return 0 if rc >= 0 else ctypes.get_errno()

out = {}
# modes = 0: read only, as gateway/tepi/gateway/sysinfo.py asks. glibc makes it clock_adjtime().
timex = ctypes.create_string_buffer(512)
state = libc.adjtimex(timex)
out["adjtimex"] = state if state >= 0 else -ctypes.get_errno()
out["clock_synced"] = clock_synced()
rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
out["wx_mmap"] = fails(lambda: mmap.mmap(-1, 4096, prot=rwx))
out["netlink"] = fails(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
# Each of these the kernel alone would allow or refuse differently: the errno shows the filter.
out["clone3"] = c_fails(libc.syscall(435, None, 0))  # 435 on every arch; kernel: EINVAL
out["personality"] = c_fails(libc.personality(0xFFFFFFFF))  # kernel: the current one
out["setpriority"] = c_fails(libc.setpriority(0, 0, -5))  # kernel: EACCES
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # sd_notify's kind of socket
server.bind(b"\\0tepi-probe-%d" % threading.get_native_id())
client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
client.sendto(b"READY=1", server.getsockname())
out["notify"] = server.recv(64).decode()
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
ran = []
worker = threading.Thread(target=lambda: ran.append(True))
worker.start()
worker.join()
out["thread"] = ran == [True]
status = Path("/proc/self/status").read_text().splitlines()
out["status"] = {k: v.strip() for k, _, v in (line.partition(":") for line in status)}
json.dump(out, sys.stdout)
"""


@pytest.mark.timeout(60)
def test_under_the_policy_the_clock_check_works_and_the_rest_is_refused(tmp_path: Path) -> None:
    """adjtimex (read-only), sd_notify's datagram socket, TCP/IPv6 sockets and threads work;
    writable+executable memory, netlink, clone3 (namespaces), personality changes and the
    scheduler are refused with systemd's errors, which shows the sandbox is really in force."""
    from tepi.core.clock import clock_synced

    kernel_clock_state = ctypes.CDLL(None).adjtimex(ctypes.create_string_buffer(512))
    assert kernel_clock_state >= 0
    proc = run([*sandboxed(tmp_path), sys.executable, "-c", PROBE])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert_confined(out["status"])
    assert out["adjtimex"] == kernel_clock_state  # the kernel's answer, not -EPERM
    assert out["clock_synced"] is clock_synced()
    assert out["notify"] == "READY=1"
    assert out["thread"] is True
    assert out["wx_mmap"] == errno.EPERM
    assert out["netlink"] == errno.EAFNOSUPPORT
    assert out["clone3"] == errno.ENOSYS  # so threads above came from clone()
    assert out["personality"] == errno.EPERM
    assert out["setpriority"] == errno.EPERM  # @resources


@pytest.mark.timeout(60)
async def test_the_agent_delivers_and_checks_its_config_under_the_policy(tmp_path: Path) -> None:
    """The whole data path (Modbus RTU on a pty, Modbus TCP, SQLite buffer, MQTT) with the
    agent confined as the unit confines it, writing only in its data directory."""
    from rig import running_rig

    from tepi.core.clock import clock_synced

    prefix = sandboxed(tmp_path, writable=tmp_path / "data")
    async with running_rig(tmp_path, prefix=prefix) as rig:
        await rig.wait_counters(5)
        await rig.sub.wait_for(lambda s: len(s.on("/health")) > 0)
        assert rig.agent.proc is not None
        pid = rig.agent.proc.pid
        assert b"tepi.gateway.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
        status = proc_status(pid)
        assert_confined(status)
        assert int(status["Threads"]) <= int(one("Service", "TasksMax")) // 2
        root = [m.split() for m in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
        assert "ro" in next(m[5].split(",") for m in root if m[4] == "/")
        assert rig.sub.on("/health")[-1]["clock_synced"] is clock_synced()
    log = rig.agent.log_text()
    for refusal in ("Operation not permitted", "Read-only file system", "Permission denied"):
        assert refusal not in log, log

    # ExecStartPre= runs under the same policy.
    check = [
        sys.executable,
        "-m",
        "tepi.gateway.cli",
        "check",
        "--config",
        str(tmp_path / "tepi.yaml"),
    ]
    proc = run([*sandboxed(tmp_path, writable=tmp_path / "data"), *check])
    assert proc.returncode == 0, proc.stdout + proc.stderr


if __name__ == "__main__":
    sandbox_main(sys.argv[1:])
