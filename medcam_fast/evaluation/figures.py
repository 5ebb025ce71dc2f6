"""Figures rendered from measured results (matplotlib, Agg backend; files written atomically).

* :func:`grid_figure` — ``evaluate``'s grid: each image, then each method's map scaled between its 1st and
  99th percentile (maps of different methods live on different scales: logits, probabilities,
  attributions), with medcam-fast's binary mask (cyan) and the true evidence (green) as contours;
* :func:`metrics_figure` — ``evaluate``'s headline metrics, one bar per method (medcam-fast's in red) and the
  random-map control (hatched);
* :func:`quality_figure` — ``bench quality``: composite loss of the binary mask against seconds per image,
  one curve per method.

Nothing here measures: each function takes what the harness or a benchmark returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write

if TYPE_CHECKING:
    from .harness import Grid

__all__ = ["grid_figure", "metrics_figure", "quality_figure"]


def _save(fig: Any, path: Path, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _display(sal: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] between its 1st and 99th percentile (robust to a few extreme values)."""
    lo, hi = np.percentile(sal, [1, 99])
    if hi <= lo:
        return np.zeros_like(sal)
    return np.clip((sal - lo) / (hi - lo), 0, 1)


def grid_figure(path: Path, grid: Grid) -> Path:
    """Rows: the images; columns: the image, then each method's map.

    Args:
        path: PNG to write.
        grid: the images, the class explained for each, and each method's maps of them.

    Raises:
        ValueError: the grid holds no image.
    """
    images = grid.images
    rows = list(range(len(images.labels)))
    if not rows:
        raise ValueError(f"the grid of {grid.name!r} holds no image")
    plt = _pyplot()
    shown = np.clip(grid.preprocess.denormalize(grid.preprocess(images.images)), 0, 1).transpose(0, 2, 3, 1)
    cols = 1 + len(grid.maps)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    for r in rows:
        img = shown[r]
        ax = axes[r][0]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(f"{images.classes[int(images.labels[r])]}\n→ {images.classes[int(grid.target[r])]}", fontsize=6)
        for c, mp in enumerate(grid.maps.values(), start=1):
            ax = axes[r][c]
            ax.imshow(_display(mp.saliency[r].detach().cpu().numpy()), cmap="inferno", vmin=0, vmax=1)
            if mp.binary is not None:
                ax.contour(mp.binary[r].detach().cpu().numpy().astype(float), levels=[0.5], colors="cyan",
                           linewidths=0.6)
            if images.masks is not None:
                ax.contour(images.masks[r].astype(float), levels=[0.5], colors="lime", linewidths=0.6)
    for c, title in enumerate(["image", *grid.labels]):
        axes[0][c].set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{grid.name}: maps (bright = more important; cyan: binary mask; green: true lesion)", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _dig(node: Any, *path: str) -> Any:
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def metrics_figure(path: Path, result: Mapping[str, Any]) -> Path:
    """One bar per method (and the random-map control, hatched) for each headline metric of one data set:
    keep 10 % and faithfulness correlation under each headline fill (no method trained on it), ROAD
    combined, the sanity check's ρ on signed and absolute maps, seconds per image, and localization where
    the evidence is known.

    Args:
        path: PNG to write.
        result: one data set's entry of ``results.json``.
    """
    plt = _pyplot()
    ms = dict(result["methods"])
    rnd = _dig(result, "controls", "random")
    rows = [*ms.values(), *([rnd] if rnd else [])]
    names = [r["label"] for r in rows]
    panels: list[tuple[str, list[float | None], bool]] = []
    for f in result.get("headline_fills", []):
        panels += [(f"keep 10% [{f}] (↑)", [_dig(r, "fills", f, "preservation", "0.1") for r in rows], False),
                   (f"faithfulness corr. [{f}] (↑)", [_dig(r, "fills", f, "faithfulness_correlation") for r in rows],
                    False)]
    if result.get("road_n"):
        panels.append(("ROAD combined (↑)", [_dig(r, "road", "combined") for r in rows], False))
    panels += [("ρ full random, signed (↓)", [_dig(r, "sanity", "final") for r in rows], False),
               ("ρ full random, |·| (↓)", [_dig(r, "sanity", "final_abs") for r in rows], False),
               ("seconds / image (log)", [r.get("seconds_per_image") or None for r in rows], True)]
    if result.get("localization"):
        panels += [("pointing game (↑)", [r.get("pointing") for r in rows], False),
                   ("top-k IoU (↑)", [r.get("iou") for r in rows], False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.4), squeeze=False)
    colors = ["tab:red" if n.startswith(("medcam", "per-image")) else "tab:gray" for n in names]
    hatches = ["//" if r is rnd else "" for r in rows]
    for ax, (title, vals, log) in zip(axes[0], panels, strict=True):
        y = [np.nan if v is None else v for v in vals]
        bars = ax.bar(range(len(names)), y, color=colors)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=75, fontsize=6)
        ax.set_title(title, fontsize=7)
        if log:
            ax.set_yscale("log")
    fig.suptitle(f"{result['name']} (hatched: random-map control)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def quality_figure(path: Path, results: Mapping[str, Any]) -> Path:
    """``bench quality``: one panel per data set, composite loss against seconds per image (log), one curve per
    method (its points are the step counts measured).

    Args:
        path: PNG to write.
        results: what :func:`~medcam_fast.evaluation.bench.bench_quality` returned.
    """
    plt = _pyplot()
    names = list(results["datasets"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        for method, pts in results["datasets"][name]["curves"].items():
            ax.plot([p["seconds_per_image"] for p in pts], [p["loss"] for p in pts], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (log)")
        ax.set_ylabel("composite loss (binary mask)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi=110)
