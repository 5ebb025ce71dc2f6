"""The measurements behind ``medcam-fast evaluate``: every method's maps on the same images, scored by the
same metrics under the same fills, beside controls; nothing here renders or writes a report (:mod:`.report`
and :mod:`.figures` do).

For each data set, ``n`` test images are drawn (seeded) and each explained for the class the classifier
predicts, by

* medcam-fast, through the public API a user calls (:class:`~medcam_fast.explain.MedCAM`):
  ``first-guess`` — the explainer with ``refine_steps=0``; ``refined`` — plus ``K`` logit steps from the
  first guess clipped to ``±start_clip`` (:class:`~medcam_fast.method.refine.RefineConfig`); ``fit`` — the
  paper's per-image fit, ``MedCAM`` without an explainer (mode ``full``) on the explainer's loss weights
  and baseline. Their saliency is the mask logits ``u`` (the soft mask ``σ(u/τ)`` ranks pixels the same
  way without saturating), their binary mask the one ``MedCAM`` reports;
* every peer of the registry (:data:`medcam_fast.evaluation.baselines.METHODS`), each called the same way
  with the run's :class:`~medcam_fast.evaluation.baselines.PeerSettings` and the run's baseline (the
  explainer's); one whose package is missing is recorded as skipped with the install command, never scored;
* the controls (:mod:`.controls`): a seeded random map scored like a method, the fill alone (nothing
  kept), and for each binary mask a random blob of the same area.

Scoring (:mod:`.scoring`): every map under every fill of :class:`EvalConfig` (:mod:`.fills`: zero, mean,
blur, noisy linear imputation) — preservation at fixed areas (Fong & Vedaldi 2017), RISE's deletion and
insertion (Petsiuk et al. 2018), faithfulness correlation (Bhatt et al. 2020), monotonicity (Nguyen &
Martínez 2020) — plus ROAD (:mod:`.road`, Rong et al. 2022) on every image, pointing game and top-k IoU
against known evidence; each binary mask's verdict under every fill, its readability (connected pieces, the
lattice check) and its comparison with every other map's top-k pixels at the mask's own area; the sanity
check by cascading randomization (Adebayo et al. 2018) at ``sanity_stages`` stages on ``sanity_n`` images —
Spearman ρ on the signed and on the absolute maps, and SSIM — for every method, medcam-fast through
``MedCAM`` too (the randomized classifier is not the one the explainer was trained for:
``allow_mismatch=True``). Each method records the fill it was trained or tuned against
(``trained_fill``); the fills no method was trained against are the report's headline. The paired
comparisons (bootstrap intervals and p-values) of each table are Holm-corrected as one family. Each data
set records ``p_original`` (mean, and ``p_original_per_image``): the explained class's probability on the
unchanged image, which every binary mask's ``p_kept`` is to be read against (``p_kept ≥ p_original``).

Each finished method is cached in ``<out>/datasets/<name>/<method>.{json,npz}``: its maps under a key of
exactly the settings they depend on (so ``resume`` reruns only what a change touches: a new explainer — the
first guess and refinement; more RISE masks — RISE), its scores and its sanity check each under the key of
their own settings (a change of fills or of the sanity settings rescores the cached maps, or reruns only the
sanity check). Timings are wall seconds per image of the whole call, the classifier's forward passes
included, on the run's device; the device is recorded with each method.

Besides the per-fill results, each method's entry keeps the columns of the report before the fills were
named (``preservation`` — keep a % with the run's baseline, ``deletion_auc`` — zero fill, ``insertion_auc`` —
blur fill, ``binary`` — the verdict with the run's baseline), copied from the per-fill results, for the
readers written against it (``scripts/clip_sweep.py``, ``scripts/readme_tables.py``).
"""

from __future__ import annotations

import json
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
from ..types import choice
from . import baselines as peers
from . import metrics
from ._measure import explain_in_chunks, machine_facts, sync
from ._peers import INSTALL_HINT
from .baselines import PeerSettings
from .controls import random_map
from .fills import ALL_FILLS, Fill, fill_of_baseline
from .road import road
from .scoring import (
    Evidence,
    Fills,
    PairedSpec,
    ScoreSettings,
    classifier_strides,
    fill_alone,
    make_fills,
    mean,
    own_area,
    paired_family,
    readability,
    score_binary,
    score_map,
    values,
)

__all__ = [
    "MEDCAM_METHODS", "EXPLAINER_METHODS", "ALL_METHODS", "RANDOM", "EvalConfig", "Maps", "Grid",
    "DatasetEvaluation", "Evaluation", "evaluate_dataset", "evaluate_suite", "headline_columns", "pick_images",
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


#: The random-map control's name in the cache and in ``results.json``'s ``controls``.
RANDOM = "random"


@dataclass(frozen=True)
class EvalConfig(Config):
    """Settings of an evaluation run. The methods' own defaults are their owners':
    :class:`~medcam_fast.method.refine.RefineConfig` (refinement), :class:`~medcam_fast.method.fit.FitConfig`
    (the per-image fit), :class:`~medcam_fast.evaluation.baselines.PeerSettings` (the peers).

    Args:
        methods: methods to run (names from :data:`ALL_METHODS`).
        n: test images per data set.
        fills: what replaces removed pixels (:class:`~medcam_fast.evaluation.fills.Fill`); every faithfulness
            column is computed under each.
        fractions: areas (fractions of the image) for preservation at fixed area.
        curve_steps: points of the deletion/insertion curves minus one.
        fc_subsets: random pixel subsets per image of faithfulness correlation.
        fc_fraction: their size, as a fraction of the pixels.
        monotonicity_groups: pixel groups per image of monotonicity.
        sanity_n: images of the cascading-randomization check (the first ``sanity_n`` of the ``n``).
        sanity_stages: randomization stages reported (evenly spaced, the last is the fully random model).
        road_n: images of ROAD (the first ``road_n``); None = all ``n`` (its imputation is a sparse solve per
            image and percentile on the CPU).
        refine_steps: refinement steps of the ``refined`` method.
        start_clip: the ``refined`` method's first guess is clipped to ``±start_clip`` before its steps.
        keep_best: the ``refined`` method keeps an image's first guess where it has the lower loss
            (:class:`~medcam_fast.method.refine.RefineConfig`).
        rise_masks: random masks per image for RISE.
        extremal_steps: optimization steps per area for Extremal Perturbations.
        fit_steps: steps of the per-image fit.
        batch_size: images per method call.
        grid_per_class: images per class in the figure grid.
        device: torch device.
        seed: picks the test images and seeds every random method and control.
    """

    methods: tuple[str, ...] = ALL_METHODS
    n: int = 64
    fills: tuple[Fill, ...] = ALL_FILLS
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    curve_steps: int = 32
    fc_subsets: int = 64
    fc_fraction: float = 0.05
    monotonicity_groups: int = 32
    sanity_n: int = 32
    road_n: int | None = None
    sanity_stages: int = 4
    refine_steps: int = _REFINE.steps
    start_clip: float | None = _REFINE.start_clip
    keep_best: bool = _REFINE.keep_best
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
        fills = tuple(dict.fromkeys(choice(Fill, f, "fill") for f in self.fills))
        object.__setattr__(self, "fills", fills)
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise UsageError("no methods to evaluate")
        if not self.fills:
            raise UsageError("no fills to score under")
        if self.n < 1 or self.sanity_n < 0 or self.sanity_stages < 1 or self.batch_size < 1:
            raise UsageError("n, sanity-stages and batch-size must be positive, sanity-n non-negative")
        if self.road_n is not None and self.road_n < 0:
            raise UsageError(f"road-n must be non-negative, got {self.road_n}")
        if self.fc_subsets < 2 or self.monotonicity_groups < 2 or not 0.0 < self.fc_fraction < 1.0:
            raise UsageError("fc-subsets and monotonicity-groups must be at least 2, fc-fraction in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings (the fills as their values)."""
        return {**super().to_dict(), "methods": list(self.methods), "fills": [str(f) for f in self.fills]}

    def peer_settings(self) -> PeerSettings:
        """The peers' settings of this run."""
        return PeerSettings(rise_masks=self.rise_masks, extremal_steps=self.extremal_steps, seed=self.seed)

    def refine_config(self) -> RefineConfig:
        """The ``refined`` method's refinement settings."""
        return _REFINE.with_(steps=self.refine_steps, start_clip=self.start_clip, keep_best=self.keep_best,
                             seed=self.seed)

    def score_settings(self) -> ScoreSettings:
        """What scoring a map depends on."""
        return ScoreSettings(fractions=self.fractions, curve_steps=self.curve_steps, fc_subsets=self.fc_subsets,
                             fc_fraction=self.fc_fraction, monotonicity_groups=self.monotonicity_groups,
                             seed=self.seed)


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
    name: str = ""
    fills: Fills = field(default_factory=lambda: Fills({}))
    evidence: Evidence | None = None
    strides: list[int] = field(default_factory=list)
    road_n: int = 0  # 0 where ROAD cannot run (grad-cam missing)
    sanity_n: int = 0
    ssim_problem: str | None = None  # why SSIM cannot be computed here, None when it can

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
    """One method's maps of ``x``, timed; of the trained classifier, or of ``randomized`` for the sanity check.
    The random-map control (:data:`RANDOM`) is drawn from the run's seed."""
    cfg = run.cfg
    if method == RANDOM:
        b, _, h, w = x.shape
        return Maps(random_map(b, h, w, seed=cfg.seed).to(x.device), None, 0.0)
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


def _evidence(sel: ImageSet, target: Tensor, size: tuple[int, ...]) -> Evidence | None:
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
    return Evidence(rows, masks[rows])


def _trained_fill(run: _Run, method: str) -> Fill | None:
    """The fill ``method`` was trained or tuned against: medcam-fast's methods and every peer that perturbs with
    the baseline it is given — the run's baseline (the explainer's); a peer with a fill of its own (Score-CAM:
    the mean) — that one; Grad-CAM, Grad-CAM++ and the random map — none."""
    if method in MEDCAM_METHODS:
        return fill_of_baseline(run.fit_config.baseline)
    if method == RANDOM:
        return None
    spec = peers.METHODS[method]
    if spec.uses_baseline:
        return fill_of_baseline(run.fit_config.baseline)
    return None if spec.own_fill is None else fill_of_baseline(spec.own_fill)


#: Bumped when scoring changes, so cached maps are scored again (a cache records the version it was scored by).
_SCORING_VERSION = 2
_SANITY_VERSION = 2


def _scoring_key(run: _Run, method: str) -> dict[str, Any]:
    """What a method's scores depend on beyond its maps (a cached result scored otherwise is scored again)."""
    d = run.cfg.to_dict()
    key = {k: d[k] for k in ("fractions", "curve_steps", "fc_subsets", "fc_fraction", "monotonicity_groups")}
    key.update(version=_SCORING_VERSION, fills=[str(f) for f in run.fills.substrates], road_n=run.road_n,
               localization_n=None if run.evidence is None else int(run.evidence.rows.numel()),
               strides=run.strides if method in MEDCAM_METHODS else None, **_relevance_key(method))
    return json.loads(json.dumps(key))  # as it reads back from the cache (tuples as lists)


def _sanity_key(run: _Run, method: str) -> dict[str, Any]:
    return {"version": _SANITY_VERSION, "n": run.sanity_n, "stages": run.cfg.sanity_stages, "seed": run.cfg.seed,
            "ssim": run.ssim_problem is None, **_relevance_key(method)}


#: How a method's map is read as relevance by the metrics that use its values, not only its order
#: (faithfulness correlation, monotonicity, the absolute-value sanity convention, SSIM); absent: as it is.
_RELEVANCE = {m: "softplus" for m in MEDCAM_METHODS}


def _relevance_key(method: str) -> dict[str, str]:
    """What a cache key records of how ``method``'s map is read: only where it is transformed, so the peers'
    cached scores and sanity checks stay valid."""
    return {"relevance": _RELEVANCE[method]} if method in _RELEVANCE else {}


def _relevance(method: str, saliency: Tensor) -> Tensor:
    """The map a metric reads: for medcam-fast's methods ``softplus(u) = log(1 + eᵘ)`` of the cached mask
    logits ``u``; peers' maps as they are.

    A logit's magnitude is confidence in either direction, so ``|u|`` (monotonicity, the absolute sanity
    convention) would rank a pixel surely outside the evidence (``u = −10``) above one inside it (``u = 2``),
    and a subset's sum of ``u`` (faithfulness correlation) is dominated by the background's large negative
    logits. ``softplus`` is non-negative and strictly increasing — ``≈ u`` on the evidence, ``≈ eᵘ → 0``
    outside it — so every order-based score (keep a %, deletion and insertion, ROAD, pointing, top-k IoU,
    signed Spearman ρ) stays exactly what it was and ``|·|`` changes nothing. The soft mask ``σ(u)`` would
    read the same way but rounds to 1 in float32 above ``u ≈ 17`` (first guesses reach 79), tying the most
    confident pixels."""
    return torch.nn.functional.softplus(saliency) if method in _RELEVANCE else saliency


def _score(run: _Run, method: str, maps: Maps) -> dict[str, Any]:
    """Every score of one method's maps (and its binary masks), with the legacy columns (see the module)."""
    cfg, clf, x, target = run.cfg, run.clf, run.x, run.target
    relevance = _relevance(method, maps.saliency)
    out = score_map(clf, x, target, relevance, run.fills, cfg.score_settings(), run.evidence)
    out["trained_fill"] = None if (f := _trained_fill(run, method)) is None else str(f)
    if maps.binary is not None:
        means, per = score_binary(clf, x, target, maps.binary, run.fills)
        for f, verdict in means.items():
            out["fills"][f]["binary"] = verdict
            out["per_image"]["fills"][f].update(per[f])
        out["readability"] = readability(maps.binary, run.strides)
    if run.road_n > 0:
        r = run.road_n
        scores = road(clf, x[:r], target[:r], relevance[:r], seed=cfg.seed)
        out["road"] = {k: mean(v) for k, v in scores.items()}
        out["per_image"]["road"] = {k: values(v) for k, v in scores.items()}
    out["road_n"] = run.road_n
    base, zero, blur = str(fill_of_baseline(run.fit_config.baseline)), str(Fill.ZERO), str(Fill.BLUR)
    fills = out["fills"]
    out.update(preservation=fills.get(base, {}).get("preservation", {}),
               preservation_sem=fills.get(base, {}).get("preservation_sem", {}),
               deletion_auc=fills.get(zero, {}).get("deletion_auc"),
               deletion_curve=fills.get(zero, {}).get("deletion_curve"),
               insertion_auc=fills.get(blur, {}).get("insertion_auc"),
               insertion_curve=fills.get(blur, {}).get("insertion_curve"),
               binary=fills.get(base, {}).get("binary"))
    out["scored_with"] = _scoring_key(run, method)
    return out


def _sanity(run: _Run, method: str, trained: Tensor, advance: Callable[[], None]) -> dict[str, Any]:
    """Cascading randomization (Adebayo et al. 2018) of the classifier from the top; per stage, the mean over
    the images of Spearman ρ between the trained classifier's map and the randomized one's, on the signed maps
    and on their absolute values, and their SSIM (None where scikit-image is missing).

    Each stage's classifier is the trained bundle with its model replaced by the randomized copy, explained
    the way the trained one was (medcam-fast through ``MedCAM``, peers through the registry)."""
    model = run.bundle.model
    k = run.sanity_n
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
        shown = _relevance(method, maps.saliency)
        rho = metrics.spearman(trained, shown)
        rho_abs = metrics.spearman(trained, shown, absolute=True)
        ssim = None if run.ssim_problem is not None else metrics.map_ssim(trained, shown)
        stages.append({"randomized_through": name, "modules": i, "fraction": i / n_mod, "spearman": mean(rho),
                       "spearman_abs": mean(rho_abs), "ssim": None if ssim is None else mean(ssim),
                       "undefined": int(torch.isnan(rho).sum()), "undefined_abs": int(torch.isnan(rho_abs).sum())})
        advance()
    last = stages[-1] if stages else {}
    return {"key": _sanity_key(run, method), "n": k, "stages": stages, "final": last.get("spearman"),
            "final_abs": last.get("spearman_abs"), "final_ssim": last.get("ssim")}


#: The settings each medcam-fast method depends on beyond the shared ones (a peer's are in its registry entry).
_MEDCAM_SETTINGS: dict[str, tuple[str, ...]] = {"first-guess": (), "refined": ("refine_steps", "start_clip",
                                                                          "keep_best"),
                                                "fit": ("fit_steps",)}


_SHARED_SETTINGS = ("n", "seed")


def _cache_key(run: _Run, name: str, method: str, explainer_sha256: str | None) -> dict[str, Any]:
    """What one method's cached maps depend on, and nothing else.

    Every method's maps depend on the images (``n``, ``seed``) and the classifier, and the run's baseline;
    the first guess and refinement on the explainer's weights (and refinement on its steps, start clip and
    keep-best rule, and on its learned steps' sha256 when it ships them), the per-image fit on its loss weights only, a peer on its own settings only. So a new
    explainer reruns
    ``first-guess`` and ``refined`` and reuses the fit and every peer. Not in the key: the device, the batch
    size, the scoring settings (:func:`_scoring_key`: cached maps are scored again), the sanity check's
    (:func:`_sanity_key`: it alone reruns) and the other methods.
    """
    d = run.cfg.to_dict()
    if method == RANDOM:
        own: tuple[str, ...] = ()
    else:
        own = _MEDCAM_SETTINGS[method] if method in MEDCAM_METHODS else peers.METHODS[method].settings
    key: dict[str, Any] = {k: d[k] for k in _SHARED_SETTINGS + own}
    key.update(dataset=name, method=method, classifier_sha256=run.bundle.sha256,
               baseline=str(run.fit_config.baseline))
    if method in EXPLAINER_METHODS and explainer_sha256 is not None:
        key["explainer_sha256"] = explainer_sha256
    steps = run.medcam.explainer.steps_sha256 if run.medcam is not None and run.medcam.explainer is not None else ""
    if method == "refined" and steps:  # learned refinement steps change the refined maps, not the first guess
        key["learned_steps_sha256"] = steps
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


def pick_images(images: ImageSet, n: int, seed: int) -> ImageSet:
    """The ``n`` images a measurement reads from a split: a seeded uniform sample without replacement, in the
    split's order (every image when ``n`` covers the split). Not the first ``n``: splits can be sorted by class
    (brain's first 32 test images are one class of four), and a measurement on one class is not one on the set.

    Args:
        images: the split.
        n: how many images.
        seed: seeds the sample (``evaluate``'s ``--seed``; 0 by default, as in every committed table).
    """
    if n >= len(images.labels):
        return images
    idx = np.sort(np.random.default_rng(seed).choice(len(images.labels), size=n, replace=False))
    return images.subset(idx)


def _explainer_sha256(medcam: MedCAM) -> str | None:
    """The sha256 of the explainer's weights: the torch bundle's, or the ONNX file's when that is all there is."""
    if medcam.explainer is not None:
        return medcam.explainer.sha256
    return sha256_file(medcam.onnx.path) if medcam.onnx is not None else None


def _ssim_problem() -> str | None:
    """None when SSIM can be computed here (scikit-image imports), else why not and how to install it."""
    try:
        import skimage.metrics  # noqa: F401
    except ImportError as e:
        return f"scikit-image cannot be imported ({e}); {INSTALL_HINT}"
    return None


def _method_result(run: _Run, method: str, maps: Maps | None, cached: dict[str, Any] | None,
                   tick: Callable[[str], None], label: str) -> tuple[dict[str, Any], Maps, bool]:
    """One method's result: computed (``maps`` None) or reused, scored again when the scoring settings changed,
    its sanity check run when its settings changed. Returns ``(result, maps, changed)``."""
    changed = False
    if cached is None:
        maps = _maps(method, run, run.x, run.target, run.baseline)
        res: dict[str, Any] = {"label": label, "device": str(run.x.device), "seconds_per_image": maps.seconds}
        if method == "first-guess":
            res["runtime"] = "onnxruntime" if run.medcam_for(method).onnx is not None else "torch"
        changed = True
    else:
        res = cached
    assert maps is not None
    if res.get("scored_with") != _scoring_key(run, method):
        for stale in ("per_image", "road", "pointing", "iou", "localization_n", "readability"):
            res.pop(stale, None)
        res.update(_score(run, method, maps))
        changed = True
    if method != RANDOM:
        tick(f"{run.name}: {method}" + (" reused" if cached is not None else ""))
        sanity = res.get("sanity") or {}
        if run.sanity_n == 0 and "sanity" in res:  # not asked for this time: no stale numbers in the report
            del res["sanity"]
            changed = True
        if run.sanity_n > 0 and sanity.get("key") != _sanity_key(run, method):
            res["sanity"] = _sanity(run, method, _relevance(method, maps.saliency[: run.sanity_n]),
                                    lambda: tick(f"{run.name}: {method} sanity"))
            changed = True
    return res, maps, changed


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
        progress: called with a short label after each method and each sanity stage.
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
    sel = pick_images(images, cfg.n, cfg.seed)
    pre = classifier.preprocess
    clf = classifier.frozen().to(device)
    x = torch.from_numpy(pre(sel.images)).to(device)
    with torch.no_grad():
        logits = torch.cat([clf.logits(x[s : s + 256]) for s in range(0, len(x), 256)])
    target = logits.argmax(1)
    p_original = logits.softmax(1).gather(1, target[:, None])[:, 0]
    fit_config = FitConfig(steps=cfg.fit_steps, seed=cfg.seed)
    medcam = explainer_sha256 = None
    if explainer is not None:  # the fit optimizes the explainer's objective; every method shares its baseline
        medcam = _explainer_medcam(classifier, explainer, cfg)
        assert medcam.settings is not None  # MedCAM with an explainer always has its settings
        fit_config = fit_config.with_(weights=medcam.settings.weights, baseline=medcam.settings.baseline)
        explainer_sha256 = _explainer_sha256(medcam)
    baseline = make_baseline(x, fit_config.baseline, pre.mean, pre.std)
    available = peers.available_peers()
    road_ok = available.get("road") is None
    n_road = x.shape[0] if cfg.road_n is None else min(cfg.road_n, x.shape[0])
    run = _Run(cfg, classifier, clf, explainer, medcam, fit_config, x, target, baseline, name=name,
               fills=make_fills(cfg.fills, x, pre, cfg.seed), evidence=_evidence(sel, target, tuple(x.shape[-2:])),
               strides=classifier_strides(clf, x), road_n=n_road if road_ok else 0,
               sanity_n=min(cfg.sanity_n, x.shape[0]), ssim_problem=_ssim_problem())

    skipped: dict[str, str] = {}
    cache = out_dir / "datasets" / name if out_dir is not None else None
    rows = _grid_rows(sel.labels, cfg.grid_per_class)
    grid: dict[str, Maps] = {}
    results: dict[str, Any] = {}
    all_maps: dict[str, Maps] = {}
    random_result: dict[str, Any] = {}
    for m in (*cfg.methods, RANDOM):
        if m in peers.METHODS and available.get(m) is not None:
            skipped[m] = str(available[m])
            tick(f"{name}: {m} skipped")
            continue
        key = _cache_key(run, name, m, explainer_sha256)
        cached = _load_cached(cache, m, key) if cache is not None and resume else None
        prior: dict[str, Any] | None = None
        maps: Maps | None = None
        if cached is not None:
            prior, saved = cached
            maps = Maps(saved.saliency.to(device), None if saved.binary is None else saved.binary.to(device),
                        saved.seconds)
        label = "random map (control)" if m == RANDOM else _LABELS.get(m) or peers.METHODS[m].label
        res, maps, changed = _method_result(run, m, maps, prior, tick, label)
        if changed and cache is not None:
            _save_cached(cache, m, key, res, maps)
        all_maps[m] = maps
        if m == RANDOM:
            random_result = res
            continue
        results[m] = res
        grid[m] = maps.rows(rows)

    controls = _controls(run, results, all_maps, random_result)
    out = {
        "name": name,
        "n": int(x.shape[0]),
        "sanity_n": run.sanity_n if cfg.sanity_n else 0,
        "sanity_ssim": run.ssim_problem,
        "road_n": run.road_n,
        "fills": [str(f) for f in run.fills.substrates],
        "fills_skipped": {str(f): why for f, why in run.fills.skipped.items()},
        "headline_fills": _headline_fills(run, results),
        "baseline": str(fill_of_baseline(fit_config.baseline)),
        "strides": run.strides,
        "classes": list(classifier.classes),
        "classifier_sha256": classifier.sha256,
        "explainer": None if explainer is None else str(explainer),
        "explainer_sha256": explainer_sha256,
        "accuracy": float((target.cpu().numpy() == sel.labels).mean()),
        # p(original): the explained class's probability on the image itself, what p_kept is judged against
        "p_original": float(p_original.mean()),
        "p_original_per_image": [float(v) for v in p_original.cpu()],
        "localization": run.evidence is not None,
        "localization_n": int(run.evidence.rows.numel()) if run.evidence is not None else 0,
        "evidence_class": (classifier.classes[sel.evidence_class] if run.evidence is not None
                           and sel.evidence_class is not None else None),
        "methods": results,
        "controls": controls,
        "skipped": skipped,
    }
    out["paired"] = _paired(out, cfg)
    shown = Grid(name, sel.subset(rows), pre, target.cpu().numpy()[rows], grid, [results[m]["label"] for m in grid])
    return DatasetEvaluation(out, shown)


def _headline_fills(run: _Run, results: dict[str, Any]) -> list[str]:
    """The image fills that no evaluated method was trained or tuned against, in the run's order."""
    trained = {r.get("trained_fill") for r in results.values()}
    return [str(f) for f in run.fills.substrates if f.is_image and str(f) not in trained]


def _controls(run: _Run, results: dict[str, Any], all_maps: dict[str, Maps],
              random_result: dict[str, Any]) -> dict[str, Any]:
    """The random map's scores (computed like a method's), the fill alone, and for each binary method its
    own-area comparison (whose ``blob`` row is the random blob of the mask's area)."""
    out: dict[str, Any] = {"fill_alone": fill_alone(run.clf, run.x, run.target, run.fills),
                           "random": random_result}
    own: dict[str, Any] = {}
    for m, res in results.items():
        maps = all_maps[m]
        if maps.binary is None:
            continue
        verdict = {f: {k: d[k] for k in ("p_kept", "p_removed")} for f, d in res["per_image"]["fills"].items()}
        others = {o: mp.saliency for o, mp in all_maps.items() if o != m}
        own[m] = own_area(run.clf, run.x, run.target, maps.binary, verdict, others, run.fills, seed=run.cfg.seed)
    out["own_area"] = own
    return out


@dataclass(frozen=True)
class _Column:
    """A headline column: its title, direction, and where its per-image scores and mean live in a result."""

    title: str
    higher: bool
    path: tuple[str, ...]  # into ``per_image``
    mean_path: tuple[str, ...]  # into the result

    def per_image(self, res: dict[str, Any]) -> list[float | None] | None:
        return _dig(res.get("per_image"), self.path)

    def mean(self, res: dict[str, Any]) -> float | None:
        return _dig(res, self.mean_path)


def _dig(node: Any, path: Sequence[str]) -> Any:
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def headline_columns(ds: dict[str, Any], fractions: Sequence[float]) -> list[_Column]:
    """The columns a data set's headline is stated in: under each headline fill (no method trained on it) keep
    10 % (or the first area), insertion AUC, deletion AUC, faithfulness correlation and monotonicity; keep 10 %
    under noisy linear imputation and ROAD combined when they ran; top-k IoU where the evidence is known."""
    a = f"{0.1 if any(abs(f - 0.1) < 1e-9 for f in fractions) else fractions[0]:g}"
    cols: list[_Column] = []
    for f in ds["headline_fills"]:
        cols += [
            _Column(f"keep {100 * float(a):g}% [{f}]", True, ("fills", f, "keep", a), ("fills", f, "preservation", a)),
            _Column(f"insertion AUC [{f}]", True, ("fills", f, "insertion_auc"), ("fills", f, "insertion_auc")),
            _Column(f"deletion AUC [{f}]", False, ("fills", f, "deletion_auc"), ("fills", f, "deletion_auc")),
            _Column(f"faithfulness corr. [{f}]", True, ("fills", f, "faithfulness_correlation"),
                    ("fills", f, "faithfulness_correlation")),
            _Column(f"monotonicity [{f}]", True, ("fills", f, "monotonicity"), ("fills", f, "monotonicity")),
        ]
    nl = str(Fill.NOISY_LINEAR)
    if nl in ds["fills"]:
        cols.append(_Column(f"keep {100 * float(a):g}% [{nl}]", True, ("fills", nl, "keep", a),
                            ("fills", nl, "preservation", a)))
    if ds.get("road_n"):
        cols.append(_Column(f"ROAD combined [{nl}]", True, ("road", "combined"), ("road", "combined")))
    if ds.get("localization"):
        cols.append(_Column("top-k IoU", True, ("iou",), ("iou",)))
    return cols


def _paired(ds: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """The paired comparisons of a data set, one Holm family per table:

    * ``best_peer`` — each medcam-fast method against the best peer (by mean) of each headline column;
    * ``random`` — every method against the random-map control on the same columns;
    * ``own_area`` — for each binary method, its mask against every other map's top-k pixels at the mask's
      area and against the random blob: p_kept (higher is better) and p_removed (lower is better) under every
      fill.

    Each comparison is oriented so that Δ > 0 favours the first method (see
    :func:`~medcam_fast.evaluation.scoring.paired_family`).
    """
    results = ds["methods"]
    cols = headline_columns(ds, cfg.fractions)
    best: list[PairedSpec] = []
    for c in cols:
        peer_means = {m: v for m, r in results.items() if m not in MEDCAM_METHODS and (v := c.mean(r)) is not None}
        if not peer_means:
            continue
        top = (max if c.higher else min)(peer_means, key=peer_means.__getitem__)
        theirs = c.per_image(results[top])
        for m, r in results.items():
            if m in MEDCAM_METHODS and (mine := c.per_image(r)) is not None and theirs is not None:
                best.append(PairedSpec(c.title, m, top, mine, theirs, c.higher))
    against_random: list[PairedSpec] = []
    rnd = ds["controls"].get("random") or {}
    for c in cols:
        theirs = c.per_image(rnd)
        if theirs is None:
            continue
        for m, r in results.items():
            if (mine := c.per_image(r)) is not None:
                against_random.append(PairedSpec(c.title, m, RANDOM, mine, theirs, c.higher))
    own: dict[str, Any] = {}
    for m, table in ds["controls"]["own_area"].items():
        specs = []
        mine_rows = table["rows"]["self"]["per_image"]
        for other, row in table["rows"].items():
            if other == "self":
                continue
            for f in ds["fills"]:
                for k, higher in (("p_kept", True), ("p_removed", False)):
                    a, b = mine_rows.get(f, {}).get(k), row["per_image"].get(f, {}).get(k)
                    if a is not None and b is not None:
                        specs.append(PairedSpec(f"{k} [{f}]", m, other, a, b, higher))
        own[m] = paired_family(specs, seed=cfg.seed)
    return {"best_peer": paired_family(best, seed=cfg.seed), "random": paired_family(against_random, seed=cfg.seed),
            "own_area": own}


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
