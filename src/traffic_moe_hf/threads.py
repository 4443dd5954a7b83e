"""How many CPU threads a command that runs a model gives torch (``--threads N``; issue 28, item 2).

torch starts one intra-op thread per core. Beside another CPU-bound process (tcpdump or Zeek on a sensor, a
training job) that oversubscribes the cores: its OpenMP threads wait for each other at every operator and
the one that lost its core stalls the rest. On a 2-core machine beside one busy process ``predict`` ran at
45 flows/s with torch's default against 298 with one thread. The default here is therefore the number of
cores not already busy (at least one): the cores this process may run on less the cores other processes keep
busy *now*, read from ``/proc/stat`` over a short window (0.15 s) for this process's cores; where that file
is missing (not Linux), less the 1-minute load average. On an idle machine that is every core, as before.
The load average alone lagged: right after one busy minute (a previous command, a finished test) it still
read ~1 on an idle 2-core machine, and predict ran on one thread at 0.6x of what two gave. ``OMP_NUM_THREADS`` set in the environment is honoured
as torch honours it (no ``--threads``: left alone). ``benchmarks/efficiency/busy_sensor.py`` measures it.
A long command (the demo, minutes of training) takes the default again before each stage
(:func:`refresh_threads`): one busy moment in the sample at its start once held a whole 10-minute demo to one
thread of two. This process's own CPU time in the window is not counted as another's.

A leaf module: no project imports.
"""

from __future__ import annotations

import os

#: whether :func:`apply_threads` chose the number itself (no ``--threads``, no ``OMP_NUM_THREADS`` of the user's)
_defaulted = False


def _affinity() -> set[int] | None:
    """The cores this process may run on (a container's or ``taskset``'s limit); None where not known."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else all."""
    cpus = _affinity()
    return (len(cpus) or 1) if cpus is not None else (os.cpu_count() or 1)


def _cpu_times(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over ``cpus`` (all when None) from ``/proc/stat``; None where unreadable."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    seen = False
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        # busy: all but idle and iowait. Niced work counts: it still takes time slices, and an OpenMP thread
        # preempted by it stalls the others (measured: 2 threads beside two niced jobs ran slower than 1)
        all_time = sum(fields)
        busy += all_time - fields[3] - (fields[4] if len(fields) > 4 else 0)
        total += all_time
        seen = True
    return (busy, total) if seen else None


def busy_cores(window: float = 0.15) -> float | None:
    """How many of this process's cores other processes keep busy now: the busy share of their CPU time over
    ``window`` seconds (from ``/proc/stat``; niced work counts too) times their number. None where
    ``/proc/stat`` is unreadable."""
    import time

    cpus = _affinity()
    first, own = _cpu_times(cpus), _own_jiffies()
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_times(cpus)
    if second is None or second[1] <= first[1]:
        return None
    # less this process's own work in the window (its OpenMP threads still spinning after a stage of the demo)
    busy = max(0.0, second[0] - first[0] - (_own_jiffies() - own))
    return busy / (second[1] - first[1]) * usable_cores()


def _own_jiffies() -> float:
    """This process's CPU time (user + system, all threads) in ``/proc/stat``'s unit (clock ticks)."""
    t = os.times()
    try:
        ticks = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        ticks = 100
    return (t.user + t.system) * ticks


def default_threads() -> int:
    """The usable cores not busy now (:func:`busy_cores`; the 1-minute load average where that cannot be
    read), at least 1."""
    cores = usable_cores()
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def apply_threads(threads: int | None) -> int | None:
    """``torch.set_num_threads`` to ``threads``, or to :func:`default_threads` when None and the environment
    sets no ``OMP_NUM_THREADS``; also ``OMP_NUM_THREADS`` for child processes. Returns the number set (None: left
    to torch and the environment)."""
    global _defaulted
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            _defaulted = False
            return None
        threads = default_threads()
        _defaulted = True
    else:
        _defaulted = False
    return _set(int(threads))


def _set(threads: int) -> int:
    """``torch.set_num_threads``, and ``OMP_NUM_THREADS`` for child processes (bench's workers)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def refresh_threads() -> int | None:
    """Before each stage of a long command: the default taken again (:func:`default_threads`) where
    :func:`apply_threads` chose it (no ``--threads``, no ``OMP_NUM_THREADS`` of the user's). Returns the number
    set (None: the user's choice, left alone)."""
    return _set(default_threads()) if _defaulted else None
