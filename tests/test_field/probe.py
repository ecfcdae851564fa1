"""What a process may do, printed as one JSON line: run inside tepi.service's sandbox (a
test-only drop-in adds it as ExecStartPost=, which systemd runs with the unit's user, cgroup,
device policy, mount settings and system call filter), and again outside it as the same user
with the same groups (``setpriv``), so that a refusal inside is the sandbox's and not the
files' own permissions.

    python3 probe.py LABEL

Each check is ``ok`` or the errno's name. Always exits 0: a failing ExecStartPost= would
fail the unit's start, and the answers are what the test wants.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path

# Made by the test in the guest before the probe runs: device nodes mode 0666 / root:dialout
# 0660, and a directory anyone may write, so that only a sandbox can refuse them. Not /dev/mem
# or a disk: opening those needs CAP_SYS_RAWIO or root's mode anyway, so their refusal would
# not show the device policy at work.
OPEN = {
    "tun": "/dev/field-tun",  # char 10:200, not a serial line: DevicePolicy=closed refuses it
    "tty_usb": "/dev/field-ttyUSB0",  # char 188:0, DeviceAllow=char-188: passes the policy
}
WRITE = {
    "srv": "/srv/field-writable",  # 0777, outside the unit's directories: ProtectSystem=strict
    "var_cache": "/var/cache/field-writable",  # 0777, the same
    "home": "/home/field-writable",  # 0777: ProtectHome=yes hides /home
    "etc_tepi": "/etc/tepi",
    "opt_tepi": "/opt/tepi",
    "state": "/var/lib/tepi",  # StateDirectory=: writable
    "logs": "/var/log/tepi",  # LogsDirectory=: writable
    "runtime": "/run/tepi",  # RuntimeDirectory=: writable
    "tmp": "/tmp",  # PrivateTmp=: writable, its own
    "var_tmp": "/var/tmp",  # PrivateTmp= covers /var/tmp too
}


def attempt(fn: Callable[[], None]) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


def try_open(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    os.close(fd)


def try_write(directory: str) -> None:
    path = Path(directory) / f".field-probe-{os.getpid()}"
    path.write_text("probe\n")
    path.unlink()


def main() -> None:
    out: dict[str, object] = {
        "label": sys.argv[1],
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "groups": sorted(os.getgroups()),
        "cgroup": Path("/proc/self/cgroup").read_text().strip(),
        "status": {
            k: v.strip()
            for k, _, v in (
                line.partition(":") for line in Path("/proc/self/status").read_text().splitlines()
            )
            if k in {"NoNewPrivs", "Seccomp", "CapEff", "CapBnd"}
        },
    }
    for key, path in OPEN.items():
        out[f"open_{key}"] = attempt(functools.partial(try_open, path))
    for key, directory in WRITE.items():
        out[f"write_{key}"] = attempt(functools.partial(try_write, directory))
    print("field-probe " + json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
