"""Load ``tepi.yaml``: parse, validate in full, and report every problem at once.

Each problem is a :class:`tepi.core.errors.ConfigIssue` with the file and line, the key path as a
person reads it (``devices[1].registers[0].type``) and, where one can be guessed, a hint
("did you mean float32?"). Checks that span several keys (unique ids, devices sharing a serial
port agreeing on its settings, files that must exist) run in a second pass, after the models.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from tepi.core.errors import ConfigError, ConfigIssue, WriteRefused
from tepi.core.units import format_duration
from tepi.drivers.base import SharedResources
from tepi.drivers.camera.config import CameraConfig
from tepi.drivers.modbus import ModbusRtuConfig, ModbusTcpConfig, RegisterConfig
from tepi.drivers.modbus.codec import raw_for_write
from tepi.drivers.registry import REGISTRY, DeviceConfig
from tepi.drivers.serial.config import SerialConfig
from tepi.drivers.synthetic import SyntheticConfig
from tepi.gateway.config import PASSWORD_CREDENTIAL, SECRETS_DIR, Config, resolve_credential
from tepi.gateway.rules import (
    CAMERA_STATES,
    DEVICE_STATES,
    ActionConfig,
    Condition,
    RuleShapeError,
)

Path_ = tuple[str | int, ...]


def path_str(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Located:
    """The YAML document, with the line of every key and item."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.issues: list[ConfigIssue] = []
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        self.data: Any = yaml.safe_load(text) if node is not None else None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                line = key.start_mark.line + 1
                if name in seen:
                    self.issues.append(
                        ConfigIssue(
                            self.file,
                            line,
                            path_str((*path, name)),
                            f"key given twice (first on line {seen[name]})",
                            "remove one of them",
                        )
                    )
                seen[name] = line
                self.lines[(*path, name)] = line
                self._walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self._walk(item, (*path, i))

    def line(self, path: Path_) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


def _data_path(loc: tuple[int | str, ...], data: Any) -> Path_:
    """Drop the union tags pydantic puts in ``loc`` (``devices.0.modbus-rtu.port``)."""
    out: list[str | int] = []
    cur = data
    for step in loc:
        if isinstance(cur, dict) and isinstance(step, str) and step not in cur and step in REGISTRY:
            continue
        out.append(step)
        if isinstance(cur, dict):
            cur = cur.get(step)
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            cur = cur[step]
        else:
            cur = None
    return tuple(out)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class whose field ``loc[-1]`` is (for naming its allowed keys)."""
    tp: Any = Config
    for step in loc:
        tp = _unwrap(tp, step)
        if tp is None:
            return None
    tp = _unwrap(tp, None)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any, step: str | int | None) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if isinstance(step, str) and step in REGISTRY:
                return REGISTRY[step].config
            if len(args) == 1:
                tp = args[0]
            else:
                return tp if step is None else None
        elif origin is list or (origin is tuple and typing.get_args(tp)[1:] == (...,)):
            if isinstance(step, int):
                return typing.get_args(tp)[0]
            tp = typing.get_args(tp)[0] if step is None else tp
            if step is None:
                continue
            return None
        else:
            break
    if step is None or isinstance(step, int):
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = _field(tp, step)
        return None if field is None else field.annotation
    return None


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field a YAML key sets: by its alias (``for``) or its name."""
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return field
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a YAML mapping for ``model`` may have (aliases, not Python names)."""
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _options(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _did_you_mean(value: object, options: list[str]) -> str | None:
    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]}?"
    if options and len(options) <= 12:
        return "one of: " + ", ".join(options)
    return None


def _issue(err: ErrorDetails, doc: _Located) -> ConfigIssue:
    loc = tuple(err["loc"])
    path = _data_path(loc, doc.data)
    kind = err["type"]
    ctx = err.get("ctx", {}) or {}
    msg = err["msg"]
    hint: str | None = None
    if kind == "literal_error":
        hint = _did_you_mean(err["input"], _options(str(ctx.get("expected", ""))))
        msg = f"{err['input']!r} is not allowed"
    elif kind == "union_tag_invalid":
        hint = _did_you_mean(ctx.get("tag"), sorted(REGISTRY))
        msg = f"unknown driver {ctx.get('tag')!r}"
        path = (*path, "driver")
    elif kind == "union_tag_not_found":
        hint = "add driver: one of " + ", ".join(sorted(REGISTRY))
        msg = "no driver given"
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = _keys(model) if model else []
        msg = f"unknown key {path[-1]!r}"
        hint = _did_you_mean(path[-1], allowed) if allowed else None
    elif kind == "missing":
        model = _model_at(loc[:-1])
        field = _field(model, str(loc[-1])) if model else None
        msg = "required key is missing"
        hint = field.description if field is not None else None
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if isinstance(ctx.get("error"), RuleShapeError):  # about one key of the rule
            path = (*path, ctx["error"].key)
    else:
        model = _model_at(loc[:-1])
        field = _field(model, str(loc[-1])) if model and loc else None
        hint = field.description if field is not None else None
    return ConfigIssue(doc.file, doc.line(path), path_str(path), msg, hint)


def _cross_checks(cfg: Config, doc: _Located, check_files: bool) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def add(path: Path_, msg: str, hint: str | None = None) -> None:
        issues.append(ConfigIssue(doc.file, doc.line(path), path_str(path), msg, hint))

    first_seen: dict[str, int] = {}
    for i, dev in enumerate(cfg.devices):
        if dev.id in first_seen:
            add(
                ("devices", i, "id"),
                f"device id {dev.id!r} is already used by devices[{first_seen[dev.id]}]",
                "every device needs its own id",
            )
        first_seen.setdefault(dev.id, i)

    # Devices that share a transport (a serial port, or a TCP address) share one link: they
    # must agree on its settings, and each needs its own unit id.
    shared: dict[tuple[object, ...], tuple[int, object]] = {}
    units: dict[tuple[object, ...], int] = {}
    outstanding: dict[tuple[object, ...], tuple[int, int]] = {}
    for i, dev in enumerate(cfg.devices):
        settings: object
        if isinstance(dev, ModbusRtuConfig):
            key: tuple[object, ...] = ("serial", dev.port)
            where, settings, field = dev.port, dev.line_settings, "baudrate"
            what = "line settings"
            hint = "devices on one port must use the same baudrate, parity, bytesize and stopbits"
        elif isinstance(dev, ModbusTcpConfig):
            key = ("tcp", dev.host, dev.port)
            where, settings, field = f"{dev.host}:{dev.port}", dev.framing, "framing"
            what = "framing"
            hint = "devices behind one address share one connection, with one framing"
        elif isinstance(dev, SerialConfig):
            # A UART sensor has its port to itself: nothing else may read its bytes.
            for j, other in enumerate(cfg.devices):
                if j == i or not isinstance(other, SerialConfig | ModbusRtuConfig):
                    continue
                if (j < i or isinstance(other, ModbusRtuConfig)) and other.port == dev.port:
                    add(
                        ("devices", i, "port"),
                        f"{dev.port} is already used by devices[{j}] ({other.id})",
                        "a serial sensor needs a port of its own",
                    )
                    break
            continue
        else:
            continue
        first, first_settings = shared.setdefault(key, (i, settings))
        if settings != first_settings:
            add(
                ("devices", i, field),
                f"{where} is shared with devices[{first}] but with other {what} "
                f"{settings} vs {first_settings}",
                hint,
            )
        if isinstance(dev, ModbusTcpConfig):
            # Pipelining is the gateway's: one connection, one limit for every unit behind it.
            first, first_n = outstanding.setdefault(key, (i, dev.max_outstanding))
            if dev.max_outstanding != first_n:
                add(
                    ("devices", i, "max_outstanding"),
                    f"{where} is shared with devices[{first}] but with another max_outstanding "
                    f"{dev.max_outstanding} vs {first_n}",
                    "requests in flight are counted per connection: give every device at this "
                    "address the same max_outstanding",
                )
        if (*key, dev.unit) in units:
            add(
                ("devices", i, "unit"),
                f"unit {dev.unit} on {where} is already devices[{units[(*key, dev.unit)]}]",
                "devices sharing a port or an address need different unit ids",
            )
        units.setdefault((*key, dev.unit), i)

    clocks = [
        i for i, d in enumerate(cfg.devices) if isinstance(d, SerialConfig) and d.clock_source
    ]
    for i in clocks[1:]:
        add(
            ("devices", i, "clock_source"),
            f"devices[{clocks[0]}] is the clock source already",
            "mark one GPS receiver as clock_source",
        )

    _rule_checks(cfg, add)

    if check_files:
        up = cfg.uplink
        files: list[tuple[Path_, Path | None]] = [
            (
                ("uplink", "password_file"),
                resolve_credential(up.password_file) if up.password_file else None,
            )
        ]
        if up.tls is not None:
            files += [
                (("uplink", "tls", k), getattr(up.tls, k))
                for k in ("ca_file", "cert_file", "key_file")
            ]
        files += [(("dashboard", k), getattr(cfg.dashboard, k)) for k in ("cert_file", "key_file")]
        for i, dev in enumerate(cfg.devices):
            if isinstance(dev, CameraConfig):
                files.append(
                    (
                        ("devices", i, "password_file"),
                        resolve_credential(dev.password_file) if dev.password_file else None,
                    )
                )
                files.append((("devices", i, "ca_file"), dev.ca_file))
                if dev.password_env is not None and dev.password_env not in os.environ:
                    add(
                        ("devices", i, "password_env"),
                        f"environment variable {dev.password_env} is not set",
                        "set it in the service's environment",
                    )
        for path, f in files:
            if f is not None and "\0" in str(f):
                add(path, "the path contains a NUL character", "fix the path")
            elif f is not None and not os.access(f, os.R_OK):
                why = "does not exist" if not f.exists() else "is not readable by this user"
                add(path, f"{f} {why}", "create it, or fix the path or its permissions")
            elif f is not None and path == ("uplink", "password_file") and _blank(f):
                add(path, *empty_password(f))
        if up.password_env is not None and up.password_env not in os.environ:
            add(
                ("uplink", "password_env"),
                f"environment variable {up.password_env} is not set",
                "set it in the service's environment",
            )
    return issues


def device_metrics(dev: DeviceConfig) -> list[str] | None:
    """The metric names ``dev`` gives, as its driver names them; None when they cannot be
    known from the config (then a rule may name any metric of it)."""
    if isinstance(dev, ModbusRtuConfig | ModbusTcpConfig):
        return [r.name for r in dev.registers]  # a profile's registers are merged in already
    if isinstance(dev, SerialConfig):
        return [name for name, *_ in dev.outputs()]  # with the aggregates' <metric>_<fn>
    if isinstance(dev, SyntheticConfig):
        return [f"m{i}" for i in range(dev.metrics)]
    if isinstance(dev, CameraConfig):
        # The health metrics depend on the source (stream, MJPEG, snapshot): asked of the
        # driver, whose constructor only names them (no I/O, no OpenCV).
        from tepi.drivers.camera.driver import CameraDriver

        return [m.name for m in CameraDriver(dev, SharedResources()).metrics()]
    # A driver this module does not know (none yet: every registered one is above) names
    # its metrics only when it runs: accept any.
    return None


def _rule_checks(cfg: Config, add: Callable[[Path_, str, str | None], None]) -> None:
    """The rules' references: devices, metrics, writable registers, cameras; ids unique."""
    devices = {d.id: d for d in cfg.devices}
    metrics: dict[str, list[str] | None] = {}

    def device(path: Path_, dev_id: str) -> DeviceConfig | None:
        dev = devices.get(dev_id)
        if dev is None:
            hint = _did_you_mean(dev_id, sorted(devices)) if devices else "devices: is empty"
            add(path, f"no device {dev_id!r} in devices", hint)
        return dev

    def leaf(cond: Condition, path: Path_) -> None:
        assert cond.device is not None  # a valid leaf has one
        dev = device((*path, "device"), cond.device)
        if dev is None:
            return
        if cond.state is not None:
            if cond.state in CAMERA_STATES and not isinstance(dev, CameraConfig):
                add(
                    (*path, "state"),
                    f"{cond.state} is a camera's state; {dev.id} is driver: {dev.driver}",
                    "one of: " + ", ".join(DEVICE_STATES),
                )
            return
        assert cond.metric is not None
        if dev.id not in metrics:
            metrics[dev.id] = device_metrics(dev)
        names = metrics[dev.id]
        if names is not None and cond.metric not in names:
            add(
                (*path, "metric"),
                f"{dev.id} has no metric {cond.metric!r}",
                _did_you_mean(cond.metric, names),
            )
            return
        if cond.kind in ("threshold", "rate") and isinstance(
            dev, ModbusRtuConfig | ModbusTcpConfig
        ):
            reg = next(r for r in dev.registers if r.name == cond.metric)
            if reg.kind == "string" or reg.enum is not None:
                add(
                    (*path, "metric"),
                    f"{dev.id}.{reg.name} is text ({'enum' if reg.enum else 'string'}): "
                    f"{cond.kind} needs a number",
                    "watch a numeric register",
                )

    def walk(cond: Condition, path: Path_) -> None:
        if cond.all is None and cond.any is None:
            leaf(cond, path)
            return
        key = "all" if cond.all is not None else "any"
        for j, child in enumerate(cond.children):
            walk(child, (*path, key, j))

    first_seen: dict[str, int] = {}
    for i, rule in enumerate(cfg.rules):
        at: Path_ = ("rules", i)
        if rule.id in first_seen:
            add(
                (*at, "id"),
                f"rule id {rule.id!r} is already used by rules[{first_seen[rule.id]}]",
                "every rule needs its own id",
            )
        first_seen.setdefault(rule.id, i)
        walk(rule, at)
        for k, action in enumerate(rule.actions):
            _action_checks(action, (*at, "actions", k, action.kind), device, add)


def _action_checks(
    action: ActionConfig,
    path: Path_,
    device: Callable[[Path_, str], DeviceConfig | None],
    add: Callable[[Path_, str, str | None], None],
) -> None:
    if action.write is not None:
        w = action.write
        dev = device((*path, "device"), w.device)
        if dev is None:
            return
        if not isinstance(dev, ModbusRtuConfig | ModbusTcpConfig):
            add(
                (*path, "device"),
                f"{dev.id} is driver: {dev.driver}; write sets a Modbus register or coil",
                "name a modbus-rtu or modbus-tcp device",
            )
            return
        regs = {r.name: r for r in dev.registers}
        reg: RegisterConfig | None = regs.get(w.metric)
        if reg is None:
            writable = sorted(n for n, r in regs.items() if r.writable)
            add(
                (*path, "metric"),
                f"{dev.id} has no register {w.metric!r}",
                _did_you_mean(w.metric, writable or sorted(regs)),
            )
            return
        if not reg.writable:
            add(
                (*path, "metric"),
                f"{dev.id}.{reg.name} is not writable",
                "mark the register writable: true (a holding register or a coil), if "
                "writing it is safe",
            )
            return
        for key in ("value", "on_resolve"):
            value = getattr(w, key)
            if value is None:
                continue
            try:
                raw_for_write(value, reg)
            except WriteRefused as err:
                add((*path, key), f"{value!r} cannot be written to {dev.id}.{reg.name}", err.detail)
    elif action.snapshot is not None:
        cam = action.snapshot.camera
        dev = device((*path, "camera"), cam)
        if dev is not None and not isinstance(dev, CameraConfig):
            add(
                (*path, "camera"),
                f"{dev.id} is driver: {dev.driver}, not a camera",
                "name a device with driver: camera",
            )
    elif action.poll_rate is not None:
        p = action.poll_rate
        dev = device((*path, "device"), p.device)
        if dev is not None and p.interval >= dev.poll_interval:
            add(
                (*path, "interval"),
                f"{format_duration(p.interval)} is not faster than {dev.id}'s poll_interval "
                f"{format_duration(dev.poll_interval)}",
                "give an interval shorter than the device's poll_interval",
            )


def empty_password(f: Path) -> tuple[str, str]:
    """What is wrong, and the fix, when the password file ``f`` the config names is empty.
    The unit's SetCredential= gives one newline when the file it loads is missing."""
    secret = SECRETS_DIR / PASSWORD_CREDENTIAL
    return (
        f"the password is empty ({f}): under systemd, {secret} is missing or empty",
        f"put the password (one line) in {secret}, root:root 0600; or, if the broker needs "
        "none, remove uplink.password_file",
    )


def _blank(f: Path) -> bool:
    """Whether the file holds no password: empty, or line ends only (read as empty)."""
    try:
        with f.open("rb") as fh:
            return not fh.read(4096).strip(b"\r\n")
    except OSError:
        return False


def load_config(path: Path | str, *, check_files: bool = True) -> Config:
    """Read and validate ``path``; raise ConfigError with every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read the file: {err}")]) from err
    return parse_config(text, file, check_files=check_files)


def parse_config(text: str, file: str = "<config>", *, check_files: bool = True) -> Config:
    try:
        return _parse(text, file, check_files=check_files)
    except RecursionError:
        # An alias that contains itself (``a: &x [*x]``), or thousands of nested brackets.
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    _first_line(text, r"\*\w") or 1,
                    "",
                    "the YAML nests too deeply, or an alias (*name) refers to itself",
                    "write the value out instead of referring to itself",
                )
            ]
        ) from None
    except ValueError as err:  # yaml's int(): a number of thousands of digits
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    _first_line(text, r"\d{1000}") or 1,
                    "",
                    f"a value the YAML reader cannot take: {err}",
                    "check the numbers on this line",
                )
            ]
        ) from None


def _first_line(text: str, pattern: str) -> int | None:
    found = re.search(pattern, text)
    return None if found is None else text.count("\n", 0, found.start()) + 1


def _parse(text: str, file: str, *, check_files: bool) -> Config:
    try:
        doc = _Located(text, file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    mark.line + 1 if mark else None,
                    "",
                    f"not valid YAML: {problem}",
                    "check the indentation and the quoting around this line",
                )
            ]
        ) from err
    issues = list(doc.issues)
    if not isinstance(doc.data, dict):
        issues.append(
            ConfigIssue(
                file,
                1,
                "",
                "the file must be a mapping with gateway:, uplink: and devices:",
                "start from the sample config in docs/config.md",
            )
        )
        raise ConfigError(issues)
    try:
        cfg = Config.model_validate(doc.data)
    except ValidationError as err:
        issues += [_issue(e, doc) for e in err.errors(include_url=False)]
        issues.sort(key=lambda i: (i.line or 0, i.path))
        raise ConfigError(issues) from None
    issues += _cross_checks(cfg, doc, check_files)
    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.path))
        raise ConfigError(issues)
    return cfg
