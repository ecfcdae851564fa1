"""A poll's first request, sent at the next tick by the transport, not by the poll's task.

A poll loop that sleeps to the next tick and then sends its request wakes twice a poll: once
for the tick, once for the answer. Each wake resumes every coroutine frame from the poll loop
down to the transport. A driver whose transport can send at a given instant (Modbus TCP:
``ModbusDriver.schedules``) is handed a :class:`Due` with its read instead: the transport
holds the request and sends it at ``when``, from one timer for every request of that instant
(the devices of one poll grid behind one address), and the poll's task wakes once, with the
answer.

What would have woken the sleep (the poll loop's bell: poll now, a new interval, the stop)
calls the request off while it is not yet sent (``call_off``): the read raises
:class:`CalledOff`, nothing went out, and the poll loop does what the bell asked. Once sent,
the request is a poll like any other and runs to its answer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["CalledOff", "Due", "at_instant"]


class CalledOff(Exception):  # not an error: the poll loop's bell rang first
    """A read scheduled for a later instant was called off before its request was sent."""


class Due:
    """When a poll's first request is to go out, and how its holder calls it off.

    One per poll loop, reused poll after poll: ``when`` is set for each poll, and the
    transport that takes the request says how to call it off (``hold``)."""

    __slots__ = ("_entry", "_off", "when")

    def __init__(self) -> None:
        self.when = 0.0  # on the event loop's clock
        self._off: Callable[[Any], None] | None = None
        self._entry: object = None

    def hold(self, off: Callable[[Any], None], entry: object) -> None:
        """The transport holds the request as ``entry``; ``off(entry)`` calls it off (and
        does nothing once it is sent)."""
        self._off = off
        self._entry = entry

    def release(self) -> None:
        """The read is over (answered, failed or called off): nothing is held any more."""
        self._off = None
        self._entry = None

    def call_off(self) -> None:
        """Call the request off if it is not yet sent: its read raises ``CalledOff``."""
        off, entry = self._off, self._entry
        if off is not None:
            self.release()
            off(entry)


class _Instants:
    """One timer for everything due at one instant on one event loop, not one a user: the
    links that hold requests until a tick, and the poll loops that sleep to it
    (``tepi.gateway.pacing.Bell``), across every device and address of a poll grid."""

    __slots__ = ("due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[float, list[Callable[[float], None]]] = {}

    def add(self, when: float, callback: Callable[[float], None]) -> None:
        callbacks = self.due.get(when)
        if callbacks is None:
            callbacks = self.due[when] = []
            self.loop.call_at(when, self._ring, when)
        callbacks.append(callback)

    def _ring(self, when: float) -> None:
        for callback in self.due.pop(when, ()):
            try:
                callback(when)
            except Exception as err:  # noqa: BLE001 - one user's bug must not strand the others
                self.loop.call_exception_handler(
                    {"message": "a callback at an instant failed", "exception": err}
                )


_INSTANTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Instants] = (
    weakref.WeakKeyDictionary()
)


def at_instant(
    loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[float], None]
) -> None:
    """Call ``callback(when)`` when ``loop``'s clock reaches ``when``, from the one timer of
    that instant (see :class:`_Instants`). Register once an instant: there is no cancel."""
    instants = _INSTANTS.get(loop)
    if instants is None:
        instants = _INSTANTS[loop] = _Instants(loop)
    instants.add(when, callback)
