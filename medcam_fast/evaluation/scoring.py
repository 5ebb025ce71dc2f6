"""Scoring one data set's maps: every metric of :mod:`.metrics` under every fill, the controls, the binary
masks' readability, the comparison at a binary mask's own area, and the paired comparisons with their Holm
correction. Pure measurement on tensors already computed: no files, no explainers (the harness runs the
methods and caches what this returns).

Every number is kept per image (``per_image``, JSON-safe, ``None`` where a metric is undefined), so the
paired comparisons and any later table are computed from the same values as the means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..classifiers.frozen import FrozenClassifier
from ..data.preprocess import Preprocess
from ._peers import PeerUnavailable
from .controls import random_blob
from .fills import Fill, substrate
from .metrics import (
    LATTICE_THRESHOLD,
    Substrate,
    binary_evidence,
    connected_pieces,
    deletion_insertion,
    faithfulness_correlation,
    holm,
    lattice_score,
    monotonicity,
    paired_difference,
    pointing_game,
    preservation_at_area,
    top_count_mask,
    topk_iou,
)

__all__ = [
    "ScoreSettings", "Fills", "make_fills", "Evidence", "score_map", "score_binary", "readability",
    "classifier_strides", "fill_alone", "own_area", "PairedSpec", "paired_family", "mean", "values",
]


@dataclass(frozen=True)
class ScoreSettings:
    """What scoring a map depends on (the harness takes them from its :class:`~.harness.EvalConfig`).

    Args:
        fractions: kept areas of the preservation game.
        curve_steps: points of the deletion/insertion curves minus one.
        fc_subsets: random subsets of faithfulness correlation.
        fc_fraction: their size, as a fraction of the pixels.
        monotonicity_groups: pixel groups of monotonicity.
        seed: seeds the subsets.
        batch_size: composites per classifier call.
    """

    fractions: tuple[float, ...]
    curve_steps: int
    fc_subsets: int
    fc_fraction: float
    monotonicity_groups: int
    seed: int = 0
    batch_size: int = 256


@dataclass
class Fills:
    """A data set's fills: the substrate of each usable fill, in the run's order, and why the others were left
    out (noisy linear imputation needs grad-cam)."""

    substrates: dict[Fill, Substrate]
    skipped: dict[Fill, str] = field(default_factory=dict)


def make_fills(fills: Sequence[Fill], x: Tensor, preprocess: Preprocess, seed: int) -> Fills:
    """The substrates of ``fills`` for the images ``x``; a fill that cannot be built is recorded as skipped."""
    out = Fills({})
    for f in fills:
        try:
            out.substrates[f] = substrate(f, x, preprocess.mean, preprocess.std, seed=seed)
        except PeerUnavailable as e:
            out.skipped[f] = str(e)
    return out


@dataclass
class Evidence:
    """The images whose true evidence is known (``rows`` into the batch) and that evidence ``[len(rows),H,W]``."""

    rows: Tensor
    masks: Tensor


def mean(t: Tensor) -> float | None:
    """The mean over the defined (non-NaN) values, None when there is none."""
    t = t.detach().double().cpu()
    t = t[~torch.isnan(t)]
    return float(t.mean()) if t.numel() else None


def _sem(t: Tensor) -> float | None:
    t = t.detach().double().cpu()
    t = t[~torch.isnan(t)]
    return float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else None


def values(t: Tensor) -> list[float | None]:
    """Per-image scores for ``results.json``: rounded to 6 digits, ``None`` where undefined (NaN)."""
    return [None if math.isnan(v) else round(v, 6) for v in t.detach().double().cpu().tolist()]


def _undefined(t: Tensor) -> int:
    return int(torch.isnan(t).sum())


def score_map(clf: FrozenClassifier, x: Tensor, target: Tensor, saliency: Tensor, fills: Fills,
              settings: ScoreSettings, evidence: Evidence | None = None) -> dict[str, Any]:
    """Every map metric of one method under every fill, plus localization when the evidence is known.

    Under an image fill (zero, mean, blur): preservation at each area (keep a %), deletion and insertion AUC
    (both with that fill), faithfulness correlation and monotonicity. Under noisy linear imputation: keep a %
    only — each composite is a sparse solve on the CPU, and ROAD (run separately, :mod:`.road`) is that fill's
    deletion metric; a curve of 33 imputations per image or 64 random subsets would take minutes per method.

    Returns:
        ``{"fills": {fill: {means…}}, "per_image": {"fills": {fill: {…}}, "pointing"?, "iou"?},
        "localization_n"?, "pointing"?, "iou"?}``.
    """
    s = settings
    logits = clf.logits
    out: dict[str, Any] = {"fills": {}, "per_image": {"fills": {}}}
    for f, sub in fills.substrates.items():
        pres = preservation_at_area(logits, x, saliency, target, sub, s.fractions, batch_size=s.batch_size)
        res: dict[str, Any] = {
            "preservation": {f"{a:g}": mean(pres[:, j]) for j, a in enumerate(s.fractions)},
            "preservation_sem": {f"{a:g}": _sem(pres[:, j]) for j, a in enumerate(s.fractions)},
        }
        per: dict[str, Any] = {"keep": {f"{a:g}": values(pres[:, j]) for j, a in enumerate(s.fractions)}}
        if f.is_image:
            d_auc, i_auc, d_curve, i_curve = deletion_insertion(logits, x, saliency, target, sub, sub,
                                                                steps=s.curve_steps, batch_size=s.batch_size)
            fc = faithfulness_correlation(logits, x, saliency, target, sub, n_subsets=s.fc_subsets,
                                          subset_fraction=s.fc_fraction, seed=s.seed, batch_size=s.batch_size)
            mono = monotonicity(logits, x, saliency, target, sub, groups=s.monotonicity_groups,
                                batch_size=s.batch_size)
            res.update(deletion_auc=mean(d_auc), insertion_auc=mean(i_auc),
                       deletion_curve=d_curve.mean(0).tolist(), insertion_curve=i_curve.mean(0).tolist(),
                       faithfulness_correlation=mean(fc), faithfulness_undefined=_undefined(fc),
                       monotonicity=mean(mono), monotonicity_undefined=_undefined(mono))
            per.update(deletion_auc=values(d_auc), insertion_auc=values(i_auc), faithfulness_correlation=values(fc),
                       monotonicity=values(mono))
        out["fills"][str(f)] = res
        out["per_image"]["fills"][str(f)] = per
    if evidence is not None:
        out["localization_n"] = int(evidence.rows.numel())
        if evidence.rows.numel():
            sal = saliency[evidence.rows.to(saliency.device)]
            pointing, iou = pointing_game(sal, evidence.masks), topk_iou(sal, evidence.masks)
            out["pointing"], out["iou"] = mean(pointing), mean(iou)
            out["per_image"].update(pointing=values(pointing), iou=values(iou))
        else:
            out["pointing"] = out["iou"] = None
    return out


def score_binary(clf: FrozenClassifier, x: Tensor, target: Tensor, binary: Tensor, fills: Fills,
                 batch_size: int = 256) -> tuple[dict[str, Any], dict[str, Any]]:
    """A binary mask's verdict under every fill: ``({fill: {p_kept, p_removed, area}}, per-image values)``."""
    means: dict[str, Any] = {}
    per: dict[str, Any] = {}
    for f, sub in fills.substrates.items():
        ev = binary_evidence(clf.logits, x, binary, target, sub, batch_size=batch_size)
        means[str(f)] = {k: mean(v) for k, v in ev.items()}
        per[str(f)] = {k: values(v) for k, v in ev.items() if k != "area"}
    return means, per


def classifier_strides(clf: FrozenClassifier, x: Tensor) -> list[int]:
    """The down-sampling periods of the classifier's recorded layers with spatial feature maps: ``round(H/h)``
    for each ``[B,C,h,w]`` activation (a ResNet at 64 px: layer3 → 8, layer4 → 16), keeping those
    :func:`~.metrics.lattice_score` can resolve (2 … min(H, W)/2), without repeats."""
    with torch.no_grad():
        acts = clf(x[:1]).activations
    h, w = x.shape[-2:]
    strides = []
    for a in acts.values():
        if a.dim() == 4 and a.shape[-2] > 0:
            s = round(h / a.shape[-2])
            if 2 <= s <= min(h, w) / 2 and s not in strides:
                strides.append(int(s))
    return strides


def readability(binary: Tensor, strides: Sequence[int]) -> dict[str, Any]:
    """How readable binary masks are: median 8-connected pieces, median fraction in the largest piece, and the
    periodic-lattice check at each stride (median score, fraction of masks at or above
    :data:`~.metrics.LATTICE_THRESHOLD`; the fraction counts a mask flagged at any stride)."""
    pieces = connected_pieces(binary.cpu())
    out: dict[str, Any] = {
        "pieces_median": _median(pieces.count.double()),
        "largest_fraction_median": _median(pieces.largest_fraction.double()),
        "strides": list(strides),
        "lattice_threshold": LATTICE_THRESHOLD,
        "per_image": {"pieces": [int(v) for v in pieces.count], "largest_fraction": values(pieces.largest_fraction)},
    }
    if strides:
        scores = torch.stack([lattice_score(binary.cpu(), s) for s in strides], dim=1)  # [B, S]
        best = torch.where(torch.isnan(scores), torch.full_like(scores, -1.0), scores).amax(1)
        defined = best >= 0
        out["lattice_median"] = _median(torch.where(defined, best, torch.full_like(best, math.nan)).double())
        out["lattice_flagged"] = (float((best[defined] >= LATTICE_THRESHOLD).double().mean())
                                  if bool(defined.any()) else None)
        out["per_image"]["lattice"] = values(torch.where(defined, best, torch.full_like(best, math.nan)))
    else:
        out["lattice_median"] = out["lattice_flagged"] = None
    return out


def _median(t: Tensor) -> float | None:
    t = t[~torch.isnan(t)]
    return float(t.median()) if t.numel() else None


def fill_alone(clf: FrozenClassifier, x: Tensor, target: Tensor, fills: Fills) -> dict[str, Any]:
    """The control "nothing kept": ``p_y(b)`` per image under each image fill (noisy linear imputation of the
    whole image has nothing to impute from, so it has no such row)."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        for f, sub in fills.substrates.items():
            if not f.is_image:
                continue
            assert isinstance(sub, Tensor)
            p = torch.softmax(clf.logits(sub.to(x.device)).float(), 1).gather(1, target[:, None])[:, 0]
            out[str(f)] = {"p": mean(p), "per_image": values(p)}
    return out


def own_area(clf: FrozenClassifier, x: Tensor, target: Tensor, binary: Tensor, own: Mapping[str, Any],
             others: Mapping[str, Tensor], fills: Fills, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """A binary mask judged at its own budget: for each image ``i`` with ``k_i`` mask pixels, every other map's
    ``top_{k_i}`` pixels and a random blob of ``k_i`` pixels get the same verdict (p_kept, p_removed) under every
    fill as the mask itself.

    Args:
        binary: the mask ``[B,H,W]`` bool.
        own: the mask's own per-image verdict ``{fill: {"p_kept": […], "p_removed": […]}}`` (already scored).
        others: name → saliency ``[B,H,W]`` of every map compared (peers, other methods, the random map).
        seed: seeds the blobs.

    Returns:
        ``{"counts": [k_i], "rows": {name: {"means": {fill: {p_kept, p_removed}}, "per_image": {fill: {…}}}}}``
        with the mask itself under ``"self"`` and the blob under ``"blob"``.
    """
    counts = binary.flatten(1).sum(1)
    rows: dict[str, Any] = {"self": {"means": {f: {k: _mean_list(v) for k, v in d.items()} for f, d in own.items()},
                                     "per_image": own}}
    masks = {name: top_count_mask(sal, counts.to(sal.device)) for name, sal in others.items()}
    masks["blob"] = random_blob(counts.cpu(), binary.shape[-2], binary.shape[-1], seed=seed)
    for name, m in masks.items():
        means, per = score_binary(clf, x, target, m.to(x.device), fills, batch_size=batch_size)
        rows[name] = {"means": {f: {k: d[k] for k in ("p_kept", "p_removed")} for f, d in means.items()},
                      "per_image": per}
    return {"counts": [int(c) for c in counts], "rows": rows}


def _mean_list(v: Sequence[float | None]) -> float | None:
    defined = [x for x in v if x is not None]
    return sum(defined) / len(defined) if defined else None


@dataclass(frozen=True)
class PairedSpec:
    """One comparison of a family: ``ours`` against ``theirs`` on per-image scores (higher is better unless
    ``higher`` is False, in which case the difference is reported as ``theirs − ours`` so that a positive Δ
    always favours ``ours``)."""

    column: str
    ours: str
    theirs: str
    a: Sequence[float | None]
    b: Sequence[float | None]
    higher: bool = True


def paired_family(specs: Sequence[PairedSpec], seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """The paired comparisons of one table with Holm's correction over all of them.

    Each comparison uses the images where both scores are defined, :func:`~.metrics.paired_difference` (mean Δ,
    bootstrap 95 % interval, p-value, wins), oriented so that Δ > 0 favours ``ours``; :func:`~.metrics.holm`
    then adjusts the p-values of the whole family (``m`` comparisons) at ``α``.

    Returns:
        ``{"m": m, "alpha": α, "comparisons": [{column, ours, theirs, mean, low, high, wins, n, p_value,
        p_holm, holm}]}``; a comparison without any defined pair is left out (and not counted).
    """
    done = []
    for sp in specs:
        pairs = [(u, v) for u, v in zip(sp.a, sp.b, strict=True) if u is not None and v is not None]
        if not pairs:
            continue
        mine, theirs = [u for u, _ in pairs], [v for _, v in pairs]
        d = (paired_difference(mine, theirs, seed=seed) if sp.higher
             else paired_difference(theirs, mine, seed=seed))
        done.append({"column": sp.column, "ours": sp.ours, "theirs": sp.theirs, **d._asdict()})
    corrected = holm([c["p_value"] for c in done], alpha=alpha)
    for c, adj, keep in zip(done, corrected.adjusted, corrected.reject, strict=True):
        c["p_holm"], c["holm"] = adj, keep
    return {"m": len(done), "alpha": alpha, "comparisons": done}
