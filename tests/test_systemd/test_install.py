"""systemd/install.sh and systemd/bundle.sh, run for real into scratch roots.

Most tests run the installer with ``--prefix ROOT``: every file lands under ROOT (the venv,
/etc/tepi, the unit, /var/lib/tepi), and what would change this machine (useradd, chown to
tepi, systemctl, apt-get) is only printed as ``would run: ...``, which the tests read. One test
runs it as on a device, without ``--prefix``, in a mount namespace of its own with overlays on
/etc, /opt and /var: useradd, chown and userdel run for real there, and the machine's own files
stay untouched. systemctl never runs: nothing here is booted with systemd.

The offline path is tested as a site without the internet would use it: a bundle is built once
per session for this machine's platform (``bundle.sh --native``), and the installer runs under
``unshare -n``, in a network namespace with no interface but a loopback that is down. pip
would fall back to the bundle's wheels after failed attempts at an index, so the tests also
check that it made none. The full two-platform bundle is built by one test, which checks its
aarch64 and x86_64 wheels and its MANIFEST and installs from it offline too. One test installs
online from the checkout (PyPI), skipped when PyPI is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest
from helpers import TEST_SECRETS

from tepi.core import __version__

REPO = Path(__file__).resolve().parents[2]
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


@cache
def signing_keys() -> tuple[Path, Path]:
    """A test Ed25519 key pair (private, public), made once per run in a private directory:
    a real key is the builder's and is never in the repository."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="tepi-sign-"))
    private, public = d / "signing.pem", d / "signing.pub"
    cmds: list[list[str | Path]] = [
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", private],
        ["openssl", "pkey", "-in", private, "-pubout", "-out", public],
    ]
    for cmd in cmds:
        res = run(cmd)
        assert res.returncode == 0, output(res)
    return private, public


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


@pytest.fixture(scope="session")
def native_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline bundle for this machine's platform, built once."""
    out = tmp_path_factory.mktemp("bundle") / f"tepi-bundle-{VERSION}-native.tar.gz"
    key: list[str | Path] = ["--key", signing_keys()[0]]
    res = run([BUNDLE, "--native", "--python", sys.executable, *key, out], timeout=280)
    assert res.returncode == 0, output(res)
    return out


@pytest.fixture(scope="module")
def first_install(
    native_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A first install from the bundle with no network, into a scratch root."""
    need_offline_install()
    root = tmp_path_factory.mktemp("first") / "root"
    return root, install(root, "--bundle", native_bundle)


@pytest.mark.timeout(300)
def test_offline_install_from_the_bundle(
    first_install: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, res = first_install
    assert res.returncode == 0, output(res)
    assert (root / "opt/tepi/venv/bin/tepi").exists()
    check_config(root)
    assert re.fullmatch(rf"venv-{re.escape(VERSION)}-\d{{8}}T\d{{6}}Z", current(root))

    # Exactly the pins of constraints.txt, from the bundle's wheels.
    want = pins()
    got = installed(root / "opt/tepi/venv")
    assert got["tepi"] == VERSION
    runtime = {n: v for n, v in got.items() if n not in {"tepi", "pip", "setuptools"}}
    assert {"pydantic-core", "orjson", "aiohttp", "pymodbus", "zstandard"} <= set(runtime)
    assert {n: want.get(n) for n in runtime} == runtime

    config = root / "etc/tepi/tepi.yaml"
    assert config.read_bytes() == SAMPLE.read_bytes()
    assert mode(config) == 0o640
    assert mode(root / "etc/tepi") == 0o755  # as the unit's ConfigurationDirectory= makes it
    assert mode(root / "etc/tepi/secrets") == 0o700  # systemd reads the secrets, not tepi
    assert f"would run: chown root:root {root}/etc/tepi/secrets" in res.stdout
    # The key the bundle was verified with stays for the next upgrade.
    assert (root / "etc/tepi/bundle-signing.pub").read_bytes() == signing_keys()[1].read_bytes()
    assert mode(root / "var/lib/tepi") == 0o750  # StateDirectoryMode=
    assert (root / "etc/systemd/system/tepi.service").read_bytes() == UNIT.read_bytes()
    assert (root / "opt/tepi/share/install.sh").read_bytes() == INSTALL.read_bytes()
    assert (root / "opt/tepi/share/doc/README.md").exists()  # the unit's Documentation=
    assert (root / "opt/tepi/share/doc/docs/operations.md").exists()

    lines = res.stdout.splitlines()
    useradd = [ln for ln in lines if ln.startswith("would run: useradd ")]
    assert len(useradd) == 1, res.stdout
    for part in ("--system", "--groups dialout", "--home-dir /var/lib/tepi", "nologin"):
        assert part in useradd[0]
    assert useradd[0].endswith(" tepi")
    assert f"would run: chown root:tepi {config}" in lines
    assert f"would run: chown tepi:tepi {root}/var/lib/tepi" in lines
    assert "would run: systemctl daemon-reload" in lines
    # The unedited sample points at ioc.example.org: installed, not started, next steps given.
    assert not any("enable --now" in ln and "would run" in ln for ln in lines)
    assert f"not started: {config} is the unedited sample" in res.stdout
    assert "sudo systemctl enable --now tepi" in res.stdout


@pytest.mark.timeout(300)
def test_second_install_keeps_the_config_and_starts(
    first_install: tuple[Path, subprocess.CompletedProcess[str]],
    native_bundle: Path,
    tmp_path: Path,
) -> None:
    root = copy_root(first_install[0], tmp_path / "root")
    first = current(root)
    config = root / "etc/tepi/tepi.yaml"
    edited = SAMPLE.read_text().replace("id: site-gateway-01", "id: dng-hoavang-aq-07")
    config.write_text(edited)

    # Edited, but the password the unit loads is missing: installed, not started, exit 1.
    res = install(root, "--bundle", native_bundle)
    assert res.returncode == 1, output(res)
    assert config.read_text() == edited
    assert f"kept {config}" in res.stdout
    assert "not started: the config's password_file is the unit's credential" in res.stderr
    assert "would run: systemctl enable" not in res.stdout
    second = current(root)
    assert second != first
    check_config(root)

    secret = root / "etc/tepi/secrets/mqtt-password"
    secret.write_text(PASSWORD + "\n")
    res = install(root, "--bundle", native_bundle)
    assert res.returncode == 0, output(res)
    assert config.read_text() == edited
    assert "would run: systemctl enable --now tepi" in res.stdout.splitlines()
    third = current(root)
    # The previous venv stays for a rollback; older ones go.
    assert venvs(root) == {second, third}
    assert f"removed the old {root}/opt/tepi/{first}" in res.stdout
    check_config(root)
    assert secret.read_text() == PASSWORD + "\n"


@pytest.mark.timeout(300)
def test_upgrade_that_rejects_the_config_changes_nothing(
    first_install: tuple[Path, subprocess.CompletedProcess[str]],
    native_bundle: Path,
    tmp_path: Path,
) -> None:
    root = copy_root(first_install[0], tmp_path / "root")
    before = current(root), venvs(root)
    config = root / "etc/tepi/tepi.yaml"
    config.write_text(SAMPLE.read_text().replace("topic_prefix:", "topic_prefx:"))
    res = install(root, "--bundle", native_bundle)
    assert res.returncode == 1, output(res)
    assert "topic_prefx: unknown key" in res.stderr
    assert "nothing was changed, the installed version still runs" in res.stderr
    assert (current(root), venvs(root)) == before  # the half-built venv is gone too
    assert "would run: systemctl" not in res.stdout


@pytest.mark.timeout(300)
def test_a_venv_made_by_hand_is_replaced(
    first_install: tuple[Path, subprocess.CompletedProcess[str]],
    native_bundle: Path,
    tmp_path: Path,
) -> None:
    """The first version of the docs had /opt/tepi/venv made by hand, a directory."""
    root = copy_root(first_install[0], tmp_path / "root")
    link = root / "opt/tepi/venv"
    link.unlink()
    (link / "bin").mkdir(parents=True)
    (link / "bin/tepi").write_text("#!/bin/sh\n")
    res = install(root, "--bundle", native_bundle)
    assert res.returncode == 0, output(res)
    assert venvs(root) == {current(root)}
    check_config(root)


@pytest.mark.timeout(120)
def test_uninstall_keeps_config_and_buffer_and_purge_removes_them(
    first_install: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    root = copy_root(first_install[0], tmp_path / "root")
    buffer = root / "var/lib/tepi/buffer.db"
    buffer.write_bytes(b"readings not sent yet")
    unit = root / "etc/systemd/system/tepi.service"

    res = install(root, "--uninstall", offline=False)
    assert res.returncode == 0, output(res)
    assert "would run: systemctl disable --now tepi.service" in res.stdout
    assert not unit.exists()
    assert not (root / "opt/tepi").exists()
    assert (root / "etc/tepi/tepi.yaml").read_bytes() == SAMPLE.read_bytes()
    assert buffer.read_bytes() == b"readings not sent yet"
    assert "userdel" not in res.stdout

    res = install(root, "--uninstall", offline=False)  # again: nothing left to do
    assert res.returncode == 0, output(res)
    assert "the service is not installed" in res.stdout

    res = install(root, "--uninstall", "--purge", offline=False)
    assert res.returncode == 0, output(res)
    assert not (root / "etc/tepi").exists()
    assert not (root / "var/lib/tepi").exists()
    assert "would run: userdel tepi" in res.stdout

    res = install(root, "--uninstall", "--purge", offline=False)
    assert res.returncode == 0, output(res)


@pytest.mark.timeout(300)
def test_a_damaged_bundle_is_refused_before_anything_changes(
    native_bundle: Path, tmp_path: Path
) -> None:
    bundle = unpacked(native_bundle, tmp_path)
    root = tmp_path / "root"
    stray = bundle / "wheels/orjson-3.13.0-cp311-cp311-manylinux_2_99_x86_64.whl"
    stray.write_bytes(b"not built by bundle.sh")  # pip could prefer its newer tag
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert f"files that are not in its MANIFEST: wheels/{stray.name}" in res.stderr
    stray.unlink()

    wheel = next((bundle / "wheels").glob("orjson-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-100])  # a copy cut short
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert "the bundle is damaged" in res.stderr
    assert f"wheels/{wheel.name}: FAILED" in res.stdout + res.stderr
    assert not root.exists()


def unpacked(bundle: Path, into: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
    (found,) = into.glob("tepi-bundle-*")
    return found


@pytest.mark.timeout(300)
def test_a_bundle_without_a_good_signature_is_refused(native_bundle: Path, tmp_path: Path) -> None:
    bundle = unpacked(native_bundle, tmp_path)
    root = tmp_path / "root"
    private, public = signing_keys()

    # No key to verify with: none given, none in /etc/tepi.
    res = install(root, "--bundle", bundle, offline=False, key=False)
    assert res.returncode == 1, output(res)
    assert "no public key to verify the bundle with" in res.stderr

    # Unsigned.
    sig = (bundle / "MANIFEST.sig").read_bytes()
    (bundle / "MANIFEST.sig").unlink()
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert "it is not signed" in res.stderr

    # A file changed, and the MANIFEST rewritten to match, by someone without the key.
    (bundle / "MANIFEST.sig").write_bytes(sig)
    installer = bundle / "install.sh"
    installer.write_text(
        installer.read_text().replace("set -euo pipefail", "set -euo pipefail\nid")
    )
    manifest = (bundle / "MANIFEST").read_text()
    digest = hashlib.sha256(installer.read_bytes()).hexdigest()
    (bundle / "MANIFEST").write_text(
        re.sub(r"^[0-9a-f]{64}  install\.sh$", f"{digest}  install.sh", manifest, flags=re.M)
    )
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert "its signature does not verify" in res.stderr

    # Signed, but with another key.
    other = tmp_path / "other.pem"
    assert run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", other]).returncode == 0
    resign(bundle, other)
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert "its signature does not verify" in res.stderr
    assert not root.exists()

    # The public key installed in /etc/tepi is the default: the same bundle signed with the
    # right key gets past the signature (and on, to the Python check).
    resign(bundle, private)
    (root / "etc/tepi").mkdir(parents=True)
    shutil.copy(public, root / "etc/tepi/bundle-signing.pub")
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 3.12\n")
    python.chmod(0o755)
    res = install(root, "--bundle", bundle, "--python", python, offline=False, key=False)
    assert f"bundle signature verified ({root}/etc/tepi/bundle-signing.pub)" in res.stdout
    assert "the bundle's wheels are for Python 3.11" in res.stderr


@pytest.mark.timeout(300)
def test_what_is_installed_is_the_copy_that_was_verified(
    native_bundle: Path, tmp_path: Path
) -> None:
    """The bundle is checked and used from a private copy: a file changed in the bundle
    given after the check (another user's directory, a USB stick) does not reach the
    install."""
    need_offline_install()
    bundle = unpacked(native_bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    sample = bundle / "tepi.yaml.sample"
    original = sample.read_bytes()
    cmd = [INSTALL, "--prefix", root, "--bundle", bundle, "--key", signing_keys()[1]]
    proc = subprocess.Popen(
        ["unshare", "-n", "--", *map(str, cmd), "--no-start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "bundle checksums match" in line:
                break
        else:
            pytest.fail("".join(seen))
        # Checked: now the given bundle changes, while the venv is being built.
        sample.write_text("gateway: {id: swapped-after-the-check}\n")
        rest = proc.stdout.read()
        assert proc.wait(timeout=280) == 0, "".join(seen) + rest
    finally:
        proc.kill()
        proc.wait()
    assert (root / "etc/tepi/tepi.yaml").read_bytes() == original
    assert (root / "opt/tepi/share/tepi.yaml.sample").read_bytes() == original


@pytest.mark.timeout(300)
def test_links_in_a_bundle_are_refused(native_bundle: Path, tmp_path: Path) -> None:
    bundle = unpacked(native_bundle, tmp_path / "unpacked")
    root = tmp_path / "root"
    (bundle / "doc/shadow").symlink_to("/etc/shadow")
    resign(bundle, signing_keys()[0])  # a link is refused even in a signed bundle
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert "symbolic links or special files: doc/shadow" in res.stderr

    packed = tmp_path / "linked.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    res = install(root, "--bundle", packed, offline=False)
    assert res.returncode == 1, output(res)
    assert "symbolic links or special files" in res.stderr
    assert "/etc/shadow" in res.stderr
    assert not root.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", ["../../../../etc", "0.1.0 -rf", "", "0.1.0/x", "$(id)"])
def test_a_version_that_is_not_one_is_refused(
    native_bundle: Path, tmp_path: Path, version: str
) -> None:
    """bundle.info's version names the venv directory (and so an rm -rf target): a signed
    bundle with a bad one is refused before it names anything."""
    bundle = unpacked(native_bundle, tmp_path)
    info = bundle / "bundle.info"
    info.write_text(re.sub(r"^version=.*$", f"version={version}", info.read_text(), flags=re.M))
    resign(bundle, signing_keys()[0])
    root = tmp_path / "root"
    res = install(root, "--bundle", bundle, offline=False)
    assert res.returncode == 1, output(res)
    assert f"refusing the version '{version}'" in res.stderr
    assert not (root / "opt").exists()


@pytest.mark.timeout(300)
def test_a_bundle_refuses_a_python_it_has_no_wheels_for(
    native_bundle: Path, tmp_path: Path
) -> None:
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 3.12\n")
    python.chmod(0o755)
    root = tmp_path / "root"
    res = install(root, "--bundle", native_bundle, "--python", python, offline=False)
    assert res.returncode == 1, output(res)
    assert f"the bundle's wheels are for Python 3.11; {python} is 3.12" in res.stderr
    assert not (root / "opt").exists()


@pytest.mark.timeout(60)
def test_usage() -> None:
    res = run([INSTALL, "--help"])
    assert res.returncode == 0
    assert "--uninstall" in res.stdout
    assert "--prefix DIR" in res.stdout
    for args in (["--purge"], ["--bogus"], ["--prefix"], ["--uninstall", "--bundle", "x"]):
        res = run([INSTALL, *args])
        assert res.returncode == 2, (args, output(res))
    res = run([BUNDLE])
    assert res.returncode == 2
    assert "usage:" in res.stderr
    res = run([BUNDLE, "--python", sys.executable, "--key", "k.pem", "bundle.zip"])
    assert res.returncode == 2
    res = run([BUNDLE, "--python", sys.executable, "/nonexistent/bundle.tar.gz"])
    assert res.returncode == 2
    assert "no signing key" in res.stderr


@pytest.mark.timeout(60)
def test_the_sample_config_is_valid_with_its_commented_keys_too(tmp_path: Path) -> None:
    res = run([TEPI, "check", "--config", SAMPLE, "--no-files"])
    assert res.returncode == 0, output(res)
    assert "2 devices" in res.stdout
    # Uncomment every commented key (but the alternatives that exclude a set key).
    lines = []
    uncommented = 0
    for line in SAMPLE.read_text().splitlines():
        m = re.match(r"^(\s*)#( +)(- \{.*|- [a-z_]+:.*|[a-z_]+:.*)$", line)
        if m and not re.search(r"password_env|profile", line):
            lines.append(m[1] + m[2][1:] + re.sub(r"\s+#.*$", "", m[3]))
            uncommented += 1
        else:
            lines.append(line)
    assert uncommented > 25
    full = tmp_path / "full.yaml"
    full.write_text("\n".join(lines) + "\n")
    res = run([TEPI, "check", "--config", full, "--no-files"])
    assert res.returncode == 0, output(res)
    assert "3 devices" in res.stdout
    # The password is a relative name, for the unit's LoadCredential=mqtt-password:...
    assert re.search(r"^  password_file: mqtt-password$", SAMPLE.read_text(), re.MULTILINE)
    assert "LoadCredential=mqtt-password:/etc/tepi/secrets/mqtt-password" in UNIT.read_text()
    assert "url: mqtts://" in SAMPLE.read_text()


# alone: it checks that the install left no build/ in the checkout, and test_layers.py's wheel
# (pip wheel of the checkout) leaves one; under xdist that ran on the other worker in between.
@pytest.mark.alone
@pytest.mark.timeout(600)
def test_online_install_from_the_checkout(tmp_path: Path) -> None:
    if problem := device_python_problem():
        pytest.skip(problem)
    if not pypi_reachable():
        pytest.skip("PyPI is not reachable: the online install needs it")
    tree = {p.name for p in REPO.iterdir()}
    root = tmp_path / "root"
    res = install(root, "--no-start", offline=False)
    assert res.returncode == 0, output(res)
    assert "from the checkout" in res.stdout
    assert "not started (--no-start)" in res.stdout
    check_config(root)
    got = installed(root / "opt/tepi/venv")
    want = pins()
    assert got["tepi"] == VERSION
    assert all(got[n] == want[n] for n in ("pydantic", "aiohttp", "orjson", "zstandard"))
    assert {p.name for p in REPO.iterdir()} == tree  # no build/ left in the checkout


@pytest.mark.timeout(600)
def test_the_full_bundle_has_every_wheel_for_both_platforms(tmp_path: Path) -> None:
    out = tmp_path / "tepi-bundle.tar.gz"
    res = run([BUNDLE, "--python", sys.executable, "--key", signing_keys()[0], out], timeout=580)
    assert res.returncode == 0, output(res)
    files = tar_files(out)
    wheels = [Path(n).name for n in files if n.startswith("wheels/")]
    for name in COMPILED:
        mine = [w for w in wheels if norm(w.split("-")[0]) == norm(name)]
        for arch in ARCHES:
            assert any("manylinux" in w and w.endswith(f"_{arch}.whl") for w in mine), (
                name,
                arch,
                mine,
            )
        assert all("-cp311-cp311-" in w for w in mine), mine
    assert f"tepi-{VERSION}-py3-none-any.whl" in wheels

    # MANIFEST: the sha256 of every other file, and they match.
    manifest = {}
    for line in files["MANIFEST"].decode().splitlines():
        digest, name = line.split("  ", 1)
        manifest[name] = digest
    assert set(manifest) == set(files) - {"MANIFEST", "MANIFEST.sig"}
    assert len(files["MANIFEST.sig"]) == 64  # an Ed25519 signature
    for name, digest in manifest.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    assert "platforms=aarch64 x86_64" in files["bundle.info"].decode()
    assert {"install.sh", "tepi.service", "tepi.yaml.sample", "constraints.txt"} <= set(files)
    readme = files["README.txt"].decode()
    assert "aarch64:" in readme
    assert "x86_64:" in readme

    # The two-platform bundle installs here with no network, as on a device.
    need_offline_install()
    root = tmp_path / "root"
    res = install(root, "--bundle", out, "--no-start")
    assert res.returncode == 0, output(res)
    check_config(root)


# What the namespaced install runs: overlays on /etc, /opt and /var (the writes land in $1),
# then the real installer, with no --prefix: useradd, chown and userdel act on the overlay.
IN_NAMESPACE = r"""
set -eu
top=$1 installer=$2 bundle=$3 key=$5
for d in etc opt var; do
    mkdir -p "$top/$d/upper" "$top/$d/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=$top/$d/upper,workdir=$top/$d/work" "/$d"
done
echo "== install"
"$installer" --bundle "$bundle" --key "$key" || echo "EXIT $?"
for p in /etc/tepi /etc/tepi/tepi.yaml /etc/tepi/secrets /var/lib/tepi /opt/tepi/venv/bin/python; do
    stat -L -c 'STAT %n %U:%G %a' "$p"
done
echo "GROUPS $(id -nG tepi)"
echo "PASSWD $(getent passwd tepi)"
runuser -u tepi -- /opt/tepi/venv/bin/tepi check --config /etc/tepi/tepi.yaml --no-files
echo "== second"
sed -i 's/id: site-gateway-01/id: dng-ns-01/' /etc/tepi/tepi.yaml
sh -c 'umask 077; echo "$0" > /etc/tepi/secrets/mqtt-password' "$4"
"$installer" --bundle "$bundle" || echo "EXIT $?"
echo "== purge"
"$installer" --uninstall --purge || echo "EXIT $?"
getent passwd tepi || echo "NO USER tepi"
ls /etc/tepi /var/lib/tepi /opt/tepi 2>/dev/null || echo "NO FILES"
"""


@pytest.mark.timeout(300)
def test_real_install_in_a_private_mount_namespace(native_bundle: Path, tmp_path: Path) -> None:
    """The installer without --prefix, as root on a device: useradd, chown and userdel for
    real, on overlays of /etc, /opt and /var in a mount namespace of its own (the machine's
    own stay untouched), with no network. systemd is not PID 1 here, so the installer says
    it skips systemctl."""
    need_offline_install()
    probe = run(["unshare", "-m", "--", "mount", "-t", "tmpfs", "none", tmp_path])
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a new mount namespace here: {probe.stderr.strip()}")
    host_user = run(["getent", "passwd", "tepi"]).stdout
    args: list[str | Path] = [tmp_path, INSTALL, native_bundle, PASSWORD, signing_keys()[1]]
    res = run(["unshare", "-m", "-n", "--", "bash", "-c", IN_NAMESPACE, "ns", *args], timeout=280)
    assert res.returncode == 0, output(res)
    log = res.stdout + res.stderr
    assert "EXIT" not in log, output(res)
    assert PASSWORD not in log
    first, second, purge = res.stdout.split("== ")[1:]
    stats = {ln.split()[1]: ln.split()[2:] for ln in first.splitlines() if ln.startswith("STAT ")}
    assert stats == {
        "/etc/tepi": ["root:root", "755"],
        "/etc/tepi/tepi.yaml": ["root:tepi", "640"],
        "/etc/tepi/secrets": ["root:root", "700"],
        "/var/lib/tepi": ["tepi:tepi", "750"],
        "/opt/tepi/venv/bin/python": ["root:root", "755"],
    }, first
    assert "install.sh: useradd --system" in first
    assert "dialout" in re.search(r"^GROUPS (.*)$", first, re.MULTILINE)[1].split()  # type: ignore[index]
    passwd = re.search(r"^PASSWD (.*)$", first, re.MULTILINE)[1].split(":")  # type: ignore[index]
    assert passwd[5:] == ["/var/lib/tepi", "/usr/sbin/nologin"]
    assert int(passwd[2]) < 1000  # a system user
    assert "OK (gateway site-gateway-01" in first  # tepi check, as user tepi
    assert "skipped (systemd is not running here): systemctl daemon-reload" in first
    assert "is the unedited sample" in first

    assert "not started: systemd is not running here" in second
    assert "usermod" not in second  # tepi is in dialout already
    assert "useradd" not in second

    assert "userdel tepi" in purge
    assert "NO USER tepi" in purge
    assert "NO FILES" in purge
    # The machine's own /etc was not touched.
    assert run(["getent", "passwd", "tepi"]).stdout == host_user
