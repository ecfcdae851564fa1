"""The built-in demo config (``tepi-sim --demo``), reusable as ``tepi_sim.DEMO_CONFIG``.

An air-quality station and a noise meter share one RS-485 line (one pty, units 1 and 2),
a river-level gauge speaks Modbus TCP, and a PMS5003 particulate counter streams a frame
a second on a serial port of its own. Every sensing Modbus device has a counter so a client
can prove that no reading was lost.

The river's level follows :data:`RIVER_SCRIPT`, a flood that comes and goes every 60 s
(a demo's flood: a real one takes hours): from 1.6 m it rises to 2.9 m over 20 s (past
2.5 m at about 13.8 s), holds 15 s, falls back to 1.6 m by 45 s (below 2.5 m at about
38.1 s and 2.3 m at about 39.6 s) and stays there 15 s.
``siren-1``, the siren at the bridge, is a Modbus TCP device on a port of its own (unit 1)
with one coil at address 0 (the siren: the gateway's demo names it ``siren``) that keeps
what is written (kind ``output``, off at start); the device records every write with its
time (``Device.writes``, ``{"query": "writes"}``).

An IP camera, ``cam-1``, serves snapshots, MJPEG and H.264 on a free port of 127.0.0.1
behind Digest auth (user ``tepi``, password ``demo-camera``); ``tepi-sim --demo`` prints
its URL, and ``--manifest`` writes it under ``cameras``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEMO_CONFIG", "RIVER_SCRIPT"]

# (seconds, metres), looped: a demo viewer sees a flood rule fire and resolve every minute.
RIVER_SCRIPT: Final[list[list[float]]] = [[0, 1.6], [20, 2.9], [35, 2.9], [45, 1.6], [60, 1.6]]

DEMO_CONFIG: Final[dict[str, Any]] = {
    "devices": [
        {
            "id": "aq-station-1",
            "transport": "rtu",
            "unit": 1,
            "bus": "bus0",
            "registers": [
                {"address": 0, "table": "holding", "kind": "pm25", "type": "uint16", "scale": 0.1},
                {"address": 1, "table": "holding", "kind": "pm10", "type": "uint16", "scale": 0.1},
                {
                    "address": 2,
                    "table": "holding",
                    "kind": "temperature",
                    "type": "float32",
                    "word_order": "little",
                },
                {
                    "address": 4,
                    "table": "holding",
                    "kind": "humidity",
                    "type": "uint16",
                    "scale": 0.1,
                },
                {"address": 10, "table": "holding", "kind": "counter", "type": "uint16"},
            ],
        },
        {
            "id": "noise-meter-2",
            "transport": "rtu",
            "unit": 2,
            "bus": "bus0",
            "registers": [
                {"address": 0, "table": "holding", "kind": "noise", "type": "uint16", "scale": 0.1},
                {"address": 1, "table": "holding", "kind": "counter", "type": "uint16"},
            ],
        },
        {
            "id": "river-level-3",
            "transport": "tcp",
            "unit": 1,
            "registers": [
                {
                    "address": 100,
                    "table": "input",
                    "kind": "script",
                    "type": "int16",
                    "scale": 0.01,
                    "points": RIVER_SCRIPT,
                    "loop": True,
                },
                {"address": 101, "table": "input", "kind": "counter", "type": "uint16"},
            ],
        },
        {
            "id": "siren-1",
            "transport": "tcp",
            "unit": 1,
            "registers": [{"address": 0, "table": "coil", "kind": "output"}],
        },
        {"id": "pm-sensor-4", "transport": "uart", "protocol": "pms5003", "interval_s": 1.0},
    ],
    "cameras": [
        {"id": "cam-1", "auth": "digest", "username": "tepi", "password": "demo-camera"},
    ],
}
