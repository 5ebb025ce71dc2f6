"""Benchmarks behind ``medcam-fast bench``: they measure, write a JSON result and a Markdown table.

Machines are noisy: every timing is a median over images or repeats, and comparisons are ratios taken in
the same run.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from .._io import atomic_write, atomic_write_json
from ..classifiers.bundle import load_classifier
from ..data.medmnist import load_npz, resolve_data
from ..method.fit import FitConfig, fit_masks

__all__ = ["bench_per_image", "bench_quality", "bench_speed", "machine_facts"]


def machine_facts() -> dict[str, Any]:
    """Where a benchmark ran: Python, torch, CPU count and threads."""
    import os

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def bench_per_image(
    models: Path,
    datasets: Sequence[str],
    *,
    n: int = 32,
    steps: int = 300,
    batch_size: int = 16,
    out_dir: Path = Path("benchmarks/results"),
    data_dir: Path | None = None,
    config: FitConfig | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """The paper's per-image fit on the first ``n`` test images of each data set, with binary masks.

    For each data set: mean ``p_c`` of the original, the kept evidence and the removed evidence, mean area,
    and the median seconds per image (batches of ``batch_size`` fitted together, time divided by the batch).
    Writes ``per_image.json`` and ``per_image.md`` under ``out_dir``.

    Args:
        models: folder holding ``<dataset>/classifier`` bundles.
        datasets: short names (breast, pneumonia, blood, path).
        n: test images per data set.
        steps: fit steps per image.
        batch_size: images fitted together.
        out_dir: where the result files go.
        data_dir: folder of the ``.npz`` sets (else ``MEDCAM_DATA_DIR`` or ``../shared/data``).
        config: fit settings (default :class:`FitConfig` with ``steps``).
        console: where progress is printed.
    """
    console = console or Console()
    cfg = (config or FitConfig()).with_(steps=steps)
    results: dict[str, Any] = {"config": cfg.to_dict(), "n": n, "machine": machine_facts(), "datasets": {}}
    for name in datasets:
        bundle = load_classifier(models / name / "classifier")
        clf = bundle.frozen()
        ds = load_npz(resolve_data(name, None if data_dir is None else str(data_dir)), "test")
        x_all = torch.from_numpy(bundle.preprocess(ds.images[:n]))
        per_img: list[float] = []
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("original", "masked", "complement", "area", "loss")}
        correct = []
        for s in range(0, len(x_all), batch_size):
            x = x_all[s : s + batch_size]
            r = fit_masks(clf, x, None, cfg, normalization=(bundle.preprocess.mean, bundle.preprocess.std))
            per_img.extend([r.seconds / len(x)] * len(x))
            v = r.verification
            for k in ("original", "masked", "complement", "area"):
                cols[k].append(getattr(v, k).numpy())
            cols["loss"].append(r.loss.numpy())
            correct.append(v.predicted.numpy() == ds.labels[s : s + len(x)])
            console.print(f"  {name}: {s + len(x)}/{len(x_all)} images, {r.seconds / len(x):.2f} s/image")
        m = {k: float(np.concatenate(v).mean()) for k, v in cols.items()}
        row = {
            **{f"mean_{k}": v for k, v in m.items()},
            "drop_complement": m["original"] - m["complement"],
            "seconds_per_image_median": statistics.median(per_img),
            "accuracy_on_these": float(np.concatenate(correct).mean()),
            "classifier_test_accuracy": bundle.metrics.get("test_accuracy"),
        }
        row["pass"] = {
            "masked>=original": row["mean_masked"] >= row["mean_original"],
            "area<=0.25": row["mean_area"] <= 0.25,
            "complement_drop>=0.3": row["drop_complement"] >= 0.3,
        }
        results["datasets"][name] = row
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "per_image.json", results)
    md = per_image_markdown(results)
    atomic_write(out_dir / "per_image.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    table = Table(title=f"per-image fit, {steps} steps, {n} test images, binary masks")
    for col in ("data set", "p(original)", "p(kept)", "p(removed)", "drop", "area", "s/image", "pass"):
        table.add_column(col)
    for name, r in results["datasets"].items():
        table.add_row(
            name, f"{r['mean_original']:.3f}", f"{r['mean_masked']:.3f}", f"{r['mean_complement']:.3f}",
            f"{r['drop_complement']:.3f}", f"{r['mean_area']:.3f}", f"{r['seconds_per_image_median']:.2f}",
            "yes" if all(r["pass"].values()) else "NO",
        )
    console.print(table)
    return results


def per_image_markdown(results: dict[str, Any]) -> str:
    """The README table of :func:`bench_per_image` results."""
    lines = [
        "| data set | p(original) | p(evidence kept) | p(evidence removed) | drop | area | s/image (median) | all criteria |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        lines.append(
            f"| {name} | {r['mean_original']:.3f} | {r['mean_masked']:.3f} | {r['mean_complement']:.3f} | "
            f"{r['drop_complement']:.3f} | {r['mean_area']:.3f} | {r['seconds_per_image_median']:.2f} | "
            f"{'yes' if all(r['pass'].values()) else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _quality_point(results: list[Any], seconds: list[float]) -> dict[str, float]:
    v = [r.verification for r in results]
    cat = lambda f: torch.cat([getattr(x, f) for x in v])  # noqa: E731
    return {
        "loss": float(torch.cat([r.loss for r in results]).mean()),
        "masked": float(cat("masked").mean()),
        "complement": float(cat("complement").mean()),
        "original": float(cat("original").mean()),
        "area": float(cat("area").mean()),
        "seconds_per_image": statistics.median(seconds),
    }


def bench_quality(
    models: Path,
    datasets: Sequence[str],
    *,
    n: int = 32,
    ks: Sequence[int] = (0, 1, 2, 5, 10, 20, 50),
    fit_steps: Sequence[int] = (10, 50, 100, 300),
    modes: Sequence[str] = ("logits", "weights"),
    weights_ks: Sequence[int] | None = None,
    folders: Sequence[str] = ("explainer", "amortized"),
    batch_size: int = 16,
    out_dir: Path = Path("benchmarks/results"),
    data_dir: Path | None = None,
    console: Console | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Quality against wall time per image: meta-trained and amortized explainers + K refinement steps
    (``logits`` and ``weights`` modes) against the per-image fit from scratch, in one run.

    Needs ``<models>/<dataset>/classifier`` and ``<models>/<dataset>/explainer`` (the shipped explainer), and
    also measures the other ``folders`` there when present (``amortized``: the same U-Net trained for the same
    time with the zero-step loss only); curves are labelled by each explainer's training method
    (``maml-logits+init`` = logits-inner-loop MAML started from amortized training, ``amortized``, …).
    ``weights_ks`` limits the (slow, per-image) ``weights`` mode to these K (default: ``ks``). Loss, masked and complement confidence and area are of the
    binary masks. Writes ``quality{tag}.json``, ``quality{tag}.md`` and ``quality{tag}.png`` under ``out_dir``
    (``tag`` defaults to ``_`` + the data set names).
    """
    from ..explainer.bundle import load_explainer
    from ..method.refine import refine

    console = console or Console()
    results: dict[str, Any] = {"n": n, "machine": machine_facts(), "datasets": {}}
    for name in datasets:
        bundle = load_classifier(models / name / "classifier")
        clf = bundle.frozen()
        ds = load_npz(resolve_data(name, None if data_dir is None else str(data_dir)), "test")
        x_all = torch.from_numpy(bundle.preprocess(ds.images[:n]))
        batches = [x_all[s : s + batch_size] for s in range(0, len(x_all), batch_size)]
        curves: dict[str, list[dict[str, float]]] = {}
        explainers = {}
        for folder in folders:
            if (models / name / folder / "explainer.json").exists():
                ex = load_explainer(models / name / folder)
                explainers[ex.training.get("method", folder)] = ex
        main = load_explainer(models / name / "explainer")
        weights = main.weights
        for label, ex in explainers.items():
            for mode in modes:
                pts = []
                for k in (ks if mode != "weights" or weights_ks is None else weights_ks):
                    if mode == "weights" and k == 0 and f"{label}+logits" in curves:
                        pts.append({**curves[f"{label}+logits"][0], "steps": 0})
                        continue
                    rs, secs = [], []
                    for x in batches:
                        r = refine(ex, clf, x, steps=k, mode=mode, weights=weights)  # type: ignore[arg-type]
                        rs.append(r)
                        secs.extend([r.seconds / len(x)] * len(x))
                    pts.append({**_quality_point(rs, secs), "steps": k})
                    console.print(f"  {name} {label}+{mode} K={k}: loss {pts[-1]['loss']:.3f} "
                                  f"p(kept) {pts[-1]['masked']:.3f} {pts[-1]['seconds_per_image']:.3f} s/image")
                curves[f"{label}+{mode}"] = pts
        pts = []
        for steps in fit_steps:
            cfg = FitConfig(steps=steps, weights=weights, baseline=main.baseline)  # type: ignore[arg-type]
            rs, secs = [], []
            for x in batches:
                r = fit_masks(clf, x, None, cfg,
                              normalization=(bundle.preprocess.mean, bundle.preprocess.std))
                rs.append(r)
                secs.extend([r.seconds / len(x)] * len(x))
            pts.append({**_quality_point(rs, secs), "steps": steps})
            console.print(f"  {name} per-image fit {steps}: loss {pts[-1]['loss']:.3f} p(kept) {pts[-1]['masked']:.3f}")
        curves["per-image fit"] = pts
        # another class than the predicted one: its probability must rise when only its evidence is kept
        with torch.no_grad():
            pred = clf.logits(x_all).argmax(1)
        other = (pred + 1) % len(bundle.classes)
        r = refine(main, clf, x_all, targets=other, steps=10, mode="logits", weights=weights)
        v = r.verification
        results["datasets"][name] = {
            "curves": curves,
            "other_class": {"p_original": float(v.original.mean()), "p_masked": float(v.masked.mean()),
                            "raised_fraction": float((v.masked > v.original).float().mean())},
            "explainer_training": {k: e.training.get("seconds") for k, e in explainers.items()},
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = tag or "_" + "_".join(datasets)
    atomic_write_json(out_dir / f"quality{tag}.json", results)
    md = quality_markdown(results)
    atomic_write(out_dir / f"quality{tag}.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    _quality_plot(results, out_dir / f"quality{tag}.png")
    console.print(quality_markdown(results))
    return results


def quality_markdown(results: dict[str, Any]) -> str:
    """README table of :func:`bench_quality`: every method and K, with the speed-up over the 300-step fit."""
    lines = []
    for name, r in results["datasets"].items():
        ref = r["curves"]["per-image fit"][-1]
        lines += [f"**{name}** (per-image fit {ref['steps']} steps: loss {ref['loss']:.3f}, "
                  f"p(kept) {ref['masked']:.3f}, {ref['seconds_per_image']:.2f} s/image)", "",
                  "| method | steps | loss | loss / fit-300 | p(kept) | p(removed) | area | s/image | speed-up vs fit-300 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, pts in r["curves"].items():
            for p in pts:
                lines.append(
                    f"| {method} | {p['steps']} | {p['loss']:.3f} | {p['loss'] / ref['loss']:.3f} | {p['masked']:.3f} | "
                    f"{p['complement']:.3f} | {p['area']:.3f} | {p['seconds_per_image']:.4f} | "
                    f"{ref['seconds_per_image'] / max(p['seconds_per_image'], 1e-9):.1f}× |"
                )
        oc = r["other_class"]
        lines += ["", f"Non-predicted class (K=10, logits): p(original) {oc['p_original']:.3f} → p(kept) "
                  f"{oc['p_masked']:.3f}; raised for {oc['raised_fraction']:.0%} of the images.", ""]
    return "\n".join(lines) + "\n"


def _quality_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method, pts in results["datasets"][name]["curves"].items():
            ax.plot([p["seconds_per_image"] for p in pts], [p["loss"] for p in pts], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (log)")
        ax.set_ylabel("composite loss (binary mask)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    atomic_write(path, save)
    plt.close(fig)


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_speed(
    *,
    sizes: Sequence[int] = (64, 224),
    batches: Sequence[int] = (1, 32),
    refine_steps: Sequence[int] = (5, 10),
    fit_steps: int = 300,
    fit_measured_steps: int = 10,
    repeats: int = 7,
    out_dir: Path = Path("benchmarks/results"),
    console: Console | None = None,
) -> dict[str, Any]:
    """Seconds per image of every way to get a mask, on the same classifier and images, in one run.

    Per size, a ResNet-18-style classifier and a width-16 explainer U-Net (timing does not depend on the
    weights, so both are freshly initialized; the U-Net at :func:`~medcam_fast.method.unet.auto_downsample`, as
    meta-training builds it); CPU, one torch thread and one onnxruntime thread. Methods:
    onnxruntime first guess and torch first guess (each counting the classifier forward pass that picks the
    target class), first guess + K ``logits`` refinement steps, the per-image fit (``fit_measured_steps``
    measured, scaled linearly to ``fit_steps``; batch 1 only), and Grad-CAM from the ``grad-cam`` package
    (skipped with a note when it is not installed). Medians over ``repeats``; ratios against Grad-CAM.
    """
    import tempfile

    from ..classifiers.architectures import build_classifier
    from ..classifiers.frozen import FrozenClassifier
    from ..data.preprocess import Preprocess
    from ..explainer.bundle import ExplainerBundle, save_explainer
    from ..export.onnx_export import export_explainer
    from ..export.runtime import OnnxExplainer
    from ..method.unet import UNet, UNetConfig, auto_downsample

    console = console or Console()
    torch.set_num_threads(1)
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        GradCAM = None  # noqa: N806
    results: dict[str, Any] = {"machine": machine_facts(), "repeats": repeats, "rows": [],
                               "grad_cam": "installed" if GradCAM else "not installed: pip install 'medcam-fast[baselines]'"}
    for size in sizes:
        torch.manual_seed(0)
        model = build_classifier("resnet18", 1, 2, size).eval()
        clf = FrozenClassifier(model)
        pre = Preprocess.identity((size, size), 1)
        ex = ExplainerBundle(UNet(UNetConfig(1, 2, 16, 3, downsample=auto_downsample(size))), pre, ["a", "b"], "0" * 64)
        with tempfile.TemporaryDirectory() as tmp:
            save_explainer(ex, tmp)
            onnx_path = export_explainer(ex, Path(tmp) / "explainer.onnx")
            ort = OnnxExplainer(onnx_path, threads=1)
            for b in batches:
                reps = repeats if b == 1 or size <= 64 else max(3, repeats // 2)
                timings = _speed_timings(torch.randn(b, 1, size, size), model, clf, ex, ort, GradCAM, reps,
                                         refine_steps, fit_steps, fit_measured_steps)
                ref = timings.get("grad-cam")
                for method, sec in timings.items():
                    row = {"size": size, "batch": b, "method": method, "seconds_per_image": sec / b,
                           "ratio_to_grad_cam": None if ref is None else sec / ref}
                    results["rows"].append(row)
                    ratio = "" if ref is None else f"  ×{sec / ref:.2f} of Grad-CAM"
                    console.print(f"  {size}px batch {b}: {method}: {1000 * sec / b:.2f} ms/image{ratio}")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "speed.json", results)
    atomic_write(out_dir / "speed.md", lambda tmp: tmp.write_text(speed_markdown(results), encoding="utf-8"))
    return results


def _speed_timings(x: Tensor, model: Any, clf: Any, ex: Any, ort: Any, grad_cam: Any, reps: int,
                   refine_steps: Sequence[int], fit_steps: int, fit_measured_steps: int) -> dict[str, float]:
    """Median seconds per batch of each method on ``x`` (see :func:`bench_speed`)."""
    from ..method.refine import refine

    xn = x.numpy()

    def onnx_guess() -> np.ndarray:
        with torch.no_grad():
            t = clf.logits(x).argmax(1)
        return ort.logits(xn, t.numpy())

    def torch_guess() -> Tensor:
        with torch.no_grad():
            return ex.unet(x, clf.logits(x).argmax(1))

    timings = {"onnx first guess": _median_time(onnx_guess, reps), "torch first guess": _median_time(torch_guess, reps)}
    for k in refine_steps:
        timings[f"onnx first guess + {k} steps"] = _median_time(
            lambda k=k: refine(ex, clf, x, steps=k, mode="logits", initial_logits=torch.from_numpy(onnx_guess())),
            max(3, reps // 2),
        )
    if x.shape[0] == 1:
        cfg = FitConfig(steps=fit_measured_steps)
        t_fit = _median_time(lambda: fit_masks(clf, x, None, cfg), 3)
        timings[f"per-image fit {fit_steps} steps"] = t_fit * fit_steps / fit_measured_steps
    if grad_cam is not None:
        for p in model.parameters():
            p.requires_grad_(True)  # grad-cam back-propagates through the model's own graph
        cam = grad_cam(model=model, target_layers=[model.layer4])
        timings["grad-cam"] = _median_time(lambda: cam(input_tensor=x, targets=None), reps)  # None: top class
        for p in model.parameters():
            p.requires_grad_(False)
    return timings


def speed_markdown(results: dict[str, Any]) -> str:
    """README table of :func:`bench_speed`."""
    lines = ["| size | batch | method | ms / image (median) | time / Grad-CAM |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        ratio = "–" if r["ratio_to_grad_cam"] is None else f"{r['ratio_to_grad_cam']:.2f}"
        lines.append(f"| {r['size']} | {r['batch']} | {r['method']} | {1000 * r['seconds_per_image']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"
