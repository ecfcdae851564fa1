"""CI is honest about what it skips: under CI=true a test that skips because something
.ci/setup installs is missing fails (tests/conftest.py); other skips stay skips, and
.ci/run prints every skip's reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

TINY = """
import pytest

def test_needs_mosquitto():
    pytest.skip("mosquitto is not installed")

def test_needs_unshare():
    pytest.skip("no unshare (util-linux)")

def test_needs_the_network():
    pytest.skip("PyPI is not reachable: the online install needs it")

def test_unshare_not_permitted():
    pytest.skip("unshare -n is not permitted here: Operation not permitted")

def test_runs():
    pass
"""


def run_tiny(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_tiny.py").write_text(TINY)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conftest",
            "-rfEs",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_tiny.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


def test_under_ci_a_skip_for_a_tool_setup_installs_fails(tmp_path: Path) -> None:
    res = run_tiny(tmp_path, "true")
    out = res.stdout
    assert res.returncode == 1, out
    assert "2 failed, 1 passed, 2 skipped" in out, out
    assert "FAILED" in out, out
    assert "test_needs_mosquitto" in out, out
    assert "skipped under CI=true, but .ci/setup installs mosquitto" in out, out
    assert "skipped under CI=true, but .ci/setup installs unshare" in out, out
    # -rs: the skips that stay say why.
    assert "PyPI is not reachable" in out, out
    assert "unshare -n is not permitted here" in out, out


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_they_stay_skips(tmp_path: Path, ci: str | None) -> None:
    res = run_tiny(tmp_path, ci)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 4 skipped" in res.stdout, res.stdout
    assert "mosquitto is not installed" in res.stdout, res.stdout


def test_ci_run_prints_skip_reasons() -> None:
    run = (TESTS.parent / ".ci" / "run").read_text()
    pytest_line = next(line for line in run.splitlines() if "-m pytest" in line)
    # -r replaces pytest's default (fE): failures and errors keep their summary lines.
    assert " -rfEs" in pytest_line, pytest_line


def test_marks_sit_on_tests_not_on_helpers() -> None:
    """pytest ignores a mark on a function that is not a test, silently: an ``alone`` mark on
    the helper written between it and its test left the test running beside others (the
    kill -9 e2e test, which then failed under load). A mark belongs on a test or a test
    class; a fixture takes none."""
    import ast

    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            marks = [
                d
                for d in node.decorator_list
                if "pytest.mark." in ast.unparse(d) and "parametrize" not in ast.unparse(d)
            ]
            if marks and not node.name.startswith(("test", "Test")):
                wrong.append(f"{path.relative_to(TESTS)}:{node.lineno} {node.name}")
    assert not wrong, f"pytest marks on what is not a test: {wrong}"
