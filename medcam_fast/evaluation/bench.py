"""The benchmarks behind ``medcam-fast bench``: the per-image fit's verdict, quality against time, and speed.

* :func:`bench_per_image` — the paper's per-image fit on the first ``n`` test images of each data set: the
  binary masks' verdict (``p_original``, ``p_kept``, ``p_removed``, ``area``) against the acceptance
  criteria, and seconds per image;
* :func:`bench_quality` — composite loss and verdict against seconds per image: each explainer's first
  guess plus ``K`` refinement steps (``logits`` and ``weights`` modes) against the per-image fit at several
  step counts, in one run; and whether the evidence of a class other than the predicted one raises that
  class's probability;
* :func:`bench_speed` — milliseconds per image of every way to get a mask on the same classifier and
  images (the built-in ResNet and a timm ViT): the decoder's first guess (torch, one class and every class;
  its ONNX graph), first guess + ``K`` steps, the per-image fit, the 0.1 U-Net's first guess and Grad-CAM.

medcam-fast is measured through :class:`~medcam_fast.explain.MedCAM`, as a user calls it (chunks of
``batch_size``, the forward passes that pick the class and verify the mask included). Only the speed
bench's first-guess rows time the torch decoder and the ONNX sessions directly: what they measure is the
runtime itself. Machines are noisy, so every timing is a median — over images (each charged its chunk's
time over the chunk's size) or over repeats — and comparisons are ratios taken in the same run; the
samples each median is taken over are kept in the results.

Every timed explainer is called once, untimed, on the first chunk before its first measured point, so no
point pays for lazy set-up (an ONNX session's first run, first kernel calls, allocator growth): without it the
first point of a curve was the slowest and the plotted time-quality curve looped back at K = 1.

What is measured is given per data set as a :class:`BenchSet` — the test images and the bundles' folders,
from any path (:meth:`BenchSet.under` builds the ``models/<data set>/`` convention).

Nothing here prints: a ``progress`` callback gets one line per unit of work, and the CLI renders the
tables. Given ``out_dir``, each function writes its JSON and Markdown (and ``bench quality`` its plot).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write, atomic_write_json
from ..classifiers.bundle import load_classifier
from ..classifiers.frozen import ClassifierBundle
from ..data.images import ImageSet
from ..errors import UsageError
from ..explain import MedCAM
from ..method.fit import FitConfig
from ..method.learned import StepNet, StepNetConfig
from ._measure import Explained, explain_in_chunks, machine_facts

__all__ = ["BenchSet", "QUALITY_FOLDERS", "bench_per_image", "bench_quality", "bench_speed", "per_image_markdown",
           "quality_markdown", "speed_markdown"]

Progress = Callable[[str], None]

#: The explainer folders ``bench quality`` measures when present, beside the shipped ``explainer``: the
#: equal-budget amortized explainer (``meta-train --comparison``) and the classifier-blind U-Net of 0.1.
QUALITY_FOLDERS: tuple[str, ...] = ("explainer", "amortized", "unet")


@dataclass(frozen=True)
class BenchSet:
    """One data set to benchmark: its test images and the bundles that explain it.

    Args:
        images: raw test images (the first ``n`` are measured).
        classifier: the classifier bundle's folder.
        explainer: the explainer's folder (``bench quality`` only): its loss weights and baseline define the
            loss every curve and the per-image fit are measured on, and it also explains a class other than
            the predicted one.
        compare: other explainers measured beside it (the equal-budget amortized one, the 0.1 U-Net), same loss.
    """

    images: ImageSet
    classifier: Path
    explainer: Path | None = None
    compare: tuple[Path, ...] = ()

    @classmethod
    def beside(cls, images: ImageSet, classifier: Path, explainer: Path | None,
               folders: Sequence[str] = QUALITY_FOLDERS) -> BenchSet:
        """The explainer and, for comparison, those of ``folders`` beside it (in its parent folder) that hold
        an ``explainer.json``."""
        compare: tuple[Path, ...] = ()
        if explainer is not None:
            compare = tuple(explainer.parent / f for f in folders
                            if f != explainer.name and (explainer.parent / f / "explainer.json").is_file())
        return cls(images, classifier, explainer, compare)

    @classmethod
    def under(cls, models: Path, name: str, images: ImageSet, folders: Sequence[str] = QUALITY_FOLDERS) -> BenchSet:
        """The ``models/<name>/`` convention: ``classifier``, ``explainer`` and the other ``folders`` present."""
        return cls.beside(images, models / name / "classifier", models / name / "explainer", folders)


def _warm(medcam: MedCAM, x: Tensor, batch_size: int, refine_steps: int | None) -> MedCAM:
    """Call ``medcam`` once, untimed, on the first chunk (the shape every timed call has), so its first timed
    call pays for no lazy set-up (module docstring). Returns it."""
    medcam(x[:batch_size], refine_steps=refine_steps)
    return medcam


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _line: None)


def _x(bundle: ClassifierBundle, images: ImageSet, n: int) -> Tensor:
    """The first ``n`` images, preprocessed for the classifier."""
    if len(images) == 0:
        raise UsageError(f"no test images in {images.name!r}")
    return torch.from_numpy(bundle.preprocess(images.images[:n]))


def _verdict(ex: Explained) -> dict[str, Any]:
    """Means of the binary masks' verdict and loss, and the median seconds per image with its samples."""
    return {
        "loss": float(ex.loss.mean()),
        "p_original": float(ex.p_original.mean()),
        "p_kept": float(ex.p_kept.mean()),
        "p_removed": float(ex.p_removed.mean()),
        "area": float(ex.area.mean()),
        "seconds_per_image": statistics.median(ex.seconds.tolist()),
        "seconds_samples": [float(s) for s in ex.seconds],
    }


def bench_per_image(
    sets: Mapping[str, BenchSet],
    *,
    n: int = 32,
    steps: int | None = None,
    batch_size: int = 16,
    config: FitConfig | None = None,
    progress: Progress | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """The paper's per-image fit on the first ``n`` test images of each data set, with binary masks.

    For each data set: the means of ``p_original``, ``p_kept``, ``p_removed``, ``area`` and the loss, the
    drop ``p_original − p_removed``, the median seconds per image (``MedCAM`` without an explainer, batches
    of ``batch_size`` fitted together) and the acceptance criteria: ``p_kept ≥ p_original``,
    ``area ≤ 0.25``, drop ``≥ 0.3``. Writes ``per_image.json`` and ``per_image.md`` under ``out_dir`` when given.

    Args:
        sets: data set name → its test images and classifier.
        n: test images per data set (the first ``n``).
        steps: fit steps per image (default ``config.steps``).
        batch_size: images fitted together.
        config: fit settings (default :class:`~medcam_fast.method.fit.FitConfig` ``()``).
        progress: called with one line per batch.
        out_dir: where the result files go (None: none are written).
    """
    say = _say(progress)
    cfg = config or FitConfig()
    if steps is not None:
        cfg = cfg.with_(steps=steps)
    results: dict[str, Any] = {"config": cfg.to_dict(), "n": n, "machine": machine_facts(), "datasets": {}}
    for name, spec in sets.items():
        images = spec.images
        bundle = load_classifier(spec.classifier)
        x = _x(bundle, images, n)
        fit = _warm(MedCAM(bundle, fit_config=cfg), x, batch_size, 1)
        ex = explain_in_chunks(fit, x, batch_size=batch_size,
                               on_chunk=lambda done, total, s, name=name: say(
                                   f"{name}: {done}/{total} images, {s:.2f} s/image"))
        v = _verdict(ex)
        row = {
            **{k: v[k] for k in ("p_original", "p_kept", "p_removed", "area", "loss")},
            "drop": v["p_original"] - v["p_removed"],
            "seconds_per_image_median": v["seconds_per_image"],
            "seconds_samples": v["seconds_samples"],
            "accuracy_on_these": float((ex.predicted == images.labels[: len(x)]).mean()),
            "classifier_test_accuracy": bundle.metrics.get("test_accuracy"),
        }
        row["pass"] = {"p_kept>=p_original": row["p_kept"] >= row["p_original"], "area<=0.25": row["area"] <= 0.25,
                       "drop>=0.3": row["drop"] >= 0.3}
        results["datasets"][name] = row
    if out_dir is not None:
        atomic_write_json(out_dir / "per_image.json", results)
        md = per_image_markdown(results)
        atomic_write(out_dir / "per_image.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return results


def per_image_markdown(results: Mapping[str, Any]) -> str:
    """The README table of :func:`bench_per_image` results."""
    lines = [
        "| data set | p_original | p_kept | p_removed | drop | area | s/image (median) | all criteria |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        lines.append(
            f"| {name} | {r['p_original']:.3f} | {r['p_kept']:.3f} | {r['p_removed']:.3f} | {r['drop']:.3f} | "
            f"{r['area']:.3f} | {r['seconds_per_image_median']:.2f} | {'yes' if all(r['pass'].values()) else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def bench_quality(
    sets: Mapping[str, BenchSet],
    *,
    n: int = 32,
    ks: Sequence[int] = (0, 1, 2, 3, 5, 10, 20),
    fit_steps: Sequence[int] = (10, 50, 100, 300),
    modes: Sequence[str] = ("logits", "weights"),
    weights_ks: Sequence[int] | None = None,
    batch_size: int = 16,
    use_onnx: bool = True,
    progress: Progress | None = None,
    out_dir: Path | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Quality against wall time per image: explainers + K refinement steps (``logits`` and ``weights``
    modes) against the per-image fit from scratch, in one run.

    Each :class:`BenchSet` names the classifier and the explainer (required), and the explainers to compare
    with it (``amortized``: the equal-budget amortized explainer; ``unet``: the classifier-blind U-Net
    explainer of 0.1); the ``weights`` mode runs for U-Net explainers only (a decoder has no weights loop);
    curves are labelled by each explainer's training method
    (``maml-logits+init`` = logits-inner-loop MAML started from amortized training, ``amortized``, …; two
    explainers with one method add their folder's name) and mode. Every explainer must share the main one's
    loss weights and baseline (refused otherwise), so
    every curve, and the per-image fit on those weights, minimizes the same loss. ``weights_ks`` limits
    the (slow, per-image) ``weights`` mode to these K (default: ``ks``). Loss and verdict are of the binary
    masks.

    Also: the shipped explainer with its default refinement
    (:class:`~medcam_fast.method.refine.RefineConfig`), asked for the class after the predicted one — with
    only that class's evidence kept its probability should rise (``other_class``).

    Writes ``quality{tag}.json``, ``quality{tag}.md`` and ``quality{tag}.png`` under ``out_dir`` when given
    (``tag`` defaults to ``_`` + the data set names).

    Args:
        use_onnx: take the ``logits`` mode's first guess from a bundle's ``explainer.onnx`` when it has one
            (as ``MedCAM`` does by default); False times the torch U-Net.

    Raises:
        UsageError: a data set without an explainer, or explainers trained on other loss weights.
    """
    say = _say(progress)
    results: dict[str, Any] = {"n": n, "machine": machine_facts(), "datasets": {}}
    for name, spec in sets.items():
        images = spec.images
        if spec.explainer is None:
            raise UsageError(f"bench quality needs an explainer for {name!r}", spec.classifier)
        bundle = load_classifier(spec.classifier)
        x = _x(bundle, images, n)
        main = MedCAM(bundle, spec.explainer, use_onnx=use_onnx)
        assert main.settings is not None  # an explainer's settings
        explainers: dict[str, Path] = {}
        trained: dict[str, Any] = {}
        for path in (spec.explainer, *spec.compare):
            settings = main.settings if path == spec.explainer else MedCAM(bundle, path, use_onnx=False).settings
            assert settings is not None
            if (settings.weights, settings.baseline) != (main.settings.weights, main.settings.baseline):
                raise UsageError(f"{path.name} was trained on other loss weights or another baseline than "
                                 f"{spec.explainer.name}: their losses are not comparable", path)
            label = str(settings.training.get("method", path.name))
            if label in explainers:
                label = f"{label} ({path.name})"
            explainers[label], trained[label] = path, settings.training.get("seconds")
        curves: dict[str, list[dict[str, Any]]] = {}
        for label, path in explainers.items():
            for mode in modes:
                if mode == "weights" and (path / "explainer.json").is_file() and \
                        json.loads((path / "explainer.json").read_text()).get("architecture") == "decoder":
                    continue
                medcam = _warm(MedCAM(bundle, path, mode=mode, use_onnx=use_onnx), x, batch_size, 1)
                pts = []
                for k in (ks if mode != "weights" or weights_ks is None else weights_ks):
                    if mode == "weights" and k == 0 and f"{label}+logits" in curves:  # K = 0: the same first guess
                        pts.append({**curves[f"{label}+logits"][0], "steps": 0})
                        continue
                    pts.append({**_verdict(explain_in_chunks(medcam, x, batch_size=batch_size, refine_steps=k)),
                                "steps": k})
                    say(f"{name} {label}+{mode} K={k}: loss {pts[-1]['loss']:.3f} p_kept {pts[-1]['p_kept']:.3f} "
                        f"{pts[-1]['seconds_per_image']:.3f} s/image")
                curves[f"{label}+{mode}"] = pts
        fit = _warm(MedCAM(bundle, fit_config=FitConfig(weights=main.settings.weights,
                                                         baseline=main.settings.baseline)), x, batch_size, 1)
        pts = []
        for steps in fit_steps:
            pts.append({**_verdict(explain_in_chunks(fit, x, batch_size=batch_size, refine_steps=steps)),
                        "steps": steps})
            say(f"{name} per-image fit {steps}: loss {pts[-1]['loss']:.3f} p_kept {pts[-1]['p_kept']:.3f}")
        curves["per-image fit"] = pts
        # another class than the predicted one: its probability must rise when only its evidence is kept
        with torch.no_grad():
            other = (main.classifier.logits(x).argmax(1) + 1) % len(bundle.classes)
        ex = explain_in_chunks(_warm(main, x, batch_size, 1), x, other, batch_size=batch_size)
        results["datasets"][name] = {
            "curves": curves,
            "other_class": {"steps": main.refine_config.steps, "mode": str(main.mode),
                            "p_original": float(ex.p_original.mean()), "p_kept": float(ex.p_kept.mean()),
                            "raised_fraction": float((ex.p_kept > ex.p_original).mean())},
            "explainer_training": trained,
        }
    if out_dir is not None:
        from .figures import quality_figure

        tag = tag or "_" + "_".join(sets)
        atomic_write_json(out_dir / f"quality{tag}.json", results)
        md = quality_markdown(results)
        atomic_write(out_dir / f"quality{tag}.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
        quality_figure(out_dir / f"quality{tag}.png", results)
    return results


def quality_markdown(results: Mapping[str, Any]) -> str:
    """README table of :func:`bench_quality`: every method and K, with the speed-up over the last fit."""
    lines = []
    for name, r in results["datasets"].items():
        ref = r["curves"]["per-image fit"][-1]
        fit = f"fit-{ref['steps']}"
        lines += [f"**{name}** (per-image fit {ref['steps']} steps: loss {ref['loss']:.3f}, "
                  f"p_kept {ref['p_kept']:.3f}, {ref['seconds_per_image']:.2f} s/image)", "",
                  f"| method | steps | loss | loss / {fit} | p_kept | p_removed | area | s/image | speed-up vs {fit} |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, pts in r["curves"].items():
            for p in pts:
                lines.append(
                    f"| {method} | {p['steps']} | {p['loss']:.3f} | {p['loss'] / ref['loss']:.3f} | {p['p_kept']:.3f} | "
                    f"{p['p_removed']:.3f} | {p['area']:.3f} | {p['seconds_per_image']:.4f} | "
                    f"{ref['seconds_per_image'] / max(p['seconds_per_image'], 1e-9):.1f}× |"
                )
        oc = r["other_class"]
        lines += ["", f"Non-predicted class (K={oc['steps']}, {oc['mode']}): p_original {oc['p_original']:.3f} → "
                  f"p_kept {oc['p_kept']:.3f}; raised for {oc['raised_fraction']:.0%} of the images.", ""]
    return "\n".join(lines) + "\n"


def _times(fn: Callable[[], Any], repeats: int, scale: float = 1.0, budget: float | None = None) -> list[float]:
    """Seconds of up to ``repeats`` calls of ``fn`` after one warm-up call, each multiplied by ``scale``.

    With a ``budget`` (seconds), the warm-up call's time caps the repeats at ``budget / warm-up`` (at least
    one); a warm-up longer than the budget is itself the only sample (the rows before it, on smaller batches,
    have warmed the same code up)."""
    t0 = time.perf_counter()
    fn()  # warm-up
    first = time.perf_counter() - t0
    if budget is not None:
        if first >= budget:
            return [first * scale]
        repeats = max(1, min(repeats, int(budget // max(first, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * scale)
    return times


#: The classifiers ``bench speed`` times by default, with their sizes: the built-in ResNet-18 (width 16, one
#: channel) at 64 and 224 px, timm's ViT-Ti/16 (three channels; ``pretrained=False``) at 224 px.
SPEED_MODELS: tuple[tuple[str, tuple[int, ...]], ...] = (("resnet18", (64, 224)),
                                                         ("timm:vit_tiny_patch16_224", (224,)))
#: Classes of the benchmarked classifiers (the brain MRI set's): the all-classes rows output this many masks.
SPEED_CLASSES = 4
#: Targets of issue 12 (time ratios; the fit's is a speed-up).
SPEED_TARGETS = {"first_guess_to_grad_cam": {"1": 0.4, "32": 1.0}, "all_to_one_class": 1.5,
                 "fit_speedup_over_first_guess_3_steps": 100.0}

FG_TORCH = "decoder first guess (torch)"
FG_ALL = "decoder first guess, all classes (torch)"
FG_ONNX = "decoder graph, all classes + verdict (onnx)"
UNET_ONNX = "u-net first guess (onnx, 0.1)"
GRAD_CAM = "grad-cam"


def _speed_classifier(spec: str, size: int) -> tuple[ClassifierBundle, str]:
    """The bundle of ``spec`` (``"resnet18"`` / ``"vit"``: built-in, one channel; ``"timm:<name>"``: timm, three
    channels, never downloaded) at ``size`` px with :data:`SPEED_CLASSES` classes, and its label."""
    from ..classifiers.architectures import build_classifier
    from ..classifiers.sources import _create_timm, classifier_from_module
    from ..data.preprocess import Preprocess

    classes = [f"class_{i}" for i in range(SPEED_CLASSES)]
    torch.manual_seed(0)
    if spec.startswith("timm:"):
        name = spec.split(":", 1)[1]
        model = _create_timm(name, SPEED_CLASSES, 3)
        return classifier_from_module(model, Preprocess.identity((size, size), 3), classes), f"{name} (timm)"
    model = build_classifier(spec, 1, SPEED_CLASSES, size)
    return classifier_from_module(model, Preprocess.identity((size, size), 1), classes), f"{spec} (built-in)"


def bench_speed(
    *,
    models: Sequence[tuple[str, Sequence[int]]] = SPEED_MODELS,
    batches: Sequence[int] = (1, 32),
    refine_steps: Sequence[int] = (3, 10),
    fit_steps: int = FitConfig().steps,
    fit_measured_steps: int = 10,
    repeats: int = 7,
    row_budget: float | None = 20.0,
    unet: bool = True,
    progress: Progress | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Seconds per image of every way to get a mask, per classifier and size, in one run.

    For each classifier (``models``: ``"resnet18"`` built in, ``"timm:<name>"`` from timm, with their sizes) a
    decoder explainer built as meta-training builds it (one step: timing does not depend on the weights) and
    its ONNX decoder graph; CPU, one torch thread and one onnxruntime thread. Rows:

    * ``decoder first guess (torch)``: one :class:`FrozenClassifier` call (logits, which pick the target, and
      the decoder's taps) + the decoder + the target's mask upsampled to the image;
    * ``… all classes (torch)``: the same with every class's mask upsampled (the decoder computes them all
      either way); the summary gives the ratio to one class's;
    * ``decoder graph … (onnx)``: the exported graph via :class:`OnnxExplainer`: every class's mask *and* the
      verdict (the classifier on the kept and removed views), as one call always returns them;
    * ``first guess + K steps``: :class:`MedCAM` with the explainer bundle and ``K`` logit refinement steps,
      the learned steps first as shipped explainers take them (an untrained :class:`StepNet` of the default
      shape: the same cost as a trained one);
    * ``per-image fit``: :class:`MedCAM` without an explainer, ``fit_measured_steps`` measured and scaled
      to ``fit_steps`` (batch 1 only): the call's fixed cost (a zero-step call: the classifier passes and
      the verdict) plus the measured steps' time times ``fit_steps / fit_measured_steps``;
    * ``u-net first guess (onnx, 0.1)`` (``unet``): the classifier-blind U-Net of 0.1 (ONNX core graph + the
      classifier pass that picks the target), for comparison;
    * ``grad-cam`` as ``evaluate`` runs it (skipped with a note when ``grad-cam`` is missing or fails on the
      classifier's layer).

    Each row keeps the repeat times its median is taken over (per batch; scaled for the fit); a row's repeats
    are capped so that it takes about ``row_budget`` seconds (None: no cap), a warm-up longer than that being
    the only sample. Ratios are against Grad-CAM on the same classifier, size and batch; ``summary`` holds the
    issue's ratios and whether each meets its target (:data:`SPEED_TARGETS`). Writes ``speed.json`` and
    ``speed.md`` under ``out_dir`` when given.
    """
    from ..errors import MedCamError
    from ..explainer.meta import MetaConfig, meta_train
    from ..export.onnx_export import export_combined, export_explainer
    from ..export.runtime import OnnxExplainer
    from .baselines import available_peers

    say = _say(progress)
    cam_problem = available_peers()["gradcam"]
    results: dict[str, Any] = {
        "machine": machine_facts(), "repeats": repeats, "row_budget_s": row_budget, "rows": [], "models": [],
        "summary": [], "notes": [], "targets": SPEED_TARGETS,
        "grad_cam": "installed" if cam_problem is None else f"not installed: {cam_problem}",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec, sizes in models:
            for size in sizes:
                try:
                    bundle, label = _speed_classifier(spec, size)
                except MedCamError as e:  # timm missing, unknown name
                    results["notes"].append(f"{spec} at {size} px skipped: {e}")
                    say(f"{spec} at {size} px skipped: {e}")
                    continue
                pre = bundle.preprocess
                shape = (size, size) if pre.channels == 1 else (size, size, pre.channels)
                images = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
                explainer = meta_train(bundle, images, MetaConfig(inner_steps=0, outer_steps=1, meta_batch=1))
                explainer.steps = StepNet(StepNetConfig())  # refinement as shipped: learned steps first (same cost
                cfg = explainer.net_config                  # trained or not)
                info: dict[str, Any] = {"classifier": label, "size": size, "channels": pre.channels,
                                        "classes": SPEED_CLASSES, "decoder": cfg.to_dict()}
                results["models"].append(info)
                with tempfile.TemporaryDirectory() as tmp:
                    graph = OnnxExplainer(export_combined(explainer, bundle.model, Path(tmp) / "decoder.onnx"),
                                          threads=1)
                    old = None
                    if unet:
                        net = meta_train(bundle, images, MetaConfig(architecture="unet", inner_steps=0, outer_steps=1,
                                                                    meta_batch=1))
                        old = OnnxExplainer(export_explainer(net, Path(tmp) / "unet.onnx"), threads=1)
                    for b in batches:
                        x = torch.randn(b, pre.channels, size, size)
                        timings, notes = _speed_timings(
                            x, bundle, explainer, graph, old, repeats, refine_steps, fit_measured_steps,
                            fit_steps / fit_measured_steps, f"per-image fit {fit_steps} steps",
                            cam_problem is None, row_budget)
                        results["notes"] += [f"{label}, {size} px, batch {b}: {n}" for n in notes]
                        ref = statistics.median(timings[GRAD_CAM]) if GRAD_CAM in timings else None
                        for method, samples in timings.items():
                            sec = statistics.median(samples)
                            results["rows"].append({
                                "classifier": label, "size": size, "batch": b, "method": method,
                                "seconds_per_image": sec / b, "seconds_samples": samples,
                                "ratio_to_grad_cam": None if ref is None else sec / ref})
                            ratio = "" if ref is None else f"  ×{sec / ref:.2f} of Grad-CAM"
                            say(f"{label} {size}px batch {b}: {method}: {1000 * sec / b:.2f} ms/image{ratio}")
                results["summary"].append(_speed_summary(results["rows"], label, size, refine_steps, fit_steps))
    finally:
        torch.set_num_threads(threads)
    if out_dir is not None:
        atomic_write_json(out_dir / "speed.json", results)
        atomic_write(out_dir / "speed.md", lambda tmp: tmp.write_text(speed_markdown(results), encoding="utf-8"))
    return results


def _speed_timings(x: Tensor, bundle: ClassifierBundle, explainer: Any, graph: Any, old: Any, reps: int,
                   refine_steps: Sequence[int], fit_measured_steps: int, fit_scale: float, fit_label: str,
                   with_grad_cam: bool, budget: float | None) -> tuple[dict[str, list[float]], list[str]]:
    """The repeat times (per batch) of each method of :func:`bench_speed` on ``x``, and notes."""
    from ..method.decoder import select_class
    from ..method.masking import to_image_grid
    from .baselines import METHODS, PeerSettings

    cfg = explainer.net_config
    clf = bundle.frozen(cfg.tap_names)  # the decoder's taps are the classifier's activation layers
    decoder = explainer.net
    size = tuple(x.shape[-2:])
    x_np = x.numpy()

    def first_guess(every: bool) -> Tensor:
        with torch.no_grad():
            logits, acts = clf(x)
            u = decoder(x, acts, clf.head())
            return to_image_grid(u if every else select_class(u, logits.argmax(1)), size)

    def unet_guess() -> np.ndarray:
        with torch.no_grad():
            return old.logits(x_np, clf.logits(x).argmax(1).numpy())

    notes: list[str] = []
    timings = {FG_TORCH: _times(lambda: first_guess(False), reps, budget=budget),
               FG_ALL: _times(lambda: first_guess(True), reps, budget=budget),
               FG_ONNX: _times(lambda: graph(x_np, preprocessed=True), reps, budget=budget)}
    if old is not None:
        timings[UNET_ONNX] = _times(unet_guess, reps, budget=budget)
    refined = MedCAM(bundle, explainer)
    for k in refine_steps:
        timings[f"first guess + {k} steps"] = _times(lambda k=k: refined(x, refine_steps=k), max(3, reps // 2),
                                                     budget=budget)
    if x.shape[0] == 1:  # the call's fixed cost (classifier passes, verdict) once, its steps scaled
        fit = MedCAM(bundle, fit_config=FitConfig(steps=fit_measured_steps))
        fixed = statistics.median(_times(lambda: fit(x, refine_steps=0), 3, budget=budget))
        timings[fit_label] = [fixed + (t - fixed) * fit_scale for t in _times(lambda: fit(x), 3, budget=budget)]
    if with_grad_cam:
        cam, settings = METHODS["gradcam"].fn, PeerSettings()
        plain = bundle.frozen()  # as evaluate runs it: the classifier's own activation layers

        def grad_cam() -> Tensor:
            return cam(plain, x, plain.logits(x).argmax(1), x, settings)

        try:
            timings[GRAD_CAM] = _times(grad_cam, reps, budget=budget)
        except Exception as e:  # noqa: BLE001 — a peer that cannot read this classifier's layer: noted
            notes.append(f"grad-cam failed on layer {plain.layers[-1]!r}: {type(e).__name__}: {e}")
    return timings, notes


def _speed_summary(rows: Sequence[Mapping[str, Any]], label: str, size: int, refine_steps: Sequence[int],
                   fit_steps: int) -> dict[str, Any]:
    """The issue's ratios for one classifier and size, with the targets they are held to."""
    sec = {(r["batch"], r["method"]): r["seconds_per_image"] for r in rows
           if r["classifier"] == label and r["size"] == size}
    batches = sorted({b for b, _ in sec})

    def ratio(a: tuple[int, str], b: tuple[int, str]) -> float | None:
        return sec[a] / sec[b] if a in sec and b in sec else None

    out: dict[str, Any] = {"classifier": label, "size": size}
    out["first_guess_to_grad_cam"] = {str(b): ratio((b, FG_TORCH), (b, GRAD_CAM)) for b in batches}
    out["onnx_graph_to_grad_cam"] = {str(b): ratio((b, FG_ONNX), (b, GRAD_CAM)) for b in batches}
    out["all_to_one_class"] = {str(b): ratio((b, FG_ALL), (b, FG_TORCH)) for b in batches}
    fit = (1, f"per-image fit {fit_steps} steps")
    out["fit_speedup"] = {str(k): ratio(fit, (1, f"first guess + {k} steps")) for k in refine_steps}
    goal = SPEED_TARGETS
    met: dict[str, bool | None] = {}
    for b in batches:
        r, limit = out["first_guess_to_grad_cam"][str(b)], goal["first_guess_to_grad_cam"].get(str(b), 1.0)
        met[f"first guess <= {limit} x grad-cam, batch {b}"] = None if r is None else r <= limit
        a = out["all_to_one_class"][str(b)]
        met[f"all classes <= {goal['all_to_one_class']} x one class, batch {b}"] = (
            None if a is None else a <= goal["all_to_one_class"])
    s = out["fit_speedup"].get("3")
    met[f"fit >= {goal['fit_speedup_over_first_guess_3_steps']:g} x first guess + 3 steps"] = (
        None if s is None else s >= goal["fit_speedup_over_first_guess_3_steps"])
    out["met"] = met
    return out


def speed_markdown(results: Mapping[str, Any]) -> str:
    """README tables of :func:`bench_speed`: every row, then the issue's ratios against their targets."""
    lines = ["| classifier | size | batch | method | ms / image (median) | samples | time / Grad-CAM |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ratio = "–" if r["ratio_to_grad_cam"] is None else f"{r['ratio_to_grad_cam']:.2f}"
        lines.append(f"| {r.get('classifier', '')} | {r['size']} | {r['batch']} | {r['method']} | "
                     f"{1000 * r['seconds_per_image']:.2f} | {len(r['seconds_samples'])} | {ratio} |")

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "–" if v is None else fmt.format(v)

    summary = results.get("summary") or []
    if summary:
        lines += ["", "| classifier | size | first guess / Grad-CAM, batch 1 (≤ 0.4) | batch 32 (≤ 1.0) | "
                  "onnx graph / Grad-CAM, batch 1 | batch 32 | all classes / one, batch 1 (≤ 1.5) | batch 32 | "
                  "fit ÷ (first guess + 3 steps) (≥ 100) | fit ÷ (+ 10 steps) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in summary:
            cells = [s["first_guess_to_grad_cam"].get(b) for b in ("1", "32")]
            cells += [s["onnx_graph_to_grad_cam"].get(b) for b in ("1", "32")]
            cells += [s["all_to_one_class"].get(b) for b in ("1", "32")]
            text = [f(v) for v in cells] + [f(s["fit_speedup"].get(k), "{:.0f}×") for k in ("3", "10")]
            lines.append(f"| {s['classifier']} | {s['size']} | " + " | ".join(text) + " |")
    if results.get("notes"):
        lines += [""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
