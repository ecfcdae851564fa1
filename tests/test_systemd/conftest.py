"""What the install tests (test_install*.py) build once per run, whichever pytest-xdist worker
asks first: the test signing keys and the offline bundle for this machine's platform. They
live in the run's shared directory (installkit.shared_dir), so the second worker waits for
the first's build instead of building its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from installkit import BUNDLE, VERSION, built_once, output, run, share, shared_dir, signing_keys


@pytest.fixture(scope="session", autouse=True)
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's shared directory, given to installkit for signing_keys()."""
    d = shared_dir(tmp_path_factory)
    share(d)
    return d


@pytest.fixture(scope="session")
def native_bundle(run_dir: Path) -> Path:
    """The offline bundle for this machine's platform (``bundle.sh --native``), built once
    per run and signed with the test key."""
    name = f"tepi-bundle-{VERSION}-native.tar.gz"

    def build(into: Path) -> None:
        key: list[str | Path] = ["--key", signing_keys()[0]]
        res = run([BUNDLE, "--native", "--python", sys.executable, *key, into / name], timeout=280)
        assert res.returncode == 0, output(res)

    return built_once(run_dir / "native-bundle", build) / name
