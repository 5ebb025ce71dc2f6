"""Pixel attributions from ``captum`` (Kokhlikyan et al. 2020): occlusion (Zeiler & Fergus, ECCV 2014) and
integrated gradients (Sundararajan, Taly & Yan, ICML 2017).

Occlusion slides a window that replaces ``x`` by the baseline ``b`` and records the drop of the target
logit; integrated gradients integrates the gradient of the target logit along the straight path from ``b``
to ``x`` and multiplies by ``x − b``. Both are summed over channels and returned signed (positive =
evidence for the class).

captum's implementations run unchanged; what is chosen here: the baseline is the one every method of a run
shares (the explainer's), not captum's zeros, and the default occlusion window is an eighth of the image
side, so it covers a comparable fraction of a 28-px and a 224-px image.
"""

from __future__ import annotations

import importlib
import math
from typing import Literal

import torch
from torch import Tensor

from ...classifiers.frozen import FrozenClassifier
from ...errors import UsageError
from .._peers import _baseline_or_zeros, _check_batch, _import_peer, _positive_int

__all__ = ["CaptumMethod", "captum_attr"]


CaptumMethod = Literal["occlusion", "integrated_gradients"]


def captum_attr(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    method: CaptumMethod = "occlusion",
    baseline: Tensor | None = None,
    window: int | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 256,
    perturbations_per_eval: int = 16,
) -> Tensor:
    """Occlusion or integrated gradients from ``captum``, summed over channels.

    * ``"occlusion"`` (Zeiler & Fergus, 2014; ``captum.attr.Occlusion``): a ``C × k × k`` window
      (``k = window``, default ``⌈H/8⌉ × ⌈W/8⌉``) slides with stride ``⌈k/2⌉``; inside it ``x`` is replaced by
      ``b``; each pixel gets the mean of ``y_c(x) − y_c(x_occluded)`` over the windows covering it, per
      channel. ``y_c`` is the target logit.
    * ``"integrated_gradients"`` (Sundararajan et al., 2017; ``captum.attr.IntegratedGradients``):
      ``(x − b) ⊙ ∫₀¹ ∂y_c/∂x (b + α(x − b)) dα`` with ``n_steps`` Gauss-Legendre points (captum's default
      rule), in batches of ``internal_batch_size``.

    The channel sum is returned as is (signed): **positive = evidence for the target class**, negative =
    evidence against it.

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes ``[B]``.
        method: ``"occlusion"`` or ``"integrated_gradients"``.
        baseline: ``b``, broadcastable to ``x``; None = zeros (the data set's mean).
        window: occlusion window side in pixels (square); None = ``⌈H/8⌉ × ⌈W/8⌉``.
        n_steps: integration points of integrated gradients.
        internal_batch_size: integrated gradients: images per forward/backward pass.
        perturbations_per_eval: occlusion: occluded copies per image in one forward pass.

    Returns:
        attributions ``[B,H,W]`` on ``x.device``.

    Raises:
        PeerUnavailable: ``captum`` cannot be imported.
        UsageError: unknown method or invalid arguments.
    """
    _check_batch(x, target)
    if method not in ("occlusion", "integrated_gradients"):
        raise UsageError(f"unknown captum method {method!r}: choose 'occlusion' or 'integrated_gradients'")
    for name, value in (("n_steps", n_steps), ("internal_batch_size", internal_batch_size),
                        ("perturbations_per_eval", perturbations_per_eval)):
        _positive_int(name, value)
    _import_peer("captum", method)
    attr = importlib.import_module("captum.attr")
    x = x.detach()
    b = _baseline_or_zeros(x, baseline).contiguous()
    t = target.to(x.device)
    if method == "occlusion":
        ch, h, w = x.shape[1:]
        if window is not None:
            _positive_int("window", window)
        kh, kw = (window, window) if window is not None else (math.ceil(h / 8), math.ceil(w / 8))
        with torch.no_grad():
            a = attr.Occlusion(classifier.logits).attribute(
                x, sliding_window_shapes=(ch, kh, kw), strides=(ch, math.ceil(kh / 2), math.ceil(kw / 2)),
                baselines=b, target=t, perturbations_per_eval=perturbations_per_eval,
            )
    else:
        with torch.enable_grad():
            a = attr.IntegratedGradients(classifier.logits).attribute(
                x, baselines=b, target=t, n_steps=n_steps, internal_batch_size=internal_batch_size
            )
    return a.sum(1).detach()
