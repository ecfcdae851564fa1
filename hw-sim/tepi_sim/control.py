"""The run-time control socket: switch faults from another process.

``tepi-sim --control PATH`` listens on a unix socket. Each request is one line of JSON,
``{"device": "aq-station-1", "fault": "slow", "delay_s": 1.5}`` (``delay_s`` and
``fault_code`` are optional), and each answer is one line: ``{"ok": true}`` or
``{"ok": false, "error": "..."}``. ``{"query": "counters"}`` answers with every device's
counter registers and the last value each handed out (the completeness checker's expected
counts): ``{"ok": true, "counters": {"aq-station-1": {"holding/10": 412}}}``.
``{"query": "uart"}`` answers with every serial sensor's counters, current pty path (null
while unplugged) and state: ``{"ok": true, "uart": {"pm-1": {"frames_sent": 40,
"bad_frames_sent": 0, "path": "/dev/pts/5", "mode": "active", ...}}}``. Serial sensors take
the same fault command with their own modes (``{"device": "pm-1", "fault": "garbage"}``).
Cameras: ``{"camera": "cam-1", "fault": "black"}`` (``delay_s`` optional: the delay of
``slow``, the down time of ``reboot``, the offset of ``clock``) and ``{"query": "cameras"}``,
which answers with each camera's base URL, fault, clock offset and counters:
``{"ok": true, "cameras": {"cam-1": {"url": "http://127.0.0.1:40123", "fault": "none",
"clock_offset_s": 0.0, "counters": {"requests": {"/snapshot.jpg": 3}, ...}, ...}}}``.
Writes: ``{"query": "writes"}`` answers every Modbus device's kept writes, oldest first,
``{"ok": true, "writes": {"siren-1": [{"t": 1796..., "mono": 81.2, "fc": 5, "table":
"coil", "address": 0, "value": true, "values": [true], "broadcast": false}]}}``;
``"device"`` narrows it to one device and ``"since"`` (wall time, seconds) to the writes
after that time. Scripts: ``{"device": "river-level-3", "script": {"address": 100,
"points": [[0, 1.2], [30, 2.8], [60, 1.0]]}}`` makes a register follow the points from now
(``"table"`` optional when one table maps the address, ``"loop"`` optional).
Traffic cameras (``scene: traffic``) answer their ground truth. Times are given as real
times (epoch seconds, as ``X-Sim-Time``: ``since``, ``until``, ``at``) or as scene times
(``t0``, ``t1``, ``t``: seconds since the camera's ``epoch``), and answered as both:
``{"query": "traffic", "camera": "cam-1"}`` gives the counting lines and queue zones
(normalised), the epoch, the scene time now, the scene's duration (it loops) and whether
the signal is red; ``{"query": "crossings", "camera": "cam-1", "since": T0, "until": T1}``
the crossings per line and direction between the two times (defaults: the epoch, now),
with classes, ``{"ok": true, "crossings": {"lane-1": {"in": 3, "out": 0, "classes":
{"in": {"two_wheeler": 2, "car": 1}, "out": {}}}, ...}, "since": T0, "t0": 0.0, ...}``
(``"t0": 0, "t1": 60`` asks by scene time; ``"events": true`` adds each
crossing, at most 10,000); ``{"query": "queue", "camera": "cam-1", "at": T}`` the queue
length in metres per zone at that time (default now): ``{"ok": true, "queue":
{"approach-east": 12.4}, "red": true, "at": T, "t": 14.0}`` (``"t": 14`` asks by scene
time).
Try it with ``echo '{"device": "aq-station-1", "fault": "no_reply"}' | socat -
UNIX-CONNECT:PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from tepi_sim.simulator import Simulator

__all__ = ["ControlServer", "apply_command"]

log = logging.getLogger(__name__)

_LINE_LIMIT = 4096
_EVENTS_LIMIT = 10_000
_TRAFFIC_KEYS = {
    "traffic": {"query", "camera"},
    "crossings": {"query", "camera", "since", "until", "t0", "t1", "events"},
    "queue": {"query", "camera", "at", "t"},
}


def _check_camera(cmd: dict[str, Any]) -> str | None:
    unknown = set(cmd) - {"camera", "fault", "delay_s"}
    if unknown:
        return f"unknown keys for a camera: {', '.join(sorted(unknown))}"
    if not isinstance(cmd.get("camera"), str) or not isinstance(cmd.get("fault"), str):
        return '"camera" and "fault" are required strings'
    delay = cmd.get("delay_s")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        return '"delay_s" must be a number'
    return None


def _check_script(cmd: dict[str, Any]) -> str | None:
    unknown = set(cmd) - {"device", "script"}
    if unknown:
        return f"unknown keys for a script: {', '.join(sorted(unknown))}"
    script = cmd["script"]
    if not isinstance(cmd.get("device"), str) or not isinstance(script, dict):
        return '"device" must be a string and "script" an object'
    unknown = set(script) - {"address", "points", "table", "loop"}
    if unknown:
        return f"unknown keys in script: {', '.join(sorted(unknown))}"
    address = script.get("address")
    if isinstance(address, bool) or not isinstance(address, int):
        return '"script.address" is a required integer'
    if "points" not in script:
        return '"script.points" is required: [[seconds, value], ...]'
    if "table" in script and not isinstance(script["table"], str):
        return '"script.table" must be a string'
    if "loop" in script and not isinstance(script["loop"], bool):
        return '"script.loop" must be true or false'
    return None


def _writes(sim: Simulator, cmd: dict[str, Any]) -> dict[str, Any]:
    unknown = set(cmd) - {"query", "device", "since"}
    if unknown:
        return {"ok": False, "error": f"unknown keys for writes: {', '.join(sorted(unknown))}"}
    device, since = cmd.get("device"), cmd.get("since")
    if device is not None and not isinstance(device, str):
        return {"ok": False, "error": '"device" must be a string'}
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        return {"ok": False, "error": '"since" must be a number (wall time, seconds)'}
    try:
        writes = sim.writes(device, since)
    except KeyError as err:
        return {"ok": False, "error": str(err.args[0])}
    return {"ok": True, "writes": {d: [w.as_dict() for w in ws] for d, ws in writes.items()}}


_SCENE_TIMES = {"since": "t0", "until": "t1", "at": "t"}  # wall time key -> scene time key


def _number(cmd: dict[str, Any], key: str) -> str | None:
    value = cmd.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        kind = "wall time" if key in _SCENE_TIMES else "scene time"
        return f'"{key}" must be a number ({kind}, seconds)'
    return None


def _wall(cmd: dict[str, Any], key: str, epoch: float, default: float) -> float:
    """The real time a command gives as ``key`` (wall time) or as its scene-time twin."""
    if cmd.get(key) is not None:
        return float(cmd[key])
    scene_t = cmd.get(_SCENE_TIMES[key])
    return default if scene_t is None else epoch + float(scene_t)


def _traffic(sim: Simulator, cmd: dict[str, Any]) -> dict[str, Any]:
    """The ground truth of a traffic camera: its geometry, crossings or queues."""
    query = cmd["query"]
    unknown = set(cmd) - _TRAFFIC_KEYS[query]
    if unknown:
        return {"ok": False, "error": f"unknown keys for {query}: {', '.join(sorted(unknown))}"}
    if not isinstance(cmd.get("camera"), str):
        return {"ok": False, "error": '"camera" is a required string'}
    times = [*_SCENE_TIMES, *_SCENE_TIMES.values()]
    problems = [p for k in times if (p := _number(cmd, k)) is not None]
    problems += [
        f'give "{wall}" (wall time) or "{scene_t}" (scene time), not both'
        for wall, scene_t in _SCENE_TIMES.items()
        if cmd.get(wall) is not None and cmd.get(scene_t) is not None
    ]
    if "events" in cmd and not isinstance(cmd["events"], bool):
        problems.append('"events" must be true or false')
    if problems:
        return {"ok": False, "error": "; ".join(problems)}
    try:
        camera = sim.camera(cmd["camera"])
    except KeyError as err:
        return {"ok": False, "error": str(err.args[0])}
    scene = camera.traffic
    if scene is None:
        return {"ok": False, "error": f"camera {camera.id!r} shows the objects scene, not traffic"}
    now = time.time()
    if query == "traffic":
        return {
            "ok": True,
            "traffic": {
                "epoch": camera.epoch,
                "scene_t": now - camera.epoch,
                "duration_s": scene.duration,
                "px_per_m": scene.px_per_m,
                "red": scene.is_red(now - camera.epoch),
                "lines": [
                    {"name": ln.name, "a": ln.a, "b": ln.b, "lanes": ln.lanes} for ln in scene.lines
                ],
                "zones": [
                    {
                        "name": z.name,
                        "polygon": z.polygon,
                        "stop_line": z.stop_line,
                        "length_m": z.length_m,
                        "lanes": z.lanes,
                    }
                    for z in scene.zones
                ],
            },
        }
    if query == "queue":
        at = _wall(cmd, "at", camera.epoch, now)
        return {
            "ok": True,
            "at": at,
            "t": at - camera.epoch,
            "red": scene.is_red(at - camera.epoch),
            "queue": camera.queue_lengths(at),
        }
    since = _wall(cmd, "since", camera.epoch, camera.epoch)
    until = _wall(cmd, "until", camera.epoch, now)
    events = camera.crossing_events(since, until)
    counts: dict[str, dict[str, Any]] = {
        ln.name: {"in": 0, "out": 0, "classes": {"in": {}, "out": {}}} for ln in scene.lines
    }
    for e in events:
        line = counts[e.line]
        line[e.direction] += 1
        line["classes"][e.direction][e.cls] = line["classes"][e.direction].get(e.cls, 0) + 1
    answer: dict[str, Any] = {
        "ok": True,
        "since": since,
        "until": until,
        "t0": since - camera.epoch,
        "t1": until - camera.epoch,
        "crossings": counts,
    }
    if cmd.get("events"):
        answer["events"] = [
            {
                "t": e.t,
                "scene_t": e.t - camera.epoch,
                "line": e.line,
                "direction": e.direction,
                "vehicle": e.vehicle,
                "cls": e.cls,
            }
            for e in events[:_EVENTS_LIMIT]
        ]
        answer["events_truncated"] = len(events) > _EVENTS_LIMIT
    return answer


def _check(cmd: object) -> str | None:
    """Return what is wrong with a decoded command, or None if it is well formed."""
    if not isinstance(cmd, dict):
        return "expected a JSON object"
    if "camera" in cmd:
        return _check_camera(cmd)
    if "script" in cmd:
        return _check_script(cmd)
    unknown = set(cmd) - {"device", "fault", "delay_s", "fault_code"}
    if unknown:
        return f"unknown keys: {', '.join(sorted(unknown))}"
    if not isinstance(cmd.get("device"), str) or not isinstance(cmd.get("fault"), str):
        return '"device" and "fault" are required strings'
    if cmd.get("delay_s") is not None and not isinstance(cmd["delay_s"], int | float):
        return '"delay_s" must be a number'
    if cmd.get("fault_code") is not None and not isinstance(cmd["fault_code"], int):
        return '"fault_code" must be an integer'
    return None


def apply_command(sim: Simulator, line: bytes) -> dict[str, Any]:
    """Apply one JSON command line; return the answer object (never raises on bad input)."""
    try:
        cmd = json.loads(line)
    except ValueError as err:
        return {"ok": False, "error": f"invalid JSON: {err}"}
    if isinstance(cmd, dict) and cmd.get("query") == "writes":
        return _writes(sim, cmd)
    if isinstance(cmd, dict) and cmd.get("query") in _TRAFFIC_KEYS:
        return _traffic(sim, cmd)
    if isinstance(cmd, dict) and set(cmd) == {"query"}:
        if cmd["query"] == "counters":
            counters = {d: dev.counters() for d, dev in sim.devices.items()}
            return {"ok": True, "counters": counters}
        if cmd["query"] == "uart":
            return {"ok": True, "uart": {d: dev.status() for d, dev in sim.uart_devices.items()}}
        if cmd["query"] == "cameras":
            return {"ok": True, "cameras": {c: cam.status() for c, cam in sim.cameras.items()}}
        return {
            "ok": False,
            "error": f"unknown query {cmd['query']!r}; "
            'try "counters", "writes", "uart", "cameras", "traffic", "crossings" or "queue"',
        }
    problem = _check(cmd)
    if problem is not None:
        return {"ok": False, "error": problem}
    try:
        if "camera" in cmd:
            sim.camera(cmd["camera"]).set_fault(cmd["fault"], cmd.get("delay_s"))
        elif "script" in cmd:
            script = cmd["script"]
            sim.set_script(
                cmd["device"],
                script["address"],
                script["points"],
                table=script.get("table"),
                loop=script.get("loop", False),
            )
        else:
            sim.set_fault(
                cmd["device"], cmd["fault"], delay_s=cmd.get("delay_s"), code=cmd.get("fault_code")
            )
    except KeyError as err:
        return {"ok": False, "error": str(err.args[0])}
    except ValueError as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True}


class ControlServer:
    """Unix-socket server that applies commands (faults, scripts) and answers queries for
    a running simulator."""

    def __init__(self, sim: Simulator, path: str | Path) -> None:
        self.sim = sim
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on ``path`` (a stale socket file from an earlier run is replaced)."""
        if self.path.is_socket():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=_LINE_LIMIT)

    async def stop(self) -> None:
        """Stop listening, close clients, remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:  # closed writers make each client task see EOF and finish
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self.path.unlink(missing_ok=True)

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(
            self._client(reader, writer), name="tepi-sim.control-client"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = apply_command(self.sim, line)
                log.info("control: %s -> %s", line.strip().decode(errors="replace"), answer)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError) as err:  # ValueError: line over the limit
            log.warning("control: client dropped: %s", err)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
