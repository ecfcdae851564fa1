"""Run a module under cProfile, profiling only between SIGUSR2s: the bench's window.

    python bench/profiled.py [--clock wall|cpu] -o FILE -m MODULE [ARGS...]

Like ``python -m cProfile -o FILE -m MODULE ARGS``, except that the profiler starts off: the
first SIGUSR2 turns it on, the next one off, and so on. So the stats cover the window that
bench/suite.py measures, not the start-up (importing, parsing the config) or the shutdown.
They are written to FILE when the module returns or exits (SIGTERM makes ``tepi run``
return).

``--clock wall`` (the default) is cProfile's own clock: the event loop's wait in ``epoll``
counts as that call's time, and so does a wait for a core on a busy machine. ``--clock cpu``
times functions by the thread's CPU time, so waiting does not count; it costs more (the
agent ran 3 times slower under it, against 2 times with ``wall``).

As with cProfile, only the main thread is profiled: for the agent that is the event loop,
where the polls, the decoding, the buffer's ``put`` and the uplink run; not the buffer's
writer thread. The agent's code is not changed.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

# cProfile's timer: its default (the wall clock), or the main thread's CPU time.
CLOCKS: dict[str, Callable[[], float] | None] = {"wall": None, "cpu": time.thread_time}


def main() -> None:
    args = sys.argv[1:]
    clock = "wall"
    if args[:1] == ["--clock"] and len(args) > 1:
        clock, args = args[1], args[2:]
    if len(args) < 4 or args[0] != "-o" or args[2] != "-m" or clock not in CLOCKS:
        sys.exit("usage: profiled.py [--clock cpu|wall] -o FILE -m MODULE [ARGS...]")
    out, module, rest = args[1], args[3], args[4:]
    sys.argv = [module, *rest]
    sys.path[0] = str(Path.cwd())  # as with ``python -m``: the working directory, not bench/
    timer = CLOCKS[clock]
    profiler = cProfile.Profile() if timer is None else cProfile.Profile(timer)
    on = False

    def toggle(_sig: int, _frame: FrameType | None) -> None:
        nonlocal on
        if on:
            profiler.disable()
        else:
            profiler.enable()
        on = not on

    signal.signal(signal.SIGUSR2, toggle)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
