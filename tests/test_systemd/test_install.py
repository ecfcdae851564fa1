"""systemd/install.sh from the offline bundle, run for real into scratch roots: the first
install, a second that keeps the config and starts, an upgrade the config refuses, a venv made
by hand, uninstall and purge (tests/installkit.py runs the installer; its module docstring says
how ``--prefix`` and ``unshare -n`` stand in for a device without the internet).

The bundle is the one for this machine's platform (``bundle.sh --native``), built once per run
for every pytest-xdist worker (tests/test_systemd/conftest.py); the first install is made once
for this file, and each test that installs again does so on a copy of it. The other install
tests: test_install_bundle_checks.py (what a bundle must be, the real install in a mount
namespace), test_install_full_bundle.py (both platforms' wheels), test_install_online.py (from
the checkout, over PyPI). They are four files so that the two workers share them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from installkit import (
    INSTALL,
    PASSWORD,
    SAMPLE,
    UNIT,
    VERSION,
    check_config,
    copy_root,
    current,
    install,
    installed,
    mode,
    need_offline_install,
    output,
    pins,
    signing_keys,
    venvs,
)


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
