"""The measurements behind ``medcam-fast evaluate``: every method's maps on the same images, scored by the
same metrics; nothing here renders or writes a report (:mod:`.report` and :mod:`.figures` do).

For each data set, ``n`` test images are drawn (seeded) and each explained for the class the classifier
predicts, by

* medcam-fast, through the public API a user calls (:class:`~medcam_fast.explain.MedCAM`):
  ``first-guess`` — the explainer with ``refine_steps=0``; ``refined`` — plus ``K`` logit steps from the
  first guess clipped to ``±start_clip`` (:class:`~medcam_fast.method.refine.RefineConfig`); ``fit`` — the
  paper's per-image fit, ``MedCAM`` without an explainer (mode ``full``) on the explainer's loss weights
  and baseline. Their saliency is the mask logits ``u`` (the soft mask ``σ(u/τ)`` ranks pixels the same
  way without saturating), their binary mask the one ``MedCAM`` reports;
* every peer of the registry (:data:`medcam_fast.evaluation.baselines.METHODS`), each called the same way
  with the run's :class:`~medcam_fast.evaluation.baselines.PeerSettings`; one whose package is missing is
  recorded as skipped with the install command, never scored.

Every map is then scored by :mod:`.metrics` — preservation at fixed areas (Fong & Vedaldi 2017), RISE's
deletion and insertion AUCs (Petsiuk et al. 2018), pointing game and top-k IoU against known evidence,
the binary masks' verdict — and checked by cascading randomization (Adebayo et al. 2018): the same method,
explaining the classifier with its layers re-initialized from the top, through ``MedCAM`` too (the
randomized classifier is not the one the explainer was trained for: ``allow_mismatch=True``). ROAD
(:mod:`.road`) cross-checks the deletion metrics, and each medcam-fast method is compared image by image
with the best peer of each headline metric (paired bootstrap).

Each finished method is cached in ``<out>/datasets/<name>/<method>.{json,npz}`` under a key of exactly
the settings it depends on, so ``resume`` reruns only what a change touches (a new explainer: the first
guess and refinement; more RISE masks: RISE). Timings are wall seconds per image of the whole call, the
classifier's forward passes included, on the run's device; the device is recorded with each method.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._config import Config
from .._io import atomic_write, atomic_write_json, sha256_file
from ..classifiers.bundle import load_classifier
from ..classifiers.frozen import ClassifierBundle, FrozenClassifier
from ..data.images import ImageSet
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..explain import MedCAM
from ..method.fit import FitConfig
from ..method.masking import make_baseline
from ..method.refine import RefineConfig
from ..types import BaselineKind
from . import baselines as peers
from . import metrics
from ._measure import explain_in_chunks, machine_facts, sync
from .baselines import PeerSettings
from .road import road

__all__ = [
    "MEDCAM_METHODS", "EXPLAINER_METHODS", "ALL_METHODS", "EvalConfig", "Maps", "Grid", "DatasetEvaluation",
    "Evaluation", "evaluate_dataset", "evaluate_suite",
]


#: medcam-fast's own methods, in report order.
MEDCAM_METHODS: tuple[str, ...] = ("first-guess", "refined", "fit")

#: The methods that need an explainer (the per-image fit needs none; it takes the explainer's loss weights
#: and baseline when there is one).
EXPLAINER_METHODS: tuple[str, ...] = ("first-guess", "refined")

#: Every method ``evaluate`` knows, in report order.
ALL_METHODS: tuple[str, ...] = MEDCAM_METHODS + tuple(peers.METHODS)


_LABELS = {"first-guess": "medcam-fast first guess", "refined": "medcam-fast refined", "fit": "per-image fit"}

_NEEDS_EXPLAINER = "medcam-fast's first guess and refinement need --explainer (a bundle folder or explainer.onnx)"

_REFINE = RefineConfig()
_PEERS = PeerSettings()


@dataclass(frozen=True)
class EvalConfig(Config):
    """Settings of an evaluation run. The methods' own defaults are their owners':
    :class:`~medcam_fast.method.refine.RefineConfig` (refinement), :class:`~medcam_fast.method.fit.FitConfig`
    (the per-image fit), :class:`~medcam_fast.evaluation.baselines.PeerSettings` (the peers).

    Args:
        methods: methods to run (names from :data:`ALL_METHODS`).
        n: test images per data set.
        fractions: areas (fractions of the image) for preservation at fixed area.
        curve_steps: points of the deletion/insertion curves minus one.
        sanity_n: images of the cascading-randomization check (the first ``sanity_n`` of the ``n``).
        road_n: images of the ROAD cross-check (the first ``road_n``; its imputation is a sparse solve per image
            and percentile on the CPU).
        sanity_stages: randomization stages reported (evenly spaced, the last is the fully random model).
        refine_steps: refinement steps of the ``refined`` method.
        start_clip: the ``refined`` method's first guess is clipped to ``±start_clip`` before its steps.
        rise_masks: random masks per image for RISE.
        extremal_steps: optimization steps per area for Extremal Perturbations.
        fit_steps: steps of the per-image fit.
        batch_size: images per method call.
        grid_per_class: images per class in the figure grid.
        device: torch device.
        seed: picks the test images and seeds every random method.
    """

    methods: tuple[str, ...] = ALL_METHODS
    n: int = 64
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    curve_steps: int = 32
    sanity_n: int = 16
    road_n: int = 16
    sanity_stages: int = 4
    refine_steps: int = _REFINE.steps
    start_clip: float | None = _REFINE.start_clip
    rise_masks: int = _PEERS.rise_masks
    extremal_steps: int = _PEERS.extremal_steps
    fit_steps: int = FitConfig().steps
    batch_size: int = 16
    grid_per_class: int = 2
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise UsageError("no methods to evaluate")
        if self.n < 1 or self.sanity_n < 0 or self.sanity_stages < 1 or self.batch_size < 1:
            raise UsageError("n, sanity-stages and batch-size must be positive, sanity-n non-negative")

    def peer_settings(self) -> PeerSettings:
        """The peers' settings of this run."""
        return PeerSettings(rise_masks=self.rise_masks, extremal_steps=self.extremal_steps, seed=self.seed)

    def refine_config(self) -> RefineConfig:
        """The ``refined`` method's refinement settings."""
        return _REFINE.with_(steps=self.refine_steps, start_clip=self.start_clip, seed=self.seed)


@dataclass
class Maps:
    """One method's maps of a batch.

    Args:
        saliency: ``[N,H,W]`` float32, higher = more important.
        binary: ``[N,H,W]`` bool for the methods with a binary mask (medcam-fast's), else None.
        seconds: wall seconds per image.
    """

    saliency: Tensor
    binary: Tensor | None
    seconds: float

    def rows(self, rows: Sequence[int]) -> Maps:
        """These images' maps, on the CPU."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Maps(self.saliency.cpu()[idx], None if self.binary is None else self.binary.cpu()[idx], self.seconds)


@dataclass
class Grid:
    """What the figure grid of one data set shows.

    Args:
        name: the data set's name.
        images: the images shown (raw, with labels and true evidence when known).
        preprocess: the classifier's preprocessing (to show what it saw).
        target: the class explained per image ``[R]``.
        maps: method → its maps of these images.
        labels: the methods' display names, in the order of ``maps``.
    """

    name: str
    images: ImageSet
    preprocess: Preprocess
    target: np.ndarray
    maps: dict[str, Maps]
    labels: list[str]


@dataclass
class DatasetEvaluation:
    """One data set's evaluation: its JSON-safe ``result`` (an entry of ``results.json``) and its figure grid."""

    result: dict[str, Any]
    grid: Grid


@dataclass
class Evaluation:
    """A run over several data sets: ``results`` (what ``results.json`` holds) and the figure grid of each."""

    results: dict[str, Any]
    grids: dict[str, Grid] = field(default_factory=dict)


@dataclass
class _Run:
    """One data set's fixed inputs: the images, their targets and baseline, and how medcam-fast is built."""

    cfg: EvalConfig
    bundle: ClassifierBundle
    clf: FrozenClassifier  # the trained classifier, for the metrics and the peers
    explainer: str | Path | None
    medcam: MedCAM | None  # the explainer for the trained classifier (None without an explainer)
    fit_config: FitConfig
    x: Tensor
    target: Tensor
    baseline: Tensor

    def medcam_for(self, method: str, randomized: ClassifierBundle | None = None) -> MedCAM:
        """``MedCAM`` as a user builds it for ``method``, explaining the trained classifier or ``randomized``.

        ``first-guess`` and ``refined``: with the explainer (the randomized classifier is not the one it was
        trained for: allowed); ``fit``: without one, on :attr:`fit_config`.
        """
        bundle = self.bundle if randomized is None else randomized
        if method == "fit":
            return MedCAM(bundle, fit_config=self.fit_config, device=self.cfg.device)
        if randomized is None and self.medcam is not None:
            return self.medcam
        return _explainer_medcam(bundle, self.explainer, self.cfg, allow_mismatch=randomized is not None)


def _explainer_medcam(bundle: ClassifierBundle, explainer: str | Path | None, cfg: EvalConfig,
                      allow_mismatch: bool = False) -> MedCAM:
    if explainer is None:
        raise UsageError(_NEEDS_EXPLAINER)
    return MedCAM(bundle, explainer, refine_config=cfg.refine_config(), allow_mismatch=allow_mismatch,
                  device=cfg.device)


def _maps(method: str, run: _Run, x: Tensor, target: Tensor, baseline: Tensor,
          randomized: ClassifierBundle | None = None) -> Maps:
    """One method's maps of ``x``, timed; of the trained classifier, or of ``randomized`` for the sanity check."""
    cfg = run.cfg
    if method in MEDCAM_METHODS:
        ex = explain_in_chunks(run.medcam_for(method, randomized), x, target, batch_size=cfg.batch_size,
                               refine_steps=0 if method == "first-guess" else None)
        return Maps(torch.from_numpy(ex.logits).to(x.device), torch.from_numpy(ex.binary).to(x.device),
                    float(ex.seconds.mean()))
    spec = peers.METHODS[method]
    clf = run.clf if randomized is None else randomized.frozen().to(x.device)
    settings = cfg.peer_settings()
    sal = []
    sync(x.device)
    start = time.perf_counter()
    for s in range(0, x.shape[0], cfg.batch_size):
        sl = slice(s, s + cfg.batch_size)
        sal.append(spec.fn(clf, x[sl], target[sl], baseline[sl], settings).detach())
    sync(x.device)
    return Maps(torch.cat(sal).float(), None, (time.perf_counter() - start) / x.shape[0])


def _mean(t: Tensor) -> float | None:
    t = t.detach().double().cpu()
    t = t[~torch.isnan(t)]
    return float(t.mean()) if t.numel() else None


def _values(t: Tensor) -> list[float]:
    """Per-image scores for ``results.json`` (what the paired comparisons are computed from)."""
    return [round(float(v), 6) for v in t.detach().double().cpu()]


def _sem(t: Tensor) -> float | None:
    t = t.detach().double().cpu()
    t = t[~torch.isnan(t)]
    return float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else None


@dataclass
class _Evidence:
    """The images whose true evidence is known (``rows`` into the batch) and that evidence
    ``[len(rows),H,W]``."""

    rows: Tensor
    masks: Tensor


def _evidence(sel: ImageSet, target: Tensor, size: tuple[int, ...]) -> _Evidence | None:
    """Where localization can be scored: every image with a mask, or (``evidence_class`` set) the images of
    that class that the classifier also predicts as it — for any other the mask marks no known evidence."""
    if sel.masks is None:
        return None
    m = torch.from_numpy(sel.masks[:, None].astype(np.float32))
    masks = torch.nn.functional.interpolate(m, size=size, mode="nearest")[:, 0].bool().to(target.device)
    keep = torch.ones(len(sel.labels), dtype=torch.bool, device=target.device)
    if sel.evidence_class is not None:
        labels = torch.from_numpy(sel.labels).to(target.device)
        keep = (labels == sel.evidence_class) & (target == sel.evidence_class)
    rows = torch.nonzero(keep).flatten()
    return _Evidence(rows, masks[rows])


def _score_maps(run: _Run, maps: Maps, evidence: _Evidence | None, deletion: Tensor,
                insertion: Tensor) -> dict[str, Any]:
    clf, cfg, x, target, baseline = run.clf, run.cfg, run.x, run.target, run.baseline
    pres = metrics.preservation_at_area(clf.logits, x, maps.saliency, target, baseline, cfg.fractions)
    d_auc, i_auc, d_curve, i_curve = metrics.deletion_insertion(clf.logits, x, maps.saliency, target, deletion,
                                                                insertion, steps=cfg.curve_steps)
    out: dict[str, Any] = {
        "seconds_per_image": maps.seconds,
        "preservation": {f"{a:g}": _mean(pres[:, j]) for j, a in enumerate(cfg.fractions)},
        "preservation_sem": {f"{a:g}": _sem(pres[:, j]) for j, a in enumerate(cfg.fractions)},
        "deletion_auc": _mean(d_auc),
        "insertion_auc": _mean(i_auc),
        "deletion_curve": d_curve.mean(0).tolist(),
        "insertion_curve": i_curve.mean(0).tolist(),
        "binary": None,
        "per_image": {"keep": {f"{a:g}": _values(pres[:, j]) for j, a in enumerate(cfg.fractions)},
                      "deletion_auc": _values(d_auc), "insertion_auc": _values(i_auc)},
    }
    if maps.binary is not None:
        ev = metrics.binary_evidence(clf.logits, x, maps.binary, target, baseline)
        out["binary"] = {k: _mean(v) for k, v in ev.items()}
    if evidence is not None:
        out["localization_n"] = int(evidence.rows.numel())
        if evidence.rows.numel():
            sal = maps.saliency[evidence.rows.to(maps.saliency.device)]
            pointing, iou = metrics.pointing_game(sal, evidence.masks), metrics.topk_iou(sal, evidence.masks)
            out["pointing"], out["iou"] = _mean(pointing), _mean(iou)
            out["per_image"].update(pointing=_values(pointing), iou=_values(iou))
        else:
            out["pointing"] = out["iou"] = None
    return out


def _sanity(run: _Run, method: str, k: int, trained: Tensor, advance: Callable[[], None]) -> dict[str, Any]:
    """Cascading randomization (Adebayo et al. 2018) of the classifier from the top; Spearman ρ per stage.

    Each stage's classifier is the trained bundle with its model replaced by the randomized copy, explained
    the way the trained one was (medcam-fast through ``MedCAM``, peers through the registry)."""
    model = run.bundle.model
    n_mod = len(metrics.parameterized_modules(model))
    stops = set(metrics.cascade_checkpoints(n_mod, run.cfg.sanity_stages))
    x, target, baseline = run.x[:k], run.target[:k], run.baseline[:k]
    stages = []
    for i, (name, randomized) in enumerate(metrics.cascading_randomization(model, seed=run.cfg.seed), start=1):
        if i not in stops:
            continue
        # no weights file hashes to this model: an empty sha256 marks it as not the explainer's classifier
        bundle = replace(run.bundle, model=randomized, sha256="")
        maps = _maps(method, run, x, target, baseline, randomized=bundle)
        rho = metrics.spearman(trained, maps.saliency)
        stages.append({"randomized_through": name, "modules": i, "fraction": i / n_mod, "spearman": _mean(rho),
                       "undefined": int(torch.isnan(rho).sum())})
        advance()
    return {"stages": stages, "final": stages[-1]["spearman"] if stages else None}


def _road(clf: FrozenClassifier, x: Tensor, target: Tensor, sal: Tensor) -> dict[str, float | None]:
    return {k: _mean(v) for k, v in road(clf, x, target, sal).items()}


#: The settings each medcam-fast method depends on beyond the shared ones (a peer's are in its registry entry).
_MEDCAM_SETTINGS: dict[str, tuple[str, ...]] = {"first-guess": (), "refined": ("refine_steps", "start_clip"),
                                                "fit": ("fit_steps",)}


_SHARED_SETTINGS = ("n", "fractions", "curve_steps", "sanity_n", "sanity_stages", "seed")


def _cache_key(run: _Run, name: str, method: str, explainer_sha256: str | None) -> dict[str, Any]:
    """What one method's cached result depends on, and nothing else.

    Every method depends on the images, the metrics' settings, the classifier and the preservation baseline;
    the first guess and refinement on the explainer's weights (and refinement on its steps and start clip), the
    per-image fit on its loss weights only, a peer on its own settings only. So a new explainer reruns
    ``first-guess`` and ``refined`` and reuses the fit and every peer. Not in the key: the device, the batch
    size, ROAD and the other methods.
    """
    d = run.cfg.to_dict()
    own = _MEDCAM_SETTINGS[method] if method in MEDCAM_METHODS else peers.METHODS[method].settings
    key: dict[str, Any] = {k: d[k] for k in _SHARED_SETTINGS + own}
    key.update(dataset=name, method=method, classifier_sha256=run.bundle.sha256,
               baseline=str(run.fit_config.baseline))
    if method in EXPLAINER_METHODS and explainer_sha256 is not None:
        key["explainer_sha256"] = explainer_sha256
    if method == "fit":
        key["loss_weights"] = run.fit_config.weights.to_dict()
    return key


def _load_cached(folder: Path, method: str, key: dict[str, Any]) -> tuple[dict[str, Any], Maps] | None:
    jpath, npath = folder / f"{_slug(method)}.json", folder / f"{_slug(method)}.npz"
    if not (jpath.is_file() and npath.is_file()):
        return None
    saved = json.loads(jpath.read_text(encoding="utf-8"))
    if json.loads(json.dumps(key)) != saved.get("key"):
        return None
    with np.load(npath, allow_pickle=False) as z:
        binary = torch.from_numpy(z["binary"]) if "binary" in z.files else None
        maps = Maps(torch.from_numpy(z["saliency"].astype(np.float32)), binary, saved["result"]["seconds_per_image"])
    return saved["result"], maps


def _save_cached(folder: Path, method: str, key: dict[str, Any], result: dict[str, Any], maps: Maps) -> None:
    """The result and every map (saliency in float32, so a resumed run ranks pixels exactly as this one)."""
    arrays = {"saliency": maps.saliency.cpu().numpy().astype(np.float32)}
    if maps.binary is not None:
        arrays["binary"] = maps.binary.cpu().numpy()

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(folder / f"{_slug(method)}.npz", write_npz)
    atomic_write_json(folder / f"{_slug(method)}.json", {"key": key, "result": result})


def _slug(method: str) -> str:
    return method.replace("+", "p")


def _grid_rows(labels: np.ndarray, per_class: int) -> list[int]:
    return [int(i) for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]


def _pick(images: ImageSet, n: int, seed: int) -> ImageSet:
    if n >= len(images.labels):
        return images
    idx = np.sort(np.random.default_rng(seed).choice(len(images.labels), size=n, replace=False))
    return images.subset(idx)


def _explainer_sha256(medcam: MedCAM) -> str | None:
    """The sha256 of the explainer's weights: the torch bundle's, or the ONNX file's when that is all there is."""
    if medcam.explainer is not None:
        return medcam.explainer.sha256
    return sha256_file(medcam.onnx.path) if medcam.onnx is not None else None


def evaluate_dataset(
    name: str,
    classifier: ClassifierBundle,
    explainer: str | Path | None,
    images: ImageSet,
    config: EvalConfig,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    resume: bool = False,
) -> DatasetEvaluation:
    """Evaluate every method of ``config`` on ``config.n`` images of ``images``.

    Args:
        name: the data set's name in the report.
        classifier: the frozen classifier's bundle.
        explainer: the explainer bundle folder or ``.onnx`` file for medcam-fast's methods (None when only
            peers and the per-image fit are evaluated; the fit then takes
            :class:`~medcam_fast.method.fit.FitConfig`'s loss weights and baseline).
        images: test images (raw, as the classifier's preprocessing takes them); ``masks`` when the true
            evidence is known.
        config: evaluation settings.
        out_dir: the run folder: ``datasets/<name>/`` there caches each finished method (None: no cache).
        progress: called with a short label after each unit of work.
        resume: reuse methods finished by an earlier run into ``out_dir`` with the same settings.

    Returns:
        The data set's JSON-safe result and its figure grid.

    Raises:
        UsageError: the first guess or refinement without an explainer.
    """
    cfg = config
    tick = progress or (lambda _label: None)
    if explainer is None and any(m in EXPLAINER_METHODS for m in cfg.methods):
        raise UsageError(_NEEDS_EXPLAINER)
    device = torch.device(cfg.device)
    sel = _pick(images, cfg.n, cfg.seed)
    pre = classifier.preprocess
    clf = classifier.frozen().to(device)
    x = torch.from_numpy(pre(sel.images)).to(device)
    with torch.no_grad():
        logits = torch.cat([clf.logits(x[s : s + 256]) for s in range(0, len(x), 256)])
    target = logits.argmax(1)
    fit_config = FitConfig(steps=cfg.fit_steps, seed=cfg.seed)
    medcam = explainer_sha256 = None
    if explainer is not None:  # the fit optimizes the explainer's objective; every method shares its baseline
        medcam = _explainer_medcam(classifier, explainer, cfg)
        assert medcam.settings is not None  # MedCAM with an explainer always has its settings
        fit_config = fit_config.with_(weights=medcam.settings.weights, baseline=medcam.settings.baseline)
        explainer_sha256 = _explainer_sha256(medcam)
    baseline = make_baseline(x, fit_config.baseline, pre.mean, pre.std)
    run = _Run(cfg, classifier, clf, explainer, medcam, fit_config, x, target, baseline)
    deletion = make_baseline(x, BaselineKind.ZERO, pre.mean, pre.std)
    insertion = make_baseline(x, BaselineKind.BLUR, pre.mean, pre.std)
    evidence = _evidence(sel, target, tuple(x.shape[-2:]))

    skipped: dict[str, str] = {}
    available = peers.available_peers()
    road_ok = available.get("road") is None
    cache = out_dir / "datasets" / name if out_dir is not None else None
    rows = _grid_rows(sel.labels, cfg.grid_per_class)
    k = min(cfg.sanity_n, x.shape[0])
    r = min(cfg.road_n, x.shape[0])
    grid: dict[str, Maps] = {}
    results: dict[str, Any] = {}
    for m in cfg.methods:
        key = _cache_key(run, name, m, explainer_sha256)
        cached = _load_cached(cache, m, key) if cache is not None and resume else None
        if cached is not None:
            res, maps = cached
            maps = Maps(maps.saliency.to(device), None if maps.binary is None else maps.binary.to(device),
                        maps.seconds)
            changed = False
            stale = evidence is not None and res.get("localization_n") != int(evidence.rows.numel())
            if "per_image" not in res or stale:  # scored by an older version: score its cached maps again
                res.update(_score_maps(run, maps, evidence, deletion, insertion))
                changed = True
            if "road" not in res and road_ok and r > 0:  # e.g. the first run had no grad-cam
                res["road"] = _road(clf, x[:r], target[:r], maps.saliency[:r])
                changed = True
            if changed and cache is not None:
                _save_cached(cache, m, key, res, maps)
            results[m] = res
            grid[m] = maps.rows(rows)
            tick(f"{name}: {m} reused")
            continue
        if m in peers.METHODS and available.get(m) is not None:
            skipped[m] = str(available[m])
            tick(f"{name}: {m} skipped")
            continue
        maps = _maps(m, run, x, target, run.baseline)
        res: dict[str, Any] = {"label": _LABELS.get(m) or peers.METHODS[m].label, "device": str(device),
                               **_score_maps(run, maps, evidence, deletion, insertion)}
        if m == "first-guess":
            res["runtime"] = "onnxruntime" if run.medcam_for(m).onnx is not None else "torch"
        tick(f"{name}: {m}")
        if road_ok and r > 0:
            res["road"] = _road(clf, x[:r], target[:r], maps.saliency[:r])
        if k > 0:
            res["sanity"] = _sanity(run, m, k, maps.saliency[:k], lambda m=m: tick(f"{name}: {m} sanity"))
        results[m] = res
        grid[m] = maps.rows(rows)
        if cache is not None:
            _save_cached(cache, m, key, res, maps)

    out = {
        "name": name,
        "n": int(x.shape[0]),
        "sanity_n": int(k),
        "road_n": int(r) if road_ok else 0,
        "classes": list(classifier.classes),
        "classifier_sha256": classifier.sha256,
        "explainer": None if explainer is None else str(explainer),
        "explainer_sha256": explainer_sha256,
        "accuracy": float((target.cpu().numpy() == sel.labels).mean()),
        "localization": evidence is not None,
        "localization_n": int(evidence.rows.numel()) if evidence is not None else 0,
        "evidence_class": (classifier.classes[sel.evidence_class] if evidence is not None
                           and sel.evidence_class is not None else None),
        "methods": results,
        "skipped": skipped,
        "paired": _paired(results, cfg),
    }
    shown = Grid(name, sel.subset(rows), pre, target.cpu().numpy()[rows], grid, [results[m]["label"] for m in grid])
    return DatasetEvaluation(out, shown)


def _paired_metrics(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(per-image key path, column title) of the metrics compared pairwise: keep 10 % (or the first area),
    insertion AUC and top-k IoU — the ones the acceptance of ``evaluate`` is stated in."""
    a = 0.1 if any(abs(f - 0.1) < 1e-9 for f in cfg.fractions) else cfg.fractions[0]
    return [(f"keep/{a:g}", f"keep {100 * a:g}%"), ("insertion_auc", "insertion AUC"), ("iou", "top-k IoU")]


def _per_image(res: dict[str, Any], path: str) -> list[float] | None:
    node: Any = res.get("per_image")
    for part in path.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _paired(results: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Each medcam-fast method against the best peer of each compared metric, image by image.

    For a metric (higher is better) the best peer is the one with the highest mean; each medcam-fast method
    gets :func:`medcam_fast.evaluation.metrics.paired_difference` against it (mean Δ, bootstrap 95 % interval, wins).
    """
    out: dict[str, Any] = {}
    for path, title in _paired_metrics(cfg):
        peer_means = {m: float(np.mean(v)) for m, r in results.items()
                      if m not in MEDCAM_METHODS and (v := _per_image(r, path))}
        ours = {m: v for m, r in results.items() if m in MEDCAM_METHODS and (v := _per_image(r, path))}
        if not peer_means or not ours:
            continue
        best = max(peer_means, key=peer_means.__getitem__)
        theirs = _per_image(results[best], path)
        out[path] = {"title": title, "against": best, "methods": {
            m: metrics.paired_difference(v, theirs, seed=cfg.seed)._asdict() for m, v in ours.items()}}
    return out


def evaluate_suite(
    specs: Sequence[tuple[str, str | Path, str | Path | None, ImageSet]],
    config: EvalConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Evaluate several data sets. Measures only: the report is rendered and written by
    :func:`medcam_fast.evaluation.report.write_report`.

    Args:
        specs: ``(name, classifier bundle, explainer, test images)`` per data set.
        config: evaluation settings.
        out_dir: the run folder; ``datasets/<name>/<method>.{json,npz}`` there holds each finished method for
            ``resume`` (None: nothing is cached).
        resume: reuse finished methods whose settings match ``config`` (a run without a peer package, then
            one with it, completes a report; the device each method ran on is recorded).
        progress: called with a short label after each unit of work.
    """
    out = None if out_dir is None else Path(out_dir)
    evaluation = Evaluation({"config": {**config.to_dict(), "methods": list(config.methods)},
                             "env": machine_facts(config.device), "datasets": {}})
    for name, clf_path, ex_path, images in specs:
        bundle = load_classifier(clf_path)
        ds = evaluate_dataset(name, bundle, ex_path, images, config, out, progress, resume=resume)
        evaluation.results["datasets"][name] = ds.result
        evaluation.grids[name] = ds.grid
    return evaluation
