"""What systemd and install.sh are to tepi-switch, for tests/test_gateway/test_update.py, in a
scratch root ROOT (no systemd here):

- ``update_harness.py restart ROOT``: the switcher's restart command (``systemctl restart
  tepi``): stops the agent that runs (its pid in ROOT/run/agent.pid), starts the one
  ROOT/opt/tepi/venv holds, and, like ``Type=notify``, exits 0 once it sends ``READY=1`` on
  ``$NOTIFY_SOCKET``, or 1 if it exits first (a failed start). The agent is a fake one
  (``agent.py`` in the venv) or the real ``tepi run`` (``bin/tepi`` in the venv).
- ``update_harness.py install --bundle FILE --key PUB --no-start --prefix ROOT``: a stand-in
  for install.sh (which builds a real venv in minutes): unpacks the bundle's ``agent.py`` and
  ``agent.json`` into ROOT/opt/tepi/venv-VERSION-TIME, installs its ``tepi.service``, switches
  the link as install.sh does (a new link renamed over it), and logs its call in
  ROOT/installer.log. It checks nothing: what it is given was checked by the switcher, which
  is what the tests prove.
- ``update_harness.py agent ROOT``: the fake agent (run from a venv's agent.py): ``good``
  confirms once it reaches the broker; ``crash`` exits at once; ``nobroker`` starts but its
  broker port is closed, so it never confirms.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path


def _stop(root: Path) -> None:
    pidfile = root / "run/agent.pid"
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([fd], [], [], 15)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([fd], [], [], 15)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
    pidfile.unlink(missing_ok=True)


def restart(root: Path) -> int:
    _stop(root)
    venv = root / "opt/tepi/venv"
    if (venv / "agent.py").exists():
        cmd = [sys.executable, str(Path(__file__).resolve()), "agent", str(root)]
        cwd = venv.resolve()
    else:
        cmd = [str(venv / "bin/tepi"), "run", "--config", str(root / "etc/tepi/tepi.yaml")]
        cwd = root
    (root / "run").mkdir(exist_ok=True)
    sock_path = root / "run/notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    with (root / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    (root / "run/agent.pid").write_text(str(proc.pid))
    pidfd = os.pidfd_open(proc.pid)
    deadline = time.monotonic() + 60
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock.fileno(), pidfd], [], [], left)
            if sock.fileno() in ready and b"READY=1" in sock.recv(4096).split(b"\n"):
                return 0
            if pidfd in ready:
                print(f"the agent exited with {proc.wait()} before it was ready", file=sys.stderr)
                return 1
        print("the agent was not ready within 60 s", file=sys.stderr)
        return 1
    finally:
        os.close(pidfd)
        sock.close()


def install(args: list[str]) -> int:
    opts: dict[str, str] = {}
    it = iter(args)
    for arg in it:
        opts[arg] = "" if arg == "--no-start" else next(it)
    root = Path(opts["--prefix"])
    with (root / "installer.log").open("a") as log:
        log.write(" ".join(args) + "\n")
    with tarfile.open(opts["--bundle"]) as tar:
        files = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    info = dict(line.split("=", 1) for line in files["bundle.info"].decode().splitlines())
    opt = root / "opt/tepi"
    name = f"venv-{info['version']}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    while (opt / name).exists():
        name += "-1"
    (opt / name).mkdir()
    for f in ("agent.py", "agent.json"):
        (opt / name / f).write_bytes(files[f])
    (root / "etc/systemd/system/tepi.service").write_bytes(files["tepi.service"])
    tmp = opt / f".venv-new-{os.getpid()}"
    tmp.symlink_to(name)
    tmp.replace(opt / "venv")
    return 0


def agent(root: Path) -> int:
    import asyncio

    import aiomqtt

    from tepi.gateway.update import UpdateTrial

    cfg = json.loads(Path("agent.json").read_text())
    (root / "run/agent.version").write_text(cfg["version"])
    if cfg["mode"] == "crash":
        print("crash: exiting before ready", file=sys.stderr)
        return 3
    port = json.loads((root / "broker.json").read_text())["port"]
    if cfg["mode"] == "nobroker":
        port = cfg["closed_port"]

    async def healthy(timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="update-agent"):
                    return None
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)
        return "the uplink is not connected to the broker"

    async def main() -> None:
        addr = os.environ["NOTIFY_SOCKET"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        trial = UpdateTrial(root / "var/lib/tepi", cfg["version"])
        task = asyncio.create_task(trial.on_start(healthy))
        await stop.wait()
        task.cancel()

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "restart":
        sys.exit(restart(Path(rest[0])))
    if what == "install":
        sys.exit(install(rest))
    if what == "agent":
        sys.exit(agent(Path(rest[0])))
    sys.exit(f"unknown: {what}")
