"""Typed results shared by the per-image fit, refinement and the explainer API."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Verification", "MaskResult"]


@dataclass(frozen=True)
class Verification:
    """What the classifier says about the binary evidence, per image (all tensors ``[B]``).

    Args:
        predicted: the classifier's class for the original image.
        target: the class explained.
        p_original: ``p_c(x)``.
        p_kept: ``p_c(x̃)`` with the binary mask (the evidence kept alone).
        p_removed: ``p_c(x̄)`` with the binary mask (the evidence removed).
        area: fraction of pixels in the binary mask.

    The same four names are used everywhere a verdict appears: :class:`~medcam_fast.explain.Explanation`,
    per-image JSON, ``summary.csv``, the combined ONNX graph's outputs and the README.
    """

    predicted: Tensor
    target: Tensor
    p_original: Tensor
    p_kept: Tensor
    p_removed: Tensor
    area: Tensor

    @classmethod
    def from_terms(cls, original_logits: Tensor, target: Tensor, terms: dict[str, Tensor]) -> Verification:
        """Read the verdict off the loss terms of the **binary** mask, which already hold it exactly:
        ``p_c(x̃) = exp(−L_ce)``, ``p_c(x̄) = 1 − exp(−L_nec)``, area ``= L_area`` — no extra classifier call.

        Args:
            original_logits: ``z(x)`` ``[B, K]``.
            target: class explained per image ``[B]``.
            terms: :func:`~medcam_fast.method.losses.composite_loss` terms evaluated with the binary mask.
        """
        return cls(
            predicted=original_logits.argmax(1),
            target=target,
            p_original=original_logits.softmax(1).gather(1, target[:, None])[:, 0],
            p_kept=torch.exp(-terms["ce"]),
            p_removed=-torch.expm1(-terms["nec"]),
            area=terms["area"],
        )


@dataclass
class MaskResult:
    """Masks for a batch and how they were obtained.

    Args:
        soft: soft masks ``m`` ``[B,H,W]`` in [0,1].
        binary: binary masks ``m > 0.5`` ``[B,H,W]`` (bool).
        logits: mask logits ``u`` ``[B,H,W]``.
        verification: the classifier's verdict on the binary masks.
        terms: every loss term per image (name → ``[B]``) for the binary mask.
        loss: composite loss per image ``[B]`` for the binary mask.
        steps: optimization steps taken.
        seconds: wall time for the whole batch.
        refined: per image ``[B]`` (bool), whether the mask is the optimized one: False at ``steps = 0`` and
            where refinement kept the first guess because its loss was lower (``RefineConfig.keep_best``).
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
    refined: Tensor
    trace: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.soft.shape[0]
