"""What systemd/install.sh checks in a bundle before anything changes, and the installer as
on a device, run from the native bundle (tests/test_systemd/conftest.py, built once per run):
a damaged, unsigned, re-signed, linked or wrongly versioned bundle is refused; what is
installed is the copy that was verified; and one install without ``--prefix``, in a mount
namespace of its own with overlays on /etc, /opt and /var: useradd, chown and userdel run for
real there, and the machine's own files stay untouched. systemctl never runs: nothing here is
booted with systemd.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from installkit import (
    INSTALL,
    PASSWORD,
    install,
    need_offline_install,
    output,
    resign,
    run,
    signing_keys,
    unpacked,
)


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


# 3.12: no wheels in the bundle for it. 3.11.1: the bundle's minor version, but older than
# 3.11.2 (Debian 12's), the oldest tepi is tested on.
_PY312 = "#!/bin/sh\necho 3.12\n"
_PY3111 = (
    "#!/bin/sh\n"
    'case "$2" in\n'
    '  *"(3, 11, 2)"*) exit 1 ;;\n'
    "  *python_version*) echo 3.11.1 ;;\n"
    "  *) echo 3.11 ;;\n"
    "esac\n"
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        (_PY312, "the bundle's wheels are for Python 3.11; {python} is 3.12"),
        (_PY3111, "tepi needs Python >= 3.11.2; {python} is 3.11.1"),
    ],
    ids=["3.12", "3.11.1"],
)
def test_a_bundle_refuses_a_python_it_is_not_for(
    native_bundle: Path, tmp_path: Path, script: str, refusal: str
) -> None:
    python = tmp_path / "python3"
    python.write_text(script)
    python.chmod(0o755)
    root = tmp_path / "root"
    res = install(root, "--bundle", native_bundle, "--python", python, offline=False)
    assert res.returncode == 1, output(res)
    assert refusal.format(python=python) in res.stderr
    assert not (root / "opt").exists()


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
# Where systemd is PID 1 (a developer's Debian, the field tests' booted root), the installer
# would run systemctl for real: daemon-reload, enable --now and, at the purge, disable --now
# tepi on the machine's own service manager. Hidden, it is not running here, as on CI.
if [ -d /run/systemd ]; then mount -t tmpfs -o mode=0755 tmpfs /run/systemd; fi
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
    own stay untouched), with no network. The machine's systemd, if it runs, is hidden from
    it (/run/systemd), so the installer says it skips systemctl."""
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
