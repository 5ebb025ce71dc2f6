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

from ._io import atomic_write, atomic_write_json
from .classifier import load_classifier
from .data import load_npz, resolve_data
from .fit import FitConfig, fit_masks

__all__ = ["bench_per_image", "machine_facts"]


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
            r = fit_masks(clf, x, None, cfg, logits_fn=clf.logits, normalization=(bundle.preprocess.mean, bundle.preprocess.std))
            per_img.extend([r.seconds / len(x)] * len(x))
            v = r.verification
            for k in ("original", "masked", "complement", "area"):
                cols[k].append(getattr(v, k).numpy())
            cols["loss"].append(r.loss.numpy())
            correct.append((v.predicted.numpy() == ds.labels[s : s + len(x)]))
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
