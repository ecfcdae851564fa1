"""tepi's core: what every other layer stands on, and nothing else.

Errors (:mod:`tepi.core.errors`), units and durations (:mod:`tepi.core.units`), the records a
reading travels in (:mod:`tepi.core.records`), clocks (:mod:`tepi.core.clock`), the retry
policies (:mod:`tepi.core.retry`) and a TaskGroup that Python 3.11 gets right
(:mod:`tepi.core.tasks`). It imports nothing from ``tepi.drivers``, ``tepi.buffer`` or
``tepi.gateway`` (tests/test_layers.py says so), and importing it loads neither SQLite nor MQTT.

The code lives in the ``drivers/`` folder because the repository's top-level folders are fixed;
see docs/development.md.
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it from here)
