"""Meta-training on several processes: data-parallel, with torch.distributed (gloo on CPU).

``meta_train(..., workers=N)`` starts N processes (``torch.multiprocessing``, spawn). Each builds the same
network from the same seed and draws the same global meta-batch for every outer step (sampling depends only
on ``(seed, step)``); rank ``r`` computes the outer objective on its contiguous share ``B/N`` of the batch, and
the gradients of the shared parameters θ (and Meta-SGD's step sizes) are averaged over the ranks with one
``all_reduce`` before every Adam step — the arithmetic of ``torch.nn.parallel.DistributedDataParallel``, done
by hand because θ is a functional parameter dict (``torch.func``), not a module's parameters. Every rank thus
applies the same update to the same θ; rank 0 alone writes checkpoints and the bundle.

Why it equals one process: the outer objective is a mean over the batch's images of per-image terms (the
composite loss, the K-step loss, the independence term), each image's robustness draws come from its own
generator seeded by ``(seed, step, position in the batch)``, and the frozen classifier and the decoder act
per image (eval-mode BatchNorm, GroupNorm). So the averaged gradient is the single-process gradient up to
float summation order (``tests/explainer/test_distributed.py`` bounds the difference). Checkpoints hold θ,
Adam's state and the step, not N: a run resumes with another number of processes.

Why not Ray Train: its TorchTrainer sets up the same gloo process group, but adds Ray (and its object store and
a cluster) to a command that runs on one machine; ``torch.multiprocessing`` needs nothing beyond torch.
NCCL on GPUs: ``meta_train`` computes on the CPU, so the backend here is gloo only.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from ..errors import DataError, MedCamError, ModelError, UsageError

if TYPE_CHECKING:
    from ..classifiers.frozen import ClassifierBundle
    from .bundle import ExplainerBundle

__all__ = ["World", "meta_train_parallel"]

#: How long a rank waits for the others at a collective before the run fails (a rank that died).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` training processes (a joined gloo process group).

    Args:
        rank: this process, 0 … size − 1; rank 0 writes checkpoints and the bundle.
        size: the number of processes.
    """

    rank: int
    size: int

    @property
    def root(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of a meta-batch of ``n`` images.

        Raises:
            UsageError: ``n`` is not a multiple of the number of processes (shares of unequal size would
                weight the images unequally in the averaged gradient).
        """
        if n % self.size:
            raise UsageError(f"a meta-batch of {n} images cannot be split evenly over {self.size} processes: "
                             "choose --meta-batch as a multiple of --workers")
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k)

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one ``all_reduce`` of all of them);
        a missing gradient counts as zeros."""
        ps = list(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(ps, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def mean_log(self, log: dict[str, float]) -> dict[str, float]:
        """The logged values averaged over the ranks: the global batch's means, as one process logs them."""
        keys = sorted(log)
        values = torch.tensor([float(log[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: float(v) / self.size for k, v in zip(keys, values.tolist(), strict=True)}

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (so that every rank stops at the same step)."""
        t = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, size: int, port: int, threads: int, messages: Any, result_dir: str,
            job: dict[str, Any]) -> None:
    """One training process: join the group, train its share (``job["train"]``: ``meta_train``, passed in
    so that this module does not import its caller), rank 0 saves the bundle to ``result_dir``."""
    from .bundle import save_explainer

    torch.set_num_threads(threads)
    joined = False
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                                timeout=TIMEOUT)
        joined = True
        report = (lambda step, log: messages.put(("step", step, log))) if rank == 0 else None
        bundle = job["train"](job["classifier"], job["images"], job["config"], out_dir=job["out_dir"],
                            resume=job["resume"], callback=report, stop_after=job["stop_after"],
                            time_budget=job["time_budget"], init=job["init"], world=World(rank, size))
        if rank == 0:
            save_explainer(bundle, result_dir)
            messages.put(("done",))
        # Every rank reaches this point before any tears its group down: a rank that destroyed its group and
        # exited while another still used it died now and then in gloo's teardown ("terminate called
        # without an active exception", SIGABRT: 1 of 30 runs of 2 processes before, 0 of 180 after).
        dist.barrier()
    except MedCamError as e:
        messages.put(("error", type(e).__name__, e.cause, e.path))
    finally:
        if joined:
            dist.destroy_process_group()


_ERRORS: dict[str, type[MedCamError]] = {c.__name__: c for c in (UsageError, DataError, ModelError, MedCamError)}


def meta_train_parallel(
    train: Callable[..., ExplainerBundle],
    workers: int,
    classifier: ClassifierBundle,
    images: np.ndarray,
    config: Any,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    time_budget: float | None = None,
    init: ExplainerBundle | None = None,
) -> ExplainerBundle:
    """``train`` (:func:`~medcam_fast.explainer.meta.meta_train`) on ``workers`` processes (module docstring);
    its arguments (``config``: a :class:`~medcam_fast.explainer.meta.MetaConfig`) and its result. ``callback`` runs in this process with rank 0's steps (logged values averaged over
    the ranks). Each process uses ``torch.get_num_threads() // workers`` threads (at least 1).

    Raises:
        UsageError: ``workers < 2``, or a meta-batch that is not a multiple of ``workers``; the first
            medcam-fast error any process raised (the others are stopped).
    """
    if workers < 2:
        raise UsageError(f"parallel meta-training needs at least 2 processes, got {workers}")
    if config.meta_batch % workers or min(config.meta_batch, len(images)) % workers:
        raise UsageError(f"--meta-batch {config.meta_batch} cannot be split evenly over {workers} processes (with "
                         f"{len(images)} images): choose a multiple of --workers")
    ctx = mp.get_context("spawn")
    messages = ctx.SimpleQueue()
    threads = max(1, torch.get_num_threads() // workers)
    job = {"train": train, "classifier": classifier, "images": images, "config": config, "out_dir": out_dir, "resume": resume,
           "stop_after": stop_after, "time_budget": time_budget, "init": init}
    from .bundle import load_explainer

    with tempfile.TemporaryDirectory(prefix="medcam-ddp-") as result_dir:
        procs = mp.start_processes(_worker, args=(workers, _free_port(), threads, messages, result_dir, job),
                                   nprocs=workers, join=False, start_method="spawn")
        error: MedCamError | None = None
        finished = False
        while not finished:
            finished = procs.join(timeout=0.2)
            while not messages.empty():
                message = messages.get()
                if message[0] == "step" and callback is not None:
                    callback(message[1], message[2])
                elif message[0] == "error" and error is None:
                    error = _ERRORS.get(message[1], MedCamError)(message[2], message[3])
            if error is not None:  # the other ranks wait at a collective: stop them
                for p in procs.processes:
                    if p.is_alive():
                        p.terminate()
                    p.join()
                raise error
        return load_explainer(result_dir)

