"""The ``update`` command end to end in a scratch root (docs/update.md): the agent's
:class:`~tepi.gateway.update.Updater` downloads a bundle from a real HTTPS server (trustme's
CA) and checks it; ``tepi-switch`` (a real process, ``--prefix``) checks it again, installs it
with a stand-in for install.sh (update_harness.py; the real install.sh path is in
test_update_install.py), restarts the agent with a stand-in for ``systemctl restart`` that waits for
``READY=1`` as Type=notify does, and waits for the new agent's confirmation, which a fake
agent running the real :class:`~tepi.gateway.update.UpdateTrial` writes once it reaches a
real Mosquitto. Bundles have the real format (MANIFEST, MANIFEST.sig made by ``openssl
pkeyutl -sign -rawin``, bundle.info) with a fake agent instead of wheels.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Broker
from hypothesis import given, settings
from hypothesis import strategies as st
from updatekit import Keys, Server, https, keys, make_bundle, until

from tepi.gateway.bundle import BundleError, parse_info, parse_manifest, verify
from tepi.gateway.config import UpdateSection
from tepi.gateway.localbroker import free_port
from tepi.gateway.switcher import SwitchError, parse_request
from tepi.gateway.update import Updater, UpdateRefused, UpdateTrial, read_json

__all__ = ["https", "keys"]  # fixtures, used by name

HARNESS = Path(__file__).with_name("update_harness.py")
OLD, NEW = "0.9.0", "1.0.0"
OLD_VENV = f"venv-{OLD}-20260101T000000Z"
OLD_UNIT = "# the unit of 0.9.0\n"


# ---- the scratch root -----------------------------------------------------------------------


@dataclass
class Box:
    root: Path
    data: Path
    keys: Keys
    cfg: UpdateSection

    @property
    def update(self) -> Path:
        return self.data / "update"

    def link(self) -> str:
        return str((self.root / "opt/tepi/venv").readlink())

    def status(self) -> dict[str, Any]:
        status = read_json(self.update / "status.json")
        assert status is not None
        return status

    def agent_version(self) -> str:
        return (self.root / "run/agent.version").read_text()

    def restart_cmd(self) -> list[str]:
        return [sys.executable, str(HARNESS), "restart", str(self.root)]

    def switcher(self) -> list[str]:
        restart = json.dumps(self.restart_cmd())
        return [
            sys.executable, "-m", "tepi.gateway.switcher", "--prefix", str(self.root),
            "--restart", restart, "--poll", "0.05",
        ]  # fmt: skip

    async def switch(self) -> subprocess.CompletedProcess[str]:
        res = await asyncio.to_thread(
            subprocess.run, self.switcher(), capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        return res

    def installer_runs(self) -> int:
        log = self.root / "installer.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
async def box(tmp_path: Path, keys: Keys) -> AsyncIterator[Box]:
    """A box running tepi 0.9.0 (a fake agent) with a broker, as install.sh leaves it."""
    root = tmp_path / "root"
    venv = root / "opt/tepi" / OLD_VENV
    venv.mkdir(parents=True)
    (venv / "agent.py").write_text("# run by update_harness.py\n")
    (venv / "agent.json").write_text(json.dumps({"version": OLD, "mode": "good"}))
    (root / "opt/tepi/venv").symlink_to(OLD_VENV)
    share = root / "opt/tepi/share"
    share.mkdir()
    (share / "install.sh").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HARNESS}" install "$@"\n'
    )
    (share / "install.sh").chmod(0o755)
    (root / "etc/tepi").mkdir(parents=True)
    (root / "etc/tepi/bundle-signing.pub").write_bytes(keys.public.read_bytes())
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/tepi.service").write_text(OLD_UNIT)
    data = root / "var/lib/tepi"
    data.mkdir(parents=True)
    broker = Broker(tmp_path)
    await broker.start()
    (root / "broker.json").write_text(json.dumps({"port": broker.port}))
    cfg = UpdateSection(
        public_key_file=root / "etc/tepi/bundle-signing.pub",
        ca_file=tmp_path / "ca.pem",
        confirm_timeout=10,
        max_bytes=4 * 1024 * 1024,
    )
    b = Box(root, data, keys, cfg)
    res = subprocess.run(b.restart_cmd(), capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert b.agent_version() == OLD
    try:
        yield b
    finally:
        pid = root / "run/agent.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)
        await broker.stop()


async def stage(box: Box, https: Server, bundle: tuple[Path, str], version: str) -> dict[str, Any]:
    name = bundle[0].name
    https.files[name] = bundle[0]
    updater = Updater(box.cfg, box.data, working=list)
    out = await updater({"url": f"{https.base}/{name}", "sha256": bundle[1], "version": version})
    assert isinstance(out, dict)
    return out


def nothing_staged(box: Box) -> None:
    left = sorted(p.name for p in box.update.iterdir()) if box.update.exists() else []
    assert left == [], left


# ---- the cases --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_good_bundle_switches_and_confirms(box: Box, https: Server, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, NEW, "good", box.keys.private)
    out = await stage(box, https, bundle, NEW)
    assert out["state"] == "staged"
    assert out["files_verified"] == 5
    request = read_json(box.update / "request.json")
    assert request is not None
    assert request["bundle"] == out["bundle"]
    assert request["sha256"] == bundle[1]
    assert box.installer_runs() == 0  # the agent only asks

    await box.switch()
    status = box.status()
    assert status["state"] == "confirmed", status
    assert (status["running"], status["previous"]) == (NEW, OLD)
    assert box.link().startswith(f"venv-{NEW}-")
    assert (box.root / "opt/tepi" / OLD_VENV).is_dir()  # kept for a rollback
    assert box.agent_version() == NEW
    confirmed = read_json(box.update / "confirmed.json")  # the new agent's, for its trial
    assert confirmed is not None
    assert (confirmed["version"], confirmed["id"]) == (NEW, request["id"])
    assert UpdateTrial(box.data, NEW).previous_version == OLD
    assert UpdateTrial(box.data, OLD).previous_version is None
    assert box.installer_runs() == 1
    # The request and the staged bundle are gone; the trial is over.
    for name in ("request.json", "trial.json", out["bundle"]):
        assert not (box.update / name).exists(), name
    assert {"verify_s", "install_s", "restart_s", "confirm_s"} <= set(status["timings"])
    print("timings", json.dumps({"download_verify_ms": out["download_ms"] + out["verify_ms"],
                                 **status["timings"]}))  # fmt: skip


@pytest.mark.timeout(90)
async def test_a_bundle_whose_agent_fails_to_start_switches_back(
    box: Box, https: Server, tmp_path: Path
) -> None:
    await stage(box, https, make_bundle(tmp_path, NEW, "crash", box.keys.private), NEW)
    await box.switch()
    status = box.status()
    assert status["state"] == "rolled_back", status
    assert f"tepi {NEW} did not start" in status["reason"]
    assert "exited with 3" in status["reason"]
    assert (status["running"], status["tried"]) == (OLD, NEW)
    assert box.link() == OLD_VENV
    assert box.agent_version() == OLD  # the old agent runs again
    # The unit file the new bundle brought is replaced by the one from before.
    assert (box.root / "etc/systemd/system/tepi.service").read_text() == OLD_UNIT
    assert not (box.update / "request.json").exists()
    assert not (box.update / "trial.json").exists()
    assert "rollback_s" in status["timings"]
    print("timings", json.dumps(status["timings"]))


@pytest.mark.timeout(90)
async def test_a_bundle_that_cannot_reach_the_broker_switches_back(
    box: Box, https: Server, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, NEW, "nobroker", box.keys.private, closed_port=free_port())
    await stage(box, https, bundle, NEW)
    await box.switch()
    status = box.status()
    assert status["state"] == "rolled_back", status
    assert f"tepi {NEW} did not confirm within 10 s" in status["reason"]
    assert box.link() == OLD_VENV
    assert box.agent_version() == OLD
    assert status["timings"]["restart_s"] < 10  # it started; it only never confirmed
    assert UpdateTrial(box.data, OLD).previous_version is None
    print("timings", json.dumps(status["timings"]))


@pytest.mark.timeout(90)
async def test_a_killed_trial_switches_back_at_the_next_start(
    box: Box, https: Server, tmp_path: Path
) -> None:
    """A power cut during the trial: the switcher dies, the request stays (so the path unit
    starts the switcher at the next boot), and that run goes back."""
    cfg = box.cfg.model_copy(update={"confirm_timeout": 300})
    box.cfg = cfg
    bundle = make_bundle(tmp_path, NEW, "nobroker", box.keys.private, closed_port=free_port())
    await stage(box, https, bundle, NEW)
    proc = subprocess.Popen(box.switcher(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        seen = []
        for raw in proc.stdout:  # the switcher's log: it restarts the agent for its trial
            seen.append(raw.decode())
            if "restarting the agent for its trial" in seen[-1]:
                break
        else:
            pytest.fail("".join(seen))
        trial = read_json(box.update / "trial.json")
        assert trial is not None
        assert trial["version"] == NEW
        await until(lambda: box.agent_version() == NEW)  # the new agent runs its trial
    finally:
        proc.kill()
        proc.wait()
    assert box.link().startswith(f"venv-{NEW}-")
    assert (box.update / "request.json").exists()

    await box.switch()  # the next start
    status = box.status()
    assert status["state"] == "rolled_back", status
    assert "was cut short" in status["reason"]
    assert box.link() == OLD_VENV
    assert box.agent_version() == OLD
    assert not (box.update / "request.json").exists()
    state = json.loads((box.root / "var/lib/tepi-update/state.json").read_text())
    assert state["phase"] == "idle"
    assert state["starts"] == 2


@pytest.mark.timeout(60)
async def test_a_bad_signature_is_refused_before_anything_is_installed(
    box: Box, https: Server, tmp_path: Path
) -> None:
    other = make_bundle(tmp_path / "other", NEW, "good", box.keys.other)
    with pytest.raises(UpdateRefused, match="signature does not verify"):
        await stage(box, https, other, NEW)
    nothing_staged(box)

    def swap_agent(top: Path) -> None:  # changed after signing, MANIFEST fixed to match
        (top / "agent.json").write_text('{"mode": "evil"}')
        digest = hashlib.sha256((top / "agent.json").read_bytes()).hexdigest()
        lines = (top / "MANIFEST").read_text().splitlines()
        fixed = [f"{digest}  agent.json" if ln.endswith("  agent.json") else ln for ln in lines]
        (top / "MANIFEST").write_text("\n".join(fixed) + "\n")

    tampered = make_bundle(tmp_path / "t", NEW, "good", box.keys.private, after_sign=swap_agent)
    with pytest.raises(UpdateRefused, match="signature does not verify"):
        await stage(box, https, tampered, NEW)
    nothing_staged(box)

    def add_file(top: Path) -> None:
        (top / "wheels/extra.whl").write_bytes(b"not in MANIFEST")

    extra = make_bundle(tmp_path / "x", NEW, "good", box.keys.private, after_sign=add_file)
    with pytest.raises(UpdateRefused, match=r"not in its MANIFEST: wheels/extra\.whl"):
        await stage(box, https, extra, NEW)
    nothing_staged(box)
    assert box.installer_runs() == 0
    assert box.link() == OLD_VENV


@pytest.mark.timeout(60)
async def test_a_bad_sha256_or_version_is_refused(box: Box, https: Server, tmp_path: Path) -> None:
    tarball, digest = make_bundle(tmp_path, NEW, "good", box.keys.private)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(UpdateRefused, match=f"sha256 is {digest}, not the {wrong}"):
        await stage(box, https, (tarball, wrong), NEW)
    nothing_staged(box)
    with pytest.raises(UpdateRefused, match=f"the bundle is version {NEW}, not the 2.0.0"):
        await stage(box, https, (tarball, digest), "2.0.0")
    nothing_staged(box)
    assert box.installer_runs() == 0


@pytest.mark.timeout(60)
async def test_the_switcher_does_not_trust_the_agent(
    box: Box, https: Server, tmp_path: Path
) -> None:
    """An agent taken over writes its own request: a bundle signed by another key, a link to
    a root-owned file, nonsense. The switcher refuses each, and installs nothing."""
    box.update.mkdir()
    other, digest = make_bundle(tmp_path, NEW, "good", box.keys.other)
    name = f"bundle-{digest[:16]}.tar.gz"
    (box.update / name).write_bytes(other.read_bytes())
    request = {"id": "0123456789abcdef", "bundle": name, "sha256": digest, "version": NEW}
    (box.update / "request.json").write_text(json.dumps(request))
    await box.switch()
    status = box.status()
    assert status["state"] == "refused"
    assert "signature does not verify" in status["reason"]
    assert not (box.update / "request.json").exists()  # handled: the path unit stops

    (box.update / name).symlink_to("/etc/passwd")
    (box.update / "request.json").write_text(json.dumps(request))
    await box.switch()
    assert "cannot open the staged bundle" in box.status()["reason"]

    (box.update / "request.json").write_text(json.dumps({**request, "bundle": "../../x.tar.gz"}))
    await box.switch()
    assert box.status()["reason"] == "request.json: bundle is missing or invalid"
    assert box.installer_runs() == 0
    assert box.link() == OLD_VENV
    assert box.agent_version() == OLD


@pytest.mark.timeout(60)
async def test_https_only_and_verified(box: Box, https: Server, tmp_path: Path) -> None:
    tarball, digest = make_bundle(tmp_path, NEW, "good", box.keys.private)
    https.files["b.tar.gz"] = tarball
    updater = Updater(box.cfg, box.data)
    url = f"{https.base}/b.tar.gz"
    with pytest.raises(UpdateRefused, match="must be https"):
        await updater({"url": url.replace("https:", "http:"), "sha256": digest, "version": NEW})
    untrusting = Updater(box.cfg.model_copy(update={"ca_file": None}), box.data)
    with pytest.raises(UpdateRefused, match="certificate does not verify"):
        await untrusting({"url": url, "sha256": digest, "version": NEW})
    assert https.hits == []  # the TLS handshake failed: no request was made
    small = Updater(box.cfg.model_copy(update={"max_bytes": 1024 * 1024}), box.data)
    big, big_digest = make_bundle(
        tmp_path / "big", NEW, "good", box.keys.private, extra={"pad": os.urandom(1_200_000)}
    )
    https.files["big.tar.gz"] = big
    with pytest.raises(UpdateRefused, match="max_bytes"):
        await small({"url": f"{https.base}/big.tar.gz", "sha256": big_digest, "version": NEW})
    with pytest.raises(UpdateRefused, match="HTTP 404"):
        await updater({"url": f"{https.base}/none", "sha256": digest, "version": NEW})
    nothing_staged(box)


@pytest.mark.timeout(60)
async def test_a_server_error_is_retried(box: Box, https: Server, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, NEW, "good", box.keys.private)
    https.files["flaky"] = bundle[0]
    updater = Updater(box.cfg, box.data)
    out = await updater({"url": f"{https.base}/flaky", "sha256": bundle[1], "version": NEW})
    assert out["state"] == "staged"
    assert https.hits == ["flaky", "flaky"]  # a 503, then the bundle
    with pytest.raises(UpdateRefused, match="already requested"):
        await updater({"url": f"{https.base}/flaky", "sha256": bundle[1], "version": NEW})


# ---- the parsers ------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"id": st.text(max_size=20), "bundle": st.text(max_size=40)},
            optional={"sha256": st.text(), "version": st.text(), "confirm_timeout": _json,
                      "devices": _json},
        ).map(lambda v: json.dumps(v).encode()),
    )
)  # fmt: skip
@pytest.mark.timeout(120)
def test_a_request_parses_or_is_refused_cleanly(raw: bytes) -> None:
    try:
        req = parse_request(raw)
    except SwitchError:
        return
    assert "/" not in req.bundle
    assert 10 <= req.confirm_timeout <= 3600


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"\A[a-z][a-z0-9_./-]{0,30}\Z"), st.binary(max_size=32), max_size=8
    )
)
@pytest.mark.timeout(120)
def test_a_manifest_round_trips(files: dict[str, bytes]) -> None:
    text = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in files.items())
    safe = all(part not in {"", ".", ".."} for k in files for part in k.split("/")) and bool(files)
    if not safe:
        with pytest.raises(BundleError):
            parse_manifest(text)
        return
    assert parse_manifest(text) == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
@pytest.mark.timeout(60)
def test_bundle_info_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        info = parse_info(text)
    except BundleError:
        return
    assert "version" in info


@pytest.mark.timeout(30)
def test_links_and_escapes_in_a_tarball_are_refused(keys: Keys, tmp_path: Path) -> None:
    key = keys.public.read_bytes()
    why = {"link": "not a regular file", "escape": "unsafe path", "two_tops": "top directory"}
    for make, complaint in why.items():
        path = tmp_path / f"{make}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("tepi-bundle-1.0.0/MANIFEST")
            info.size = 0
            tar.addfile(info, io.BytesIO())
            if make == "link":
                link = tarfile.TarInfo("tepi-bundle-1.0.0/shadow")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
                tar.addfile(link)
            elif make == "escape":
                info = tarfile.TarInfo("tepi-bundle-1.0.0/../../evil")
                tar.addfile(info, io.BytesIO())
            else:
                info = tarfile.TarInfo("other/file")
                tar.addfile(info, io.BytesIO())
        with pytest.raises(BundleError, match=complaint):
            verify(path, key, max_unpacked=1 << 20)


# ---- the agent's side, piece by piece -----------------------------------------------------------


@pytest.mark.timeout(60)
async def test_one_update_at_a_time_and_only_with_room(
    box: Box, https: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path, NEW, "good", box.keys.private)
    box.update.mkdir()
    (box.update / "trial.json").write_text(json.dumps({"id": "x", "version": NEW}))
    with pytest.raises(UpdateRefused, match="in its trial"):
        await stage(box, https, bundle, NEW)
    (box.update / "trial.json").unlink()

    import shutil

    real = shutil.disk_usage

    def nearly_full(path: str | Path) -> Any:
        usage = real(path)
        return usage._replace(free=1024 * 1024)

    monkeypatch.setattr("tepi.gateway.update.shutil.disk_usage", nearly_full)
    with pytest.raises(UpdateRefused, match=r"1048576 bytes free .* the bundle needs"):
        await stage(box, https, bundle, NEW)
    nothing_staged(box)


@pytest.mark.timeout(30)
async def test_the_health_check_names_what_is_wrong() -> None:
    from tepi.gateway.update import healthy_within

    states = {"s1": "ok", "s2": "failing"}
    connected = [False]
    why = await healthy_within(0.05, lambda: connected[0], lambda: states, ["s1"], every=0.01)
    assert why == "the uplink is not connected to the broker"
    connected[0] = True
    assert await healthy_within(0.05, lambda: True, lambda: states, ["s1"], every=0.01) is None
    why = await healthy_within(0.05, lambda: True, lambda: states, ["s1", "s2", "s3"], every=0.01)
    assert why == "devices that worked before do not work: s2 (failing), s3 (removed)"


@pytest.mark.timeout(30)
async def test_a_trial_is_confirmed_only_by_its_own_version_once(tmp_path: Path) -> None:
    from tepi.gateway.update import write_json

    update = tmp_path / "update"
    update.mkdir()
    calls: list[float] = []

    async def healthy(timeout: float) -> str | None:
        calls.append(timeout)
        return None

    write_json(update, "trial.json", {"id": "t1", "version": NEW, "confirm_timeout": 30})
    other = UpdateTrial(tmp_path, OLD)
    await other.on_start(healthy)
    assert (other.outcome, calls) == ("none", [])
    assert not (update / "confirmed.json").exists()
    new = UpdateTrial(tmp_path, NEW)
    await new.on_start(healthy)
    assert new.outcome == "confirmed"
    assert 20 < calls[0] <= 28  # within the switcher's deadline, less a margin
    confirmed = read_json(update / "confirmed.json")
    assert confirmed is not None
    assert (confirmed["id"], confirmed["version"]) == ("t1", NEW)
    again = UpdateTrial(tmp_path, NEW)
    await again.on_start(healthy)  # a restart after the confirmation: nothing to do
    assert (again.outcome, len(calls)) == ("none", 1)
