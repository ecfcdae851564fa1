"""The synthetic driver: config through the real loader, and what a poll gives."""

from __future__ import annotations

import math

from tepi.core.records import as_samples
from tepi.drivers.base import SharedResources
from tepi.drivers.registry import make_driver
from tepi.gateway.configload import parse_config

CFG = """
gateway: {id: gw}
uplink: {url: "mqtt://127.0.0.1"}
devices:
  - {id: s1, driver: synthetic, metrics: 3, poll_interval: 10ms}
  - {id: s2, driver: synthetic, metrics: 2, pattern: wave}
"""


async def test_counter_gives_the_poll_number_for_every_metric() -> None:
    cfg = parse_config(CFG, "t.yaml", check_files=False)
    async with make_driver(cfg.devices[0], SharedResources()) as drv:
        first = as_samples(await drv.read())
        second = as_samples(await drv.read())
        assert [(s.metric, s.value) for s in first] == [("m0", 1), ("m1", 1), ("m2", 1)]
        assert {s.value for s in second} == {2}
        assert [m.name for m in drv.metrics()] == ["m0", "m1", "m2"]
        assert all(s.reason is None and s.ts > 1e9 for s in first)


async def test_wave_gives_finite_plausible_values() -> None:
    cfg = parse_config(CFG, "t.yaml", check_files=False)
    async with make_driver(cfg.devices[1], SharedResources()) as drv:
        values = [s.value for s in as_samples(await drv.read())]
        assert len(values) == 2
        assert all(isinstance(v, float) and math.isfinite(v) and 14 < v < 26 for v in values)
