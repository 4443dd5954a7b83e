"""How many CPU threads a command that runs a model gives torch (``--threads N``; issue 28, item 2).

torch starts one intra-op thread per core. Beside another CPU-bound process (tcpdump or Zeek on a sensor, a
training job) that oversubscribes the cores: its OpenMP threads wait for each other at every operator and
the one that lost its core stalls the rest. On a 2-core machine beside one busy process ``predict`` ran at
45 flows/s with torch's default against 298 with one thread. The default here is therefore the number of
cores not already busy: the cores this process may run on less the 1-minute load average (at least one);
on an idle machine that is every core, as before. ``OMP_NUM_THREADS`` set in the environment is honoured
as torch honours it (no ``--threads``: left alone). ``benchmarks/efficiency/busy_sensor.py`` measures it.

A leaf module: no project imports.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or ``taskset``'s limit), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """The usable cores not busy according to the 1-minute load average, at least 1 (all usable cores where
    the platform has no load average)."""
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def apply_threads(threads: int | None) -> int | None:
    """``torch.set_num_threads`` to ``threads``, or to :func:`default_threads` when None and the environment
    sets no ``OMP_NUM_THREADS``; also ``OMP_NUM_THREADS`` for child processes. Returns the number set (None: left
    to torch and the environment)."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        threads = default_threads()
    import torch

    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = str(int(threads))  # and for child processes (bench's workers)
    return int(threads)
