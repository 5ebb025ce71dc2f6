"""Typed results shared by the per-image fit, refinement and the explainer API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .masking import keep, remove

__all__ = ["Verification", "MaskResult", "verify"]


@dataclass(frozen=True)
class Verification:
    """What the classifier says about the binary evidence, per image (all tensors ``[B]``).

    Args:
        predicted: the classifier's class for the original image.
        target: the class explained.
        original: ``p_c(x)``.
        masked: ``p_c(x̃)`` with the binary mask (evidence kept alone).
        complement: ``p_c(x̄)`` with the binary mask (evidence removed).
        area: fraction of pixels in the binary mask.
    """

    predicted: Tensor
    target: Tensor
    original: Tensor
    masked: Tensor
    complement: Tensor
    area: Tensor


@torch.no_grad()
def verify(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    binary: Tensor,
    target: Tensor,
    baseline: Tensor,
    original_logits: Tensor | None = None,
) -> Verification:
    """Check a binary mask against the classifier.

    Args:
        logits_fn: images → logits (e.g. ``FrozenClassifier.logits``).
        x: normalized images ``[B,C,H,W]``.
        binary: binary masks ``[B,H,W]`` or ``[B,1,H,W]`` (bool or 0/1).
        target: class explained per image ``[B]``.
        baseline: the baseline image ``b`` used for removed pixels.
        original_logits: ``z(x)`` when already computed (saves one forward pass).
    """
    m = binary.reshape(x.shape[0], 1, *x.shape[-2:]).to(x.dtype)
    b = x.shape[0]
    if original_logits is None:
        logits = logits_fn(torch.cat([x, keep(x, m, baseline), remove(x, m, baseline)]))
        z0, z1, z2 = logits[:b], logits[b : 2 * b], logits[2 * b :]
    else:
        logits = logits_fn(torch.cat([keep(x, m, baseline), remove(x, m, baseline)]))
        z0, z1, z2 = original_logits, logits[:b], logits[b:]
    idx = target[:, None]
    return Verification(
        predicted=z0.argmax(1),
        target=target,
        original=z0.softmax(1).gather(1, idx)[:, 0],
        masked=z1.softmax(1).gather(1, idx)[:, 0],
        complement=z2.softmax(1).gather(1, idx)[:, 0],
        area=m.flatten(1).mean(1),
    )


@dataclass
class MaskResult:
    """Masks for a batch and how they were obtained.

    Args:
        soft: soft masks ``m`` ``[B,H,W]`` in [0,1].
        binary: binary masks ``m > 0.5`` ``[B,H,W]`` (bool).
        logits: mask logits ``u`` ``[B,H,W]``.
        verification: the classifier's verdict on the binary masks.
        terms: final value of every loss term per image (name → ``[B]``), soft mask.
        loss: final composite loss per image ``[B]`` (soft mask).
        steps: optimization steps taken.
        seconds: wall time for the whole batch.
        trace: per-step loss terms (name → ``[steps, B]``) when recorded.
    """

    soft: Tensor
    binary: Tensor
    logits: Tensor
    verification: Verification
    terms: dict[str, Tensor]
    loss: Tensor
    steps: int
    seconds: float
    trace: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.soft.shape[0]
