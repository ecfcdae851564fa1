"""The ``update`` command with the real parts only: ``bundle.sh`` builds the bundle (this
machine's platform), ``install.sh`` installs it into a scratch root, the installed ``tepi run``
takes a signed ``update`` command from ``tepi remote`` over a real Mosquitto and downloads the
bundle over HTTPS, and the installed ``tepi-switch`` runs the installed install.sh, restarts
the agent (update_harness.py, as Type=notify) and waits for the new ``tepi run`` to confirm
through the agent's own health check (tepi.gateway.runtime). The bundle is built once for the
module; each test installs it afresh. ``-s`` prints the measured times.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Broker, agent_config, run_tepi
from updatekit import Keys, Server, https, keys, until

from tepi.core import __version__
from tepi.gateway.update import read_json

__all__ = ["https", "keys"]  # fixtures, used by name

# Minutes of both cores (a bundle built, venvs made with pip, twice): outside the default run,
# like the soaks. `.venv/bin/python -m pytest -m update_install` runs it; test_update.py covers
# the same logic in the default run with a stand-in installer.
pytestmark = pytest.mark.update_install

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("update_harness.py")


def _device_python_problem() -> str | None:
    python = Path("/usr/bin/python3")
    if not python.exists():
        return "no /usr/bin/python3 (the installer's Python)"
    res = subprocess.run(
        [str(python), "-c", "import sys, ensurepip, venv; print(sys.version_info[:2])"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if res.stdout.strip() != "(3, 11)":
        return "/usr/bin/python3 is not a Python 3.11 with venv (as on Debian 12)"
    return None


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def real_bundle(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The offline bundle for this machine (bundle.sh --native), and how long it took."""
    problem = _device_python_problem()
    if problem:
        pytest.skip(problem)
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable: bundle.sh downloads the wheels")
    bundle = tmp_path_factory.mktemp("bundle") / "tepi-bundle.tar.gz"
    t0 = time.monotonic()
    res = subprocess.run(
        [str(REPO / "systemd/bundle.sh"), "--native", "--python", sys.executable,
         "--key", str(keys.private), str(bundle)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return bundle, time.monotonic() - t0


@dataclass
class RealBox:
    root: Path
    broker: Broker
    ioc_key: Path
    bundle: Path
    first: str  # the venv install.sh made first
    https: Server

    @property
    def update(self) -> Path:
        return self.root / "var/lib/tepi/update"

    def restart_cmd(self) -> list[str]:
        return [sys.executable, str(HARNESS), "restart", str(self.root)]

    def link(self) -> str:
        return str((self.root / "opt/tepi/venv").readlink())

    def log(self) -> str:
        return (self.root / "agent.log").read_text()

    def remote(self, *args: str, key: bool = False) -> dict[str, Any]:
        extra = ["--key", str(self.ioc_key), "--key-id", "ioc-1"] if key else []
        out = run_tepi(
            "remote", "--url", f"mqtt://127.0.0.1:{self.broker.port}", "--gateway", "gw-test",
            "--timeout", "60", *extra, *args, timeout=90,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    async def stage(self) -> dict[str, Any]:
        """The signed update command, through the broker and the running agent."""
        self.https.files["b.tar.gz"] = self.bundle
        digest = hashlib.sha256(self.bundle.read_bytes()).hexdigest()
        staged = await asyncio.to_thread(
            self.remote, "update", f"url={self.https.base}/b.tar.gz", f"sha256={digest}",
            f"version={__version__}", key=True,
        )  # fmt: skip
        assert staged["status"] == "done", staged
        out: dict[str, Any] = staged["output"]
        assert out["state"] == "staged"
        return out

    async def switch(self) -> tuple[dict[str, Any], float]:
        """What tepi-update.path would start: the installed tepi-switch. (status, seconds)"""
        t0 = time.monotonic()
        res = await asyncio.to_thread(
            subprocess.run,
            [str(self.root / "opt/tepi/venv/bin/tepi-switch"), "--prefix", str(self.root),
             "--restart", json.dumps(self.restart_cmd())],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        status = read_json(self.update / "status.json")
        assert status is not None
        return status, time.monotonic() - t0


@pytest.fixture
async def real_box(
    real_bundle: tuple[Path, float], https: Server, keys: Keys, tmp_path: Path
) -> AsyncIterator[RealBox]:
    """install.sh's first install of the bundle, configured for a broker of the test's, and
    its ``tepi run`` started."""
    bundle = real_bundle[0]
    root = tmp_path / "root"
    res = await asyncio.to_thread(
        subprocess.run,
        [str(REPO / "systemd/install.sh"), "--prefix", str(root), "--bundle", str(bundle),
         "--key", str(keys.public)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "etc/systemd/system/tepi-update.path").exists()
    ioc_key = tmp_path / "ioc-1.key"
    made = await asyncio.to_thread(run_tepi, "remote", "--keygen", str(ioc_key))
    assert made.returncode == 0, made.stderr
    public = made.stdout.split("public_key: ")[1].split("}")[0].strip()
    broker = Broker(tmp_path)
    await broker.start()
    devices = [{"id": "s1", "driver": "synthetic", "metrics": 2, "poll_interval": "1s"}]
    cfg = yaml.safe_load(agent_config(tmp_path, broker.port, devices).read_text())
    cfg["gateway"]["data_dir"] = str(root / "var/lib/tepi")
    cfg["status"] = {"socket": str(tmp_path / "status.sock")}
    cfg["commands"] = {
        "policy": {"update": "signed"},
        "keys": [{"id": "ioc-1", "public_key": public}],
        "update": {
            "public_key_file": str(root / "etc/tepi/bundle-signing.pub"),
            "ca_file": str(https.ca_file),
            "confirm_timeout": "20s",
        },
    }
    (root / "etc/tepi/tepi.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    box = RealBox(root, broker, ioc_key, bundle, "", https)
    box.first = box.link()
    try:
        res = await asyncio.to_thread(
            subprocess.run, box.restart_cmd(), capture_output=True, text=True, timeout=90
        )
        assert res.returncode == 0, res.stderr + box.log()
        yield box
    finally:
        pid = root / "run/agent.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGTERM)
        await broker.stop()


@pytest.mark.alone  # builds a bundle and venvs with pip: about a minute of both cores each
@pytest.mark.timeout(900)
async def test_a_real_bundle_installs_switches_and_confirms(
    real_box: RealBox, real_bundle: tuple[Path, float]
) -> None:
    out = await real_box.stage()
    request = read_json(real_box.update / "request.json")
    assert request is not None
    assert request["devices"] == ["s1"]  # it worked: it must work after the switch
    status, switch_s = await real_box.switch()
    assert status["state"] == "confirmed", (status, real_box.log()[-3000:])
    assert real_box.link() != real_box.first
    assert (real_box.root / "opt/tepi" / real_box.first).is_dir()  # kept for a rollback
    health = await asyncio.to_thread(real_box.remote, "health")
    assert health["output"]["version"] == __version__
    assert health["output"]["previous_version"] == __version__
    assert f"update: tepi {__version__} confirmed" in real_box.log()
    print(
        "timings",
        json.dumps({
            "bundle_bytes": real_box.bundle.stat().st_size,
            "build_s": round(real_bundle[1], 1), "download_ms": out["download_ms"],
            "verify_ms": out["verify_ms"], "switch_total_s": round(switch_s, 1),
            **status["timings"],
        }),
    )  # fmt: skip


@pytest.mark.alone  # builds venvs with pip
@pytest.mark.timeout(900)
async def test_a_real_agent_that_cannot_reach_the_broker_is_rolled_back(
    real_box: RealBox,
) -> None:
    """The broker goes away once the bundle is staged: the new ``tepi run`` starts but its
    uplink never connects, so it does not confirm, and the switcher goes back to the venv
    install.sh made first."""
    await real_box.stage()
    await real_box.broker.stop()
    status, switch_s = await real_box.switch()
    assert status["state"] == "rolled_back", (status, real_box.log()[-3000:])
    assert "did not confirm within 20 s" in status["reason"]
    assert real_box.link() == real_box.first
    assert "is not healthy (the uplink is not connected to the broker): not confirmed" in (
        real_box.log()
    )
    assert not (real_box.update / "request.json").exists()
    # The previous version runs again, and says so once the broker is back.
    await real_box.broker.start()
    health = await asyncio.to_thread(real_box.remote, "health")
    assert health["output"]["version"] == __version__
    assert health["output"]["previous_version"] is None  # no update was confirmed
    await until(lambda: "was rolled back to" in real_box.log())
    print("timings", json.dumps({"switch_total_s": round(switch_s, 1), **status["timings"]}))
