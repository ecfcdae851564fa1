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
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tepi.core.errors import ConfigError, ConfigIssue
from tepi.drivers.camera.config import CameraConfig
from tepi.drivers.modbus import ModbusRtuConfig, ModbusTcpConfig
from tepi.drivers.registry import REGISTRY
from tepi.drivers.serial.config import SerialConfig
from tepi.gateway.config import PASSWORD_CREDENTIAL, SECRETS_DIR, Config, resolve_credential

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
        elif origin is list:
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
    if isinstance(tp, type) and issubclass(tp, BaseModel) and step in tp.model_fields:
        return tp.model_fields[step].annotation
    return None


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
        allowed = sorted(model.model_fields) if model else []
        msg = f"unknown key {path[-1]!r}"
        hint = _did_you_mean(path[-1], allowed) if allowed else None
    elif kind == "missing":
        model = _model_at(loc[:-1])
        field = model.model_fields.get(str(loc[-1])) if model else None
        msg = "required key is missing"
        hint = field.description if field is not None else None
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    else:
        model = _model_at(loc[:-1])
        field = model.model_fields.get(str(loc[-1])) if model and loc else None
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
