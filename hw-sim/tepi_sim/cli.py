"""``tepi-sim``: run simulated Modbus devices and serial sensors until SIGINT/SIGTERM.

Output contract (stdout, flushed; scripts and tests read it): one line per device,
``<id>  <transport>  unit=<n>  <endpoint>`` (columns separated by two spaces, the id
padded to the longest id), for a serial sensor ``<id>  uart  protocol=<name>  <endpoint>``
(``unplugged`` instead of a path while it is), for a camera ``<id>  camera  auth=<none|basic|
digest>  http://127.0.0.1:<port>``, then a line ``ready``. Logs go to stderr.

Exit codes: 0 stopped by a signal, 2 bad arguments / invalid config / could not start
(one line on stderr, no traceback unless ``--debug``), 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tepi_sim.control import ControlServer
from tepi_sim.demo import DEMO_CONFIG
from tepi_sim.errors import SimError
from tepi_sim.model import CAMERA_FAULT_MODES, FAULT_MODES, UART_FAULT_MODES, load_config
from tepi_sim.simulator import Simulator

__all__ = ["main"]

log = logging.getLogger("tepi_sim")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tepi-sim",
        description="Simulate Modbus RTU (on pseudo-terminals) and Modbus TCP (on 127.0.0.1) "
        "field devices, and serial sensors (PMS5003, SDS011, MH-Z19B, NMEA GPS, text lines) on "
        "pseudo-terminals, with drifting values, exact counters and switchable faults.",
        epilog="Prints '<id>  <transport>  unit=<n>  <endpoint>' per device (a camera: "
        "'<id>  camera  auth=<auth>  http://127.0.0.1:<port>'), then 'ready'. "
        "Exit codes: 0 stopped by SIGINT/SIGTERM, 2 usage/config/startup error, 1 internal error.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="YAML config file")
    source.add_argument(
        "--demo",
        action="store_true",
        help="built-in demo: air-quality station + noise meter on one RTU pty, a river-level "
        "gauge on TCP whose level floods and ebbs every 60 s, a siren (one writable coil) on "
        "TCP, a PMS5003 on a pty, an IP camera (cam-1, Digest auth tepi/demo-camera)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="write endpoints as JSON here (atomically) once everything is listening",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="DEVICE=MODE",
        help=f"start DEVICE in fault MODE (repeatable); Modbus modes: {', '.join(FAULT_MODES)}; "
        f"uart modes: {', '.join(UART_FAULT_MODES)}; camera modes: {', '.join(CAMERA_FAULT_MODES)}",
    )
    parser.add_argument(
        "--control",
        type=Path,
        metavar="PATH",
        help='unix socket accepting JSON lines like {"device": "ID", "fault": "no_reply"}',
    )
    parser.add_argument("--debug", action="store_true", help="log raw frames; show tracebacks")
    return parser


def _write_manifest(path: Path, sim: Simulator) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(sim.manifest(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _apply_faults(sim: Simulator, specs: Sequence[str]) -> None:
    for spec in specs:
        device_id, sep, mode = spec.partition("=")
        if not sep:
            raise SimError(f"--fault {spec!r}: expected DEVICE=MODE, e.g. aq-station-1=no_reply")
        try:
            sim.set_fault(device_id, mode)
        except KeyError as err:
            raise SimError(f"--fault {spec!r}: {err.args[0]}") from err
        except ValueError as err:
            raise SimError(f"--fault {spec!r}: {err}") from err


async def _run(args: argparse.Namespace) -> None:
    sim = Simulator(DEMO_CONFIG if args.demo else load_config(args.config))
    _apply_faults(sim, args.fault)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control = ControlServer(sim, args.control) if args.control else None
    try:
        async with sim:
            if control is not None:
                try:
                    await control.start()
                except OSError as err:
                    raise SimError(f"--control {args.control}: {err.strerror}") from err
            width = max(len(d) for d in [*sim.devices, *sim.uart_devices, *sim.cameras])
            for device in sim.devices.values():
                print(
                    f"{device.id:<{width}}  {device.config.transport}  unit={device.unit}  "
                    f"{sim.endpoint(device.id)}"
                )
            for sensor in sim.uart_devices.values():
                path = sensor.status()["path"] or "unplugged"
                print(f"{sensor.id:<{width}}  uart  protocol={sensor.protocol}  {path}")
            for camera in sim.cameras.values():
                print(f"{camera.id:<{width}}  camera  auth={camera.config.auth}  {camera.base_url}")
            if args.manifest:
                try:
                    _write_manifest(args.manifest, sim)
                except OSError as err:
                    raise SimError(f"--manifest {args.manifest}: {err.strerror}") from err
            print("ready", flush=True)
            await stop.wait()
            log.info("signal received, stopping")
    finally:
        if control is not None:
            await control.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tepi-sim`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_run(args))
    except SimError as err:
        if args.debug:
            log.exception("tepi-sim failed")
        print(f"tepi-sim: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        # Anything else is a bug in the simulator: say so, with the traceback on --debug.
        if args.debug:
            log.exception("tepi-sim crashed")
        print(
            f"tepi-sim: internal error: {type(err).__name__}: {err} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
