"""The benchmarks behind ``medcam-fast bench``: the per-image fit's verdict, quality against time, and speed.

* :func:`bench_per_image` — the paper's per-image fit on the first ``n`` test images of each data set: the
  binary masks' verdict (``p_original``, ``p_kept``, ``p_removed``, ``area``) against the acceptance
  criteria, and seconds per image;
* :func:`bench_quality` — composite loss and verdict against seconds per image: each explainer's first
  guess plus ``K`` refinement steps (``logits`` and ``weights`` modes) against the per-image fit at several
  step counts, in one run; and whether the evidence of a class other than the predicted one raises that
  class's probability;
* :func:`bench_speed` — milliseconds per image of every way to get a mask on the same classifier and
  images: the ONNX and torch first guesses, first guess + ``K`` steps, the per-image fit and Grad-CAM.

medcam-fast is measured through :class:`~medcam_fast.explain.MedCAM`, as a user calls it (chunks of
``batch_size``, the forward passes that pick the class and verify the mask included). Only the speed
bench's first-guess rows time the ONNX session and the torch U-Net directly: what they measure is the
runtime itself. Machines are noisy, so every timing is a median — over images (each charged its chunk's
time over the chunk's size) or over repeats — and comparisons are ratios taken in the same run; the
samples each median is taken over are kept in the results.

Nothing here prints: a ``progress`` callback gets one line per unit of work, and the CLI renders the
tables. Given ``out_dir``, each function writes its JSON and Markdown (and ``bench quality`` its plot).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
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
from ._measure import Explained, explain_in_chunks, machine_facts

__all__ = ["bench_per_image", "bench_quality", "bench_speed", "per_image_markdown", "quality_markdown",
           "speed_markdown"]

Progress = Callable[[str], None]


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
    models: Path,
    sets: Mapping[str, ImageSet],
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
        models: folder holding ``<dataset>/classifier`` bundles.
        sets: data set name → its test images (raw).
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
    for name, images in sets.items():
        bundle = load_classifier(models / name / "classifier")
        x = _x(bundle, images, n)
        ex = explain_in_chunks(MedCAM(bundle, fit_config=cfg), x, batch_size=batch_size,
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
    models: Path,
    sets: Mapping[str, ImageSet],
    *,
    n: int = 32,
    ks: Sequence[int] = (0, 1, 2, 5, 10, 20, 50),
    fit_steps: Sequence[int] = (10, 50, 100, 300),
    modes: Sequence[str] = ("logits", "weights"),
    weights_ks: Sequence[int] | None = None,
    folders: Sequence[str] = ("explainer", "amortized"),
    batch_size: int = 16,
    use_onnx: bool = True,
    progress: Progress | None = None,
    out_dir: Path | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Quality against wall time per image: explainers + K refinement steps (``logits`` and ``weights``
    modes) against the per-image fit from scratch, in one run.

    Needs ``<models>/<dataset>/classifier`` and ``<models>/<dataset>/explainer`` (the shipped explainer), and
    also measures the other ``folders`` there when present (``amortized``: the same U-Net trained for the same
    time with the zero-step loss only); curves are labelled by each explainer's training method
    (``maml-logits+init`` = logits-inner-loop MAML started from amortized training, ``amortized``, …) and
    mode. Every explainer must share the shipped one's loss weights and baseline (refused otherwise), so
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
    """
    say = _say(progress)
    results: dict[str, Any] = {"n": n, "machine": machine_facts(), "datasets": {}}
    for name, images in sets.items():
        folder = models / name
        bundle = load_classifier(folder / "classifier")
        x = _x(bundle, images, n)
        main = MedCAM(bundle, folder / "explainer", use_onnx=use_onnx)
        assert main.settings is not None  # an explainer's settings
        explainers: dict[str, Path] = {}
        trained: dict[str, Any] = {}
        for sub in folders:
            if (folder / sub / "explainer.json").exists():
                settings = MedCAM(bundle, folder / sub, use_onnx=False).settings
                assert settings is not None
                if (settings.weights, settings.baseline) != (main.settings.weights, main.settings.baseline):
                    raise UsageError(f"{sub} was trained on other loss weights or another baseline than "
                                     "explainer: their losses are not comparable", folder / sub)
                label = settings.training.get("method", sub)
                explainers[label], trained[label] = folder / sub, settings.training.get("seconds")
        curves: dict[str, list[dict[str, Any]]] = {}
        for label, path in explainers.items():
            for mode in modes:
                medcam = MedCAM(bundle, path, mode=mode, use_onnx=use_onnx)
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
        fit = MedCAM(bundle, fit_config=FitConfig(weights=main.settings.weights, baseline=main.settings.baseline))
        pts = []
        for steps in fit_steps:
            pts.append({**_verdict(explain_in_chunks(fit, x, batch_size=batch_size, refine_steps=steps)),
                        "steps": steps})
            say(f"{name} per-image fit {steps}: loss {pts[-1]['loss']:.3f} p_kept {pts[-1]['p_kept']:.3f}")
        curves["per-image fit"] = pts
        # another class than the predicted one: its probability must rise when only its evidence is kept
        with torch.no_grad():
            other = (main.classifier.logits(x).argmax(1) + 1) % len(bundle.classes)
        ex = explain_in_chunks(main, x, other, batch_size=batch_size)
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


def _times(fn: Callable[[], Any], repeats: int, scale: float = 1.0) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call, each multiplied by ``scale``."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * scale)
    return times


def bench_speed(
    *,
    sizes: Sequence[int] = (64, 224),
    batches: Sequence[int] = (1, 32),
    refine_steps: Sequence[int] = (5, 10),
    fit_steps: int = FitConfig().steps,
    fit_measured_steps: int = 10,
    repeats: int = 7,
    progress: Progress | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Seconds per image of every way to get a mask, on the same classifier and images, in one run.

    Per size, a ResNet-18-style classifier and an explainer U-Net built as meta-training builds it (one
    meta-training step: timing does not depend on the weights), exported to ONNX; CPU, one torch thread
    and one onnxruntime thread. Methods: the ONNX and the torch first guess (each counting the classifier
    forward pass that picks the target class: the runtime itself is timed), ``MedCAM`` with the ONNX file
    and ``K`` refinement steps, ``MedCAM`` without an explainer (the per-image fit: ``fit_measured_steps``
    measured, scaled linearly to ``fit_steps``; batch 1 only), and Grad-CAM as ``evaluate`` runs it
    (skipped with a note when ``grad-cam`` is not installed). Each row keeps the repeat times its median
    is taken over (per batch, scaled for the fit); ratios are against Grad-CAM in the same run. Writes
    ``speed.json`` and ``speed.md`` under ``out_dir`` when given.
    """
    from ..classifiers.architectures import build_classifier
    from ..classifiers.sources import classifier_from_module
    from ..data.preprocess import Preprocess
    from ..explainer.meta import MetaConfig, meta_train
    from ..export.onnx_export import export_explainer
    from ..export.runtime import OnnxExplainer
    from .baselines import available_peers

    say = _say(progress)
    cam_problem = available_peers()["gradcam"]
    results: dict[str, Any] = {"machine": machine_facts(), "repeats": repeats, "rows": [],
                               "grad_cam": "installed" if cam_problem is None else f"not installed: {cam_problem}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for size in sizes:
            torch.manual_seed(0)
            pre = Preprocess.identity((size, size), 1)
            bundle = classifier_from_module(build_classifier("resnet18", 1, 2, size), pre, ["a", "b"])
            clf = bundle.frozen()
            images = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
            explainer = meta_train(bundle, images, MetaConfig(inner_steps=0, outer_steps=1, meta_batch=1))
            with tempfile.TemporaryDirectory() as tmp:
                ort = OnnxExplainer(export_explainer(explainer, Path(tmp) / "explainer.onnx"), threads=1)
                refined = MedCAM(bundle, ort)  # the one-thread session the first-guess rows time
                fit = MedCAM(bundle, fit_config=FitConfig(steps=fit_measured_steps))
                for b in batches:
                    reps = repeats if b == 1 or size <= 64 else max(3, repeats // 2)
                    timings = _speed_timings(torch.randn(b, 1, size, size), clf, explainer.unet, ort, refined, fit,
                                             reps, refine_steps, fit_steps / fit_measured_steps,
                                             f"per-image fit {fit_steps} steps", cam_problem is None)
                    ref = statistics.median(timings["grad-cam"]) if "grad-cam" in timings else None
                    for method, samples in timings.items():
                        sec = statistics.median(samples)
                        results["rows"].append({"size": size, "batch": b, "method": method,
                                                "seconds_per_image": sec / b, "seconds_samples": samples,
                                                "ratio_to_grad_cam": None if ref is None else sec / ref})
                        ratio = "" if ref is None else f"  ×{sec / ref:.2f} of Grad-CAM"
                        say(f"{size}px batch {b}: {method}: {1000 * sec / b:.2f} ms/image{ratio}")
    finally:
        torch.set_num_threads(threads)
    if out_dir is not None:
        atomic_write_json(out_dir / "speed.json", results)
        atomic_write(out_dir / "speed.md", lambda tmp: tmp.write_text(speed_markdown(results), encoding="utf-8"))
    return results


def _speed_timings(x: Tensor, clf: Any, unet: Any, ort: Any, refined: MedCAM, fit: MedCAM, reps: int,
                   refine_steps: Sequence[int], fit_scale: float, fit_label: str,
                   with_grad_cam: bool) -> dict[str, list[float]]:
    """The repeat times (per batch) of each method of :func:`bench_speed` on ``x``."""
    from .baselines import METHODS, PeerSettings

    def onnx_guess() -> np.ndarray:
        with torch.no_grad():
            return ort.logits(x.numpy(), clf.logits(x).argmax(1).numpy())

    def torch_guess() -> Tensor:
        with torch.no_grad():
            return unet(x, clf.logits(x).argmax(1))

    timings = {"onnx first guess": _times(onnx_guess, reps), "torch first guess": _times(torch_guess, reps)}
    for k in refine_steps:
        timings[f"onnx first guess + {k} steps"] = _times(lambda k=k: refined(x, refine_steps=k),
                                                                max(3, reps // 2))
    if x.shape[0] == 1:
        timings[fit_label] = _times(lambda: fit(x), 3, scale=fit_scale)
    if with_grad_cam:
        cam, settings = METHODS["gradcam"].fn, PeerSettings()
        timings["grad-cam"] = _times(lambda: cam(clf, x, clf.logits(x).argmax(1), x, settings), reps)
    return timings


def speed_markdown(results: Mapping[str, Any]) -> str:
    """README table of :func:`bench_speed`."""
    lines = ["| size | batch | method | ms / image (median) | time / Grad-CAM |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        ratio = "–" if r["ratio_to_grad_cam"] is None else f"{r['ratio_to_grad_cam']:.2f}"
        lines.append(f"| {r['size']} | {r['batch']} | {r['method']} | {1000 * r['seconds_per_image']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"

