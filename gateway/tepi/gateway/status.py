"""``tepi status``: is it working, and if not, why, in one screen, for the technician on site.

It asks the running agent's local status API (its unix socket) for ``/health`` and
``/devices`` and prints the link, the time since the broker last acknowledged, the buffer,
and a line per device: its state, its latest values, its errors and how its polls go. It
reads; it never touches the buffer file or the service, so it is safe while tepi runs.

Exit codes: 0 all is well; 5 the agent cannot be reached (not running, or another socket);
6 it runs but something needs attention (link down, a device failing, the buffer file
unusable, the last reload refused).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

EXIT_UNREACHABLE = 5
EXIT_DEGRADED = 6

_COLOURS = {"good": "32", "bad": "31", "warn": "33", "dim": "2"}


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def fetch(path: Path, route: str, timeout: float = 5.0) -> Any:
    """GET ``route`` from the status API at the unix socket ``path``, decoded."""
    conn = _UnixHTTP(path, timeout)
    try:
        conn.request("GET", route)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"{route}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def request(
    path: Path, method: str, route: str, timeout: float = 30.0, body: bytes | None = None
) -> tuple[int, str, bytes]:
    """One request to the status API at the unix socket ``path``: status, type, body."""
    conn = _UnixHTTP(path, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, route, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = max(seconds, 0)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _value(v: dict[str, Any]) -> str:
    if v["quality"] == "bad":
        return f"BAD ({v['reason']})"
    x = v["value"]
    text = f"{x:.4g}" if isinstance(x, float) else str(x)
    unit = f" {v['unit']}" if v["unit"] else ""
    mark = "~" if v["quality"] == "uncertain" else ""
    return f"{mark}{text}{unit}"


def problems(health: dict[str, Any]) -> list[str]:
    """What needs attention, one short line each (empty: all is well)."""
    out = []
    up, buf = health["uplink"], health["buffer"]
    if not up["connected"]:
        out.append("not connected to the broker: readings wait in the buffer")
    if buf["file_error"]:
        out.append(f"buffer file unusable: {buf['file_error']}")
    if buf["dropped"]:
        out.append(f"readings dropped: {buf['dropped']}")
    for dev, d in health["devices"].items():
        if d["state"] in ("failing", "quarantined"):
            out.append(f"device {dev} is {d['state']}: {d['last_error']}")
        elif (cam := _camera(d)) is not None and cam["state"] in ("degraded", "auth_failed"):
            why = f" ({cam['reason']})" if cam.get("reason") else ""
            out.append(f"camera {dev} is {cam['state']}{why}")
    images = health.get("images")
    if images and images["dropped"]:
        out.append(f"images dropped: {images['dropped']}")
    alarms = health.get("alarms")
    if alarms:
        if alarms["queued"]:
            out.append(f"alarm store refuses writes: {alarms['queued']} alarm records wait")
        if alarms["actions"].get("failed"):
            out.append(
                f"rule actions failed: {alarms['actions']['failed']} since start (last: "
                f"{alarms['last_action_error']})"
            )
    if health["config"]["last_reload_ok"] is False:
        out.append("the last reload was refused: " + "; ".join(health["config"]["errors"][:3]))
    if health["config"]["restart_needed"]:
        out.append("restart to apply: " + ", ".join(health["config"]["restart_needed"]))
    return out


def _camera(d: dict[str, Any]) -> dict[str, Any] | None:
    """A camera device's own state (its ``protocol``), or None for other devices."""
    proto = d.get("protocol")
    return proto if isinstance(proto, dict) and proto.get("kind") == "camera" else None


def render(
    health: dict[str, Any],
    devices: dict[str, Any],
    colour: bool,
    dashboard: dict[str, Any] | None = None,
) -> str:
    def c(kind: str, text: str) -> str:
        return f"\033[{_COLOURS[kind]}m{text}\033[0m" if colour else text

    now = time.time()
    up, buf = health["uplink"], health["buffer"]
    link = c("good", "online") if up["connected"] else c("bad", "OFFLINE")
    last_ack = None if up["last_ack_ts"] is None else now - up["last_ack_ts"]
    oldest = buf["oldest_age_s"]
    lines = [
        f"tepi {health['version']}  gateway {health['gateway']}  up {health['uptime_s']:.0f} s"
        f"  clock {'synced' if health['clock_synced'] else c('warn', 'NOT synced')}",
        f"link    {link}"
        + (f" to {up['broker']}" if up.get("broker") else "")
        + f"  last ack {_ago(last_ack)}  {up['publish_rate']:.1f} readings/s",
        f"buffer  {buf['readings']:,} waiting"
        + (f", oldest {_ago(oldest)}" if oldest is not None else "")
        + f"  file {buf['bytes'] / 1e6:.1f} of {buf['max_bytes'] / 1e6:.0f} MB"
        + (f"  {c('bad', 'FILE: ' + buf['file_error'])}" if buf["file_error"] else ""),
    ]
    if dashboard is not None:
        lines.append(f"console https://{dashboard['listen']}  users {dashboard['users']}")
        lines.append(f"        certificate SHA-256 {dashboard['fingerprint']}")
    images = health.get("images")
    if images:
        waiting = images["waiting_for"]
        lines.append(
            f"images  {images['count']:,} waiting, {images['bytes'] / 1e6:.1f} of "
            f"{images['max_bytes'] / 1e6:.0f} MB  sent {images['sent']:,}"
            + (f"  held: {waiting}" if waiting else "")
        )
    alarms = health.get("alarms")
    if alarms:
        firing = alarms["firing_rules"]
        lines.append(
            "alarms  "
            + (
                c("bad", f"{alarms['firing']} FIRING: {', '.join(firing)}")
                if firing
                else "none firing"
            )
            + (f"  {alarms['pending']} to send" if alarms["pending"] else "")
            + "  (tepi alarms)"
        )
    lines += [
        "",
        f"{'device':<16} {'state':<12} {'polls':>7} {'errors':>7}  {'last poll':>9}  latest",
    ]
    for dev, d in devices.items():
        state = d["state"]
        kind = "good" if state == "ok" else "warn" if state == "starting" else "bad"
        errors = sum(d["errors"].values())
        poll = "" if d["last_poll_ms"] is None else f"{d['last_poll_ms']:.0f} ms"
        latest = ", ".join(f"{m} {_value(v)}" for m, v in list(d["last"].items())[:4])
        if len(d["last"]) > 4:
            latest += f", … (+{len(d['last']) - 4})"
        lines.append(
            f"{dev:<16} {c(kind, f'{state:<12}')} {d['polls']:>7} {errors:>7}  {poll:>9}  {latest}"
        )
        if state in ("failing", "quarantined") and d["last_error"]:
            lines.append(c("dim", f"{'':<16} {d['last_error']}"))
        cam = _camera(d)
        if cam is not None and cam["state"] not in ("ok", "starting"):
            why = f": {cam['reason']}" if cam.get("reason") else ""
            lines.append(c("bad", f"{'':<16} camera {cam['state']}{why}"))
    found = problems(health)
    lines.append("")
    if found:
        lines += [c("bad", "! " + p) for p in found]
    else:
        lines.append(c("good", "all is well"))
    return "\n".join(lines)


def format_alarms(answer: dict[str, Any]) -> str:
    """``tepi alarms``: one line per rule that has an alarm, firing first."""
    rows = answer["alarms"]
    if not rows:
        return f"no alarms ({answer['rules']} rules)"
    now = time.time()
    lines = [f"{'rule':<24} {'state':<9} {'severity':<9} {'since':>10}  {'ack':<16} value"]
    for a in rows:
        where = ".".join(x for x in (a["device"], a["metric"]) if x)
        value = f"{where} = {a['value']!r}" if where else repr(a["value"])
        if a["state"] == "resolved":
            value += f" (cleared at {a['resolved_value']!r})"
        ack = a["ack_by"] or "-" if a["acknowledged"] else "no"
        lines.append(
            f"{a['rule']:<24} {a['state']:<9} {a['severity']:<9} "
            f"{_ago(now - a['since']):>10}  {ack:<16} {value}"
        )
        for key, out in sorted(a["actions"].items()):
            ok = "ok" if out.get("ok") else f"FAILED: {out.get('error')}"
            target = out.get("device") or out.get("camera") or ""
            lines.append(f"{'':<24} action {key} {out.get('kind')} {target}: {ok}")
        if not a["in_config"]:
            lines.append(f"{'':<24} (its rule is no longer in the config)")
    return "\n".join(lines)


def run_status(socket_path: Path, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    try:
        health = fetch(socket_path, "/health")
        devices = fetch(socket_path, "/devices")
    except (OSError, http.client.HTTPException, ValueError) as err:
        print(
            f"tepi status: cannot reach the agent at {socket_path}: {err}\n"
            "Is it running? (systemctl status tepi)  Is this the right config (--config)?",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    try:
        dashboard = fetch(socket_path, "/dashboard")
    except (OSError, http.client.HTTPException, ValueError):
        dashboard = None  # off (404), or an agent from before the console
    if as_json:
        both = {"health": health, "devices": devices, "dashboard": dashboard}
        out.write(json.dumps(both, indent=2) + "\n")
    else:
        out.write(render(health, devices, colour=out.isatty(), dashboard=dashboard) + "\n")
    return EXIT_DEGRADED if problems(health) else 0
