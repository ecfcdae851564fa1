"""``tepi scan`` and ``tepi read`` as a technician runs them, against the simulator: what
they print, their exit codes and their progress bar (the data behind them is tested in
tests/test_drivers/test_modbus_tools.py)."""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import pytest
from helpers import REPO, run_tepi

from tepi.gateway.modbustool import units_arg
from tepi.gateway.progress import Progress
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(60)


async def tepi(*args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess, while the simulator keeps running in this loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tepi.gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def device(id_: str, transport: str, unit: int, **kw: Any) -> dict[str, Any]:
    regs = [{"address": 0, "table": "holding", "kind": "constant", "value": unit}]
    return {"id": id_, "transport": transport, "unit": unit, "registers": regs, **kw}


async def test_scan_finds_the_units_on_a_line_and_its_baud_rate() -> None:
    cfg = {
        "devices": [
            device("a", "rtu", 3, bus="line", baudrate=19200),
            device("b", "rtu", 7, bus="line", baudrate=19200),
        ]
    }
    async with Simulator(cfg) as sim:
        code, out, err = await tepi(
            "scan", "--port", sim.endpoint("a"), "--baud", "auto", "--units", "1-8",
            "--timeout", "0.1",
        )  # fmt: skip
        assert sim.buses["line"].wrong_speed > 0, "9600 was tried first, and got no answer"
    assert code == 0, err
    assert out.splitlines() == [
        "unit   3 at 19200 baud: answers (registers)",
        "unit   7 at 19200 baud: answers (registers)",
    ]


async def test_scan_finds_units_behind_a_tcp_gateway() -> None:
    cfg = {"devices": [device("a", "tcp", 1, bus="gw"), device("b", "tcp", 2, bus="gw")]}
    async with Simulator(cfg) as sim:
        code, out, err = await tepi(
            "scan", "--port", sim.endpoint("a"), "--units", "1-4", "--timeout", "0.2"
        )
    assert code == 0, err
    # Units 3 and 4 are not there: the gateway says so (exception 11), which is not an answer.
    assert out.splitlines() == ["unit   1: answers (registers)", "unit   2: answers (registers)"]


async def test_scan_that_finds_nothing_says_what_to_check() -> None:
    async with Simulator({"devices": [device("a", "rtu", 3)]}) as sim:
        code, out, _ = await tepi(
            "scan", "--port", sim.endpoint("a"), "--units", "1-2", "--timeout", "0.05"
        )
    assert code == 1
    assert "no unit answered" in out
    assert "wiring" in out


async def test_read_prints_every_decoding_side_by_side() -> None:
    regs = [
        {
            "address": 0,
            "kind": "constant",
            "type": "float32",
            "value": 12.5,
            "word_order": "little",
        },
        {"address": 2, "kind": "constant", "type": "int16", "value": -7},
    ]
    cfg = {"devices": [{"id": "m", "transport": "tcp", "unit": 4, "registers": regs}]}
    async with Simulator(cfg) as sim:
        code, out, err = await tepi(
            "read", "--port", sim.endpoint("m"), "--unit", "4", "--address", "0", "--count", "3"
        )
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if "CDAB float32" in line)
    row0 = lines[lines.index(header) + 1].split()
    # columns: addr, then float32 and int32 for ABCD, CDAB, BADC, DCBA
    assert row0[0] == "0"
    floats = dict(zip(["ABCD", "CDAB", "BADC", "DCBA"], row0[1::2], strict=True))
    assert floats["CDAB"] == "12.5", "stored low word first: only CDAB reads 12.5"
    assert [o for o, v in floats.items() if v == "12.5"] == ["CDAB"]
    assert any(line.split()[:5] == ["2", "0xFFF9", "65529", "-7", ".."] for line in lines)


async def test_read_of_a_missing_address_explains_exception_2() -> None:
    cfg = {"devices": [device("m", "tcp", 1, fill_gaps=False)]}
    async with Simulator(cfg) as sim:
        code, out, _ = await tepi("read", "--port", sim.endpoint("m"), "--address", "50")
    assert code == 1
    assert "modbus exception 2 (illegal data address)" in out
    assert "address_base" in out


def test_a_missing_port_is_explained() -> None:
    out = run_tepi("read", "--port", "/dev/ttyNOPE0", "--address", "0", timeout=30)
    assert out.returncode == 3
    assert "/dev/ttyNOPE0 does not exist: is the adapter plugged in?" in out.stderr


def test_bad_arguments_are_usage_errors() -> None:
    out = run_tepi("read", "--port", "/dev/ttyNOPE0", "--address", "0", "--count", "200")
    assert out.returncode == 2
    assert "1 to 125" in out.stderr
    out = run_tepi("scan", "--port", "/dev/ttyNOPE0", "--units", "1-300")
    assert out.returncode == 2
    assert "0-247" in out.stderr


def test_units_are_ranges_and_lists() -> None:
    assert units_arg("5") == [5]
    assert units_arg("1,3,10-12") == [1, 3, 10, 11, 12]
    with pytest.raises(ValueError, match="0-247"):
        units_arg("240-250")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_on_a_terminal_only() -> None:
    tty = Tty()
    bar = Progress(tty, 4)
    for n in range(1, 5):
        bar.update(n, "units at 9600 baud")
    bar.update(4, "units at 9600 baud")  # unchanged: not drawn again
    bar.close()
    lines = tty.getvalue().split("\r")[1:]
    assert len(lines) == 4
    assert lines[0].startswith("[######                   ]  25%  1/4 units at 9600 baud")
    assert lines[-1] == "[#########################] 100%  4/4 units at 9600 baud \n"
    piped = io.StringIO()
    bar = Progress(piped, 4)
    bar.update(4, "readings")
    bar.close()
    assert piped.getvalue() == ""
