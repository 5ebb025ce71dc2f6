"""Metrics that compare saliency methods (our masks, Grad-CAM, RISE, …): the code of ``medcam-fast evaluate``.

Notation (as in :mod:`medcam_fast.method.masking`): ``x`` normalized images ``[B,C,H,W]``; ``s`` a saliency map
``[B,H,W]`` (higher = more important); ``y`` the target class ``[B]``; ``f`` a *model*, i.e. any callable
``logits_fn(x) -> logits [B,K]`` (e.g. :meth:`medcam_fast.classifiers.frozen.FrozenClassifier.logits`);
``p_y(x) = softmax(f(x))_y``; ``b`` a baseline (substrate) shaped like ``x``; ``m`` a binary mask ``[B,H,W]``
(1 = kept), broadcast over channels; ``N = H·W``; ``R`` a ground-truth region ``[B,H,W]`` bool.

Ranking convention (every metric that orders pixels): pixels are ranked by decreasing saliency, and ties are
broken by the row-major flat pixel index ``h·W + w`` (the lower index ranks first). This is a stable
``argsort(-s)``, so results are deterministic and identical on every device. ``top_k(s)`` denotes the ``k``
first pixels of this ranking.

Faithfulness (needs the model):

* :func:`preservation_at_area` — the *preservation game* (Fong & Vedaldi 2017, "Interpretable explanations
  of black boxes by meaningful perturbation", ICCV; Dabkowski & Gal 2017, "Real time image saliency for
  black box classifiers", NeurIPS: the smallest sufficient region): keep the top ``a`` of the pixels,
  ``m = top_{round(a·N)}(s)``, ``P(a) = p_y(m⊙x + (1−m)⊙b)``.
* :func:`deletion_insertion` — RISE deletion / insertion (Petsiuk, Das & Saenko 2018, "RISE: Randomized
  input sampling for explanation of black-box models", BMVC). With ``m_i = top_{round(i·N/T)}(s)``,
  ``i = 0…T``: deletion ``D_i = p_y((1−m_i)⊙x + m_i⊙b_del)``, insertion ``I_i = p_y(m_i⊙x + (1−m_i)⊙b_ins)``;
  scores ``AUC(D)`` (lower is better) and ``AUC(I)`` (higher is better).
* :func:`auc` — trapezoid rule on ``T+1`` evenly spaced points of ``[0,1]``:
  ``AUC(c) = (1/T)·(c_0/2 + c_1 + … + c_{T−1} + c_T/2)``.
* :func:`binary_evidence` — a binary mask's sufficiency and necessity: ``p_kept = p_y(m⊙x + (1−m)⊙b)``,
  ``p_removed = p_y((1−m)⊙x + m⊙b)``, ``area = mean(m)`` (the verdict's names everywhere in medcam-fast).
* :func:`faithfulness_correlation` — Bhatt, Weller & Moura 2020 ("Evaluating and aggregating feature-based
  model explanations", IJCAI): over random pixel subsets ``S`` of a fixed size,
  ``μ_F = Pearson_S(Σ_{i∈S} s_i, p_y(x) − p_y(x_{S←b}))``.
* :func:`monotonicity` — Nguyen & Martínez 2020 ("On quantitative aspects of model interpretability",
  arXiv 2007.07584): ``Spearman_g(mean_{i∈g}|s_i|, |p_y(x) − p_y(x_{g←b})|)`` over groups ``g`` of pixels
  of consecutive ``|s|`` rank.
* :func:`top_count_mask` — ``top_{k_i}(s_i)`` with a pixel count per image: another map's pixels at a binary
  mask's own area.

Where pixels are removed, the *substrate* says what replaces them: a tensor ``b`` shaped like (or
broadcastable to) ``x`` — ``x_{S←b}`` takes ``b``'s values on ``S`` — or an :class:`Imputer`, a callable
``(x, removed) ↦ x with the removed pixels imputed`` (ROAD's noisy linear imputation,
:class:`medcam_fast.evaluation.road.NoisyLinearImputation`). Every faithfulness function takes either.

Localization (needs a ground-truth region):

* :func:`top_fraction_mask` — ``top_{max(1, round(a·N))}(s)`` as a bool mask.
* :func:`pointing_game` — Zhang et al. 2016 ("Top-down neural attention by excitation backprop", ECCV):
  a hit when ``argmax s ∈ R``. With ``M = {pixels where s = max s}`` the score is ``|M ∩ R⁺| / |M|``
  (the expected hit under uniform random tie-breaking), ``R⁺`` being ``R`` dilated by a Euclidean
  tolerance.
* :func:`topk_iou` — with ``k = |R|``: ``IoU = |top_k(s) ∩ R| / |top_k(s) ∪ R|``.

Sanity checks (Adebayo et al. 2018, "Sanity checks for saliency maps", NeurIPS):

* :func:`spearman` — Spearman rank correlation ``ρ(a, b) = Pearson(rank(a), rank(b))`` per image, with
  average ranks for ties (optionally of ``|a|``, ``|b|``).
* :func:`cascading_randomization` — cascading model-parameter randomization, from the output layer to the
  input layer, one stage per item of :func:`parameterized_modules` (both live in
  :mod:`medcam_fast.classifiers.randomize`, which meta-training uses too, and are re-exported here);
  :func:`cascade_checkpoints` picks evenly spaced stages of the cascade.
* :func:`map_ssim` — the structural similarity (Wang et al. 2004) of two maps, each min–max scaled to
  ``[0, 1]`` (scikit-image's implementation), the third similarity Adebayo et al. report.

Readability of a binary mask (can a reader see a region in it?):

* :func:`connected_pieces` — the number of 8-connected pieces and the fraction of the mask in the largest;
* :func:`lattice_score` — the spectral peak of the mask at the harmonics of a stride (a classifier's
  down-sampling period), relative to the power between the harmonics and the mask's mean spectral power: a
  periodic lattice of dots or stripes scores far above :data:`LATTICE_THRESHOLD`, a region far below.

Comparing two methods on the same images:

* :func:`paired_difference` — the mean per-image difference ``Δ = (1/n)·Σ_i (a_i − b_i)`` with a percentile
  bootstrap 95 % interval (Efron & Tibshirani 1993, ch. 13: resample the ``n`` image indices with
  replacement ``B`` times, take the 2.5 and 97.5 percentiles of the resampled means), the sign-flip
  (paired permutation) p-value of "no difference" and the number of images where ``a_i > b_i``. Pairing
  removes the variation between images that both methods share.
* :func:`holm` — Holm's step-down correction (Holm 1979, "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist.) of the p-values of one table's comparisons: family-wise error ≤ ``α``.

Every function is batched, device-agnostic (new tensors are created on the inputs' device, results are
returned there) and runs under :func:`torch.no_grad`. Invalid arguments raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..classifiers.randomize import cascading_randomization, parameterized_modules

__all__ = [
    "LogitsFn",
    "Imputer",
    "Substrate",
    "top_fraction_mask",
    "top_count_mask",
    "preservation_at_area",
    "deletion_insertion",
    "auc",
    "binary_evidence",
    "faithfulness_correlation",
    "monotonicity",
    "pointing_game",
    "topk_iou",
    "spearman",
    "cascading_randomization",
    "parameterized_modules",
    "cascade_checkpoints",
    "map_ssim",
    "Pieces",
    "connected_pieces",
    "LATTICE_THRESHOLD",
    "lattice_score",
    "PairedDifference",
    "paired_difference",
    "Holm",
    "holm",
]

#: A model: normalized images ``[B,C,H,W]`` in, logits ``[B,K]`` out.
LogitsFn = Callable[[Tensor], Tensor]


class Imputer(Protocol):
    """Fills removed pixels from the rest of the image (e.g. ROAD's noisy linear imputation).

    Called with normalized images ``x`` ``[n,C,H,W]`` and ``removed`` ``[n,H,W]`` bool (``True`` = the pixel
    is removed, in every channel); returns ``x`` with the removed pixels replaced, same shape, on ``x``'s
    device. Pixels that are not removed must keep ``x``'s values.
    """

    def __call__(self, x: Tensor, removed: Tensor) -> Tensor: ...


#: What replaces removed pixels: a tensor ``b`` broadcastable to ``x`` (the pixel takes ``b``'s value) or an
#: :class:`Imputer`.
Substrate = Union[Tensor, Imputer]  # noqa: UP007 — a Protocol in a runtime alias


# ----------------------------------------------------------------------------------------------- validation


def _check_maps(saliency: Tensor, name: str = "saliency") -> None:
    if saliency.dim() != 3:
        raise ValueError(f"{name} must be [B,H,W], got shape {tuple(saliency.shape)}")
    if saliency.is_floating_point() and bool(torch.isnan(saliency).any()):
        raise ValueError(f"{name} contains NaN")


def _check_region(region: Tensor, saliency: Tensor) -> None:
    if region.dtype != torch.bool:
        raise ValueError(f"region must be a bool tensor, got {region.dtype}")
    if region.shape != saliency.shape:
        raise ValueError(f"region shape {tuple(region.shape)} != saliency shape {tuple(saliency.shape)}")


def _check_images(x: Tensor, saliency: Tensor, target: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be [B,C,H,W], got shape {tuple(x.shape)}")
    _check_maps(saliency)
    b, _, h, w = x.shape
    if tuple(saliency.shape) != (b, h, w):
        raise ValueError(f"saliency shape {tuple(saliency.shape)} does not match x's [B,H,W] = {(b, h, w)}")
    if target.shape != (b,) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor [B] = [{b}], got {target.dtype} {tuple(target.shape)}")


def _as_substrate(sub: Substrate, x: Tensor, name: str) -> Substrate:
    """A tensor ``sub`` moved to ``x``'s device and dtype and expanded to ``x``'s shape (a view, no copy); an
    :class:`Imputer` as it is."""
    if not isinstance(sub, Tensor):
        if not callable(sub):
            raise ValueError(f"{name} must be a tensor or an imputer, got {type(sub).__name__}")
        return sub
    aligned = zip(reversed(sub.shape), reversed(x.shape), strict=False)
    if sub.dim() > x.dim() or any(s not in (1, n) for s, n in aligned):
        raise ValueError(f"{name} of shape {tuple(sub.shape)} does not broadcast to x's {tuple(x.shape)}")
    return sub.to(device=x.device, dtype=x.dtype).expand_as(x)


def _fill(x: Tensor, removed: Tensor, substrate: Substrate, rows: Tensor) -> Tensor:
    """``x`` ``[n,C,H,W]`` with the ``removed`` ``[n,H,W]`` pixels taken from the substrate (rows ``rows`` of a
    tensor substrate, or imputed)."""
    if isinstance(substrate, Tensor):
        return torch.where(removed[:, None], substrate[rows], x)
    out = substrate(x, removed)
    if out.shape != x.shape:
        raise ValueError(f"the imputer returned shape {tuple(out.shape)} for images {tuple(x.shape)}")
    return out.to(device=x.device, dtype=x.dtype)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# ------------------------------------------------------------------------------------------------- ranking


def _saliency_rank(saliency: Tensor) -> Tensor:
    """Rank of every pixel, ``[B, H·W]`` long: 0 = most salient; ties go to the lower flat index first."""
    flat = saliency.flatten(1)
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    order = torch.sort(-flat, dim=1, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _pixel_count(fraction: float, n_pixels: int) -> int:
    """``max(1, round(fraction·n_pixels))`` (Python's ``round``: halves go to the even integer)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return max(1, round(fraction * n_pixels))


# ------------------------------------------------------------------------------------------ model queries


def _target_probs(logits_fn: LogitsFn, images: Tensor, target: Tensor) -> Tensor:
    """``softmax(f(images))[i, target_i]`` ``[n]`` float32, checking the model's output."""
    logits = logits_fn(images)
    if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"logits_fn must return logits [{images.shape[0]},K], got shape {tuple(logits.shape)}")
    k = logits.shape[1]
    if bool((target < 0).any()) or bool((target >= k).any()):
        raise ValueError(f"target values must lie in [0, {k}), got {target.tolist()}")
    probs = torch.softmax(logits.float(), dim=1)
    return probs.gather(1, target.to(device=probs.device, dtype=torch.long)[:, None])[:, 0]


def _removed_probs(
    logits_fn: LogitsFn,
    x: Tensor,
    substrate: Substrate,
    target: Tensor,
    image_index: Tensor,
    removed: Callable[[slice], Tensor],
    batch_size: int,
) -> Tensor:
    """``p_y`` of ``M`` composites: composite ``j`` is image ``image_index[j]`` with the pixels ``removed(sl)[j']``
    replaced by the substrate (``removed`` returns the ``[len(sl),H,W]`` bool masks of the composites in the
    slice ``sl``, built chunk by chunk to bound memory). Run in chunks of ``batch_size``; returns ``[M]``."""
    m = image_index.shape[0]
    out = torch.empty(m, dtype=torch.float32, device=x.device)
    for start in range(0, m, batch_size):
        sl = slice(start, start + batch_size)
        idx = image_index[sl]
        composite = _fill(x[idx], removed(sl), substrate, idx)
        out[sl] = _target_probs(logits_fn, composite, target[idx])
    return out


def _ranked_probs(
    logits_fn: LogitsFn,
    x: Tensor,
    substrate: Substrate,
    rank: Tensor,
    counts: Sequence[int],
    target: Tensor,
    batch_size: int,
    remove_top: bool,
) -> Tensor:
    """``p_y`` of the ``B·S`` composites of each image with its top-``counts[j]`` pixels removed (``remove_top``)
    or kept with the rest removed, the removed pixels taken from ``substrate``. Returns ``[B, S]``."""
    b, _, h, w = x.shape
    s = len(counts)
    device = x.device
    image_index = torch.arange(b, device=device).repeat_interleave(s)
    pixel_counts = torch.as_tensor(list(counts), dtype=torch.long, device=device).repeat(b)

    def removed(sl: slice) -> Tensor:
        top = (rank[image_index[sl]] < pixel_counts[sl, None]).view(-1, h, w)
        return top if remove_top else ~top

    return _removed_probs(logits_fn, x, substrate, target, image_index, removed, batch_size).view(b, s)


# ------------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def top_fraction_mask(saliency: Tensor, fraction: float) -> Tensor:
    """The ``k = max(1, round(fraction·H·W))`` most salient pixels of each map: ``top_k(s)``.

    Exactly ``k`` pixels are selected per image, even with ties: pixels are ranked by decreasing saliency and
    ties are broken by the row-major flat index (the lower index first), so a constant map selects its first
    ``k`` pixels in row-major order. ``round`` is Python's (halves go to the even integer).

    Args:
        saliency: saliency maps ``[B,H,W]`` (higher = more important), no NaN.
        fraction: the fraction ``a ∈ [0,1]`` of pixels to select.

    Returns:
        a bool tensor ``[B,H,W]`` on ``saliency``'s device, ``True`` on the selected pixels.
    """
    _check_maps(saliency)
    b, h, w = saliency.shape
    k = _pixel_count(fraction, h * w)
    return (_saliency_rank(saliency) < k).view(b, h, w)


@torch.no_grad()
def preservation_at_area(
    logits_fn: LogitsFn,
    x: Tensor,
    saliency: Tensor,
    target: Tensor,
    baseline: Substrate,
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    batch_size: int = 256,
) -> Tensor:
    """Preservation game: the target probability when only the top ``a`` of the pixels are kept.

    ``P(a) = p_y(m_a⊙x + (1−m_a)⊙b)`` with ``m_a = top_fraction_mask(s, a)`` (Fong & Vedaldi 2017;
    Dabkowski & Gal 2017, smallest sufficient region). Higher is better; ``P(1) = p_y(x)``.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        saliency: saliency maps ``[B,H,W]`` (higher = more important).
        target: class indices ``[B]`` whose probability is reported.
        baseline: what replaces removed pixels: an image ``b`` shaped like (or broadcastable to) ``x``, or an
            :class:`Imputer`.
        fractions: kept fractions ``a ∈ [0,1]``; each keeps ``max(1, round(a·H·W))`` pixels.
        batch_size: the most composite images passed to ``logits_fn`` at once.

    Returns:
        ``P`` ``[B, len(fractions)]`` float32 on ``x``'s device.
    """
    _check_images(x, saliency, target)
    _check_batch_size(batch_size)
    if len(fractions) == 0:
        raise ValueError("fractions must not be empty")
    n = x.shape[-2] * x.shape[-1]
    counts = [_pixel_count(a, n) for a in fractions]
    b = _as_substrate(baseline, x, "baseline")
    rank = _saliency_rank(saliency.to(x.device))
    return _ranked_probs(logits_fn, x, b, rank, counts, target.to(x.device), batch_size, remove_top=False)


@torch.no_grad()
def auc(curve: Tensor) -> Tensor:
    """Area under a curve sampled at ``T+1`` evenly spaced points of ``[0,1]``, by the trapezoid rule.

    ``AUC(c) = (1/T)·(c_0/2 + c_1 + … + c_{T−1} + c_T/2)``; a constant curve ``c`` gives ``c``, the line
    ``0 → 1`` gives ``0.5``.

    Args:
        curve: values ``[..., T+1]`` (``T ≥ 1``) along the last dimension.

    Returns:
        the areas, shape ``curve.shape[:-1]``.
    """
    t = curve.shape[-1] - 1
    if t < 1:
        raise ValueError(f"a curve needs at least 2 points, got {curve.shape[-1]}")
    c = curve if curve.is_floating_point() else curve.float()
    return (c.sum(-1) - 0.5 * (c[..., 0] + c[..., -1])) / t


@torch.no_grad()
def deletion_insertion(
    logits_fn: LogitsFn,
    x: Tensor,
    saliency: Tensor,
    target: Tensor,
    deletion_substrate: Substrate,
    insertion_substrate: Substrate,
    steps: int = 32,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RISE deletion and insertion curves and their areas (Petsiuk et al. 2018, BMVC).

    With ``m_i = top_{round(i·H·W/T)}(s)`` for ``i = 0…T`` (``T = steps``; pixels ranked as in
    :func:`top_fraction_mask`, but ``m_0`` is empty):

    * deletion ``D_i = p_y((1−m_i)⊙x + m_i⊙b_del)`` — start from ``x`` and replace the most salient pixels
      first by the deletion substrate (RISE: a constant zero image); ``D_0 = p_y(x)``,
      ``D_T = p_y(b_del)``. Lower AUC is better.
    * insertion ``I_i = p_y(m_i⊙x + (1−m_i)⊙b_ins)`` — start from the insertion substrate (RISE: a blurred
      copy of ``x``) and insert the most salient pixels of ``x`` first; ``I_0 = p_y(b_ins)``,
      ``I_T = p_y(x)``. Higher AUC is better.

    Areas by :func:`auc` (trapezoid rule on ``[0,1]``). The ``2·B·(T+1)`` perturbed images are passed to
    ``logits_fn`` in chunks of ``batch_size``.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        saliency: saliency maps ``[B,H,W]`` (higher = more important).
        target: class indices ``[B]`` whose probability is tracked.
        deletion_substrate: what deleted pixels become, shaped like (or broadcastable to) ``x``, or an
            :class:`Imputer`.
        insertion_substrate: the image pixels are inserted into, shaped like (or broadcastable to) ``x``, or
            an :class:`Imputer` (it then imputes the pixels not yet inserted).
        steps: the number ``T ≥ 1`` of steps; curves have ``T+1`` points.
        batch_size: the most perturbed images passed to ``logits_fn`` at once.

    Returns:
        ``(deletion_auc [B], insertion_auc [B], deletion_curve [B,T+1], insertion_curve [B,T+1])``, float32
        on ``x``'s device.
    """
    _check_images(x, saliency, target)
    _check_batch_size(batch_size)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = x.shape[-2] * x.shape[-1]
    counts = [round(i * n / steps) for i in range(steps + 1)]
    b_del = _as_substrate(deletion_substrate, x, "deletion_substrate")
    b_ins = _as_substrate(insertion_substrate, x, "insertion_substrate")
    rank = _saliency_rank(saliency.to(x.device))
    y = target.to(x.device)
    deletion = _ranked_probs(logits_fn, x, b_del, rank, counts, y, batch_size, remove_top=True)
    insertion = _ranked_probs(logits_fn, x, b_ins, rank, counts, y, batch_size, remove_top=False)
    return auc(deletion), auc(insertion), deletion, insertion


@torch.no_grad()
def binary_evidence(
    logits_fn: LogitsFn, x: Tensor, mask: Tensor, target: Tensor, baseline: Substrate, batch_size: int = 256
) -> dict[str, Tensor]:
    """Sufficiency and necessity of a binary mask.

    ``p_kept = p_y(m⊙x + (1−m)⊙b)``, ``p_removed = p_y((1−m)⊙x + m⊙b)``, ``area = mean(m)``. A faithful mask
    has a high ``p_kept`` and a low ``p_removed`` at a small ``area``. With an :class:`Imputer` the removed
    pixels (``1−m`` for ``p_kept``, ``m`` for ``p_removed``) are imputed from the others instead.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        mask: bool masks ``[B,H,W]``, ``True`` = evidence kept.
        target: class indices ``[B]``.
        baseline: what replaces removed pixels: an image ``b`` shaped like (or broadcastable to) ``x``, or an
            :class:`Imputer`.
        batch_size: the most composite images passed to ``logits_fn`` at once.

    Returns:
        ``{"p_kept": [B], "p_removed": [B], "area": [B]}``, float32 on ``x``'s device.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    _check_images(x, mask, target)
    _check_batch_size(batch_size)
    m = mask.to(x.device)
    b = _as_substrate(baseline, x, "baseline")
    y = target.to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    p_kept = _removed_probs(logits_fn, x, b, y, rows, lambda sl: ~m[sl], batch_size)
    p_removed = _removed_probs(logits_fn, x, b, y, rows, lambda sl: m[sl], batch_size)
    return {"p_kept": p_kept, "p_removed": p_removed, "area": m.flatten(1).float().mean(1)}


@torch.no_grad()
def top_count_mask(saliency: Tensor, counts: Tensor | Sequence[int]) -> Tensor:
    """The ``k_i`` most salient pixels of map ``i``: ``top_{k_i}(s_i)``, a pixel count per image.

    Pixels are ranked as in :func:`top_fraction_mask` (decreasing saliency, ties by row-major index), so
    exactly ``k_i`` pixels are selected. Used to judge another map at a binary mask's own area: ``k_i`` is
    that mask's pixel count on image ``i``.

    Args:
        saliency: saliency maps ``[B,H,W]`` (higher = more important), no NaN.
        counts: pixel counts ``[B]``, each in ``[0, H·W]``.

    Returns:
        a bool tensor ``[B,H,W]`` on ``saliency``'s device.
    """
    _check_maps(saliency)
    b, h, w = saliency.shape
    k = torch.as_tensor(counts, device=saliency.device).flatten()
    if k.shape != (b,) or k.is_floating_point() or k.dtype == torch.bool:
        raise ValueError(f"counts must be {b} integers, got {tuple(k.shape)} {k.dtype}")
    if bool((k < 0).any()) or bool((k > h * w).any()):
        raise ValueError(f"counts must lie in [0, {h * w}], got {k.tolist()}")
    return (_saliency_rank(saliency) < k[:, None]).view(b, h, w)


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair of ``a``, ``b`` ``[B,N]`` (float64), ``NaN`` where a row is constant
    (its spread no more than rounding noise: ``Σ(a − ā)² ≤ N·(10⁻¹²·max|a|)²``)."""
    n = a.shape[1]
    scale_a, scale_b = a.abs().amax(1), b.abs().amax(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    var_a, var_b = (a * a).sum(1), (b * b).sum(1)
    r = ((a * b).sum(1) / torch.sqrt(var_a * var_b)).clamp(-1.0, 1.0)
    flat = (var_a <= n * (1e-12 * scale_a) ** 2) | (var_b <= n * (1e-12 * scale_b) ** 2)
    return torch.where(flat, torch.full_like(r, math.nan), r)


def _spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of each row pair (average ranks for ties), ``NaN`` where a row is constant."""
    return _pearson_rows(_average_ranks(a), _average_ranks(b))


@torch.no_grad()
def faithfulness_correlation(
    logits_fn: LogitsFn,
    x: Tensor,
    saliency: Tensor,
    target: Tensor,
    baseline: Substrate,
    n_subsets: int = 64,
    subset_fraction: float = 0.05,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and aggregating feature-based model
    explanations", IJCAI, eq. 3): does the attribution of a random set of pixels predict what removing
    them costs?

    ``μ_F = Pearson_{S_1…S_J}(Σ_{i∈S_j} s_i,  p_y(x) − p_y(x_{S_j←b}))`` over ``J = n_subsets`` subsets ``S_j`` of
    ``k = max(1, round(subset_fraction·H·W))`` pixels drawn uniformly without replacement; ``x_{S←b}`` is
    ``x`` with the pixels of ``S`` (all channels) taken from the baseline. 1 = the map's sums order and scale
    the effects exactly (up to an affine map), 0 = no linear relation. The signed map is summed, as in the
    paper.

    What differs from the paper: the effect is on the target's probability (the paper's ``f`` is the model's
    output, any of them); Bhatt et al. leave ``|S|`` and ``J`` free (Quantus: 224 pixels of a 224² image, 100
    subsets) — at 28–64 px a subset of 5 % of the pixels moves the probability above its numerical noise.
    The subsets are drawn on the CPU from a generator seeded with ``seed``, image after image, so every
    method scored on the same batch is judged on the same subsets.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        saliency: maps ``[B,H,W]`` (signed or not).
        target: class indices ``[B]``.
        baseline: what replaces removed pixels: an image ``b`` broadcastable to ``x``, or an :class:`Imputer`.
        n_subsets: the number ``J ≥ 2`` of random subsets per image.
        subset_fraction: ``|S|`` as a fraction of the pixels.
        seed: seeds the subsets.
        batch_size: the most composite images passed to ``logits_fn`` at once.

    Returns:
        ``μ_F`` ``[B]`` float32 in ``[−1, 1]``; ``NaN`` where it is undefined: a map whose subset sums are all
        equal (a constant map) or a model whose probability no subset moves (zero variance).
    """
    _check_images(x, saliency, target)
    _check_batch_size(batch_size)
    if n_subsets < 2:
        raise ValueError(f"n_subsets must be >= 2 (a correlation needs two points), got {n_subsets}")
    b, _, h, w = x.shape
    n = h * w
    k = _pixel_count(subset_fraction, n)
    gen = torch.Generator().manual_seed(seed)
    subsets = torch.zeros(b, n_subsets, n, dtype=torch.bool)
    for i in range(b):
        chosen = torch.rand(n_subsets, n, generator=gen).argsort(dim=1)[:, :k]
        subsets[i].scatter_(1, chosen, True)
    subsets = subsets.to(x.device)
    sal = saliency.to(x.device).flatten(1).double()
    sums = (subsets.double() * sal[:, None, :]).sum(-1)  # [B, J]
    y = target.to(x.device)
    sub = _as_substrate(baseline, x, "baseline")
    p0 = _target_probs(logits_fn, x, y).double()
    flat = subsets.view(b * n_subsets, h, w)
    rows = torch.arange(b, device=x.device).repeat_interleave(n_subsets)
    p = _removed_probs(logits_fn, x, sub, y, rows, lambda sl: flat[sl], batch_size).double().view(b, n_subsets)
    return _pearson_rows(sums, p0[:, None] - p).float()


@torch.no_grad()
def monotonicity(
    logits_fn: LogitsFn,
    x: Tensor,
    saliency: Tensor,
    target: Tensor,
    baseline: Substrate,
    groups: int = 32,
    batch_size: int = 256,
) -> Tensor:
    """Monotonicity correlation (Nguyen & Martínez 2020, "On quantitative aspects of model interpretability",
    arXiv 2007.07584, §3.2): do pixels with larger ``|s|`` matter more to the prediction, one group at a time?

    Pixels are ranked by increasing ``|s|`` (ties by row-major index) and cut into ``G = groups`` groups of
    consecutive ranks, ``g(i) = ⌊rank(i)·G / (H·W)⌋``. For each group, ``a_g = mean_{i∈g} |s_i|`` and
    ``e_g = |p_y(x) − p_y(x_{g←b})|`` (the group removed alone, the rest of ``x`` kept). The score is
    ``ρ = Spearman_g(a_g, e_g)``: 1 = the larger the attribution, the larger the effect of its pixels.

    What differs from the paper: Nguyen & Martínez correlate per feature ``|a_i|`` with the expected squared
    change ``E[(f(x) − f(x_{i←X_i}))²]`` under random draws of the feature; with a deterministic fill one
    draw is exact, and its square ranks like the absolute change used here. Groups of pixels instead of
    single pixels (as Quantus' ``features_in_step``) keep the cost at ``G`` model calls per image, and each
    group's attribution is its mean (its sum when the groups are equally large), so a constant map gives
    equal ``a_g``.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        saliency: maps ``[B,H,W]`` (their absolute values are used).
        target: class indices ``[B]``.
        baseline: what replaces removed pixels: an image ``b`` broadcastable to ``x``, or an :class:`Imputer`.
        groups: the number ``G`` of pixel groups, ``2 ≤ G ≤ H·W``.
        batch_size: the most composite images passed to ``logits_fn`` at once.

    Returns:
        ``ρ`` ``[B]`` float32 in ``[−1, 1]``; ``NaN`` where it is undefined: all ``a_g`` equal (a constant map)
        or all ``e_g`` equal (no group moves the probability).
    """
    _check_images(x, saliency, target)
    _check_batch_size(batch_size)
    b, _, h, w = x.shape
    n = h * w
    if not 2 <= groups <= n:
        raise ValueError(f"groups must lie in [2, {n}], got {groups}")
    magnitude = saliency.to(x.device).abs()
    rank = _saliency_rank(-magnitude)  # 0 = the smallest |s|
    group = rank * groups // n  # [B, N]
    one_hot = F.one_hot(group, groups).double()  # [B, N, G]
    a = (one_hot * magnitude.flatten(1).double()[:, :, None]).sum(1) / one_hot.sum(1)  # [B, G]
    y = target.to(x.device)
    sub = _as_substrate(baseline, x, "baseline")
    p0 = _target_probs(logits_fn, x, y).double()
    rows = torch.arange(b, device=x.device).repeat_interleave(groups)
    which = torch.arange(groups, device=x.device).repeat(b)

    def removed(sl: slice) -> Tensor:
        return (group[rows[sl]] == which[sl, None]).view(-1, h, w)

    p = _removed_probs(logits_fn, x, sub, y, rows, removed, batch_size).double().view(b, groups)
    return _spearman_rows(a, (p0[:, None] - p).abs()).float()


def _dilate(region: Tensor, tolerance: int) -> Tensor:
    """``region`` ``[B,H,W]`` bool dilated by a Euclidean disc of radius ``tolerance`` pixels."""
    if tolerance == 0:
        return region
    t = torch.arange(-tolerance, tolerance + 1, device=region.device)
    disc = ((t[:, None] ** 2 + t[None, :] ** 2) <= tolerance**2).float()
    hits = F.conv2d(region[:, None].float(), disc[None, None], padding=tolerance)
    return hits[:, 0] > 0.5


@torch.no_grad()
def pointing_game(saliency: Tensor, region: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): is the map's
    maximum inside the region?

    With ``M = {pixels where s = max s}`` and ``R⁺`` the region dilated by ``tolerance`` pixels (a pixel is in
    ``R⁺`` when its Euclidean distance to ``R`` is at most ``tolerance``), the score is
    ``|M ∩ R⁺| / |M|``: 1 or 0 for a unique maximum, and with ties at the maximum the expected hit under
    uniform random tie-breaking — so a constant map scores ``|R⁺|/(H·W)`` (chance).

    Args:
        saliency: saliency maps ``[B,H,W]`` (higher = more important), no NaN.
        region: ground-truth regions ``[B,H,W]`` bool.
        tolerance: dilation radius in pixels (``≥ 0``; Zhang et al. use 15 px at 224 px).

    Returns:
        scores ``[B]`` float32 in ``[0,1]``; ``NaN`` for an image whose region is empty.
    """
    _check_maps(saliency)
    _check_region(region, saliency)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    flat = saliency.flatten(1)
    at_max = flat == flat.max(dim=1, keepdim=True).values
    hit_region = _dilate(region.to(saliency.device), tolerance).flatten(1)
    score = (at_max & hit_region).sum(1).float() / at_max.sum(1).float()
    return torch.where(hit_region.any(1), score, torch.full_like(score, math.nan))


@torch.no_grad()
def topk_iou(saliency: Tensor, region: Tensor) -> Tensor:
    """IoU between the map's ``k = |R|`` most salient pixels and the region ``R``, per image.

    ``IoU = |top_k(s) ∩ R| / |top_k(s) ∪ R| = |top_k(s) ∩ R| / (2k − |top_k(s) ∩ R|)``, pixels ranked as in
    :func:`top_fraction_mask` (exactly ``k`` pixels, ties by row-major index).

    Args:
        saliency: saliency maps ``[B,H,W]`` (higher = more important), no NaN.
        region: ground-truth regions ``[B,H,W]`` bool.

    Returns:
        IoU ``[B]`` float32 in ``[0,1]``; ``NaN`` for an image whose region is empty.
    """
    _check_maps(saliency)
    _check_region(region, saliency)
    r = region.to(saliency.device).flatten(1)
    k = r.sum(1)
    top = _saliency_rank(saliency) < k[:, None]
    inter = (top & r).sum(1).float()
    iou = inter / (2 * k.float() - inter)
    return torch.where(k > 0, iou, torch.full_like(iou, math.nan))


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``[B,N]`` along dim 1 (0-based), tied values sharing the mean of their positions."""
    n = values.shape[1]
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    pos = torch.arange(n, device=values.device).expand_as(order)
    new_group = torch.ones_like(order, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    last_of_group = torch.ones_like(new_group)
    last_of_group[:, :-1] = new_group[:, 1:]
    first = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(1).values
    last = torch.where(last_of_group, pos, torch.full_like(pos, n - 1)).flip(1).cummin(1).values.flip(1)
    mean_rank = (first + last).to(torch.float64) / 2
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


@torch.no_grad()
def spearman(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    """Spearman rank correlation per image between two maps: ``ρ = Pearson(rank(a), rank(b))``.

    Maps are flattened; tied values get the average of the ranks they span (as ``scipy.stats.spearmanr``).
    Adebayo et al. 2018 report it both on the maps and on their absolute values (``absolute=True``). Ranks
    are computed in float64.

    Args:
        a: maps ``[B,H,W]``, no NaN.
        b: maps ``[B,H,W]``, same shape as ``a``, no NaN.
        absolute: correlate ``|a|`` and ``|b|`` instead.

    Returns:
        ``ρ`` ``[B]`` float32 in ``[−1,1]``; ``NaN`` for an image where either map is constant (the rank
        variance is 0, so the correlation is undefined).
    """
    _check_maps(a, "a")
    _check_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.flatten(1), b.to(a.device).flatten(1)
    if absolute:
        fa, fb = fa.abs(), fb.abs()
    return _spearman_rows(fa, fb).float()


# ------------------------------------------------------------------------------------ model randomization


def cascade_checkpoints(n_modules: int, n_stages: int) -> list[int]:
    """Evenly spaced stages of a cascade: how many modules are randomized at each, always ending with all.

    Stage ``j = 1…S`` (``S = min(n_stages, n_modules)``) is ``round(j·n/S)`` (halves to even), a 1-based count
    of randomized modules, i.e. the ``round(j·n/S)``-th item of :func:`cascading_randomization`. Example:
    ``cascade_checkpoints(20, 4) == [5, 10, 15, 20]``.

    Args:
        n_modules: the number ``n ≥ 1`` of parameterized modules in the cascade.
        n_stages: the number of stages wanted (``≥ 1``); more than ``n`` gives every module.

    Returns:
        the strictly increasing counts, the last being ``n_modules``.
    """
    if n_modules < 1 or n_stages < 1:
        raise ValueError(f"n_modules and n_stages must be >= 1, got {n_modules} and {n_stages}")
    s = min(n_stages, n_modules)
    return [round(j * n_modules / s) for j in range(1, s + 1)]


def _unit_range(maps: Tensor) -> Tensor:
    """Each map min–max scaled to ``[0, 1]`` (float64); a constant map becomes zeros."""
    flat = maps.flatten(1).double()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return scaled.view(maps.shape)


def map_ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity (SSIM; Wang, Bovik, Sheikh & Simoncelli 2004, IEEE TIP) of two maps per image, the
    third similarity of Adebayo et al. 2018's sanity check beside Spearman with and without absolute values.

    Each map is first min–max scaled to ``[0, 1]`` (a constant map becomes zeros), because maps of different
    stages live on different scales; then ``SSIM = mean_windows [(2μ_aμ_b + C₁)(2σ_ab + C₂) /
    ((μ_a² + μ_b² + C₁)(σ_a² + σ_b² + C₂))]`` with ``C₁ = (0.01·L)²``, ``C₂ = (0.03·L)²``, ``L = 1``, over 7×7
    uniform windows — scikit-image's ``structural_similarity`` with ``data_range=1``, run unchanged.
    Identical maps give 1 (two constant maps are identical after scaling).

    Args:
        a: maps ``[B,H,W]``, no NaN, ``H, W ≥ 7``.
        b: maps ``[B,H,W]``, same shape.

    Returns:
        SSIM ``[B]`` float32 in ``[−1, 1]`` on ``a``'s device.

    Raises:
        ImportError: scikit-image is not installed (``pip install 'medcam-fast[baselines]'``).
        ValueError: shapes differ or a side is below 7.
    """
    _check_maps(a, "a")
    _check_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < 7:
        raise ValueError(f"SSIM's 7×7 window needs maps of at least 7×7, got {tuple(a.shape[-2:])}")
    try:
        from skimage.metrics import structural_similarity
    except ImportError as e:
        raise ImportError(f"SSIM needs scikit-image ({e}); install it: pip install 'medcam-fast[baselines]'") from e
    sa, sb = _unit_range(a.detach().cpu()).numpy(), _unit_range(b.detach().cpu()).numpy()
    values = [float(structural_similarity(u, v, data_range=1.0)) for u, v in zip(sa, sb, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=a.device)


# ---------------------------------------------------------------------------------------------- readability


class Pieces(NamedTuple):
    """The 8-connected pieces of binary masks (see :func:`connected_pieces`)."""

    count: Tensor  #: pieces per mask ``[B]`` (int64; 0 for an empty mask)
    largest_fraction: Tensor  #: pixels of the largest piece ÷ pixels of the mask ``[B]`` (NaN for an empty mask)


def connected_pieces(mask: Tensor) -> Pieces:
    """How many 8-connected pieces a binary mask has, and how much of it lies in the largest.

    Two mask pixels belong to one piece when a path of mask pixels joins them, each step to one of the 8
    neighbours (``scipy.ndimage.label`` with a 3×3 structuring element of ones). A region a reader can
    point at is one piece (fraction 1); speckle is many pieces with a small largest fraction.

    Args:
        mask: bool masks ``[B,H,W]``.

    Returns:
        :class:`Pieces` of CPU tensors.
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f"mask must be a bool tensor [B,H,W], got {mask.dtype} {tuple(mask.shape)}")
    from scipy import ndimage

    structure = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    counts, fractions = [], []
    for m in mask.detach().cpu().numpy():
        labels, n = ndimage.label(m, structure=structure)
        counts.append(int(n))
        sizes = [int((labels == j).sum()) for j in range(1, n + 1)]
        fractions.append(max(sizes) / int(m.sum()) if n else math.nan)
    return Pieces(torch.tensor(counts, dtype=torch.long), torch.tensor(fractions, dtype=torch.float32))


#: A mask whose :func:`lattice_score` reaches this is flagged as a periodic lattice. Measured on 64-px masks:
#: a dot lattice of period 4 scores 273, stripes of period 8 score 1748, a dot lattice confined to a disc five
#: periods wide 16; discs, squares, bands and rings score below 3.5 at every stride from 2 to 16. Unstructured
#: speckle (each pixel kept with probability 0.05–0.3, 1000 masks each at 28 and 64 px, at the classifiers'
#: strides) has median 2–3 and 99.9th percentile 10: about 1 speckle mask in 1000 is flagged (the Nyquist rows
#: of a real mask's spectrum have a heavy χ²₁ tail). The meta-trained first guesses of 0.1 — rows of stripes
#: two pixels apart inside a region, i.e. the 4th harmonic of stride 8 — score 7–31.
LATTICE_THRESHOLD = 10.0


def lattice_score(mask: Tensor, stride: int) -> Tensor:
    """How strongly a binary mask repeats with the period of a stride: the spectral peak at the stride's
    harmonics over the power between them and the mask's mean power.

    With ``m̃ = m − mean(m)`` and ``P = |DFT₂(m̃)|²`` on the ``H×W`` frequency grid (``P`` is 0 at frequency 0),
    the harmonics of the period ``s = stride`` are ``h = (round(a·H/s) mod H, round(b·W/s) mod W)`` for
    ``a, b ∈ {0…s−1}``, not both 0, and each harmonic's midpoints are the four frequencies half a harmonic
    away, ``h ± (round(H/2s), 0)`` and ``h ± (0, round(W/2s))``. The score is

        ``max_h P(h) / (mean_{midpoints of h} P + mean_{f≠0} P)``.

    A lattice of dots or stripes with period ``s`` over many periods — the checkerboard a decoder or a
    classifier of stride ``s`` can imprint on a mask — has a comb spectrum: peaks at the harmonics, nothing
    between them, so it scores far above :data:`LATTICE_THRESHOLD`. A region's spectrum is smooth on the
    scale of one harmonic spacing (its midpoints carry as much power as the harmonic), so it scores about 1
    or less even where a low harmonic falls inside its main lobe; the mean power in the denominator keeps
    noise from scoring by a chance gap at the midpoints. Not a lattice but flagged all the same: two blobs exactly one
    stride apart (a comb of two teeth).

    Args:
        mask: bool masks ``[B,H,W]``.
        stride: the period ``s`` in pixels, ``2 ≤ s ≤ min(H, W)/2``.

    Returns:
        scores ``[B]`` float32 ``≥ 0`` on the CPU; ``NaN`` for an empty or full mask (no spectrum).
    """
    if mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError(f"mask must be a bool tensor [B,H,W], got {mask.dtype} {tuple(mask.shape)}")
    _, h, w = mask.shape
    if not 2 <= stride <= min(h, w) / 2:
        raise ValueError(f"stride must lie in [2, {min(h, w) // 2}] for {h}×{w} masks, got {stride}")
    m = mask.detach().cpu().double()
    m = m - m.mean((1, 2), keepdim=True)
    power = torch.fft.fft2(m).abs() ** 2  # [B, H, W]
    mean_power = power.flatten(1).sum(1) / (h * w - 1)
    dr, dc = round(h / (2 * stride)), round(w / (2 * stride))
    scores = []
    for a in range(stride):
        for b in range(stride):
            if a == 0 and b == 0:
                continue
            r, c = round(a * h / stride) % h, round(b * w / stride) % w
            if r == 0 and c == 0:
                continue
            mid = (power[:, (r + dr) % h, c] + power[:, (r - dr) % h, c] + power[:, r, (c + dc) % w]
                   + power[:, r, (c - dc) % w]) / 4
            scores.append(power[:, r, c] / (mid + mean_power).clamp_min(1e-300))
    score = torch.stack(scores, 1).amax(1)
    return torch.where(mean_power > 1e-12, score, torch.full_like(score, math.nan)).float()


# ------------------------------------------------------------------------------------- paired comparison


class PairedDifference(NamedTuple):
    """Method ``a`` against method ``b`` on the same images (see :func:`paired_difference`)."""

    mean: float  #: ``Δ = mean_i (a_i − b_i)``
    low: float  #: 2.5th percentile of the bootstrap means
    high: float  #: 97.5th percentile of the bootstrap means
    wins: int  #: images with ``a_i > b_i``
    n: int  #: images compared
    p_value: float  #: two-sided sign-flip (paired permutation) p-value of "no difference"


#: Up to this many images the sign-flip test enumerates all ``2ⁿ`` sign vectors (exact); above, it draws.
_EXACT_SIGN_FLIPS = 12


def _sign_flip_p(d: Tensor, n_draws: int, gen: torch.Generator) -> float:
    """Two-sided paired permutation p-value of ``|mean(d)|`` under random sign flips of the ``d_i``."""
    n = d.numel()
    observed = float(d.mean().abs())
    tol = 1e-12 * max(1.0, float(d.abs().max()))
    if n <= _EXACT_SIGN_FLIPS:
        codes = torch.arange(2**n)[:, None]
        signs = 1.0 - 2.0 * ((codes >> torch.arange(n)[None, :]) & 1).to(torch.float64)
        stats = (signs * d[None, :]).mean(1).abs()
        return float((stats >= observed - tol).double().mean())
    signs = 1.0 - 2.0 * torch.randint(0, 2, (n_draws, n), generator=gen).to(torch.float64)
    stats = (signs * d[None, :]).mean(1).abs()
    return (int((stats >= observed - tol).sum()) + 1) / (n_draws + 1)


def paired_difference(a: Tensor | Sequence[float], b: Tensor | Sequence[float], n_boot: int = 10000,
                      seed: int = 0) -> PairedDifference:
    """Mean per-image difference ``a − b`` with a percentile-bootstrap 95 % interval and a p-value.

    ``Δ = (1/n)·Σ_i (a_i − b_i)``; the interval is the 2.5th and 97.5th percentiles of
    ``Δ*_j = (1/n)·Σ_i d_{I_ji}`` over ``j = 1…B`` resamples ``I_j`` of the ``n`` indices, drawn with
    replacement from a generator seeded with ``seed`` (so the interval is reproducible). An interval that
    excludes 0 says the ordering of the two methods is not an accident of which images were drawn.

    The p-value is the paired permutation (sign-flip) test's (Fisher 1935; Good 2005, §3.1): under "no
    difference" each ``d_i = a_i − b_i`` is as likely to have either sign, so
    ``p = P_ε(|mean_i ε_i d_i| ≥ |Δ|)`` over independent random signs ``ε_i = ±1`` — enumerated exactly for
    ``n ≤ 12`` (``2ⁿ`` sign vectors), else estimated from ``B`` seeded draws as ``(#{≥} + 1)/(B + 1)``. Unlike a
    bootstrap p-value it cannot call a difference on a handful of images significant: with ``n`` images
    ``p ≥ 2/2ⁿ`` (1 for one image). It is what :func:`holm` corrects when a table makes many comparisons.

    Args:
        a: per-image scores of the first method ``[n]``.
        b: per-image scores of the second method on the same images, in the same order ``[n]``.
        n_boot: bootstrap resamples ``B`` (≥ 1), also the number of sign draws above 12 images.
        seed: seeds the resampling and the sign draws.

    Returns:
        a :class:`PairedDifference`.

    Raises:
        ValueError: shapes differ, fewer than one image, a NaN, or ``n_boot < 1``.
    """
    ta = torch.as_tensor(a, dtype=torch.float64).flatten().cpu()
    tb = torch.as_tensor(b, dtype=torch.float64).flatten().cpu()
    if ta.shape != tb.shape or ta.numel() == 0:
        raise ValueError(f"paired scores need two equally long non-empty lists, got {ta.numel()} and {tb.numel()}")
    if torch.isnan(ta).any() or torch.isnan(tb).any():
        raise ValueError("paired scores contain NaN")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = ta - tb
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d.numel(), (n_boot, d.numel()), generator=gen)
    means = d[idx].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    p = _sign_flip_p(d, n_boot, gen)
    return PairedDifference(float(d.mean()), low, high, int((d > 0).sum()), int(d.numel()), p)


class Holm(NamedTuple):
    """Holm-corrected p-values of a family of comparisons (see :func:`holm`)."""

    adjusted: list[float]  #: the adjusted p-values, in the order given
    reject: list[bool]  #: ``adjusted ≤ α``: the differences that survive the correction


def holm(p_values: Sequence[float], alpha: float = 0.05) -> Holm:
    """Holm's step-down correction (Holm 1979, "A simple sequentially rejective multiple test procedure",
    Scand. J. Statist. 6:65–70): controls the chance of *any* false difference in a family of ``m``
    comparisons at ``α``, uniformly more powerful than Bonferroni.

    Sort the p-values ``p_(1) ≤ … ≤ p_(m)``; the adjusted values are
    ``p̃_(j) = max_{i ≤ j} min(1, (m − i + 1)·p_(i))``, and the comparisons with ``p̃ ≤ α`` are rejected — i.e.
    reject ``p_(1)`` if ``p_(1) ≤ α/m``, then ``p_(2)`` if ``p_(2) ≤ α/(m−1)``, …, stopping at the first that
    fails. Ties keep their given order.

    Args:
        p_values: one p-value per comparison, each in ``[0, 1]`` (an empty family is allowed).
        alpha: the family-wise error rate.

    Returns:
        a :class:`Holm` with the adjusted p-values and the rejections, in the order given.
    """
    ps = [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in ps):  # also refuses NaN
        raise ValueError(f"p-values must lie in [0, 1], got {ps}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * ps[i]))
        adjusted[i] = running
    return Holm(adjusted, [a <= alpha for a in adjusted])
