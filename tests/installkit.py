"""What the tests of systemd/install.sh and systemd/bundle.sh share (tests/test_systemd/
test_install*.py): running the installer into a scratch root, offline in a network namespace
of its own, the test signing keys, and what is built once per run for every pytest-xdist
worker (the keys, the native bundle: tests/test_systemd/conftest.py).

The installer runs with ``--prefix ROOT``: every file lands under ROOT (the venv, /etc/tepi,
the unit, /var/lib/tepi), and what would change this machine (useradd, chown to tepi,
systemctl, apt-get) is only printed as ``would run: ...``, which the tests read. Offline is as
a site without the internet has it: ``unshare -n``, a network namespace with no interface but
a loopback that is down. pip would fall back to the bundle's wheels after failed attempts at
an index, so install() also checks that it made none.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import pytest
from helpers import TEST_SECRETS

from tepi.core import __version__

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
BUNDLE = SYSTEMD / "bundle.sh"
SAMPLE = SYSTEMD / "tepi.yaml.sample"
UNIT = SYSTEMD / "tepi.service"
TEPI = Path(sys.executable).parent / "tepi"
# The installer's default: the system's Python, as on a device.
DEVICE_PYTHON = Path("/usr/bin/python3")
VERSION: str = __version__
PASSWORD = TEST_SECRETS[0]
# Runtime dependencies with compiled code: each needs a wheel per platform in the bundle.
COMPILED = (
    "pydantic_core",
    "orjson",
    "zstandard",
    "aiohttp",
    "multidict",
    "yarl",
    "frozenlist",
    "propcache",
    "pyyaml",
)
ARCHES = ("aarch64", "x86_64")


def run(
    cmd: Sequence[str | Path], *, offline: bool = False, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; with ``offline``, in a new network namespace (no network at all)."""
    args = [str(c) for c in cmd]
    if offline:
        args = ["unshare", "-n", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def output(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


def install(
    root: Path, *args: str | Path, offline: bool = True, key: bool = True
) -> subprocess.CompletedProcess[str]:
    """The installer into ``root``; from a bundle, verified with the test key unless ``key``
    is False (then /etc/tepi/bundle-signing.pub in ``root``, if any)."""
    if key and "--bundle" in args and "--key" not in args:
        args = (*args, "--key", signing_keys()[1])
    res = run([INSTALL, "--prefix", root, *args], offline=offline)
    assert PASSWORD not in res.stdout + res.stderr
    if offline:
        # Had pip tried an index, it would fall back to the bundle's wheels after 5 retries
        # per package and succeed: its warnings are the proof that it did not try.
        for attempt in ("Retrying", "NewConnectionError", "name resolution"):
            assert attempt not in res.stderr, output(res)
    return res


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """This run's directory that every pytest-xdist worker sees: a worker's basetemp is
    ``<run>/popen-gwN`` (tests/conftest.py keeps its locks in ``<run>`` too); without xdist,
    the basetemp itself. Fresh for each run, so what is built in it is of this checkout."""
    base = factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


def built_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """``dest``, a directory ``build`` fills, built once however many workers ask: under an
    exclusive lock (``dest``.lock), the first builds into a scratch directory and renames it
    to ``dest``; the others wait for the lock and find it. A build that fails leaves no
    ``dest``, so the next one to ask builds again and fails with its own output."""
    with dest.with_name(dest.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not dest.exists():
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            build(partial)
            partial.rename(dest)
    return dest


_SHARED: list[Path] = []  # shared_dir(), given by share() (tests/test_systemd/conftest.py)


def share(directory: Path) -> None:
    _SHARED[:] = [directory]


def _make_keys(d: Path) -> None:
    cmds: list[list[str | Path]] = [
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", d / "signing.pem"],
        ["openssl", "pkey", "-in", d / "signing.pem", "-pubout", "-out", d / "signing.pub"],
    ]
    for cmd in cmds:
        res = run(cmd)
        assert res.returncode == 0, output(res)


@cache
def signing_keys() -> tuple[Path, Path]:
    """A test Ed25519 key pair (private, public), made once per run in the run's shared
    directory: every worker signs and verifies with the same pair, so one native bundle
    serves them all. A real key is the builder's and is never in the repository."""
    assert _SHARED, "tests/test_systemd/conftest.py shares the run's directory first"
    d = built_once(_SHARED[0] / "signing-keys", _make_keys)
    return d / "signing.pem", d / "signing.pub"


def resign(bundle: Path, private: Path) -> None:
    """Rewrite an unpacked bundle's MANIFEST for its files and sign it with ``private``,
    as bundle.sh does (what the builder, or a thief of the key, could do)."""
    files = sorted(
        p.relative_to(bundle).as_posix()
        for p in bundle.rglob("*")
        if p.is_file() and p.name not in {"MANIFEST", "MANIFEST.sig"}
    )
    (bundle / "MANIFEST").write_text(
        "".join(f"{hashlib.sha256((bundle / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    )
    res = run(
        [
            "openssl",
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            private,
            "-in",
            bundle / "MANIFEST",
            "-out",
            bundle / "MANIFEST.sig",
        ]
    )
    assert res.returncode == 0, output(res)


@cache
def device_python_problem() -> str | None:
    """Why the installer's Python cannot make the venvs here, or None."""
    if not DEVICE_PYTHON.exists():
        return f"no {DEVICE_PYTHON}"
    res = run([DEVICE_PYTHON, "-c", "import sys, ensurepip, venv; print(sys.version_info[:2])"])
    if res.returncode != 0 or res.stdout.strip() != "(3, 11)":
        return f"{DEVICE_PYTHON} is not a Python 3.11 with venv (as on Debian 12): {output(res)}"
    return None


@cache
def offline_problem() -> str | None:
    """Why ``unshare -n`` cannot cut the network here, or None. Also shows that it does."""
    if shutil.which("unshare") is None:
        return "no unshare (util-linux)"
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    res = run([sys.executable, "-c", probe], offline=True)
    if "Operation not permitted" in res.stderr or "unshare failed" in res.stderr:
        return f"unshare -n is not permitted here: {res.stderr.strip()}"
    if res.returncode == 0 or "Network is unreachable" not in res.stderr:
        return f"unshare -n did not cut the network: {output(res)}"
    return None


def need_offline_install() -> None:
    for problem in (device_python_problem(), offline_problem()):
        if problem:
            pytest.skip(problem)


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            out[norm(name)] = version.strip()
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(venv: Path) -> dict[str, str]:
    res = run([venv / "bin" / "python", "-m", "pip", "list", "--format=json"])
    assert res.returncode == 0, output(res)
    return {norm(p["name"]): p["version"] for p in json.loads(res.stdout)}


def venvs(root: Path) -> set[str]:
    return {p.name for p in (root / "opt/tepi").glob("venv-*")}


def current(root: Path) -> str:
    link = root / "opt/tepi/venv"
    assert link.is_symlink()
    return str(link.readlink())


def check_config(root: Path) -> None:
    config = root / "etc/tepi/tepi.yaml"
    res = run([root / "opt/tepi/venv/bin/tepi", "check", "--config", config, "--no-files"])
    assert res.returncode == 0, output(res)


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tar_files(path: Path) -> dict[str, bytes]:
    """The files in a bundle, by their path inside its top directory."""
    files = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                files[member.name.split("/", 1)[1]] = f.read()
    return files


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def unpacked(bundle: Path, into: Path) -> Path:
    with tarfile.open(bundle) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:  # Debian 12's 3.11.2 has no extraction filters: the same checks, by hand
            for member in tar.getmembers():
                parts = Path(member.name).parts
                link = Path(member.linkname).parts if member.issym() else ()
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or ".." in link
                    or member.linkname.startswith("/")
                    or not (member.isfile() or member.isdir() or member.issym())
                ):
                    raise ValueError(f"{bundle}: {member.name!r} would leave {into}")
            tar.extractall(into)  # every member checked above
    (found,) = into.glob("tepi-bundle-*")
    return found
