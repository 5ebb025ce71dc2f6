"""How many CPU threads a run should use on a machine that is not idle.

torch and onnxruntime default to one thread per core. On a server where other processes compute, a
thread beyond the cores actually free waits for the scheduler at every operator: refining 16 small images
took 27 s at 2 threads and 1.1 s at 1 thread beside one CPU-bound process on a 2-core machine. So the
default is the cores this process may use (its affinity) minus the load average, and one thread for small
images, whose operators are too short to share (measured: ``scripts/explain_load.py``).
"""

from __future__ import annotations

import os

__all__ = ["usable_cores", "free_cores", "default_threads", "SMALL_SIDE"]

#: Images up to this side (pixels) are explained with one thread: per-operator work is too small to split.
SMALL_SIDE = 96


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cores() -> int:
    """Usable cores not busy with other work: ``usable − round(1-minute load average)``, at least 1."""
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, usable_cores() - int(round(busy)))


def default_threads(image_side: int | None = None, cap: int = 4) -> int:
    """Threads for torch and onnxruntime: 1 for images of side ≤ :data:`SMALL_SIDE`, else the free cores
    (at most ``cap``)."""
    if image_side is not None and image_side <= SMALL_SIDE:
        return 1
    return max(1, min(cap, free_cores()))
