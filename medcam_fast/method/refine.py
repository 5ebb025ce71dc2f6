"""Refinement: improve an explainer's first guess for one batch of images in a few steps.

Three modes (:class:`~medcam_fast.types.RefineMode`), each image independent:

* ``LOGITS`` — optimize the mask logits ``u`` directly from the first guess ``u₀ = f_θ(x, c)`` (or logits
  handed in, e.g. from onnxruntime): ``u ← Adam(u, ∇_u L)`` for ``K`` steps — the logits loop of
  :mod:`medcam_fast.method.inner`, the one ``inner_mode="logits"`` meta-training trains for. When the
  explainer ships learned steps (:mod:`medcam_fast.method.learned`) the first ``K_φ`` steps are those instead
  (``RefineConfig.learned``). The logits keep the first guess's grid: a classifier-aware decoder's coarse
  grid stays coarse (the refined mask is a union of blobs too), a U-Net's pixel logits stay pixels;
* ``WEIGHTS`` — adapt a U-Net explainer's weights ``K`` SGD steps from the meta-learned ``θ``: the MAML
  inner loop (first order);
* ``FULL`` — the paper's per-image fit from a fresh U-Net (:func:`~medcam_fast.method.fit.fit_objective`).

:class:`RefineConfig` owns the refinement defaults (``K = 10``, the start clip, the hard phase).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call

from .._config import Config
from ..types import InnerMode, RefineMode, choice
from .first_guess import ExplainerNet
from .first_guess import first_guess as guess
from .fit import FitConfig, fit_objective
from .inner import HARD_AFTER, START_CLIP, InnerLoop, adapt, adapt_logits, step_size
from .learned import StepNet, learned_adapt
from .masking import check_sigma
from .objective import Objective
from .result import MaskResult
from .unet import UNet

__all__ = ["RefineConfig", "refine", "uses_learned_steps"]


def uses_learned_steps(config: RefineConfig, steps_net: StepNet | None) -> bool:
    """Whether :func:`refine` takes learned steps: ``logits`` mode with steps, ``config.learned``, no
    smoothing, and an explainer that has them."""
    return (steps_net is not None and config.learned and config.mode is RefineMode.LOGITS and config.steps > 0
            and not config.smooth)


@dataclass(frozen=True)
class RefineConfig(Config):
    """Settings of refinement.

    Args:
        steps: refinement steps K (0 returns the first guess itself). 10 logits steps keep p(kept) at the
            300-step fit's level on breast (0.934 vs 0.930) about 50× faster
            (``benchmarks/results/quality_breast.md``).
        mode: ``logits``, ``weights`` or ``full``.
        lr: step size; None: the explainer's own inner step when it was trained with the same loop, else
            :data:`~medcam_fast.method.inner.STEP_SIZES` (see :func:`~medcam_fast.method.inner.step_size`).
        start_clip: ``logits`` mode starts from the first guess clipped to ``±start_clip`` (None: not
            clipped; see :data:`~medcam_fast.method.inner.START_CLIP`).
        hard_after: in ``logits`` mode, the fraction of steps after which the straight-through binary mask is
            optimized.
        seed: seeds the robustness perturbations, with each image's own pixels
            (:meth:`~medcam_fast.method.objective.Objective.generators`).
        keep_best: in ``logits`` mode, return an image's first guess instead of its ``K``-step mask where the
            first guess's binary mask has the lower composite loss, so refinement never reports a worse mask
            than ``K = 0`` (both are scored with the same perturbation draws: one extra loss evaluation, no
            gradient). The steps can make it worse: Adam's first steps move every logit by about the step
            size, the area term's gradient shrinks a mask by its whole contour, and until the straight-through
            phase the loop optimizes the soft mask, not the reported binary one. Measured on lesions
            (32 test images, median loss ÷ the 300-step fit's): 1.66 at K = 0, 2.52 at K = 3 without it,
            1.15 with it; at K = 10 0.88 and 0.87 (``benchmarks/results/explainer_quality_lesions.md``).
        smooth: in ``logits`` mode, ``σ`` in grid cells: the steps change the logits by Gaussian blobs
            (:func:`~medcam_fast.method.inner.adapt_logits`), so refinement cannot add a lone cell — what splits
            a refined mask into small pieces and lattices. 0 (the default): cell by cell. The per-image fit has
            its own (``FitConfig.smooth``); ``weights`` mode has none.
        learned: in ``logits`` mode, take the explainer's learned steps first when it has them
            (:func:`~medcam_fast.method.learned.learned_adapt`); False: Adam steps only. Smoothing shapes Adam's
            steps, so ``smooth > 0`` takes Adam steps only too. The learned steps start from the first guess
            clipped as they were trained (their own ``clip``), whatever ``start_clip`` says.
    """

    steps: int = 10
    mode: RefineMode = RefineMode.LOGITS
    lr: float | None = None
    start_clip: float | None = START_CLIP
    hard_after: float = HARD_AFTER
    seed: int = 0
    keep_best: bool = True
    smooth: float = 0.0
    learned: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", choice(RefineMode, self.mode, "refinement mode"))
        check_sigma(self.smooth)
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"refinement steps must be an integer ≥ 0, got {self.steps!r}")


def refine(
    objective: Objective,
    config: RefineConfig = RefineConfig(),
    *,
    net: ExplainerNet | None = None,
    first_guess: Tensor | None = None,
    trained: InnerLoop | None = None,
    fit_config: FitConfig | None = None,
    steps_net: StepNet | None = None,
) -> MaskResult:
    """Masks for the objective's images: the first guess plus ``config.steps`` refinement steps.

    Images are independent up to float rounding, which depends on the batch's size (batched kernels): for
    results that never depend on the batch, call it on batches of one fixed size, as ``MedCAM`` does
    (``medcam_fast.explain.CHUNK``).

    Args:
        objective: the batch's problem (images, targets, reference, baseline, weights, τ).
        config: how to refine.
        net: the explainer's network (meta-learned ``θ``): the first guess when ``first_guess`` is None, and,
            for a U-Net, the weights ``weights`` mode adapts.
        first_guess: first-guess logits ``[B,1,h,w]`` or ``[B,h,w]`` on the explainer's grid (e.g. from
            onnxruntime).
        trained: how the explainer was meta-trained (picks the default step size).
        fit_config: optimization settings of ``full`` mode (its ``steps`` is replaced by ``config.steps``).
        steps_net: the explainer's learned steps (``logits`` mode, with ``config.learned``).

    Raises:
        ValueError: ``weights`` mode without a U-Net, or no first guess at all outside ``full`` mode.
    """
    if config.mode is RefineMode.FULL:
        return fit_objective(objective, (fit_config or FitConfig()).with_(steps=config.steps))
    start = time.perf_counter()
    x, target = objective.x, objective.target
    gen = objective.generators(config.seed)  # per image: the same masks at any batch size
    if config.mode is RefineMode.LOGITS or config.steps == 0:
        if first_guess is not None:
            u = first_guess.detach().reshape(x.shape[0], 1, *first_guess.shape[-2:]).float().to(x.device).clone()
        elif net is not None:
            with torch.no_grad():
                u = guess(net.eval(), objective)
        else:
            raise ValueError("refinement needs a first guess: pass net= or first_guess=")
        lr = step_size(InnerMode.LOGITS, trained, config.lr)
        if isinstance(lr, Mapping):
            raise TypeError("per-tensor step sizes belong to the weights loop")
        first = u if config.keep_best and config.steps > 0 else None
        if uses_learned_steps(config, steps_net):
            assert steps_net is not None
            u = learned_adapt(objective, u, config.steps, steps_net, lr, config.hard_after, gen)
        else:
            u = adapt_logits(objective, u, config.steps, lr, config.hard_after, gen, clip=config.start_clip,
                             smooth=config.smooth)
        return objective.result(u, config.steps, time.perf_counter() - start, config.seed, fallback=first)
    if config.smooth:
        raise ValueError("smoothing shapes the logits loop's steps: weights refinement has none")
    if not isinstance(net, UNet):
        raise ValueError("weights refinement adapts a U-Net explainer's weights: pass a U-Net as net=")
    unet = net.eval()
    theta = {n: p.detach().requires_grad_(False) for n, p in unet.named_parameters()}
    sizes = step_size(InnerMode.WEIGHTS, trained, config.lr)
    alpha: float | dict[str, Tensor] = (
        {n: torch.tensor(v, device=x.device) for n, v in sizes.items()} if isinstance(sizes, Mapping) else sizes
    )
    with torch.enable_grad():
        adapted = adapt(unet, theta, objective, config.steps, alpha, first_order=True, generator=gen)
    with torch.no_grad():
        u = torch.cat([functional_call(unet, p, (x[i : i + 1], target[i : i + 1])) for i, p in enumerate(adapted)])
    return objective.result(u, config.steps, time.perf_counter() - start, config.seed)
