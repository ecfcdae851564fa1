"""asyncio's TaskGroup, with the cancellation count it leaves behind on Python 3.11 put back.

When a child of a ``TaskGroup`` fails while the task that opened the group already waits in
its ``async with`` exit (the usual case: the body only starts the children), the group
cancels that task to wake it, and Python 3.11 (Debian 12 and Raspberry Pi OS bookworm ship
3.11.2) never takes that request back: ``Task.cancelling()`` stays at 1 after the group has
raised its ``ExceptionGroup``. The task goes on (a long-lived loop that catches the group:
the uplink's sessions), and from then on every ``asyncio.timeout`` in it that expires raises
``CancelledError`` instead of ``TimeoutError`` (3.11.2's timeout converts only when no other
cancellation is counted), which ends the task as if it had been stopped: silently, since a
TaskGroup takes a cancelled child for a stopped one. Seen as an uplink that never
reconnected after a lost link once its connect's timeout fired.

:class:`TaskGroup` takes its own request back once the group is done, as Python 3.12 does.
A cancellation that came from outside (a stop) is counted apart and stays. Python 3.12
converts a timeout whatever was counted before it began; this class changes nothing there.
"""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import Any

__all__ = ["TaskGroup", "cancel_and_wait"]


class TaskGroup(asyncio.TaskGroup):
    """``asyncio.TaskGroup`` that takes back the cancellation it asked of its task while
    that task waited in its exit (Python 3.11 does not; later versions need nothing)."""

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # 3.11's exit takes a request back only if it was made before the exit began.
        asked_before = getattr(self, "_parent_cancel_requested", True)
        try:
            await super().__aexit__(et, exc, tb)
        finally:
            task: asyncio.Task[object] | None = getattr(self, "_parent_task", None)
            if (
                _LEAVES_A_CANCEL
                and task is not None
                and not asked_before
                and getattr(self, "_parent_cancel_requested", False)
                and task.cancelling() > 0
            ):
                task.uncancel()


_LEAVES_A_CANCEL = sys.version_info < (3, 12)


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended. A cancellation of the caller while it
    waits goes on up (``suppress(CancelledError)`` around the await would take it for the
    task's own and swallow it: a stop lost in a reload that was stopping a device)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
