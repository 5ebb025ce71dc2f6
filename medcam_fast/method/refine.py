"""Refinement: improve an explainer's first guess for one batch of images in a few steps.

Three modes, each image independent:

* ``"logits"`` — optimize the mask logits ``u`` directly, starting from the first guess ``u₀ = f_θ(x, c)``
  (or logits handed in, e.g. from onnxruntime): ``u ← Adam(u, ∇_u L)`` for ``K`` steps
  (:func:`medcam_fast.method.inner.adapt_logits`, the inner loop of ``inner_mode="logits"`` meta-training).
* ``"weights"`` — adapt the U-Net weights ``K`` SGD steps from the meta-learned ``θ``, exactly the inner
  loop of meta-training (:func:`medcam_fast.method.inner.adapt`, first order).
* ``"full"`` — the paper's per-image fit from a fresh U-Net (:func:`medcam_fast.method.fit.fit_masks`).
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor

from ..classifiers.frozen import FrozenClassifier
from ..explainer.bundle import ExplainerBundle
from .fit import FitConfig, evaluate_masks, fit_masks, resolve_targets
from .inner import START_CLIP, adapt, adapt_logits
from .losses import LossWeights, Reference
from .masking import make_baseline
from .result import MaskResult, Verification

__all__ = ["refine", "RefineMode", "LOGITS_LR"]

RefineMode = Literal["logits", "weights", "full"]

#: Adam step size on mask logits in ``"logits"`` mode.
LOGITS_LR = 0.3
#: SGD step size on U-Net weights: the default inner step of weights-mode meta-training, and of ``"weights"``
#: refinement for an explainer meta-trained on its logits.
WEIGHTS_LR = 0.1


def refine(
    explainer: ExplainerBundle,
    classifier: FrozenClassifier,
    x: Tensor,
    targets: Tensor | int | None = None,
    steps: int = 5,
    mode: RefineMode = "logits",
    initial_logits: Tensor | None = None,
    weights: LossWeights | None = None,
    lr: float | None = None,
    full_config: FitConfig | None = None,
    seed: int = 0,
    hard_after: float = FitConfig.hard_after,
    reference: Reference | None = None,
    start_clip: float | None = START_CLIP,
) -> MaskResult:
    """Masks for ``x`` from the explainer's first guess plus ``steps`` refinement steps.

    Args:
        explainer: the meta-trained explainer bundle.
        classifier: the frozen classifier it explains.
        x: normalized images ``[B,C,H,W]``.
        targets: class per image (or one int); None explains the predicted class.
        steps: refinement steps K (0 returns the first guess itself).
        mode: ``"logits"``, ``"weights"`` or ``"full"`` (see the module docstring).
        initial_logits: first-guess logits ``[B,1,H,W]`` or ``[B,H,W]`` (e.g. from onnxruntime), for
            ``"logits"`` mode; default: the explainer's torch U-Net.
        weights: loss weights; default: those the explainer was trained with.
        lr: step size; default: the explainer's inner step size when it was trained with the same kind of
            inner loop, else :data:`LOGITS_LR` (logits).
        full_config: settings of ``"full"`` mode (its ``steps`` is replaced by ``steps``).
        seed: seeds the robustness perturbations.
        hard_after: in ``"logits"`` mode, the fraction of steps after which the straight-through binary mask
            is optimized (as in the per-image fit).
        reference: the classifier's ``(logits, activations)`` on ``x`` when the caller already has them
            (saves a forward pass).
        start_clip: in ``"logits"`` mode, the first guess is clipped to ``±start_clip`` before the first step
            (None: not clipped). Lower lets the classifier's gradient reorder more pixels, at the price of
            larger, less minimal masks (see :data:`medcam_fast.method.inner.START_CLIP` and the README).
    """
    pre = explainer.preprocess
    w = weights or explainer.weights
    if mode == "full":
        cfg = (full_config or FitConfig(weights=w, baseline=explainer.baseline)).with_(steps=steps)  # type: ignore[arg-type]
        return fit_masks(classifier, x, targets, cfg, normalization=(pre.mean, pre.std))
    if mode not in ("logits", "weights"):
        raise ValueError(f"unknown refinement mode {mode!r}: choose logits, weights or full")
    start = time.perf_counter()
    x = x.detach()
    if reference is None:
        with torch.no_grad():
            reference = Reference(*classifier(x))
    target = resolve_targets(reference.logits, targets)
    baseline = make_baseline(x, explainer.baseline, pre.mean, pre.std)  # type: ignore[arg-type]
    unet = explainer.unet.eval()
    gen = torch.Generator().manual_seed(seed)
    if mode == "logits" or steps == 0:
        if initial_logits is not None:
            u = initial_logits.detach().reshape(x.shape[0], 1, *x.shape[-2:]).float().clone()
        else:
            with torch.no_grad():
                u = unet(x, target)
        if lr is None:
            lr = explainer.inner.lr if explainer.inner.mode == "logits" else LOGITS_LR
        u = adapt_logits(classifier, x, u, target, reference, baseline, w, explainer.tau, steps, lr, hard_after, gen,
                         clip=start_clip)
    else:
        theta = {n: p.detach() for n, p in unet.named_parameters()}
        inner = explainer.inner
        step_size: float | dict[str, Tensor] = lr or (inner.lr if inner.mode == "weights" else WEIGHTS_LR)
        if lr is None and inner.lrs:
            step_size = {n: torch.tensor(v, device=x.device) for n, v in inner.lrs.items()}
        theta = {n: t.requires_grad_(False) for n, t in theta.items()}
        with torch.enable_grad():
            adapted = adapt(unet, theta, classifier, x, target, reference, baseline, w, explainer.tau, steps,
                            step_size, first_order=True, generator=gen)
        with torch.no_grad():
            u = torch.cat([
                torch.func.functional_call(unet, p, (x[i : i + 1], target[i : i + 1])) for i, p in enumerate(adapted)
            ])
    loss, terms, soft, binary = evaluate_masks(classifier, x, u, target, reference, baseline, w, explainer.tau)
    ver = Verification.from_terms(reference.logits, target, terms)
    return MaskResult(
        soft=soft[:, 0], binary=binary[:, 0].bool(), logits=u[:, 0], verification=ver, terms=terms, loss=loss,
        steps=steps, seconds=time.perf_counter() - start,
    )
