"""tepi's exceptions, in one small tree. Classify at the boundary with ``raise ... from err``.

::

    TepiError
    ├── ConfigError            fatal: the config cannot be used (carries every issue found)
    └── DeviceError            a device did not give a reading this poll
        ├── DeviceUnavailable  temporary: no answer, port missing, connection refused (retry)
        ├── ProtocolError      the device answered, but wrongly (count it and continue)
        └── DriverFault        the driver raised what it should not (a bug): count, back off

Buffer failures are ``sqlite3`` and ``OSError`` errors, handled inside the buffer itself.
Uplink failures are aiomqtt's, classified by the uplink as tls, refused or link.
"""

from __future__ import annotations

from dataclasses import dataclass


class TepiError(Exception):
    """Base of every error tepi raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where it is, what is wrong and how to fix it."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(TepiError):
    """The config cannot be used. ``issues`` holds every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class DeviceError(TepiError):
    """A device gave no reading this poll; ``reason`` is short and stable, for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DeviceUnavailable(DeviceError):
    """No answer, no port, no connection: try again later with backoff."""


class ProtocolError(DeviceError):
    """The device answered with something that is not a valid reply."""


class DriverFault(DeviceError):
    """A driver's open, read or close raised something other than a DeviceError: a bug in the
    driver or an exception its library was not expected to raise. The agent classifies it
    (``raise DriverFault(...) from err``) so that it stays with the device, whose readings are
    bad with the reason ``internal error``; ``__cause__`` holds the original, for its
    traceback."""

    def __init__(self, err: BaseException) -> None:
        super().__init__("internal error", f"{type(err).__name__}: {err}")
        self.logged = False  # its traceback went to the log (the device's first one)


class WriteRefused(TepiError):
    """A write that tepi will not send (not writable, out of range), or that did not take.

    ``reason`` is short and stable, for the remote-command reply; the message says what to do.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
