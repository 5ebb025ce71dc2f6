"""The composite Med-CAM loss: one small pure, batched function per term, and their weighted sum.

Notation: ``x`` the normalized image, ``m ∈ [0,1]^{H×W}`` the mask, ``b`` the baseline,
``x̃ = m⊙x + (1−m)⊙b`` the kept view, ``x̄ = (1−m)⊙x + m⊙b`` the removed view (see
:mod:`medcam_fast.method.masking`), ``z(·)`` the frozen classifier's logits, ``p = softmax(z)``, ``A_l(·)`` its
activation at layer ``l``, and ``c`` the target class. Every term returns one value per image ``[B]``;

    L = w_act·L_act + w_kl·L_kl + w_ce·L_ce + w_area·L_area + w_bin·L_bin + w_tv·L_tv
        + w_rob·L_rob + w_nec·L_nec

is :func:`composite_loss`, with the weights in :class:`LossWeights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._config import Config
from ..types import Classifier
from .masking import RandomSource, keep, perturb, remove

__all__ = [
    "LossWeights",
    "TERMS",
    "activation_matching",
    "kl_divergence",
    "cross_entropy",
    "area",
    "binarization",
    "total_variation",
    "robustness",
    "necessity",
    "composite_loss",
    "Reference",
]

#: Names of the terms, in the order they are reported.
TERMS = ("act", "kl", "ce", "area", "bin", "tv", "rob", "nec")

_EPS = 1e-8


@dataclass(frozen=True)
class LossWeights(Config):
    """Weights ``w_k`` of the composite loss and the robustness settings.

    The defaults were tuned on the four shared MedMNIST sets with ``medcam-fast bench per-image``
    (see the README, "How the default weights were chosen").

    Args:
        act: activation matching ``L_act``.
        kl: ``KL(p(x) ‖ p(x̃))``.
        ce: cross-entropy of the kept view for the target class.
        area: mean mask value (smaller evidence).
        bin: binarization ``m(1−m)`` (masks toward 0/1).
        tv: total variation (compact, smooth masks).
        rob: cross-entropy of perturbed kept views (the decision survives noise, shifts, flips).
        nec: necessity, ``−log(1 − p_c(x̄))`` (removing the evidence removes the decision).
        draws: perturbation draws per step for ``rob``.
        noise: σ of the Gaussian noise of a draw (normalized units).
        shift: largest shift of a draw, in pixels.
        flip: whether draws may flip horizontally.
    """

    act: float = 0.5
    kl: float = 0.5
    ce: float = 1.0
    area: float = 2.0
    bin: float = 0.5
    tv: float = 0.5
    rob: float = 0.5
    nec: float = 1.0
    draws: int = 1
    noise: float = 0.1
    shift: int = 2
    flip: bool = True


def activation_matching(acts: Mapping[str, Tensor], ref: Mapping[str, Tensor]) -> Tensor:
    """``L_act = (1/|𝓛|) Σ_l ‖A_l(x̃) − A_l(x)‖² / (‖A_l(x)‖² + ε)`` per image.

    Args:
        acts: activations of the kept view, layer name → ``[B, ...]``.
        ref: activations of the original image at the same layers.
    """
    if not ref:
        raise ValueError("activation matching needs at least one layer")
    terms = []
    for name, a_ref in ref.items():
        a = acts[name]
        num = (a - a_ref).flatten(1).pow(2).sum(1)
        den = a_ref.flatten(1).pow(2).sum(1) + _EPS
        terms.append(num / den)
    return torch.stack(terms).mean(0)


def kl_divergence(logits_ref: Tensor, logits: Tensor) -> Tensor:
    """``L_kl = KL(p(x) ‖ p(x̃)) = Σ_k p_k(x) (log p_k(x) − log p_k(x̃))`` per image."""
    logp_ref = F.log_softmax(logits_ref, dim=-1)
    logp = F.log_softmax(logits, dim=-1)
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``L_ce = −log p_c(x̃)`` per image."""
    return F.cross_entropy(logits, target, reduction="none")


def area(m: Tensor) -> Tensor:
    """``L_area = (1/HW) Σ_ij m_ij`` — the fraction of the image kept."""
    return m.flatten(1).mean(1)


def binarization(m: Tensor) -> Tensor:
    """``L_bin = (4/HW) Σ_ij m_ij (1 − m_ij)`` — 0 for a binary mask, 1 for ``m ≡ ½``."""
    return 4 * (m * (1 - m)).flatten(1).mean(1)


def total_variation(m: Tensor) -> Tensor:
    """Anisotropic ``L_tv = (1/HW) Σ_ij (|m_{i+1,j} − m_ij| + |m_{i,j+1} − m_ij|)``."""
    dh = (m[..., 1:, :] - m[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (m[..., :, 1:] - m[..., :, :-1]).abs().flatten(1).sum(1)
    return (dh + dw) / (m.shape[-1] * m.shape[-2])


def robustness(logits_perturbed: Tensor, target: Tensor, draws: int) -> Tensor:
    """``L_rob = E_T[−log p_c(T(x̃))]``, the mean over ``draws`` random perturbations ``T``.

    Args:
        logits_perturbed: logits of the perturbed kept views, ``[draws·B, K]``, draw-major.
        target: target class ``[B]``.
        draws: number of draws stacked in ``logits_perturbed``.
    """
    ce = F.cross_entropy(logits_perturbed, target.repeat(draws), reduction="none")
    return ce.view(draws, -1).mean(0)


def necessity(logits_removed: Tensor, target: Tensor) -> Tensor:
    """``L_nec = −log(1 − p_c(x̄))``: small when the removed view no longer shows class ``c``.

    Computed stably as ``logsumexp_k z_k − logsumexp_{k≠c} z_k``.
    """
    others = logits_removed.scatter(1, target[:, None], float("-inf"))
    return torch.logsumexp(logits_removed, 1) - torch.logsumexp(others, 1)


class Reference(NamedTuple):
    """What the classifier says about the original images, computed once per image.

    Args:
        logits: ``z(x)`` ``[B, K]``.
        activations: ``A_l(x)`` per layer.
    """

    logits: Tensor
    activations: dict[str, Tensor]



def composite_loss(
    classifier: Classifier,
    x: Tensor,
    m: Tensor,
    target: Tensor,
    reference: Reference,
    baseline: Tensor,
    weights: LossWeights = LossWeights(),
    generator: RandomSource = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum ``L`` of all terms, per image.

    The kept view, the removed view and the ``draws`` perturbed kept views go through the classifier in
    one batched call.

    Args:
        classifier: maps images to ``(logits, activations)``, e.g. a
            :class:`~medcam_fast.classifiers.frozen.FrozenClassifier`.
        x: normalized images ``[B,C,H,W]``.
        m: masks ``[B,1,H,W]`` in [0,1] (soft or straight-through).
        target: target class per image ``[B]``.
        reference: the classifier's output on ``x`` (:class:`Reference`), computed once.
        baseline: ``b``, same shape as ``x`` (:func:`~medcam_fast.method.masking.make_baseline`).
        weights: the term weights.
        generator: random source of the perturbations (one, or one per image).

    Returns:
        ``(total, terms)``: total loss ``[B]`` and each unweighted term ``[B]`` by name (:data:`TERMS`).
    """
    b = x.shape[0]
    kept = keep(x, m, baseline)
    views = [kept, remove(x, m, baseline)]
    draws = weights.draws if weights.rob > 0 else 0
    for _ in range(draws):
        views.append(perturb(kept, weights.noise, weights.shift, weights.flip, generator))
    logits, acts = classifier(torch.cat(views))
    acts_kept = {k: v[:b] for k, v in acts.items()}
    z_kept, z_removed = logits[:b], logits[b : 2 * b]
    terms = {
        "act": activation_matching(acts_kept, reference.activations),
        "kl": kl_divergence(reference.logits, z_kept),
        "ce": cross_entropy(z_kept, target),
        "area": area(m),
        "bin": binarization(m),
        "tv": total_variation(m),
        "rob": robustness(logits[2 * b :], target, draws) if draws else torch.zeros_like(z_kept[:, 0]),
        "nec": necessity(z_removed, target),
    }
    w = weights.to_dict()
    total = sum(w[k] * v for k, v in terms.items())
    return total, terms
