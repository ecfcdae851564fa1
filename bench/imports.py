"""What each import adds to RSS, in the order the agent imports it (docs/performance.md#memory).

A first process imports ``--module`` (the agent's runtime by default) and lists the modules it
loaded, in the order each finished loading. A second, fresh process imports them one by one in
that order and reads its RSS from /proc after each, so a module's step is what it adds on top
of everything imported before it (a package's ``__init__`` brings its submodules with it). The
steps are summed per top-level package (tepi's per layer, and the gateway's per module).

    .venv/bin/python bench/imports.py                 # the agent
    .venv/bin/python bench/imports.py --module tepi.gateway.statushttp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_LIST = (
    "import sys, json; before = set(sys.modules); import {module}; "
    "print(json.dumps([m for m in sys.modules if m not in before]))"
)

_STEP = r"""
import collections, importlib, json, sys

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

def top(name):
    parts = name.split(".")
    if parts[0] != "tepi":
        return parts[0]
    return ".".join(parts[:3] if parts[1:2] == ["gateway"] else parts[:2])

base = prev = rss()
steps = collections.Counter()
for name in json.loads(sys.stdin.read()):
    if name in sys.modules:
        continue
    try:
        importlib.import_module(name)
    except Exception:
        continue
    now = rss()
    steps[top(name)] += now - prev
    prev = now
print(json.dumps({"python": base, "total": prev, "steps": steps.most_common()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--module", default="tepi.gateway.runtime", help="what to import")
    p.add_argument("--top", type=int, default=25, help="how many packages to list")
    args = p.parse_args()
    order = subprocess.run(
        [sys.executable, "-c", _LIST.format(module=args.module)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", _STEP], input=order, capture_output=True, text=True, check=True
        ).stdout
    )
    print(f"{'python alone':32s} {out['python']:6.1f} MB")
    for name, mb in out["steps"][: args.top]:
        print(f"{name:32s} {mb:+6.1f} MB")
    print(f"{'importing ' + args.module:32s} {out['total']:6.1f} MB RSS")


if __name__ == "__main__":
    main()
