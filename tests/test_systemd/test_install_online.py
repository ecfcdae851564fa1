"""systemd/install.sh from the checkout, online (PyPI; skipped when PyPI is unreachable),
its usage, and the sample config it installs, valid with its commented keys too
(tests/installkit.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from installkit import (
    BUNDLE,
    INSTALL,
    REPO,
    SAMPLE,
    TEPI,
    UNIT,
    VERSION,
    check_config,
    device_python_problem,
    install,
    installed,
    output,
    pins,
    pypi_reachable,
    run,
)


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


# It checks that the install left nothing (build/, *.egg-info) in the checkout, so no test
# beside it may write there: test_layers.py builds its wheel from a copy of the tree, as
# bundle.sh does.
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
