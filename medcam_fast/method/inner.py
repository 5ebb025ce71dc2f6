"""The inner loops: how one image's mask is adapted in a few steps, shared by meta-training and refinement.

Two loops, each over an :class:`~.objective.Objective` (one batch, every image independent):

* **weights** — ``K`` SGD steps on the U-Net weights from the shared initialization θ, one copy per image
  (the MAML inner loop; learn2learn's ``clone()`` / ``adapt()``):

      θ_i⁰ = θ,   θ_iᵏ⁺¹ = θ_iᵏ − α ⊙ ∇_θ L_i(σ(f_{θ_iᵏ}(x_i, c_i)/τ))

* **logits** — ``K`` Adam steps on the mask logits themselves, from the first guess clipped to ``±c``:

      u⁰ = clip(u_first, ±c),   uᵏ⁺¹ = Adam(uᵏ, ∇_u Σ_i L_i(σ(uᵏ/τ)))

  from step ``⌊hard_after·K⌋`` on, the loss is taken on the straight-through binary mask. With smoothing
  ``σ > 0`` the steps are taken on a change ``δ`` that reaches the logits blurred (``smooth_logits``):

      u = clip(u_first, ±c) + G_σ ∗ δ,   δ⁰ = 0,   δᵏ⁺¹ = Adam(δᵏ, ∇_δ Σ_i L_i(σ(u/τ)))

The defaults of both loops are owned here (:data:`STEP_SIZES`, :data:`START_CLIP`, :data:`HARD_AFTER`);
the configuration dataclasses of meta-training, refinement and the per-image fit refer to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad

from ..types import InnerMode, RefineMode, choice
from .masking import RandomSource, smooth_logits
from .objective import Objective
from .unet import UNet

__all__ = [
    "STEP_SIZES", "START_CLIP", "HARD_AFTER", "InnerLoop", "step_size", "Params", "task_losses", "adapt",
    "adapt_logits",
]

Params = dict[str, Tensor]

#: Default inner step size per loop: SGD on the U-Net weights, Adam on the mask logits. The logits step is
#: 1.0: on the classifier-aware decoder's coarse grid (an amortized breast / pneumonia decoder, 16 test images,
#: median loss at K = 3 / 10) it refines further than 0.3 — breast 1.158 / 1.006 against 1.230 / 1.146,
#: pneumonia 2.842 / 2.813 against 2.881 / 2.850, with smaller masks — as it did on the U-Net's pixel grid
#: (``scripts/inner_lr.py``: loss / best loss 1.000 at 1.0, 1.180 at 0.3). Every shipped explainer was
#: meta-trained with it, so training and refinement use one step.
STEP_SIZES: Mapping[InnerMode, float] = MappingProxyType({InnerMode.WEIGHTS: 0.1, InnerMode.LOGITS: 1.0})

#: The logits loop starts from the first guess clipped to ±START_CLIP: σ(3) = 0.95 keeps a confident first
#: guess a binary mask, but Adam (step 1.0; 0.3 when this was measured) can overturn any logit within a few
#: steps when the classifier's gradient says so — a saturated logit of 16 would need many more. Measured on
#: breast with the U-Net explainer (16 images, K = 10, step 0.3): the loss is unchanged (0.675 clipped, 0.678
#: not) while the refined map's rank correlation with the map refined against a fully randomized classifier
#: falls from 0.94 to 0.58: the classifier has more say.
START_CLIP = 3.0

#: Fraction of the steps after which the straight-through binary mask is optimized (logits loop and the
#: per-image fit), so the optimized mask is the one that is reported.
HARD_AFTER = 0.7


@dataclass(frozen=True)
class InnerLoop:
    """The inner loop an explainer was meta-trained with, as its bundle records it (no defaults: every
    explainer says how it was trained; :class:`~medcam_fast.explainer.meta.MetaConfig` owns the defaults).

    Args:
        steps: K, the adaptation steps used in training (0: amortized training, no inner loop).
        lr: inner step size α (SGD on the U-Net weights, or Adam on the mask logits).
        first_order: whether training ignored second-order terms (first-order MAML).
        mode: what the loop adapted.
        lrs: learned step size per parameter tensor (Meta-SGD, weights loop only), overriding ``lr``.
    """

    steps: int
    lr: float
    first_order: bool
    mode: InnerMode
    lrs: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", choice(InnerMode, self.mode, "inner mode"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary."""
        return {"steps": self.steps, "lr": self.lr, "first_order": self.first_order, "mode": self.mode.value,
                "lrs": None if self.lrs is None else dict(self.lrs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InnerLoop:
        """Inverse of :meth:`to_dict`. Bundles written before the logits loop existed have no ``mode``: their
        loop adapted the weights."""
        return cls(steps=int(d["steps"]), lr=float(d["lr"]), first_order=bool(d["first_order"]),
                   mode=d.get("mode", InnerMode.WEIGHTS), lrs=None if d.get("lrs") is None else {k: float(v) for k, v in d["lrs"].items()})


def step_size(mode: InnerMode | RefineMode, trained: InnerLoop | None = None,
              lr: float | None = None) -> float | Mapping[str, float]:
    """The step size of an inner loop run in ``mode``: ``lr`` when given, else the one the explainer was
    trained with in the same loop (its learned per-tensor sizes for Meta-SGD), else :data:`STEP_SIZES`.

    Args:
        mode: the loop to run (a refinement mode other than ``full``, or an inner mode).
        trained: how the explainer was meta-trained, if known.
        lr: an explicit step size.
    """
    loop = choice(InnerMode, str(mode), "inner mode")
    if lr is not None:
        return lr
    if trained is not None and trained.mode is loop:
        return trained.lrs if (loop is InnerMode.WEIGHTS and trained.lrs) else trained.lr
    return STEP_SIZES[loop]


def task_losses(unet: UNet, params: list[Params], objective: Objective,
                generator: RandomSource = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_i`` for each image ``i`` with its own U-Net weights ``params[i]``; returns ``(total [B], terms)``."""
    x, t = objective.x, objective.target
    u = torch.cat([functional_call(unet, p, (x[i : i + 1], t[i : i + 1])) for i, p in enumerate(params)])
    return objective.loss_of_logits(u, generator=generator)


def adapt(
    unet: UNet,
    theta: Params,
    objective: Objective,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = True,
    generator: RandomSource = None,
) -> list[Params]:
    """The weights loop: ``K`` SGD steps from ``θ`` on each image's own loss; returns each image's weights.

    ``θ_iᵏ⁺¹ = θ_iᵏ − α ⊙ ∇ L_i(θ_iᵏ)``. With ``first_order`` the gradients are detached (no second-order
    terms reach ``θ``, FOMAML); otherwise the returned weights stay differentiable functions of ``θ`` (and
    of α).

    Args:
        unet: the U-Net whose forward is called with each image's weights.
        theta: the shared initialization θ (parameter name → tensor).
        objective: the batch's problem.
        steps: K.
        lr: α, one step size for all tensors, or one per parameter name (Meta-SGD).
        first_order: ignore second-order terms.
        generator: random source of the robustness perturbations.
    """
    params = [dict(theta) for _ in range(len(objective))]

    def total(ps: list[Params]) -> Tensor:
        return task_losses(unet, ps, objective, generator)[0].sum()

    for _ in range(steps):
        g = grad(total)(params)
        new = []
        for p, gp in zip(params, g, strict=True):
            step = {}
            for k, v in p.items():
                gk = gp[k].detach() if first_order else gp[k]
                a = lr[k] if isinstance(lr, Mapping) else lr
                step[k] = v - a * gk
            new.append(step)
        params = new
    return params


def adapt_logits(
    objective: Objective,
    u0: Tensor,
    steps: int,
    lr: float = STEP_SIZES[InnerMode.LOGITS],
    hard_after: float = HARD_AFTER,
    generator: RandomSource = None,
    clip: float | None = START_CLIP,
    smooth: float = 0.0,
) -> Tensor:
    """The logits loop (also refinement's ``logits`` mode): ``K`` Adam steps on the mask logits.

    Images are independent: the summed loss has a per-image gradient and Adam's update is element-wise.
    Returns ``uᴷ`` (detached); ``steps = 0`` returns ``u0`` itself, unclipped.

    Args:
        objective: the batch's problem.
        u0: first-guess logits ``[B,1,H,W]``.
        steps: K.
        lr: Adam step size.
        hard_after: fraction of the steps after which the binary mask is optimized.
        generator: random source of the robustness perturbations.
        clip: ``c`` (see :data:`START_CLIP`); None starts from ``u0`` itself.
        smooth: ``σ`` in grid cells: the steps change the logits by blobs (``G_σ ∗ δ``); 0: cell by cell.
    """
    if steps <= 0:
        return u0.detach().clone()
    u = u0.detach().clone()
    if clip is not None:
        u = u.clamp(-clip, clip)
    if smooth > 0:
        start, delta = u, torch.zeros_like(u, requires_grad=True)
        param, current = delta, lambda: start + smooth_logits(delta, smooth)
    else:  # u itself (the same steps as a zero δ would take, without re-adding the start each step)
        u.requires_grad_(True)
        param, current = u, lambda: u
    opt = torch.optim.Adam([param], lr=lr)
    hard_from = int(hard_after * steps)
    with torch.enable_grad():
        for k in range(steps):
            total, _ = objective.loss_of_logits(current(), hard=k >= hard_from, generator=generator)
            opt.zero_grad(set_to_none=True)
            total.sum().backward()
            opt.step()
    with torch.no_grad():
        return current().detach()
