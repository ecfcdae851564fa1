"""``tepi``: the agent and the technician's tools.

Exit codes (also in docs/operations.md):
    0  success
    1  the config is invalid (every problem is printed with file:line)
    2  wrong usage (unknown command or option)
    3  the agent failed at run time (see the log; systemd restarts it)
    4  something tepi needs is missing (for example mosquitto for the demo)
    7  refused: unsafe now (another process holds the data dir's lock: a second
       ``tepi run`` on the same data dir, or ``tepi buffer purge`` beside the agent)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tepi.core import __version__
from tepi.core.errors import ConfigError

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_RUNTIME, EXIT_MISSING = 0, 1, 2, 3, 4
EXIT_REFUSED = 7  # not done: unsafe now (the data dir is locked by another process)
log = logging.getLogger("tepi")


def setup_logging(level: str, debug: bool) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds the timestamp itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level.upper()),
        format=fmt,
        stream=sys.stderr,
        force=True,
    )
    if not debug:
        # pymodbus logs every timeout as an error; tepi logs state changes instead.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        logging.getLogger("tepi.mqtt").setLevel(logging.WARNING)


def _agent_args(p: argparse.ArgumentParser) -> None:
    """--config and --socket: how a command that asks the running agent finds it."""
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/tepi/tepi.yaml"),
        help="config file, to find the status socket (default /etc/tepi/tepi.yaml)",
    )
    p.add_argument("--socket", type=Path, default=None, help="the status socket itself")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tepi", description="tepi edge gateway agent")
    p.add_argument("--version", action="version", version=f"tepi {__version__}")
    p.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", "-c", type=Path, required=True, help="config file (YAML)")
    check = sub.add_parser("check", help="validate a config file and report every problem")
    check.add_argument("--config", "-c", type=Path, required=True, help="config file (YAML)")
    check.add_argument(
        "--no-files",
        action="store_true",
        help="do not check that referenced files (certificates, secrets) exist",
    )
    demo = sub.add_parser("demo", help="simulator + local broker + agent; prints readings")
    demo.add_argument(
        "--dir", type=Path, default=None, help="working directory (default: a temp dir)"
    )
    demo.add_argument(
        "--count", type=int, default=0, help="stop after this many readings (0: until Ctrl-C)"
    )
    demo.add_argument(
        "--broker-port",
        type=int,
        default=None,
        help="use the MQTT broker already listening on 127.0.0.1:PORT (for example the "
        "mosquitto service, 1883) instead of starting one",
    )
    scan = sub.add_parser("scan", help="find the Modbus units that answer on a port")
    scan.add_argument("--port", required=True, help="/dev/ttyUSB0 (RTU) or host:port (TCP)")
    scan.add_argument("--baud", default="9600", help="9600, 19200, ... or auto (serial only)")
    scan.add_argument("--units", default="1-247", help="unit ids: 1-247, 5, or 1,3,10-12")
    scan.add_argument("--timeout", type=float, default=0.2, help="seconds to wait per unit")
    scan.add_argument("--framing", choices=["mbap", "rtu"], default="mbap", help="TCP framing")
    read = sub.add_parser("read", help="read registers once; print every decoding")
    read.add_argument("--port", required=True, help="/dev/ttyUSB0 (RTU) or host:port (TCP)")
    read.add_argument("--unit", type=int, default=1, help="unit id")
    read.add_argument("--address", type=int, required=True, help="first address (0-based)")
    read.add_argument("--count", type=int, default=2, help="registers to read (1-125)")
    read.add_argument(
        "--table", choices=["holding", "input", "coil", "discrete"], default="holding"
    )
    read.add_argument("--baud", type=int, default=9600, help="baud rate (serial only)")
    read.add_argument("--timeout", type=float, default=1.0, help="seconds to wait")
    read.add_argument("--framing", choices=["mbap", "rtu"], default="mbap", help="TCP framing")
    status = sub.add_parser(
        "status", help="the running agent's link, buffer and devices, in one screen"
    )
    _agent_args(status)
    status.add_argument("--json", action="store_true", help="the raw health and devices JSON")
    alarms = sub.add_parser(
        "alarms", help="the rules' alarms, firing first; `tepi alarms ack RULE` acknowledges one"
    )
    alarms.add_argument("action", nargs="?", choices=["ack"], help="ack: acknowledge RULE")
    alarms.add_argument("rule", nargs="?", help="the rule whose alarm to acknowledge")
    alarms.add_argument(
        "--by", default=None, help="who acknowledges (default: local:<your user name>)"
    )
    _agent_args(alarms)
    alarms.add_argument("--json", action="store_true", help="the raw JSON")
    conf = sub.add_parser(
        "config",
        help="the running config: get it, apply a new one on trial (rolled back on its own "
        "unless the box stays healthy), or roll back",
    )
    conf.add_argument("action", choices=["get", "apply", "rollback"])
    conf.add_argument("file", nargs="?", type=Path, help="apply: the new config file (YAML)")
    conf.add_argument("--to", default=None, help="rollback: a kept version (v3) or 'base'")
    conf.add_argument(
        "--confirm-timeout", type=float, default=None, help="seconds the trial may take"
    )
    conf.add_argument("--dry-run", action="store_true", help="apply: only validate it")
    _agent_args(conf)
    conf.add_argument("--json", action="store_true", help="the raw JSON result")
    sub.add_parser(  # handled before this parser (it has options of its own): for the help
        "remote",
        help="send a command to a gateway over MQTT, as the IOC does (tepi remote --help)",
        add_help=False,
    )
    snap = sub.add_parser(
        "snapshot", help="a camera's snapshot now, stored in the image buffer (and sent)"
    )
    snap.add_argument("camera", help="the camera's device id")
    snap.add_argument("-o", "--output", type=Path, default=None, help="also save it here")
    _agent_args(snap)
    buf = sub.add_parser("buffer", help="the buffer file: stats, export, purge")
    buf.add_argument("action", choices=["stats", "export", "purge"], help="what to do")
    buf.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/tepi/tepi.yaml"),
        help="config file, to find the buffer (default /etc/tepi/tepi.yaml)",
    )
    buf.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="export format")
    buf.add_argument(
        "--output", "-o", type=Path, default=None, help="export to FILE (default stdout)"
    )
    buf.add_argument("--device", default=None, help="export only this device")
    buf.add_argument(
        "--before", default=None, help="purge only readings older than this, e.g. 7d, 12h"
    )
    buf.add_argument("--yes", action="store_true", help="purge without asking")
    doctor = sub.add_parser("doctor", help="check ports, broker, TLS, clock, disk, buffer")
    doctor.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/tepi/tepi.yaml"),
        help="config file (default /etc/tepi/tepi.yaml)",
    )
    doctor.add_argument(
        "--service-user",
        default=None,
        help="the user the service runs as, whose access to the serial ports is checked "
        "(default tepi)",
    )
    doctor.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="where the unit's LoadCredential= loads a relative uplink.password_file from "
        "(default /etc/tepi/secrets)",
    )
    dash = sub.add_parser("dashboard", help="the web console: set a user's password")
    dash.add_argument("action", choices=["passwd"], help="passwd: add a user or set a password")
    dash.add_argument("user", help="the user name (1-32 letters, digits, . _ -)")
    dash.add_argument(
        "--role",
        choices=["viewer", "admin"],
        default=None,
        help="viewer (reads) or admin (also acts); default: kept, else viewer",
    )
    dash.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/tepi/tepi.yaml"),
        help="config file, to find the users file (default /etc/tepi/tepi.yaml)",
    )
    profiles = sub.add_parser("profiles", help="list the device profiles, or show one")
    profiles.add_argument("name", nargs="?", help="a profile to show")
    return p


def cmd_status(config: Path, sock: Path | None, as_json: bool) -> int:
    from tepi.gateway.configload import load_config
    from tepi.gateway.status import run_status

    if sock is None:
        try:
            sock = load_config(config, check_files=False).status_socket()
        except ConfigError as err:
            for issue in err.issues:
                print(issue, file=sys.stderr)
            return EXIT_CONFIG
    return run_status(sock, as_json=as_json)


def _status_socket(args: argparse.Namespace) -> Path | None:
    """The status socket: --socket, or the config's; None (reported) if the config is bad."""
    from tepi.gateway.configload import load_config

    if args.socket is not None:
        return Path(args.socket)
    try:
        return load_config(args.config, check_files=False).status_socket()
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None


def _api(
    sock: Path, method: str, route: str, *, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """A JSON request to the running agent's status API: (EXIT_OK, its answer), or the exit
    code after saying why not (the agent cannot be reached, or answered with an error)."""
    from tepi.gateway.status import EXIT_UNREACHABLE, request

    try:
        status, _, raw = request(sock, method, route, timeout, body)
    except OSError as err:
        print(f"cannot reach the agent at {sock}: {err} (is tepi running?)", file=sys.stderr)
        return EXIT_UNREACHABLE, {}
    answer = json.loads(raw) if raw.startswith(b"{") else {}
    if status != 200:
        print(answer.get("error", f"HTTP {status}"), file=sys.stderr)
        return EXIT_RUNTIME, {}
    return EXIT_OK, answer


def cmd_alarms(args: argparse.Namespace) -> int:
    """``tepi alarms [ack RULE]``: through the running agent's status API (the agent owns
    the alarm store; an acknowledgement is an alarm message like the others)."""
    from urllib.parse import quote

    from tepi.gateway.status import format_alarms

    if args.action == "ack" and not args.rule:
        print("tepi alarms ack RULE: which rule's alarm?", file=sys.stderr)
        return EXIT_USAGE
    sock = _status_socket(args)
    if sock is None:
        return EXIT_CONFIG
    if args.action == "ack":
        by = args.by or f"local:{os.environ.get('SUDO_USER') or getpass.getuser()}"
        code, answer = _api(
            sock, "POST", f"/alarms/{quote(args.rule, safe='')}/ack?by={quote(by, safe='')}"
        )
    else:
        code, answer = _api(sock, "GET", "/alarms")
    if code != EXIT_OK:
        return code
    if args.action == "ack":
        print(f"alarm {answer['acknowledged']} acknowledged by {answer['by']}")
    elif args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_alarms(answer))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    """``tepi config get|apply FILE|rollback``: the IOC's config commands, through the
    running agent's status API, waiting for the trial's end (exit 0 done, 6 failed or
    rolled back, 1 a config that does not validate)."""
    from tepi.gateway.remotecli import EXIT_FAILED

    body: dict[str, object] = {"by": os.environ.get("SUDO_USER") or getpass.getuser()}
    if args.action == "apply":
        if args.file is None:
            print("tepi config apply FILE: which config file?", file=sys.stderr)
            return EXIT_USAGE
        try:
            body["config"] = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            print(f"cannot read {args.file}: {err}", file=sys.stderr)
            return EXIT_CONFIG
        if args.dry_run:
            body["dry_run"] = True
    if args.action == "rollback" and args.to:
        body["to"] = args.to
    if args.confirm_timeout is not None:
        body["confirm_timeout"] = args.confirm_timeout
    sock = _status_socket(args)
    if sock is None:
        return EXIT_CONFIG
    if args.action != "get":
        print(f"config.{args.action}: on trial; waiting for the result ...", file=sys.stderr)
    code, answer = _api(
        sock, "POST", f"/config/{args.action}", body=json.dumps(body).encode(), timeout=3700.0
    )
    if code != EXIT_OK:
        return code
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["status"] == "done" and args.action == "get":
        out = answer["output"]
        print(f"# version {out['version']}, sha256 {out['sha256']}", file=sys.stderr)
        print(out["config"], end="")
    elif answer["status"] == "done":
        print(f"config.{args.action}: done: {json.dumps(answer['output'])}")
    else:
        print(f"config.{args.action}: {answer['reason']}: {answer['detail']}", file=sys.stderr)
        for line in (answer.get("output") or {}).get("errors", []):
            print(f"  {line}", file=sys.stderr)
    if answer["status"] == "done":
        return EXIT_OK
    return EXIT_CONFIG if answer.get("reason") == "config_refused" else EXIT_FAILED


def cmd_snapshot(args: argparse.Namespace) -> int:
    """``tepi snapshot CAMERA [-o FILE]``: through the running agent's status API."""
    from urllib.parse import quote

    from tepi.gateway.status import EXIT_UNREACHABLE, request

    sock = _status_socket(args)
    if sock is None:
        return EXIT_CONFIG
    try:
        status, _, body = request(sock, "POST", f"/cameras/{quote(args.camera, safe='')}/snapshot")
    except OSError as err:
        print(f"cannot reach the agent at {sock}: {err} (is tepi running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    answer = json.loads(body) if body.startswith(b"{") else {}
    if status != 200:
        print(f"no snapshot: {answer.get('error', f'HTTP {status}')}", file=sys.stderr)
        return EXIT_RUNTIME
    what = (
        f"snapshot of {args.camera}: image {answer['seq']} ({answer['width']}x"
        f"{answer['height']}, {answer['size']:,} bytes)"
    )
    if answer.get("held"):
        # The image window: the SD card is written only for an image the broker is slow to take.
        print(
            f"{what} held in RAM and sent to the IOC with the other images; written to "
            f"{answer['path']} only if the broker has not acknowledged it within "
            f"{answer.get('window_s', 0):g} s"
        )
    else:
        print(f"{what} stored at {answer['path']}; it is sent to the IOC with the other images")
    if args.output is not None:
        status, _, data = request(sock, "GET", f"/images/{answer['seq']}")
        if status != 200:
            print(f"could not fetch it to save it: HTTP {status}", file=sys.stderr)
            return EXIT_RUNTIME
        args.output.write_bytes(data)
        print(f"saved to {args.output}")
    return EXIT_OK


def cmd_buffer(args: argparse.Namespace) -> int:
    import time

    from tepi.core.units import parse_duration
    from tepi.gateway.buffertool import BufferToolError, confirm, export, purge, stats
    from tepi.gateway.configload import load_config
    from tepi.gateway.datalock import DataDirBusy, hold

    try:
        cfg = load_config(args.config, check_files=False)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    path = cfg.gateway.data_dir / "buffer.db"
    try:
        if args.action == "stats":
            print(json.dumps(stats(path), indent=2))
            return EXIT_OK
        if args.action == "export":
            if args.output is None:
                n = export(path, sys.stdout, args.format, device=args.device, progress=sys.stderr)
            else:
                with args.output.open("w", newline="") as out:
                    n = export(path, out, args.format, device=args.device, progress=sys.stderr)
            print(f"{n:,} readings exported", file=sys.stderr)
            return EXIT_OK
        # purge: never behind the running agent's back; its lock says whether it runs,
        # whether or not its status API is on, and keeps it from starting meanwhile.
        with hold(cfg.gateway.data_dir):
            before = None if args.before is None else time.time() - parse_duration(args.before)
            what = "ALL readings" if before is None else f"readings older than {args.before}"
            if not args.yes and not confirm(
                f"Delete {what} in {path}? They will never reach the IOC. Type 'purge' to go on: "
            ):
                print(
                    "tepi buffer purge: not confirmed (type 'purge', or pass --yes)",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            n = purge(path, before_ts=before)
        print(f"{n:,} readings deleted from {path}", file=sys.stderr)
        return EXIT_OK
    except DataDirBusy as err:
        print(
            f"tepi buffer {args.action}: the agent is running and holds the buffer ({err}); "
            "stop it first (systemctl stop tepi)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    except BufferToolError as err:
        print(f"tepi buffer {args.action}: {err}", file=sys.stderr)
        return EXIT_MISSING


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``tepi dashboard passwd USER [--role R]``: the password from the terminal (twice) or
    one line of stdin, never from the command line (ps and the shell's history show it)."""
    from tepi.gateway.configload import load_config
    from tepi.gateway.dashauth import Users, read_password, valid_user

    if not valid_user(args.user):
        print(f"{args.user!r}: a user name is 1-32 letters, digits, . _ or -", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args.config, check_files=False)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    users = Users(cfg.dashboard.users(cfg.gateway.data_dir))
    known = users.load().get(args.user)
    role = args.role or (known.role if known is not None else "viewer")
    try:
        password = read_password(f"New password for {args.user}: ")
        new = users.set(args.user, role, password)
    except ValueError as err:
        print(f"tepi dashboard passwd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"tepi dashboard passwd: cannot write {users.path}: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{'added' if new else 'changed'} {args.user} ({role}) in {users.path}")
    if cfg.dashboard.listen is None:
        print("the console is off: set dashboard.listen in the config (docs/dashboard.md)")
    return EXIT_OK


def cmd_profiles(name: str | None) -> int:
    from tepi.drivers.modbus.profile import describe

    try:
        print("\n".join(describe(name)))
    except ValueError as err:
        print(f"tepi profiles: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_modbus_tool(args: argparse.Namespace) -> int:
    from tepi.core.errors import DeviceError
    from tepi.gateway.modbustool import run_read, run_scan

    try:
        return (run_scan if args.command == "scan" else run_read)(args, sys.stdout)
    except DeviceError as err:
        print(f"tepi {args.command}: {err.detail or err.reason}", file=sys.stderr)
        return EXIT_RUNTIME
    except ValueError as err:
        print(f"tepi {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE


def cmd_check(path: Path, check_files: bool) -> int:
    from tepi.gateway.configload import load_config

    try:
        cfg = load_config(path, check_files=check_files)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        n = len(err.issues)
        print(f"{path}: {n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK (gateway {cfg.gateway.id}, {len(cfg.devices)} devices)")
    return EXIT_OK


def cmd_run(path: Path, debug: bool) -> int:
    from tepi.gateway.configload import load_config
    from tepi.gateway.datalock import DataDirBusy, hold
    from tepi.gateway.runtime import run_agent

    try:
        cfg = load_config(path)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.gateway.log_level, debug)
    try:
        with hold(cfg.gateway.data_dir):  # for the agent's whole life: one agent per data dir
            asyncio.run(run_agent(cfg, path))
    except DataDirBusy as err:
        log.critical(
            "tepi cannot run: %s: another agent runs on data dir %s (stop it, or give this "
            "one its own gateway.data_dir)",
            err,
            cfg.gateway.data_dir,
        )
        return EXIT_REFUSED
    except OSError as err:
        # Start-up problems with the host that nothing else caught (a data dir that cannot
        # be written is not one: the buffer runs from memory and says so).
        log.critical(
            "tepi cannot run: %s (check gateway.data_dir %s and its owner)",
            err,
            cfg.gateway.data_dir,
        )
        return EXIT_RUNTIME
    except Exception as err:  # the top of the process: report, exit for systemd to restart
        if debug:
            raise
        # The traceback always: under systemd there is no --debug, and without it a crash
        # would leave one line and no cause in the journal.
        log.critical(
            "tepi stopped on an internal error: %s: %s", type(err).__name__, err, exc_info=err
        )
        return EXIT_RUNTIME
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["remote"]:  # the IOC's side, with options of its own
        from tepi.gateway.remotecli import main as remote_main

        return remote_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args.config, not args.no_files)
    if args.command == "run":
        return cmd_run(args.config, args.debug)
    if args.command == "status":
        return cmd_status(args.config, args.socket, args.json)
    if args.command == "buffer":
        return cmd_buffer(args)
    if args.command == "snapshot":
        return cmd_snapshot(args)
    if args.command == "alarms":
        return cmd_alarms(args)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "doctor":
        from tepi.gateway.doctor import run_doctor

        setup_logging("error", args.debug)
        return run_doctor(
            args.config,
            sys.stdout,
            service_user=args.service_user,
            secrets_dir=args.secrets_dir,
        )
    if args.command == "profiles":
        return cmd_profiles(args.name)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    if args.command in ("scan", "read"):
        setup_logging("warning", args.debug)
        return cmd_modbus_tool(args)
    if args.command == "demo":
        from tepi.gateway.demo import run_demo

        setup_logging("warning", args.debug)
        return run_demo(args.dir, args.count, args.broker_port)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
