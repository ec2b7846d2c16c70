"""How much of the CPU a process actually got while it was ready to run.

Linux keeps, for every thread, the time it spent running and the time it spent runnable but
waiting for a core (/proc/self/task/*/schedstat: run ns, wait ns, timeslices). Their ratio over
an interval is the share of the CPU the process got of what it asked for: about 1 on an idle
machine, about 1/(k+1) when k busy programs compete for the same core. Time spent sleeping
(waiting for a GPU, for I/O) counts as neither, so the share says nothing about how busy the
process was, only whether others kept it from running.

Guarantees: `CpuShareMeter.stop()` returns the share in [0, 1] over the interval since
`start()`, or None where the system does not say (not Linux, /proc hidden, nothing ran).
Threads that start during the interval count from zero; threads that end during it are lost
(their time is missing from both sides of the ratio).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CpuShareMeter", "thread_schedstats"]

_TASKS = Path("/proc/self/task")


def thread_schedstats() -> dict[int, tuple[int, int]] | None:
    """(run ns, wait ns) of each of this process's threads, or None where /proc lacks them."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    stats: dict[int, tuple[int, int]] = {}
    for tid in tids:
        try:
            fields = (_TASKS / tid / "schedstat").read_text().split()
            stats[int(tid)] = (int(fields[0]), int(fields[1]))
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we looked
    return stats or None


class CpuShareMeter:
    """Measure this process's CPU share between `start()` and `stop()`."""

    def __init__(self) -> None:
        self._start: dict[int, tuple[int, int]] | None = None

    def start(self) -> None:
        self._start = thread_schedstats()

    def stop(self) -> float | None:
        begin, end = self._start, thread_schedstats()
        if begin is None or end is None:
            return None
        ran = waited = 0
        for tid, (run_ns, wait_ns) in end.items():
            run0, wait0 = begin.get(tid, (0, 0))
            ran += max(run_ns - run0, 0)
            waited += max(wait_ns - wait0, 0)
        if ran + waited <= 0:
            return None
        return ran / (ran + waited)
