"""The simulator's exceptions, in one place.

::

    SimError                 base class; the CLI turns any of these into exit code 2
    ├── ConfigError          the config is invalid (``errors`` lists every problem)
    └── StartupError         a transport could not start (port in use, link path taken)

Unknown fault modes or tables passed to the Python API raise plain ``ValueError``, and an
unknown device id raises ``KeyError``: those are programming errors in the caller.
"""

from __future__ import annotations

__all__ = ["ConfigError", "SimError", "StartupError"]


class SimError(Exception):
    """Base class for errors the simulator reports to a person."""


class ConfigError(SimError, ValueError):
    """An invalid simulator config. ``errors`` holds one message per problem found."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        if len(errors) == 1:
            text = f"{where}{errors[0]}"
        else:
            text = f"{where}{len(errors)} problems:\n" + "\n".join(f"  {e}" for e in errors)
        super().__init__(text)


class StartupError(SimError):
    """A transport could not be started."""
