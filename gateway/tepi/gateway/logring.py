"""The agent's last log lines, kept in memory for the IOC's ``logs.tail`` command.

The journal is the log of record; a gateway on a pole cannot be asked for it, and its user
``tepi`` may not read it. This handler keeps the last :data:`CAPACITY` records (each cut to
:data:`LINE_MAX` characters: a bounded few hundred KB at most), redacted as they are kept:
the values of the secrets the agent holds (registered with :func:`secret`, such as the MQTT
password) and anything shaped like ``password=…``, ``token: …`` or a URL's ``user:pass@`` are
replaced by ``***``. The agent never logs a secret on purpose (tests/test_gateway/
test_security.py); this is the second belt for what a library might print.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from typing import Any

__all__ = ["CAPACITY", "LINE_MAX", "LogRing", "redact", "secret"]

CAPACITY = 1000  # records kept
LINE_MAX = 2000  # characters a record keeps (the message, then the exception's last line)
_SECRETS: set[str] = set()
_PATTERNS = (
    # key=value and key: value, where the key names a secret; quoted or not.
    re.compile(
        r"(?i)\b((?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|auth\w*)"
        r"[\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
    ),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/:@]+:)([^\s/@]+)(@)"),  # scheme://user:pass@
)


def secret(value: str | None) -> None:
    """A secret's value, never to be shown by ``logs.tail`` (only values of 4+ characters:
    a shorter one would blank out ordinary words)."""
    if value is not None and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for value in _SECRETS:
        if value in text:
            text = text.replace(value, "***")
    text = _PATTERNS[0].sub(lambda m: m.group(1) + "***", text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + "***" + m.group(3), text)


class LogRing(logging.Handler):
    """See the module docstring. Installed on the root logger while the agent runs."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[tuple[float, str, str, str]] = deque(maxlen=capacity)
        self.seen = 0  # records ever kept: the IOC can tell how many it missed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                err = record.exc_info[1]
                text += f" ({type(err).__name__}: {err})"
            self.lines.append(
                (record.created, record.levelname, record.name, redact(text[:LINE_MAX]))
            )
            self.seen += 1
        except Exception:  # noqa: BLE001 - logging must never raise into the agent
            self.handleError(record)

    def tail(self, n: int, level: str | None = None) -> dict[str, Any]:
        """The last ``n`` kept records at ``level`` or above, oldest first."""
        floor = logging.getLevelNamesMapping().get(level.upper()) if level else logging.DEBUG
        if floor is None:
            raise ValueError(f"level {level!r}: one of debug, info, warning, error, critical")
        picked = [
            {"ts": round(ts, 3), "level": lv, "logger": name, "message": msg}
            for ts, lv, name, msg in self.lines
            if logging.getLevelName(lv) >= floor
        ][-n:]
        return {"lines": picked, "kept": len(self.lines), "seen": self.seen, "now": time.time()}
