"""What the evaluation harness and the benchmarks share: explaining a batch through the public API, and the
facts of the machine a measurement ran on.

:func:`explain_in_chunks` calls :class:`~medcam_fast.explain.MedCAM` exactly as a user does — a
normalized batch, the classes to explain, optionally the refinement steps of this call — ``batch_size``
images at a time, and times each call with the wall clock (after a CUDA synchronization on a GPU, so the
time is the work's, not the launch's). Each image is charged its chunk's time divided by the chunk's size:
the images of a chunk are explained together, so no finer attribution exists. Everything the
:class:`~medcam_fast.explain.Explanation` reports per image is concatenated over the chunks.

:func:`machine_facts` is the one description of a run's machine in every result file of ``evaluate`` and
``bench``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._version import __version__
from ..explain import MedCAM

__all__ = ["Explained", "explain_in_chunks", "machine_facts", "sync"]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA only), so a wall-clock time covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Explained:
    """A batch explained chunk by chunk (numpy, first axis = image; see :class:`~medcam_fast.explain.Explanation`).

    Args:
        logits: mask logits ``u`` ``[N,H,W]`` (float32): the saliency of medcam-fast's methods.
        binary: binary evidence masks ``[N,H,W]`` (bool).
        predicted: the classifier's class ``[N]``.
        target: the class explained ``[N]``.
        p_original: ``p_target(x)`` ``[N]``.
        p_kept: ``p_target`` with only the binary evidence kept ``[N]``.
        p_removed: ``p_target`` with the binary evidence removed ``[N]``.
        area: fraction of the image in the binary mask ``[N]``.
        loss: composite loss of the binary mask ``[N]``.
        seconds: wall seconds charged to each image ``[N]`` (its chunk's time over the chunk's size).
    """

    logits: np.ndarray
    binary: np.ndarray
    predicted: np.ndarray
    target: np.ndarray
    p_original: np.ndarray
    p_kept: np.ndarray
    p_removed: np.ndarray
    area: np.ndarray
    loss: np.ndarray
    seconds: np.ndarray

    def __len__(self) -> int:
        return int(self.logits.shape[0])


_FIELDS = ("logits", "binary", "predicted", "target", "p_original", "p_kept", "p_removed", "area", "loss")


def explain_in_chunks(
    medcam: MedCAM,
    x: Tensor,
    targets: Tensor | np.ndarray | Sequence[int] | None = None,
    *,
    batch_size: int,
    refine_steps: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> Explained:
    """Explain ``x`` with ``medcam``, ``batch_size`` images per call, each call timed.

    Args:
        medcam: the explainer as a user builds it.
        x: normalized images ``[N,C,H,W]``.
        targets: the class to explain per image ``[N]``; None explains the predicted class.
        batch_size: images per call.
        refine_steps: optimization steps of every call (None: the instance's).
        on_chunk: called after each chunk with (images done, images in all, the chunk's seconds per image).

    Raises:
        ValueError: ``batch_size < 1`` or an empty batch.
    """
    if batch_size < 1 or x.shape[0] == 0:
        raise ValueError(f"need a positive batch size and at least one image, got {batch_size} and {x.shape[0]}")
    t = None if targets is None else np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
    parts: dict[str, list[np.ndarray]] = {f: [] for f in _FIELDS}
    seconds: list[float] = []
    for s in range(0, x.shape[0], batch_size):
        xs = x[s : s + batch_size]
        sync(xs.device)
        start = time.perf_counter()
        ex = medcam(xs, targets=None if t is None else t[s : s + batch_size], refine_steps=refine_steps)
        sync(xs.device)
        seconds += [(time.perf_counter() - start) / len(xs)] * len(xs)
        if on_chunk is not None:
            on_chunk(len(seconds), x.shape[0], seconds[-1])
        for f in _FIELDS:
            parts[f].append(np.asarray(getattr(ex, f)))
    cat = {f: np.concatenate(v) for f, v in parts.items()}
    cat["logits"] = cat["logits"].astype(np.float32)
    cat["binary"] = cat["binary"].astype(bool)
    return Explained(**cat, seconds=np.asarray(seconds))


def machine_facts(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a measurement ran: versions, platform, CPU count, torch threads, device (and the GPU's or CPU's
    name), date."""
    dev = torch.device(device)
    facts: dict[str, Any] = {
        "medcam_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "date": time.strftime("%Y-%m-%d"),
    }
    if dev.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(dev)
    else:
        facts["cpu"] = platform.processor() or platform.machine()
    return facts
