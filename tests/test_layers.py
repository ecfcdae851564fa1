"""The house's layout as tests: the layers and who may import whom, one installed name,
the version written once, and a gateway that installs without the simulator.

The layers, bottom to top (docs/development.md)::

    tepi.core      errors, units, records, clocks, retry policies   imports no other tepi layer
    tepi.drivers   device drivers, the registry                     core
    tepi.buffer    the store-and-forward buffer                     core
    tepi.gateway   config, runtime, uplink, CLI                     core, drivers, buffer
    tepi_sim       the simulator (its own distribution)             nothing of tepi

Only module-level imports count: an import inside a function (the CLI's lazy imports) or
under ``if TYPE_CHECKING:`` runs later or never, so it cannot make an import-time cycle.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tepi.core import __version__

REPO = Path(__file__).resolve().parents[1]
ROOTS = {  # where each layer's modules live: the folder that holds its ``tepi/`` part
    "tepi.core": REPO / "drivers",
    "tepi.drivers": REPO / "drivers",
    "tepi.buffer": REPO / "buffer",
    "tepi.gateway": REPO / "gateway",
    "tepi_sim": REPO / "hw-sim",
}
ALLOWED = {
    "tepi.core": {"tepi.core"},
    "tepi.drivers": {"tepi.core", "tepi.drivers"},
    "tepi.buffer": {"tepi.core", "tepi.buffer"},
    "tepi.gateway": {"tepi.core", "tepi.drivers", "tepi.buffer", "tepi.gateway"},
    "tepi_sim": {"tepi_sim"},
}


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of tepi and of the simulator, with its dotted name."""
    for layer, root in ROOTS.items():
        top = root.joinpath(*layer.split("."))
        for path in sorted(top.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def layer_of(module: str) -> str | None:
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    if module == "tepi" or module.startswith("tepi."):
        return "tepi.?"  # a tepi module outside every layer: refused below
    return None


def module_level_imports(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each import that runs when ``name`` is imported."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(nodes: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                yield node.lineno, mod
                for alias in node.names:  # ``from tepi.drivers import modbus``: a module too
                    yield node.lineno, f"{mod}.{alias.name}"
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                yield from walk(node.body)
                for handler in node.handlers:
                    yield from walk(handler.body)
                yield from walk(node.orelse)
                yield from walk(node.finalbody)
            elif isinstance(node, ast.With):
                yield from walk(node.body)

    yield from walk(tree.body)


def graph() -> dict[str, set[str]]:
    known = dict(modules())
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = {mod for _, mod in module_level_imports(path, name) if mod in known}
    return edges


def test_the_layout_is_found() -> None:
    """The checks below look at real modules: each layer has some (a wrong root finds none)."""
    found = {layer_of(name) for name, _ in modules()}
    assert found == set(ALLOWED)
    assert sum(1 for _ in modules()) > 50


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for name, path in modules():
        layer = layer_of(name)
        assert layer is not None
        for line, mod in module_level_imports(path, name):
            target = layer_of(mod)
            if target is not None and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {mod}")
    assert not wrong, "imports against the layers (docs/development.md):\n" + "\n".join(wrong)


def test_no_layer_imports_a_layer_above_it_even_lazily() -> None:
    """A function-level import does not make a cycle, but drivers still never reach up."""
    wrong = []
    for name, path in modules():
        layer = layer_of(name)
        if layer not in {"tepi.core", "tepi.drivers", "tepi.buffer", "tepi_sim"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                for mod in names:
                    target = layer_of(mod)
                    if target is not None and target not in ALLOWED[str(layer)]:
                        wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {mod}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """The checker itself: two modules that import each other are reported."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import tepi.drivers.b\n")
    b.write_text("if TYPE_CHECKING:\n    import x\nfrom tepi.drivers import a\n")
    assert [m for _, m in module_level_imports(a, "tepi.drivers.a")] == ["tepi.drivers.b"]
    assert [m for _, m in module_level_imports(b, "tepi.drivers.b")] == [
        "tepi.drivers",
        "tepi.drivers.a",
    ]


def _imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_importing_a_driver_loads_neither_sqlite_nor_the_gateway() -> None:
    loaded = _imported_by(
        "import tepi.drivers.registry, tepi.drivers.modbus.driver, tepi.drivers.serial.driver"
    )
    assert "tepi.drivers.modbus.driver" in loaded
    unwanted = {m for m in loaded if m.split(".")[0] in {"sqlite3", "_sqlite3", "aiomqtt", "paho"}}
    unwanted |= {m for m in loaded if m.startswith(("tepi.gateway", "tepi.buffer"))}
    assert not unwanted, sorted(unwanted)


_NO_MODBUS = """
from tepi.drivers.base import SharedResources
from tepi.drivers.registry import make_driver
from tepi.gateway.configload import parse_config
import tepi.gateway.runtime
cfg = parse_config(
    "gateway: {id: gw}\\nuplink: {url: 'mqtt://127.0.0.1'}\\ndevices:\\n"
    "  - {id: s1, driver: synthetic, metrics: 2}\\n" + EXTRA,
    "t.yaml",
    check_files=False,
)
drivers = [make_driver(d, SharedResources()) for d in cfg.devices]
"""


def test_a_box_without_a_modbus_device_loads_no_pymodbus() -> None:
    """The registry has every driver's config models, for validation; pymodbus (about
    1.8 MB of RSS) comes with the Modbus driver, made for the first Modbus device only
    (docs/performance.md#memory)."""
    without = _imported_by('EXTRA = ""' + _NO_MODBUS)
    assert "tepi.drivers.modbus.config" in without
    assert not {m for m in without if m.split(".")[0] == "pymodbus"}
    assert "tepi.drivers.modbus.driver" not in without
    with_one = _imported_by(
        "EXTRA = '  - {id: m1, driver: modbus-tcp, host: 127.0.0.1, unit: 1, registers: "
        "[{name: r, address: 0}]}\\n'" + _NO_MODBUS
    )
    assert "pymodbus" in with_one
    assert "tepi.drivers.modbus.driver" in with_one


def test_the_core_loads_little() -> None:
    loaded = _imported_by("import tepi.core.records, tepi.core.errors, tepi.core.clock")
    assert "tepi.core.records" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"sqlite3", "pydantic", "aiomqtt"}}


def test_the_version_is_written_once() -> None:
    from importlib.metadata import version

    assert version("tepi") == __version__
    written = [
        f"{path.relative_to(REPO)}"
        for _, path in modules()
        if re.search(r"^__version__\s*=", path.read_text(), re.M)
    ]
    assert written == [str(Path("drivers/tepi/core/__init__.py"))]
    out = subprocess.run(
        [sys.executable, "-m", "tepi.gateway.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"tepi {__version__}"


# Not copied to build the wheel: what is not source (as systemd/bundle.sh leaves out).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis",
)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tepi's wheel, built from a copy of the checkout: pip wheel leaves build/ in the tree
    it builds, and the checkout is shared with the tests running beside this one
    (test_install.py's online install checks that it leaves nothing there)."""
    src = tmp_path_factory.mktemp("src") / "tepi"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        timeout=300,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    (found,) = out.glob("tepi-*.whl")
    return found


def test_the_wheel_installs_tepi_alone(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tepi"}, tops
    assert "tepi/__init__.py" not in names  # a namespace: nothing may own its __init__
    for must in (
        "tepi/core/__init__.py",
        "tepi/gateway/payload.schema.json",
        "tepi/gateway/demo.yaml",
        "tepi/drivers/modbus/profiles/eastron-sdm120.yaml",
        "tepi/buffer/py.typed",
    ):
        assert must in names
    # The web console's pages load these: each one the checkout has is in the wheel.
    assets = sorted((REPO / "gateway/tepi/gateway/dashboard_assets").iterdir())
    assert assets
    for asset in assets:
        assert f"tepi/gateway/dashboard_assets/{asset.name}" in names, asset.name
    assert not [n for n in names if "tepi_sim" in n or n.startswith("tests/")]
    assert wheel.name.startswith(f"tepi-{__version__}-")


def test_a_gateway_installs_and_runs_without_the_simulator(wheel: Path, tmp_path: Path) -> None:
    """The wheel alone, in a fresh venv that borrows the dependencies but not tepi-sim: the
    agent checks a config, and ``tepi demo`` says in one line how to get the simulator."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # The dependencies' files, not the .pth files that hook in the editable tepi and tepi-sim.
    (site / "deps.pth").write_text(f"{deps}\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    py = venv / "bin" / "python"
    probe = subprocess.run(
        [py, "-c", "import tepi.gateway.cli, importlib.util as u; print(u.find_spec('tepi_sim'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
    cfg = tmp_path / "tepi.yaml"
    cfg.write_text(
        "gateway: {id: gw-1, data_dir: " + str(tmp_path / "data") + "}\n"
        'uplink: {url: "mqtt://127.0.0.1:1883"}\n'
        "devices:\n  - {id: s1, driver: synthetic, metrics: 1}\n"
    )
    check = subprocess.run(
        [py, "-m", "tepi.gateway.cli", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    demo = subprocess.run(
        [py, "-m", "tepi.gateway.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 4, demo.stdout + demo.stderr
    assert demo.stderr.count("\n") == 1
    assert "pip install tepi-sim" in demo.stderr
    assert not (tmp_path / "demo").exists()
