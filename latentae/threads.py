"""How many threads torch's CPU operators use: the cores free now, not every core.

An operator split over more threads than there are free cores waits at each of its barriers for the thread whose
core another process holds, and OpenMP's threads spin while they wait. On 2 cores shared with two busy
single-threaded processes the quickstart's training ran 1.08 it/s on 2 threads against 1.87 on 1; idle, 2 threads
are the faster (BENCHMARKS.md, "Threads on a shared machine"). So the default is the CPUs this process may use
(its affinity) less those other processes keep busy, measured over a short window of /proc/stat, split between
the processes of this machine's launch; never more than torch's default, never fewer than 1. The count is chosen
once per process, when its first model is placed (latentae.runtime.resolve): a load that comes later is not
followed.

The `latentae` command and train/train.py choose so (`follow_free_cpus`); a program that imports latentae keeps
the count it set. With OMP_NUM_THREADS set (as a distributed launch sets it) torch's count is kept; else
`LATENTAE_THREADS=N` fixes it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV = "LATENTAE_THREADS"
WINDOW_S = 0.1  # long enough for 10 clock ticks per CPU, short enough to go unnoticed at start

_chosen: list[int] = []  # this process's choice, once made
_follow: list[bool] = []  # set by follow_free_cpus


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _ticks(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of `cpus` since boot, from /proc/stat; None where it cannot be read."""
    busy = total = 0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{i}" for i in cpus}
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cpus(cpus: list[int], window: float = WINDOW_S) -> float:
    """How many of `cpus` other processes kept busy during `window` seconds (this one sleeps through it)."""
    before = _ticks(cpus)
    time.sleep(window)
    after = _ticks(cpus)
    if before is None or after is None or after[1] == before[1]:
        return 0.0
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def choose(current: int) -> tuple[int, str]:
    """The thread count for this process and why; `current` is torch's count now."""
    if os.environ.get("OMP_NUM_THREADS"):  # first: a distributed launch sets it per process
        return current, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    fixed = os.environ.get(ENV, "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed), f"{ENV}={fixed}"
    cpus = usable_cpus()
    busy = busy_cpus(cpus)
    launched = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    free = int(len(cpus) - busy + 0.5)
    threads = max(1, min(current, free // launched))
    return threads, f"{len(cpus)} CPUs, {busy:.1f} busy with other processes" + (
        f", {launched} processes of this launch" if launched > 1 else "")


def follow_free_cpus() -> None:
    """Let this process's thread count follow the free CPUs (for entry points, before their first model)."""
    _follow[:] = [True]


def settle() -> int:
    """Torch's thread count, after follow_free_cpus set to `choose`'s at the first call (said on stderr when that
    lowers it); else as the program left it."""
    import torch

    if _follow and not _chosen:
        current = torch.get_num_threads()
        threads, reason = choose(current)
        torch.set_num_threads(threads)
        _chosen.append(threads)
        if threads < current and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"threads: {threads} of {current} ({reason})", file=sys.stderr, flush=True)
    return torch.get_num_threads()
