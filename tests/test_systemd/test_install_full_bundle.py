"""systemd/bundle.sh's full bundle: every compiled wheel for both platforms (aarch64 and
x86_64), the MANIFEST and its signature, and an offline install from it on this machine, as on
a device (tests/installkit.py).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from installkit import (
    ARCHES,
    BUNDLE,
    COMPILED,
    VERSION,
    check_config,
    install,
    need_offline_install,
    norm,
    output,
    run,
    signing_keys,
    tar_files,
)


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
