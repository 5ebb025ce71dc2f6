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
  input layer, one stage per item of :func:`parameterized_modules`; :func:`cascade_checkpoints` picks
  evenly spaced stages of the cascade.

Comparing two methods on the same images:

* :func:`paired_difference` — the mean per-image difference ``Δ = (1/n)·Σ_i (a_i − b_i)`` with a percentile
  bootstrap 95 % interval (Efron & Tibshirani 1993, ch. 13: resample the ``n`` image indices with
  replacement ``B`` times, take the 2.5 and 97.5 percentiles of the resampled means) and the number of
  images where ``a_i > b_i``. Pairing removes the variation between images that both methods share.

Every function is batched, device-agnostic (new tensors are created on the inputs' device, results are
returned there) and runs under :func:`torch.no_grad`. Invalid arguments raise :class:`ValueError`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LogitsFn",
    "top_fraction_mask",
    "preservation_at_area",
    "deletion_insertion",
    "auc",
    "binary_evidence",
    "pointing_game",
    "topk_iou",
    "spearman",
    "cascading_randomization",
    "parameterized_modules",
    "cascade_checkpoints",
    "PairedDifference",
    "paired_difference",
]

#: A model: normalized images ``[B,C,H,W]`` in, logits ``[B,K]`` out.
LogitsFn = Callable[[Tensor], Tensor]


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


def _as_substrate(sub: Tensor, x: Tensor, name: str) -> Tensor:
    """``sub`` moved to ``x``'s device and dtype and expanded to ``x``'s shape (a view, no copy)."""
    aligned = zip(reversed(sub.shape), reversed(x.shape), strict=False)
    if sub.dim() > x.dim() or any(s not in (1, n) for s, n in aligned):
        raise ValueError(f"{name} of shape {tuple(sub.shape)} does not broadcast to x's {tuple(x.shape)}")
    return sub.to(device=x.device, dtype=x.dtype).expand_as(x)


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


def _top_from_probs(
    logits_fn: LogitsFn,
    top_source: Tensor,
    rest_source: Tensor,
    rank: Tensor,
    counts: Sequence[int],
    target: Tensor,
    batch_size: int,
) -> Tensor:
    """``p_y`` of the ``B·S`` composites whose top-``counts[j]`` pixels come from ``top_source``, the rest from
    ``rest_source``; run in chunks of ``batch_size``. Returns ``[B, S]``."""
    b, _, h, w = top_source.shape
    s = len(counts)
    device = top_source.device
    image_index = torch.arange(b, device=device).repeat_interleave(s)
    pixel_counts = torch.as_tensor(list(counts), dtype=torch.long, device=device).repeat(b)
    out = torch.empty(b * s, dtype=torch.float32, device=device)
    for start in range(0, b * s, batch_size):
        idx = image_index[start:start + batch_size]
        top = (rank[idx] < pixel_counts[start:start + batch_size, None]).view(-1, 1, h, w)
        composite = torch.where(top, top_source[idx], rest_source[idx])
        out[start:start + batch_size] = _target_probs(logits_fn, composite, target[idx])
    return out.view(b, s)


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
    baseline: Tensor,
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
        baseline: the image ``b`` that replaces removed pixels, shaped like (or broadcastable to) ``x``.
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
    return _top_from_probs(logits_fn, x, b, rank, counts, target.to(x.device), batch_size)


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
    deletion_substrate: Tensor,
    insertion_substrate: Tensor,
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
        deletion_substrate: what deleted pixels become, shaped like (or broadcastable to) ``x``.
        insertion_substrate: the image pixels are inserted into, shaped like (or broadcastable to) ``x``.
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
    deletion = _top_from_probs(logits_fn, b_del, x, rank, counts, y, batch_size)
    insertion = _top_from_probs(logits_fn, x, b_ins, rank, counts, y, batch_size)
    return auc(deletion), auc(insertion), deletion, insertion


@torch.no_grad()
def binary_evidence(
    logits_fn: LogitsFn, x: Tensor, mask: Tensor, target: Tensor, baseline: Tensor
) -> dict[str, Tensor]:
    """Sufficiency and necessity of a binary mask.

    ``p_kept = p_y(m⊙x + (1−m)⊙b)``, ``p_removed = p_y((1−m)⊙x + m⊙b)``, ``area = mean(m)``. A faithful mask
    has a high ``p_kept`` and a low ``p_removed`` at a small ``area``.

    Args:
        logits_fn: the model, ``[n,C,H,W] -> [n,K]`` logits.
        x: normalized images ``[B,C,H,W]``.
        mask: bool masks ``[B,H,W]``, ``True`` = evidence kept.
        target: class indices ``[B]``.
        baseline: the image ``b`` that replaces removed pixels, shaped like (or broadcastable to) ``x``.

    Returns:
        ``{"p_kept": [B], "p_removed": [B], "area": [B]}``, float32 on ``x``'s device.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    _check_images(x, mask, target)
    m = mask.to(x.device)[:, None]
    b = _as_substrate(baseline, x, "baseline")
    y = target.to(x.device)
    p_kept = _target_probs(logits_fn, torch.where(m, x, b), y)
    p_removed = _target_probs(logits_fn, torch.where(m, b, x), y)
    return {"p_kept": p_kept, "p_removed": p_removed, "area": m.flatten(1).float().mean(1)}


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
    ra, rb = _average_ranks(fa), _average_ranks(fb)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    var_a, var_b = (ra * ra).sum(1), (rb * rb).sum(1)
    rho = ((ra * rb).sum(1) / torch.sqrt(var_a * var_b)).clamp(-1.0, 1.0)
    undefined = (var_a == 0) | (var_b == 0)
    return torch.where(undefined, torch.full_like(rho, math.nan), rho).float()


# ------------------------------------------------------------------------------------ model randomization


def parameterized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules that own parameters directly (``parameters(recurse=False)``), in
    ``named_modules()`` order: the stages of :func:`cascading_randomization`, input end first."""
    return [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def _module_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from ``(seed, module name)``, stable across processes and platforms."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _randomize_module(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters in place, reproducibly, leaving buffers and the global RNG alone.

    The new values are drawn on the CPU (so they are the same on every device) and copied into the
    parameters: ``reset_parameters()`` of a CPU copy of the module when it has one, else ``N(0, 0.02²)``
    for weights and zeros for parameters whose name contains ``"bias"``.
    """
    own = dict(module.named_parameters(recurse=False))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        if callable(getattr(module, "reset_parameters", None)):
            scratch = copy.deepcopy(module).to("cpu")
            getattr(scratch, "reset_parameters")()  # noqa: B009 — nn.Module does not declare it
            fresh = dict(scratch.named_parameters(recurse=False))
        else:
            generator = torch.Generator().manual_seed(seed)
            fresh = {
                name: torch.zeros(p.shape) if "bias" in name else 0.02 * torch.randn(p.shape, generator=generator)
                for name, p in own.items()
            }
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(fresh[name].to(device=p.device, dtype=p.dtype))


def cascading_randomization(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Cascading model-parameter randomization (Adebayo et al. 2018, "Sanity checks for saliency maps").

    ``model`` is deep-copied once; the copy's parameterized modules — those owning parameters directly
    (``parameters(recurse=False)``: Conv, Linear, norm layers, a ViT's own tokens…) — are re-initialized
    one at a time from the output end (last in ``named_modules()`` order, i.e. registration order, which
    usually matches the data flow) to the input end. After each, ``(name, copy)`` is yielded: the stage is
    cumulative, every module from the output down to ``name`` being randomized.

    Re-initialization: ``reset_parameters()`` when the module has one (for a norm layer this sets the affine
    ``γ = 1, β = 0``), else ``N(0, 0.02²)`` for weights and zeros for parameters named ``*bias*``. Only the
    module's own parameters change: buffers, such as BatchNorm running statistics, are kept (Adebayo et al.
    randomize the learned weights). Each module's draw is seeded from ``(seed, name)`` and made on the CPU,
    so it is reproducible and device-independent; the global RNG state is left unchanged
    (:func:`torch.random.fork_rng`).

    The copy is in eval mode, its parameters keep ``model``'s ``requires_grad``, and ``model`` itself is
    never modified. The gradient mode of the caller is not changed between yields (saliency methods may
    back-propagate through the copy).

    Warning:
        Every yield returns the *same* copy, mutated in place: use it (compute the saliency maps) before
        advancing the iterator, and ``copy.deepcopy`` it to keep a stage.

    Args:
        model: the trained model (left untouched).
        seed: the seed of the re-initializations.

    Returns:
        an iterator of ``(module name, randomized copy)``, one per parameterized module, output end first.

    Raises:
        ValueError: ``model`` has no parameters (raised at once, not on the first ``next``).
    """
    if not parameterized_modules(model):
        raise ValueError("the model has no parameters to randomize")
    return _cascade(model, seed)


def _cascade(model: nn.Module, seed: int) -> Iterator[tuple[str, nn.Module]]:
    randomized = copy.deepcopy(model)
    randomized.eval()
    for name, module in reversed(parameterized_modules(randomized)):
        _randomize_module(module, _module_seed(seed, name))
        yield name, randomized


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


# ------------------------------------------------------------------------------------- paired comparison


class PairedDifference(NamedTuple):
    """Method ``a`` against method ``b`` on the same images (see :func:`paired_difference`)."""

    mean: float  #: ``Δ = mean_i (a_i − b_i)``
    low: float  #: 2.5th percentile of the bootstrap means
    high: float  #: 97.5th percentile of the bootstrap means
    wins: int  #: images with ``a_i > b_i``
    n: int  #: images compared


def paired_difference(a: Tensor | Sequence[float], b: Tensor | Sequence[float], n_boot: int = 10000,
                      seed: int = 0) -> PairedDifference:
    """Mean per-image difference ``a − b`` with a percentile-bootstrap 95 % interval.

    ``Δ = (1/n)·Σ_i (a_i − b_i)``; the interval is the 2.5th and 97.5th percentiles of
    ``Δ*_j = (1/n)·Σ_i d_{I_ji}`` over ``j = 1…B`` resamples ``I_j`` of the ``n`` indices, drawn with
    replacement from a generator seeded with ``seed`` (so the interval is reproducible). An interval that
    excludes 0 says the ordering of the two methods is not an accident of which images were drawn.

    Args:
        a: per-image scores of the first method ``[n]``.
        b: per-image scores of the second method on the same images, in the same order ``[n]``.
        n_boot: bootstrap resamples ``B`` (≥ 1).
        seed: seeds the resampling.

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
    return PairedDifference(float(d.mean()), low, high, int((d > 0).sum()), int(d.numel()))
