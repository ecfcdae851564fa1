"""Scripted values: a register that follows ``[[seconds, value], ...]``, its validation, a
script (re)started at run time, and the demo's flood. Time is a fake clock stepped by
hand, so nothing here waits for a script to play."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tepi_sim import DEMO_CONFIG, ConfigError, Device, Simulator, load_config
from tepi_sim.control import apply_command
from tepi_sim.demo import RIVER_SCRIPT

TcpClientFactory = Callable[..., Any]

FLOOD = [[0, 1.2], [30, 2.8], [60, 1.0]]


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _registers(**script: Any) -> list[dict[str, Any]]:
    return [
        {
            "address": 100,
            "table": "input",
            "kind": "script",
            "type": "int16",
            "scale": 0.01,
            "points": FLOOD,
            **script,
        },
        {"address": 101, "table": "input", "kind": "counter"},
        {"address": 0, "table": "holding", "kind": "level", "scale": 0.01},
        {"address": 0, "table": "input", "kind": "constant", "value": 3},
        {"address": 5, "table": "coil", "kind": "output"},
    ]


def _config(**script: Any) -> dict[str, Any]:
    return {
        "seed": 7,
        "devices": [
            {"id": "river", "transport": "tcp", "unit": 1, "registers": _registers(**script)}
        ],
    }


def _device(clock: Clock, **script: Any) -> Device:
    return Device(load_config(_config(**script)).devices[0], seed=7, clock=clock)


def _read_input(device: Device, address: int) -> int:
    prepared = device.memory.execute(struct.pack(">BHH", 4, address, 1))
    return int.from_bytes(prepared.pdu[2:4], "big", signed=True)


@pytest.mark.parametrize(
    ("t", "level"),
    [
        (0, 1.2),
        (15, 2.0),  # half way up
        (30, 2.8),
        (45, 1.9),  # half way down
        (59.999, 1.0),
        (60, 1.0),
        (61, 1.0),  # after the end: the last value is held
        (10_000, 1.0),
    ],
)
def test_a_script_interpolates_and_holds_the_last_value(t: float, level: float) -> None:
    clock = Clock()
    device = _device(clock)
    clock.now += t
    assert device.value(100, table="input") == pytest.approx(level, abs=1e-3)
    assert _read_input(device, 100) == round(level * 100)  # the scale applies on the wire


@pytest.mark.parametrize(
    ("t", "level"), [(0, 1.2), (15, 2.0), (59, 1.06), (60, 1.2), (75, 2.0), (6015, 2.0)]
)
def test_a_looping_script_starts_again(t: float, level: float) -> None:
    clock = Clock()
    device = _device(clock, loop=True)
    clock.now += t
    assert device.value(100, table="input") == pytest.approx(level, abs=1e-3)


def test_points_at_one_time_make_a_step_and_the_first_value_comes_first() -> None:
    clock = Clock()
    device = _device(clock, points=[[10, 1.0], [20, 1.0], [20, 3.0], [30, 3.0]])
    values = {}
    for t in (0, 5, 19.99, 20, 25, 40):
        clock.now = 1000 + t
        values[t] = device.value(100, table="input")
    assert values == {0: 1.0, 5: 1.0, 19.99: 1.0, 20: 3.0, 25: 3.0, 40: 3.0}


def test_a_write_holds_its_value_until_a_new_script() -> None:
    clock = Clock()
    device = _device(clock)
    device.set_value(100, 0.5, table="input")
    clock.now += 15
    assert device.value(100, table="input") == 0.5
    device.set_script(100, [[0, 4.0], [10, 5.0]])
    clock.now += 5
    assert device.value(100, table="input") == pytest.approx(4.5)


async def test_a_script_read_over_modbus_tcp_starts_with_the_simulator(
    tcp_client: TcpClientFactory,
) -> None:
    clock = Clock()
    sim = Simulator(_config(), clock=clock)
    clock.now += 500  # made long before it starts: t = 0 is start()
    await sim.start()
    try:
        client: AsyncModbusTcpClient = await tcp_client(sim.endpoint("river"))
        levels = []
        for t in (0, 15, 30, 45, 90):
            clock.now = 1500 + t
            result = await client.read_input_registers(100, count=2, device_id=1)
            levels.append(struct.unpack(">h", struct.pack(">H", result.registers[0]))[0])
        assert levels == [120, 200, 280, 190, 100]
        assert result.registers[1] == 5  # the counter beside it counts as usual
    finally:
        await sim.stop()


def test_set_script_starts_from_now_and_finds_the_table() -> None:
    clock = Clock()
    device = _device(clock)
    clock.now += 45
    reg = device.set_script(100, [[0, 2.0], [10, 3.0]], loop=True)
    assert (reg.table, reg.address) == ("input", 100)
    assert device.value(100, table="input") == 2.0
    clock.now += 5
    assert device.value(100, table="input") == pytest.approx(2.5)
    clock.now += 10
    assert device.value(100, table="input") == pytest.approx(2.5)  # looped
    # any register but a counter or a bit takes a script: a drifting sensor too
    device.set_script(0, [[0, 1.0], [10, 2.0]], table="holding")
    assert device.value(0) == 1.0


@pytest.mark.parametrize(
    ("address", "kwargs", "points", "message"),
    [
        (0, {}, FLOOD, "address 0 is mapped in holding and input: name the table"),
        (7, {}, FLOOD, "no register starts at address 7; mapped: input 100, input 101"),
        (7, {"table": "coil"}, FLOOD, "no register starts at coil address 7; mapped:"),
        (101, {}, FLOOD, "input 101 is a counter: only registers other than counters"),
        (5, {}, FLOOD, "coil 5 is a bit: only registers"),
        (100, {"table": "holdng"}, FLOOD, "unknown table 'holdng'"),
        (100, {}, [[0, 1.0]], "points: must be a list of at least 2 [seconds, value] points"),
        (100, {}, [[0, 1.0], [5, 400.0]], "points[1]: 400 does not fit int16 with scale 0.01"),
        (100, {}, [[5, 1.0], [2, 1.0]], "points[1]: points must be sorted by time: 2 s comes"),
        (100, {}, [[0, 1.0], [0, 2.0]], "points: the last point must come after the first"),
        (100, {}, [[0, 1.0], "x"], "points[1]: must be a [seconds, value] pair, got 'x'"),
    ],
)
def test_set_script_refuses_what_cannot_be_played(
    address: int, kwargs: dict[str, Any], points: Any, message: str
) -> None:
    device = _device(Clock())
    with pytest.raises(ValueError, match=re.escape(message)):
        device.set_script(address, points, **kwargs)


def test_script_command_on_the_control_socket(tmp_path: Path) -> None:
    clock = Clock()
    sim = Simulator(_config(), clock=clock)  # commands need no transport: not started
    ok = apply_command(
        sim,
        b'{"device": "river", "script": {"address": 100, "points": [[0, 1.2], [30, 2.8]]}}',
    )
    assert ok == {"ok": True}
    clock.now += 15
    assert sim.device("river").value(100, table="input") == pytest.approx(2.0)
    looped = apply_command(
        sim,
        b'{"device": "river", "script": {"address": 0, "table": "holding", "loop": true,'
        b' "points": [[0, 1], [2, 2]]}}',
    )
    assert looped == {"ok": True}
    for line, error in [
        (b'{"device": "nope", "script": {"address": 100, "points": [[0, 1], [1, 2]]}}', "nope"),
        (b'{"device": "river", "script": {"address": 100, "points": [[0, 1]]}}', "at least 2"),
        (b'{"device": "river", "script": {"address": 101, "points": [[0, 1], [1, 2]]}}', "counter"),
        (b'{"device": "river", "script": {"points": [[0, 1], [1, 2]]}}', "address"),
        (b'{"device": "river", "script": {"address": 100}}', '"script.points" is required'),
        (b'{"device": "river", "script": {"address": 100, "points": [], "lop": 1}}', "lop"),
        (b'{"device": "river", "script": [1, 2]}', '"script" an object'),
        (b'{"device": "river", "script": {"address": 1, "points": [], "loop": 1}}', "loop"),
        (b'{"device": "river", "fault": "none", "script": {}}', "unknown keys for a script"),
    ]:
        answer = apply_command(sim, line)
        assert answer["ok"] is False, line
        assert error in answer["error"], answer


BAD: list[tuple[dict[str, Any], str]] = [
    ({"points": None}, "registers[0].points: must be a list of at least 2"),
    ({"points": [[0, 1]]}, "registers[0].points: must be a list of at least 2 [seconds, value]"),
    ({"points": [[0, 1], [10, True]]}, "registers[0].points[1]: value must be a finite number"),
    ({"points": [[0, 1], ["10", 2]]}, "registers[0].points[1]: seconds must be a finite number"),
    ({"points": [[0, 1], [10, 2, 3]]}, "registers[0].points[1]: must be a [seconds, value] pair"),
    ({"points": [[-1, 1], [10, 2]]}, "registers[0].points[0]: seconds must not be negative"),
    ({"points": [[0, 1], [20, 2], [10, 3]]}, "registers[0].points[2]: points must be sorted"),
    ({"points": [[0, 1], [10, 327.68]]}, "registers[0].points[1]: 327.68 does not fit int16"),
    ({"points": [[0, 1], [10, -400]]}, "(from -327.68 to 327.67)"),
    ({"points": [[0, 1], [10, float("nan")]]}, "value must be a finite number, got nan"),
    ({"points": [[5, 1], [5, 2]]}, "registers[0].points: the last point must come after"),
    ({"loop": "yes"}, "registers[0].loop: must be true or false, got 'yes'"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_script_validation_names_the_key_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(**change))
    assert message in str(err.value)
    assert "devices[0].registers[0]." in str(err.value)


@pytest.mark.parametrize(
    ("register", "message"),
    [
        ({"address": 1, "kind": "script"}, "registers[0].points: required for kind 'script'"),
        ({"address": 1, "kind": "pm25", "points": FLOOD}, "points: only used with kind 'script'"),
        ({"address": 1, "kind": "pm25", "loop": True}, "loop: only used with kind 'script'"),
        (
            {"address": 1, "table": "coil", "kind": "script", "points": FLOOD},
            "kind 'script' needs a register table; bits support toggle, constant, output",
        ),
        (
            {"address": 1, "table": "input", "kind": "output"},
            "kind 'output' needs a table a client can write: coil, holding",
        ),
        (
            {"address": 1, "table": "discrete", "kind": "output"},
            "kind 'output' needs a table a client can write",
        ),
        ({"address": 1, "kind": "outptu"}, "unknown kind 'outptu' (did you mean 'output'?)"),
        ({"address": 1, "kind": "scirpt"}, "unknown kind 'scirpt' (did you mean 'script'?)"),
        ({"address": 1, "kind": "output", "value": "on"}, "value: must be a number, got 'on'"),
        (
            {"address": 1, "kind": "output", "type": "int16", "value": 40000},
            "value: 40000 / scale 1.0 does not fit int16",
        ),
        (
            {"address": 1, "kind": "script", "type": "float32", "points": [[0, 1], [1, 1e39]]},
            "points[1]: 1e+39 does not fit float32",
        ),
        (
            {"address": 1, "kind": "script", "type": "uint32", "scale": 0.001, "points": FLOOD},
            "",
        ),
    ],
)
def test_output_and_script_config_errors(register: dict[str, Any], message: str) -> None:
    config = {"devices": [{"id": "d", "transport": "tcp", "unit": 1, "registers": [register]}]}
    if not message:
        load_config(config)  # valid
        return
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "devices[0].registers[0]." in str(err.value)
    assert message in str(err.value)


def test_the_demo_river_floods_and_ebbs_and_the_siren_is_an_output() -> None:
    config = load_config(DEMO_CONFIG)
    river_cfg = next(d for d in config.devices if d.id == "river-level-3")
    siren_cfg = next(d for d in config.devices if d.id == "siren-1")
    assert [(r.table, r.address, r.kind) for r in siren_cfg.registers] == [("coil", 0, "output")]
    assert siren_cfg.transport == "tcp"
    clock = Clock(0.0)
    river = Device(river_cfg, clock=clock)
    samples = []
    for step in range(2 * 60 * 2):  # two rounds, every 0.5 s
        clock.now = step / 2
        samples.append((clock.now, round(river.value(100, table="input"), 2)))
    above = [t for t, level in samples if level > 2.5]
    first_round = [t for t in above if t < 60]
    assert 13 <= first_round[0] <= 15  # rises past 2.5 m about 13.8 s in
    assert 37 <= first_round[-1] <= 39  # and falls back about 38.1 s in
    assert max(level for _, level in samples) == 2.9
    below = [t for t, level in samples if first_round[-1] < t < 60 and level < 2.3]
    assert below
    assert below[0] - first_round[-1] < 5  # below 2.3 m a few seconds later
    assert [t - 60 for t in above if t >= 60] == first_round  # and again, the same
    assert RIVER_SCRIPT[0][1] == RIVER_SCRIPT[-1][1]  # a smooth loop
