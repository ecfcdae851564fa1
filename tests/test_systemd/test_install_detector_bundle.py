"""A bundle with the camera detector (``bundle.sh --with detector``): onnxruntime and what it
needs ride in the bundle, install with no network, and run the tests' own model with the
installed tepi's detector. A bundle without it carries no onnxruntime (23-28 MB a platform)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from installkit import (
    BUNDLE,
    install,
    need_offline_install,
    norm,
    output,
    run,
    signing_keys,
    tar_files,
)

pytestmark = pytest.mark.timeout(400)

# The installed venv's Python loads the model with the installed tepi and detects: the model
# scores a box by the picture's brightness (tests/test_drivers/test_camera_detector.py).
DETECT = """
import sys
from pathlib import Path
import numpy as np
import onnxruntime
from tepi.drivers.camera.detector import Detector, DetectorSettings
d = Detector(DetectorSettings(Path(sys.argv[1])))
found = d.detect(np.full((320, 320, 3), 230, np.uint8))
print(onnxruntime.__file__)
print(len(found), found[0].label if found else None, round(found[0].score, 2) if found else None)
"""


def wheels(bundle: Path) -> set[str]:
    return {norm(Path(n).name.split("-")[0]) for n in tar_files(bundle) if n.startswith("wheels/")}


def test_a_bundle_carries_the_detector_only_when_asked(native_bundle: Path, tmp_path: Path) -> None:
    assert "onnxruntime" not in wheels(native_bundle)
    assert "extras=\n" in tar_files(native_bundle)["bundle.info"].decode()

    out = tmp_path / "tepi-bundle-detector.tar.gz"
    key = signing_keys()[0]
    res = run([BUNDLE, "--native", "--with", "detector", "--python", sys.executable,
               "--key", key, out], timeout=280)  # fmt: skip
    assert res.returncode == 0, output(res)
    files = tar_files(out)
    assert {"onnxruntime", "flatbuffers", "protobuf"} <= wheels(out)
    assert "extras=detector\n" in files["bundle.info"].decode()
    assert "Optional parts included: detector." in files["README.txt"].decode()

    need_offline_install()
    from test_drivers.test_camera_detector import brightness_model

    model = brightness_model(tmp_path / "bright.onnx")
    root = tmp_path / "root"
    res = install(root, "--bundle", out, "--no-start")
    assert res.returncode == 0, output(res)
    venv = root / "opt/tepi/venv"
    res = run([venv / "bin/python", "-c", DETECT, model], offline=True)
    assert res.returncode == 0, output(res)
    where, found = res.stdout.splitlines()
    assert where.startswith(str(venv)), where  # the bundle's, not the test venv's
    assert found == "1 car 0.9", found


def test_an_extra_tepi_does_not_have_is_refused_before_any_download(tmp_path: Path) -> None:
    for extra, why in (("nosuch", "no optional dependencies named nosuch"),
                       ("test", "not for tests"), ("Bad;x", "not an extra's name")):  # fmt: skip
        res = run([BUNDLE, "--with", extra, "--key", signing_keys()[0],
                   tmp_path / "x.tar.gz"], timeout=30)  # fmt: skip
        assert res.returncode == 2, output(res)
        assert why in res.stderr, output(res)
    assert not (tmp_path / "x.tar.gz").exists()
