"""evaluation.harness: TODO docstring (split from evaluate.py)."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write, atomic_write_json
from ..classifiers.bundle import load_classifier
from ..classifiers.frozen import ClassifierBundle, FrozenClassifier
from ..data.images import ImageSet
from ..errors import UsageError
from ..explain import DEFAULT_STEPS, _load_explainer, _onnx_only_bundle
from ..explainer.bundle import ExplainerBundle
from ..method.fit import FitConfig, fit_masks
from ..method.inner import START_CLIP
from ..method.masking import make_baseline, mask_from_logits
from ..method.refine import refine
from . import baselines as peers
from . import metrics
from .report import report_markdown

__all__ = ["MEDCAM_METHODS", "ALL_METHODS", "EvalConfig", "evaluate_dataset", "evaluate_suite"]


#: medcam-fast's own methods, in report order.
MEDCAM_METHODS: tuple[str, ...] = ("first-guess", "refined", "fit")


#: Every method ``evaluate`` knows, in report order.
ALL_METHODS: tuple[str, ...] = MEDCAM_METHODS + tuple(peers.METHODS)


_LABELS = {"first-guess": "medcam-fast first guess", "refined": "medcam-fast refined", "fit": "per-image fit"}


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run.

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
        start_clip: the ``refined`` method's first guess is clipped to ``±start_clip`` (see
            :func:`medcam_fast.method.refine.refine`).
        rise_masks: random masks per image for RISE (the paper: 4000 at 224 px).
        extremal_steps: optimization steps per area for Extremal Perturbations (the paper: 1600 at 224 px).
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
    refine_steps: int = DEFAULT_STEPS
    start_clip: float = START_CLIP
    rise_masks: int = 4000
    extremal_steps: int = 300
    fit_steps: int = 300
    batch_size: int = 16
    grid_per_class: int = 2
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(ALL_METHODS)}")
        if not self.methods:
            raise UsageError("no methods to evaluate")
        if self.n < 1 or self.sanity_n < 0 or self.sanity_stages < 1 or self.batch_size < 1:
            raise UsageError("n, sanity-stages and batch-size must be positive, sanity-n non-negative")

    def with_(self, **changes: Any) -> EvalConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class _Explainers:
    """Everything medcam-fast's methods need: the torch bundle (or its ONNX-only stand-in) and ONNX."""

    bundle: ExplainerBundle
    onnx: Any


@dataclass
class _Maps:
    saliency: Tensor  # [N,H,W], higher = more important
    binary: Tensor | None  # [N,H,W] bool for methods with a binary mask
    seconds: float  # per image


@dataclass
class _Context:
    classifier: FrozenClassifier
    explainers: _Explainers
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cfg: EvalConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_guess(ctx: _Context, x: Tensor, target: Tensor) -> Tensor:
    ex = ctx.explainers
    if ex.onnx is not None:
        u = ex.onnx.logits(x.detach().cpu().numpy(), target.cpu().numpy())
        return torch.from_numpy(np.asarray(u)).reshape(x.shape[0], 1, *x.shape[-2:]).to(x.device)
    with torch.no_grad():
        return ex.bundle.unet(x, target)


def _medcam_chunk(method: str, ctx: _Context, clf: FrozenClassifier, x: Tensor, target: Tensor,
                  seed: int) -> tuple[Tensor, Tensor]:
    """(saliency = mask logits ``u``, binary mask) of one chunk for a medcam-fast method."""
    bundle = ctx.explainers.bundle
    if method == "fit":
        cfg = FitConfig(steps=ctx.cfg.fit_steps, weights=bundle.weights, baseline=bundle.baseline,  # type: ignore[arg-type]
                        seed=seed)
        res = fit_masks(clf, x, target, cfg, normalization=(ctx.mean, ctx.std))
        return res.logits, res.binary
    u0 = _first_guess(ctx, x, target)
    if method == "first-guess":
        return u0[:, 0], mask_from_logits(u0[:, 0], bundle.tau) > bundle.threshold
    res = refine(bundle, clf, x, target, steps=ctx.cfg.refine_steps, mode="logits", initial_logits=u0, seed=seed,
                 start_clip=ctx.cfg.start_clip)
    return res.logits, res.binary


def _maps(method: str, ctx: _Context, clf: FrozenClassifier, x: Tensor, target: Tensor,
          baseline: Tensor) -> _Maps:
    """One method's maps for all of ``x`` (in chunks of ``batch_size``), timed."""
    sal, binary = [], []
    bs = ctx.cfg.batch_size
    _sync(x.device)
    start = time.perf_counter()
    for s in range(0, x.shape[0], bs):
        xs, ts, bl = x[s : s + bs], target[s : s + bs], baseline[s : s + bs]
        if method in MEDCAM_METHODS:
            u, b = _medcam_chunk(method, ctx, clf, xs, ts, ctx.cfg.seed + s)
            sal.append(u.detach())
            binary.append(b.detach().bool())
        elif method == "rise":
            sal.append(peers.rise(clf, xs, ts, n_masks=ctx.cfg.rise_masks, baseline=bl, seed=ctx.cfg.seed).detach())
        elif method == "extremal":
            sal.append(peers.extremal_perturbation(clf, xs, ts, steps=ctx.cfg.extremal_steps, baseline=bl,
                                                   seed=ctx.cfg.seed).detach())
        else:
            sal.append(peers.METHODS[method].fn(clf, xs, ts, bl).detach())
    _sync(x.device)
    seconds = (time.perf_counter() - start) / x.shape[0]
    return _Maps(torch.cat(sal).float(), torch.cat(binary) if binary else None, seconds)


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


def _score_maps(ctx: _Context, x: Tensor, target: Tensor, maps: _Maps, evidence: _Evidence | None,
                baseline: Tensor, deletion: Tensor, insertion: Tensor) -> dict[str, Any]:
    clf = ctx.classifier
    cfg = ctx.cfg
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


def _sanity(ctx: _Context, method: str, x: Tensor, target: Tensor, baseline: Tensor, trained: Tensor,
            advance: Callable[[], None]) -> dict[str, Any]:
    """Cascading randomization (Adebayo et al. 2018) of the classifier from the top; Spearman ρ per stage."""
    clf = ctx.classifier
    n_mod = len(metrics.parameterized_modules(clf.model))
    stops = set(metrics.cascade_checkpoints(n_mod, ctx.cfg.sanity_stages))
    stages = []
    for i, (name, model) in enumerate(metrics.cascading_randomization(clf.model, seed=ctx.cfg.seed), start=1):
        if i not in stops:
            continue
        rand = FrozenClassifier(model, layers=clf.layers, num_classes=clf.num_classes)
        maps = _maps(method, ctx, rand, x, target, baseline)
        rho = metrics.spearman(trained, maps.saliency)
        stages.append({"randomized_through": name, "modules": i, "fraction": i / n_mod, "spearman": _mean(rho),
                       "undefined": int(torch.isnan(rho).sum())})
        advance()
    return {"stages": stages, "final": stages[-1]["spearman"] if stages else None}


def _road(clf: FrozenClassifier, x: Tensor, target: Tensor, sal: Tensor) -> dict[str, float | None]:
    r = peers.road(clf, x, target, sal)
    return {k: _mean(v) for k, v in r.items()}


#: The settings each method depends on beyond the shared ones (images, metrics, sanity check).
_METHOD_SETTINGS: dict[str, tuple[str, ...]] = {"refined": ("refine_steps", "start_clip"), "fit": ("fit_steps",),
                                                "rise": ("rise_masks",), "extremal": ("extremal_steps",)}


_SHARED_SETTINGS = ("n", "fractions", "curve_steps", "sanity_n", "sanity_stages", "seed")


def _cache_key(cfg: EvalConfig, name: str, method: str, classifier: ClassifierBundle,
               explainer: ExplainerBundle | None) -> dict[str, Any]:
    """What one method's cached result depends on, and nothing else.

    Every method depends on the images, the metrics' settings, the classifier and the preservation baseline;
    the first guess and refinement on the explainer's weights (and refinement on its steps and start clip), the
    per-image fit on the loss weights only, a peer on its own settings only. So a new explainer reruns
    ``first-guess`` and ``refined`` and reuses the fit and every peer. Not in the key: the device, the batch
    size, ROAD and the other methods.
    """
    d = asdict(cfg)
    key: dict[str, Any] = {k: d[k] for k in _SHARED_SETTINGS + _METHOD_SETTINGS.get(method, ())}
    key.update(dataset=name, method=method, classifier_sha256=classifier.sha256,
               baseline=explainer.baseline if explainer is not None else "blur")
    if method in ("first-guess", "refined") and explainer is not None:
        key["explainer_sha256"] = explainer.sha256
    if method == "fit" and explainer is not None:
        key["loss_weights"] = asdict(explainer.weights)
    return key


def _load_cached(folder: Path, method: str, key: dict[str, Any]) -> tuple[dict[str, Any], _Maps] | None:
    jpath, npath = folder / f"{_slug(method)}.json", folder / f"{_slug(method)}.npz"
    if not (jpath.is_file() and npath.is_file()):
        return None
    saved = json.loads(jpath.read_text(encoding="utf-8"))
    if json.loads(json.dumps(key)) != saved.get("key"):
        return None
    with np.load(npath, allow_pickle=False) as z:
        binary = torch.from_numpy(z["binary"]) if "binary" in z.files else None
        maps = _Maps(torch.from_numpy(z["saliency"].astype(np.float32)), binary, saved["result"]["seconds_per_image"])
    return saved["result"], maps


def _save_cached(folder: Path, method: str, key: dict[str, Any], result: dict[str, Any], maps: _Maps) -> None:
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


def _load_explainers(path: str | Path, device: torch.device) -> _Explainers:
    bundle, onnx = _load_explainer(path, use_onnx=True)
    if bundle is None:
        return _Explainers(_onnx_only_bundle(onnx, FitConfig()), onnx)
    bundle.unet.to(device)
    return _Explainers(bundle, onnx)


def evaluate_dataset(
    name: str,
    classifier: ClassifierBundle,
    explainer: str | Path | None,
    images: ImageSet,
    config: EvalConfig,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate every method of ``config`` on ``config.n`` images of ``images``.

    Args:
        name: the data set's name in the report.
        classifier: the frozen classifier's bundle.
        explainer: the explainer bundle folder or ``.onnx`` file for medcam-fast's methods (None when only
            peers are evaluated).
        images: test images (raw, as the classifier's preprocessing takes them); ``masks`` when the true
            evidence is known.
        config: evaluation settings.
        out_dir: where the figures go (``figures/grid_<name>.png``, ``figures/metrics_<name>.png``).
        progress: called with a short label after each unit of work.
        resume: reuse methods finished by an earlier run into ``out_dir`` with the same settings.

    Returns:
        The JSON-safe results of this data set.
    """
    cfg = config
    device = torch.device(cfg.device)
    tick = progress or (lambda _label: None)
    sel = _pick(images, cfg.n, cfg.seed)
    pre = classifier.preprocess
    clf = classifier.frozen().to(device)
    x = torch.from_numpy(pre(sel.images)).to(device)
    with torch.no_grad():
        logits = torch.cat([clf.logits(x[s : s + 256]) for s in range(0, len(x), 256)])
    target = logits.argmax(1)
    needs_explainer = any(m in MEDCAM_METHODS for m in cfg.methods)
    if needs_explainer and explainer is None:
        raise UsageError("medcam-fast's methods need --explainer (a bundle folder or explainer.onnx)")
    ex = _load_explainers(explainer, device) if needs_explainer and explainer is not None else None
    baseline_kind = ex.bundle.baseline if ex is not None else "blur"
    ctx = _Context(clf, ex, tuple(pre.mean), tuple(pre.std), cfg)  # type: ignore[arg-type]
    baseline = make_baseline(x, baseline_kind, pre.mean, pre.std)  # type: ignore[arg-type]
    deletion = make_baseline(x, "zero", pre.mean, pre.std)
    insertion = make_baseline(x, "blur", pre.mean, pre.std)
    evidence = _evidence(sel, target, tuple(x.shape[-2:]))

    skipped: dict[str, str] = {}
    available = peers.available_peers()
    cache = out_dir / "datasets" / name if out_dir is not None else None
    rows = _grid_rows(sel.labels, cfg.grid_per_class)
    k = min(cfg.sanity_n, x.shape[0])
    r = min(cfg.road_n, x.shape[0])
    grid: dict[str, _Maps] = {}
    results: dict[str, Any] = {}
    for m in cfg.methods:
        key = _cache_key(cfg, name, m, classifier, ex.bundle if ex is not None else None)
        cached = _load_cached(cache, m, key) if cache is not None and resume else None
        if cached is not None:
            res, maps = cached
            changed = False
            stale = evidence is not None and res.get("localization_n") != int(evidence.rows.numel())
            if "per_image" not in res or stale:  # scored by an older version: score its cached maps again
                res.update(_score_maps(ctx, x, target, _Maps(maps.saliency.to(device), None if maps.binary is None
                                                             else maps.binary.to(device), maps.seconds),
                                       evidence, baseline, deletion, insertion))
                changed = True
            if "road" not in res and available.get("road") is None and r > 0:  # e.g. first run had no grad-cam
                res["road"] = _road(clf, x[:r], target[:r], maps.saliency[:r].to(device))
                changed = True
            if changed:
                _save_cached(cache, m, key, res, maps)  # type: ignore[arg-type]
            results[m] = res
            grid[m] = _Maps(maps.saliency[rows], None if maps.binary is None else maps.binary[rows], maps.seconds)
            tick(f"{name}: {m} reused")
            continue
        if m in peers.METHODS and available.get(m) is not None:
            skipped[m] = str(available[m])
            tick(f"{name}: {m} skipped")
            continue
        maps = _maps(m, ctx, clf, x, target, baseline)
        res: dict[str, Any] = {"label": _LABELS.get(m) or peers.METHODS[m].label, "device": str(device),
                               **_score_maps(ctx, x, target, maps, evidence, baseline, deletion, insertion)}
        if m == "first-guess" and ex is not None:
            res["runtime"] = "onnxruntime" if ex.onnx is not None else "torch"
        tick(f"{name}: {m}")
        if available.get("road") is None and r > 0:
            res["road"] = _road(clf, x[:r], target[:r], maps.saliency[:r])
        if k > 0:
            res["sanity"] = _sanity(ctx, m, x[:k], target[:k], baseline[:k], maps.saliency[:k],
                                    lambda m=m: tick(f"{name}: {m} sanity"))
        results[m] = res
        grid[m] = _Maps(maps.saliency[rows].cpu(), None if maps.binary is None else maps.binary[rows].cpu(),
                        maps.seconds)
        if cache is not None:
            _save_cached(cache, m, key, res, maps)

    out = {
        "name": name,
        "n": int(x.shape[0]),
        "sanity_n": int(k),
        "road_n": int(r) if available.get("road") is None else 0,
        "classes": list(classifier.classes),
        "classifier_sha256": classifier.sha256,
        "explainer": str(explainer) if needs_explainer else None,
        "explainer_sha256": ex.bundle.sha256 if ex is not None else None,
        "accuracy": float((target.cpu().numpy() == sel.labels).mean()),
        "localization": evidence is not None,
        "localization_n": int(evidence.rows.numel()) if evidence is not None else 0,
        "evidence_class": (classifier.classes[sel.evidence_class] if evidence is not None
                           and sel.evidence_class is not None else None),
        "methods": results,
        "skipped": skipped,
        "paired": _paired(results, cfg),
    }
    if out_dir is not None and results:
        from .figures import grid_figure, metrics_figure

        grid_figure(out_dir / "figures" / f"grid_{name}.png", name, sel.subset(rows), pre, target[rows].cpu(),
                    grid, [results[m]["label"] for m in grid])
        metrics_figure(out_dir / "figures" / f"metrics_{name}.png", out)
    return out


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


def _env(cfg: EvalConfig) -> dict[str, Any]:
    from .._version import __version__

    dev = torch.device(cfg.device)
    env = {"medcam_fast": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(dev), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def evaluate_suite(
    specs: Sequence[tuple[str, str | Path, str | Path | None, ImageSet]],
    config: EvalConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate several data sets and write ``results.json``, ``report.md`` and figures under ``out_dir``.

    Args:
        specs: ``(name, classifier bundle, explainer, test images)`` per data set.
        config: evaluation settings.
        out_dir: output folder (``datasets/<name>/<method>.json`` holds each finished method for ``resume``).
        resume: reuse finished methods whose settings match ``config`` (a run without a peer package, then
            one with it, completes a report; the device each method ran on is recorded).
        progress: called with a short label after each unit of work.
    """
    out = Path(out_dir)
    results: dict[str, Any] = {"config": {**asdict(config), "methods": list(config.methods)}, "env": _env(config),
                               "datasets": {}}
    for name, clf_path, ex_path, images in specs:
        bundle = load_classifier(clf_path)
        results["datasets"][name] = evaluate_dataset(name, bundle, ex_path, images, config, out, progress,
                                                     resume=resume)
    atomic_write_json(out / "results.json", results)
    text = report_markdown(results)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return results
