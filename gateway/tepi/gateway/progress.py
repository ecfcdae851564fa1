"""The CLI's one progress bar (``tepi buffer export``, ``tepi scan``).

A line redrawn in place on a terminal, and nothing at all when the output is a file or a
pipe, so logs and redirected output stay clean. Small enough not to need a dependency.
"""

from __future__ import annotations

from typing import TextIO

WIDTH = 25


class Progress:
    """``[#######                  ]  28%  70/247 units at 9600 baud``, on ``out`` if a tty."""

    def __init__(self, out: TextIO | None, total: int) -> None:
        self._out = out if out is not None and out.isatty() else None
        self._total = max(total, 1)
        self._shown: tuple[int, str] | None = None

    def update(self, done: int, what: str) -> None:
        """``done`` of the total, and what they are; redrawn only when the line changes."""
        if self._out is None:
            return
        pct = min(100 * done // self._total, 100)
        if self._shown == (pct, what):
            return
        self._shown = (pct, what)
        bar = "#" * (WIDTH * pct // 100)
        self._out.write(f"\r[{bar:<{WIDTH}}] {pct:3d}%  {done:,}/{self._total:,} {what} ")
        self._out.flush()

    def close(self) -> None:
        """End the line, if one was drawn."""
        if self._out is not None and self._shown is not None:
            self._out.write("\n")
            self._out.flush()
