"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, "A consistent and
efficient evaluation strategy for attribution methods"): a cross-check of the deletion metrics.

Deleting pixels by replacing them with a constant leaks the mask's shape to the classifier; ROAD replaces
them by noisy linear imputation from their neighbours instead, then measures the drop of the target
probability when the most (MoRF) or least (LeRF) relevant pixels are imputed, averaged over percentiles.

``grad-cam``'s implementation runs unchanged (it needs the package). :class:`NoisyLinearImputation` offers
its imputer alone as a fill for the other metrics (:class:`medcam_fast.evaluation.metrics.Imputer`). What
differs from calling its ``ROADCombined``: ``combined = (LeRF − MoRF)/2`` is computed from one LeRF and one MoRF run instead of two
of each (the same numbers under the same seed, half the imputations), and the imputation noise is seeded
without touching the caller's random state.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..classifiers.frozen import FrozenClassifier
from ..errors import UsageError
from ._peers import _check_batch, _import_peer, _Logits

__all__ = ["RoadScore", "road", "NoisyLinearImputation"]


RoadScore = Literal["probability", "logit"]


def road(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    saliency: Tensor,
    percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    score: RoadScore = "probability",
    seed: int = 0,
) -> dict[str, Tensor]:
    """ROAD (Rong et al., ICML 2022) scores of saliency maps, per image, from ``grad-cam``'s implementation.

    For each percentile ``q`` the pixels are split at the ``q``-th percentile of the image's map and one side
    is replaced by noisy linear imputation (each removed pixel the weighted mean of its 8 neighbours, solved as
    a sparse linear system, plus N(0, 0.01²) noise), then the drop of the score ``y_c`` is recorded:

    * ``morf`` — most relevant first: pixels with saliency ≥ the ``q``-th percentile are imputed, i.e. the
      ``100−q`` % most salient; ``mean_q [y_c(imputed) − y_c(x)]``. **Lower (more negative) is better**;
    * ``lerf`` — least relevant first: pixels with saliency ≤ the ``(100−q)``-th percentile are imputed,
      i.e. the ``100−q`` % least salient (the ``q`` % most salient are kept);
      ``mean_q [y_c(imputed) − y_c(x)]``. **Higher (closer to 0) is better**;
    * ``combined`` — ``(lerf − morf) / 2`` (``ROADCombined``'s definition). **Higher is better**.

    ``combined`` is computed from the same two runs instead of calling ``ROADCombined`` (which would impute
    everything twice); it runs LeRF before MoRF like ``ROADCombined``, so with the same ``seed`` the numbers
    are identical. Ties in a map (e.g. the zeros of a Grad-CAM map) sit on one side of the percentile, so the
    imputed fraction can differ from ``100−q`` %. The imputation runs on the CPU (scipy); the model on
    ``x.device``.

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes ``[B]``.
        saliency: maps ``[B,H,W]`` (higher = more important).
        percentiles: the ``q`` values averaged over.
        score: ``"probability"`` — ``y_c`` the softmax probability (``ClassifierOutputSoftmaxTarget``), the
            ROAD paper's choice; ``"logit"`` — the target logit (``ClassifierOutputTarget``).
        seed: seeds the imputation noise (the global torch CPU RNG is forked, not changed).

    Returns:
        ``{"morf": [B], "lerf": [B], "combined": [B]}`` float32 tensors on ``x.device``.

    Raises:
        PeerUnavailable: ``grad-cam`` cannot be imported.
        UsageError: mismatched shapes or an unknown score.
    """
    _check_batch(x, target)
    if tuple(saliency.shape) != (x.shape[0], *x.shape[-2:]):
        raise UsageError(f"saliency must be [B,H,W] = {(x.shape[0], *x.shape[-2:])}, got {tuple(saliency.shape)}")
    if score not in ("probability", "logit"):
        raise UsageError(f"score must be 'probability' or 'logit', got {score!r}")
    if not percentiles or not all(0 < q < 100 for q in percentiles):
        raise UsageError(f"percentiles must be a non-empty list in (0, 100), got {percentiles!r}")
    _import_peer("grad-cam", "road")
    road_mod = importlib.import_module("pytorch_grad_cam.metrics.road")
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    make_target = (
        targets_mod.ClassifierOutputSoftmaxTarget if score == "probability" else targets_mod.ClassifierOutputTarget
    )
    targets = [make_target(int(c)) for c in target.tolist()]
    cams = np.ascontiguousarray(saliency.detach().float().cpu().numpy())
    model = _Logits(classifier)
    qs = [int(q) if float(q).is_integer() else float(q) for q in percentiles]
    with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
        # grad-cam's imputer hands torch tensors to numpy functions: numpy ≥ 2 warns once per call
        warnings.filterwarnings("ignore", message=".*__array_wrap__.*", category=DeprecationWarning)
        torch.manual_seed(seed)
        lerf = road_mod.ROADLeastRelevantFirstAverage(qs)(x.detach(), cams, targets, model)
        morf = road_mod.ROADMostRelevantFirstAverage(qs)(x.detach(), cams, targets, model)
    out = {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(-1), device=x.device) for k, v in out.items()}


class NoisyLinearImputation:
    """ROAD's noisy linear imputation as an :class:`~medcam_fast.evaluation.metrics.Imputer`: ``grad-cam``'s
    ``NoisyLinearImputer`` run unchanged, image by image, on the CPU.

    Each removed pixel ``i`` gets ``v_i = Σ_j w_ij v_j / Σ_j w_ij`` over its 8 neighbours ``j`` inside the image
    (weights 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours; a neighbour that is kept contributes
    its value), the linear system over all removed pixels solved at once (``scipy.sparse.linalg.spsolve``), plus
    ``N(0, noise²)`` per value. Rong et al. (ICML 2022) chose it because the removed region then carries no
    information about its own shape.

    What differs: the noise is drawn from the global torch generator as in grad-cam, but inside
    :func:`torch.random.fork_rng` seeded with ``seed`` at each call (reproducible, the caller's random state
    untouched); an image with nothing removed is returned as it is, and one with *everything* removed — where
    the system has no kept neighbour to anchor it and is singular — becomes 0 (the data set's mean) plus noise.

    Args:
        noise: standard deviation of the added noise (grad-cam's and ROAD's default 0.01).
        seed: seeds the noise of every call.

    Raises:
        PeerUnavailable: ``grad-cam`` cannot be imported.
    """

    def __init__(self, noise: float = 0.01, seed: int = 0) -> None:
        _import_peer("grad-cam", "noisy-linear fill")
        self._imputer = importlib.import_module("pytorch_grad_cam.metrics.road").NoisyLinearImputer(noise=noise)
        self.noise = noise
        self.seed = seed

    def __call__(self, x: Tensor, removed: Tensor) -> Tensor:
        """``x`` ``[n,C,H,W]`` with the ``removed`` ``[n,H,W]`` pixels imputed (same device and dtype as ``x``)."""
        if x.dim() != 4 or tuple(removed.shape) != (x.shape[0], *x.shape[-2:]) or removed.dtype != torch.bool:
            raise UsageError(f"need images [n,C,H,W] and bool masks [n,H,W], got {tuple(x.shape)}, "
                             f"{removed.dtype} {tuple(removed.shape)}")
        xs, rm = x.detach().float().cpu(), removed.detach().cpu()
        out = xs.clone()
        # grad-cam's imputer hands torch tensors to numpy functions: numpy ≥ 2 warns once per call
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*__array_wrap__.*", category=DeprecationWarning)
            torch.manual_seed(self.seed)
            for i in range(xs.shape[0]):
                if not bool(rm[i].any()):
                    continue
                if bool(rm[i].all()):
                    out[i] = self.noise * torch.randn_like(xs[i])
                    continue
                out[i] = self._imputer(xs[i], (~rm[i]).float())
        return out.to(device=x.device, dtype=x.dtype)
