"""systemd/tepi-update.path and tepi-update.service (docs/update.md): systemd's own check, and
the paths and settings that tie them to the agent and to tepi-switch."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tepi.gateway.config import GatewaySection, UpdateSection
from tepi.gateway.update import REQUEST, UPDATE_DIR

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
PATH_UNIT = SYSTEMD / "tepi-update.path"
SERVICE = SYSTEMD / "tepi-update.service"
SWITCH = "/opt/tepi/venv/bin/tepi-switch"


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


@pytest.mark.timeout(60)
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (Debian 12 has it)")
    # verify checks that ExecStart= exists: a copy points it at this interpreter.
    (tmp_path / SERVICE.name).write_text(SERVICE.read_text().replace(SWITCH, sys.executable))
    shutil.copy(PATH_UNIT, tmp_path / PATH_UNIT.name)
    units = [str(tmp_path / PATH_UNIT.name), str(tmp_path / SERVICE.name)]
    res = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    findings = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert (res.returncode, findings) == (0, [])


def test_the_path_unit_watches_the_agents_request() -> None:
    path = unit(PATH_UNIT)
    data_dir = GatewaySection.model_fields["data_dir"].default
    assert path["Path"]["PathExists"] == str(data_dir / UPDATE_DIR / REQUEST)
    assert path["Path"]["Unit"] == SERVICE.name
    assert path["Install"]["WantedBy"] == "paths.target"


def test_the_service_runs_tepi_switch_as_root_unordered_with_tepi() -> None:
    svc = unit(SERVICE)
    s = svc["Service"]
    assert s["Type"] == "oneshot"
    assert s["User"] == "root"
    assert s["ExecStart"] == SWITCH
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^tepi-switch = "tepi.gateway.switcher:main"$', pyproject, re.M)
    # Its own state, out of the agent's reach (tepi-switch's state_dir).
    assert (s["StateDirectory"], s["StateDirectoryMode"]) == ("tepi-update", "0700")
    # It restarts tepi.service and waits for it: an ordering either way would deadlock.
    for key in ("After", "Before", "Requires", "BindsTo", "PartOf"):
        assert "tepi.service" not in svc["Unit"].get(key, ""), key
    # The longest trial (confirm_timeout's maximum) and an install fit in its start timeout.
    limit = UpdateSection.model_fields["confirm_timeout"].metadata
    most = max(getattr(m, "le", 0) or 0 for m in limit)
    assert s["TimeoutStartSec"] == "2h"
    assert most + 1800 <= 7200


def test_the_bundle_and_the_installer_carry_the_units() -> None:
    bundle = (SYSTEMD / "bundle.sh").read_text()
    assert '"$SELF_DIR/tepi-update.service" "$SELF_DIR/tepi-update.path"' in bundle
    install = (SYSTEMD / "install.sh").read_text()
    assert "UPDATE_UNITS=(tepi-update.service tepi-update.path)" in install
    assert "sysctl enable --now tepi-update.path" in install
