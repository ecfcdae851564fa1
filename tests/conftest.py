"""Puts tests/ on sys.path so that test modules can import tests/helpers.py (the real parts:
a Mosquitto broker, a subscriber, the agent as a process, a fault proxy), and bench/ for the
tools the suite shares with the benchmarks (the completeness checker)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent / "bench"))


# ---- no secret in any log the suite produced --------------------------------------------

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Generator, Iterator

import pytest
from helpers import AGENT_LOGS, TEST_SECRETS, find_secrets
from hypothesis import HealthCheck, settings

# Hypothesis's timing checks off for every test: what the properties check is behaviour, and
# on a loaded 2-core CI machine one draw of a trivial strategy once took 1.9 s (too_slow).
settings.register_profile("tepi", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tepi")


@pytest.fixture(autouse=True, scope="session")
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every log the session produced: the agents' (subprocesses), the brokers', and every
    record logged in this process (INFO and up, DEBUG where a test asks for it), read at
    the end for the test secrets. A leak fails the session's last teardown."""
    base = tmp_path_factory.getbasetemp()
    in_process = base / "in-process.log"
    handler = logging.FileHandler(in_process)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level, logging.INFO))  # as the agent logs by default (caplog may lower it)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    logs = sorted({*AGENT_LOGS, *base.rglob("*.log")})
    found = find_secrets(logs, TEST_SECRETS)
    assert not found, "secrets in logs:\n" + "\n".join(found[:20])


# ---- CI is honest about what it skips ------------------------------------------------------

# What .ci/setup installs (apt), by the names a skip reason uses for it. Under CI=true a test
# that skips because one of these is *missing* fails instead: the runner was meant to have it,
# so the skip would hide a test that never ran. A skip for a reason the runner cannot help
# (PyPI unreachable, unshare not permitted in a container) stays a skip.
INSTALLED_BY_SETUP = (
    "mosquitto",
    "mosquitto_passwd",
    "nats-server",
    "rabbitmq-server",
    "gcc",
    "systemd-analyze",
    "systemd",
    "unshare",
    "util-linux",
    "python3-venv",
    "/usr/bin/python3",
    "chromium",
)
_MISSING = re.compile(r"\bno\b|not installed|not found|missing|is needed|cannot find", re.I)


def missing_tool(reason: str) -> str | None:
    """The tool .ci/setup installs that ``reason`` (a skip's) says is missing, or None."""
    if not _MISSING.search(reason):
        return None
    for tool in INSTALLED_BY_SETUP:
        if re.search(rf"(?<![\w/-]){re.escape(tool)}(?![\w-])", reason):
            return tool
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.skipped and os.environ.get("CI") == "true" and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        tool = missing_tool(reason)
        if tool is not None:
            report.outcome = "failed"
            report.longrepr = (
                f"skipped under CI=true, but .ci/setup installs {tool} "
                f"(tests/conftest.py INSTALLED_BY_SETUP): {reason}"
            )
    return report


# ---- tests that run alone, also under pytest-xdist -----------------------------------------

# .ci/run runs the suite on two pytest-xdist workers. A test marked ``alone`` does something
# that would reach into another test running beside it (asks every TCP port on this machine
# for its /health), or has a timing margin that another test sharing the cores and the disk
# can eat (the comment at the mark says which), so it runs while no other test does: a
# readers-writer lock on two files in the run's shared temporary directory, taken around each
# test's whole protocol (setup, call, teardown) and outside pytest-timeout's, so the wait for
# the other worker's test never counts against a test's timeout. Every test takes
# ``turnstile`` to start, and ``tests`` shared (``alone``: exclusive, keeping ``turnstile`` so
# that no test starts while it waits). Without xdist (no workerinput) nothing is locked.


@contextlib.contextmanager
def _flock(path: Path, how: int) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, how)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.hookimpl(tryfirst=True, wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    if not hasattr(item.config, "workerinput"):
        return (yield)
    shared = Path(item.config.option.basetemp).parent  # xdist: <basetemp>/popen-gwN
    turnstile, tests = shared / "turnstile.lock", shared / "tests.lock"
    if item.get_closest_marker("alone") is not None:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(tests, fcntl.LOCK_EX):
            return (yield)
    with _flock(turnstile, fcntl.LOCK_EX):
        pass
    with _flock(tests, fcntl.LOCK_SH):
        return (yield)


# ---- the longest files first ---------------------------------------------------------------

# .ci/run hands whole files to the two workers (--dist loadfile), the next in the queue to
# whichever is free. pytest-xdist's own queue puts the files with the most tests first
# (--loadscope-reorder), so a long file of few tests (the installs, the bench smoke) started
# late and ran on one worker while the other had nothing left. The queue is the collection
# order instead, and that puts these files first, longest first (seconds on one worker in a
# whole run at load 5 to 7 on 2 cores; lightly loaded, the installs take about a third),
# so that the short ones fill in at the end. The bench smoke goes between the install files:
# test_install_bundle_checks.py then starts once test_install.py has built the native bundle,
# instead of waiting for it. The files with an ``alone`` test go last, where the other
# worker's tests are short: an alone test waits for the test running beside it to end. A file
# not named here keeps its place.
LONGEST_FIRST = (
    "tests/test_systemd/test_install.py",  # 331 s, the native bundle's build in it
    "tests/test_bench/test_bench_smoke.py",  # 177 s (before its suite ran in two halves)
    "tests/test_systemd/test_install_bundle_checks.py",  # 189 s
    "tests/test_systemd/test_install_full_bundle.py",  # 86 s
    "tests/test_gateway/test_brokers.py",  # 80 s: RabbitMQ's boot and restart, nats, Mosquitto
    "tests/test_gateway/test_cameras.py",  # 70 s
    "tests/hw_sim/test_sim_traffic.py",  # 22-47 s
    "tests/test_drivers/test_camera_analytics_traffic.py",  # 16-40 s: 300 s scenes analysed
    "tests/test_gateway/test_vision_e2e.py",  # 25 s
    "tests/test_systemd/test_install_online.py",  # 60 s
    "tests/test_gateway/test_demo.py",  # 59 s
    "tests/test_gateway/test_update.py",  # 52 s
    "tests/test_gateway/test_disk.py",  # 50 s
    "tests/test_gateway/test_alarms_e2e.py",  # 47 s
    "tests/test_gateway/test_buffer_cli.py",  # 44 s
    "tests/test_buffer/test_powercut.py",  # 41 s
    "tests/test_gateway/test_dashboard_browser.py",  # 40 s: Chromium, plots of a few points
    "tests/test_gateway/test_serial_e2e.py",  # 39 s
    "tests/test_gateway/test_faults.py",  # 37 s
    "tests/test_gateway/test_remote_ops_e2e.py",  # 37 s
    "tests/test_gateway/test_config.py",  # 35 s
    "tests/test_gateway/test_config_push_e2e.py",  # 29 s
    "tests/test_gateway/test_bad_devices.py",  # 29 s
    "tests/test_gateway/test_commands_e2e.py",  # 24 s
    "tests/test_buffer/test_alarms_powercut.py",  # 22 s
)
WITH_ALONE_LAST = (
    "tests/test_gateway/test_e2e.py",
    "tests/test_gateway/test_status_api.py",
    "tests/test_gateway/test_security.py",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist is loaded
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    last = {name: i for i, name in enumerate(WITH_ALONE_LAST)}

    def place(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::", 1)[0]
        if path in first:
            return (0, first[path])
        return (2, last[path]) if path in last else (1, 0)

    items.sort(key=place)  # stable: the tests of a file keep their order
