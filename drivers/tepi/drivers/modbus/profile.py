"""Device profiles: a device's register map as a data file, chosen with ``profile: NAME``.

Profiles are YAML files in ``drivers/tepi/drivers/modbus/profiles/``: a ``description``,
``defaults`` for device keys (``baudrate``, ``address_base``, ...), and ``registers`` in the
config's own form. A register may carry a ``sim`` entry, which only the simulator reads (how to
play it).

In a device's config, the profile's registers come first; an entry in the device's own
``registers`` with the same ``name`` changes that register (only the keys it gives), and one
with a new name adds a register. A device key the config sets wins over the profile's default.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SIM_KEY = "sim"


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> dict[str, Any]:
    """The profile as written (with ``sim`` hints); ValueError naming the known ones."""
    path = PROFILE_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = profile_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown profile {name!r}{hint}; `tepi profiles` lists them: {', '.join(known)}"
        )
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("registers"), list):
        raise ValueError(f"profile {name!r} ({path}) has no registers list")  # noqa: TRY004
    return data


def apply_profile(device: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The device's config with its profile merged in (see the module docstring). Defaults
    for keys this kind of device does not have (a baud rate, over TCP) are left out."""
    profile = load_profile(str(device["profile"]))
    known = set(keys)
    defaults = {k: v for k, v in profile.get("defaults", {}).items() if k in known}
    merged = {**defaults, **device}
    own = {r.get("name"): r for r in device.get("registers") or [] if isinstance(r, dict)}
    registers: list[Any] = []
    for reg in profile["registers"]:
        base = {k: v for k, v in reg.items() if k != SIM_KEY}
        registers.append({**base, **own.pop(base["name"], {})})
    registers += [r for r in device.get("registers") or [] if not isinstance(r, dict)]
    registers += list(own.values())
    merged["registers"] = registers
    return merged


def describe(name: str | None) -> list[str]:
    """``tepi profiles``: every profile, or one profile's defaults and registers."""
    if name is None:
        names = profile_names()
        width = max(map(len, names), default=0)
        return [f"{n:<{width}}  {load_profile(n).get('description', '')}" for n in names]
    p = load_profile(name)
    lines = [f"{name}: {p.get('description', '')}"]
    defaults = p.get("defaults", {})
    if defaults:
        lines.append("defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    lines.append("")
    lines.append(f"{'name':<20} {'address':>7}  {'table':<8} {'type':<8} {'scale':>6}  unit")
    for r in p["registers"]:
        kind = r.get("type") or ("bool" if "bit" in r else "uint16")
        if "bit" in r:
            kind = f"bit {r['bit']}"
        lines.append(
            f"{r['name']:<20} {r['address']:>7}  {r.get('table', 'holding'):<8} {kind:<8} "
            f"{r.get('scale', 1):>6}  {r.get('unit') or ''}"
        )
    lines.append("")
    lines.append(f"use it: {{driver: modbus-rtu, port: ..., unit: N, profile: {name}}}")
    return lines
