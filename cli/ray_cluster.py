"""Joining Ray, for ``serve`` and ``explain --engine ray``: one place that knows how this project starts it.

Ray comes with the ``[scale]`` extra (``pip install 'medcam-fast[scale]'``); without it these commands stop
with one line saying so (exit 2), and nothing else in medcam-fast imports Ray.
"""

from __future__ import annotations

import logging
import os

from ..errors import UsageError, one_line

__all__ = ["require_ray", "init_ray"]


def require_ray() -> None:
    """Raise a one-line UsageError unless Ray Serve and Ray Data can be imported."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise UsageError(f"this command needs Ray: pip install 'medcam-fast[scale]' ({one_line(e)})") from None


def init_ray(address: str | None = None, num_cpus: float | None = None) -> bool:
    """Connect to Ray (``address``: ``ray://head:10001``, ``auto``, ``host:6379``) or start a local instance on
    this machine (``num_cpus`` logical CPUs, default this machine's; no dashboard; usage statistics off, so
    nothing leaves the machine; workers at normal priority). Returns whether this call started or joined Ray
    (False: this process had already done so — then ``address`` and ``num_cpus`` are not applied).

    Priority: Ray starts its workers at nice 15 by default, so that its own daemons stay responsive. On a
    machine shared with other work that gives every replica and actor a few percent of a core beside one busy
    process (measured here: the refinement replica answered 1.9 requests/s at nice 15 beside ~8 busy processes,
    where it computes ~25 images/s alone). A local instance started here runs them at nice 0, like the local
    engine (``RAY_worker_niceness``, when set, wins); a cluster keeps its own setting.

    Raises:
        UsageError: Ray is not installed, or the address cannot be reached.
    """
    require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            cpus = None if num_cpus is None else max(1, int(round(num_cpus)))
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot reach Ray: {one_line(e)}", address) from None
    return True
