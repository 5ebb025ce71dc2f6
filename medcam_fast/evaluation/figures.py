"""Figures of ``medcam-fast evaluate``: a grid of maps and bar plots of each metric (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .._io import atomic_write
from ..data.images import ImageSet
from ..data.preprocess import Preprocess

__all__ = ["grid_figure", "metrics_figure"]


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


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


def grid_figure(path: Path, name: str, images: ImageSet, preprocess: Preprocess, target: Tensor,
                maps: Mapping[str, Any], labels: Sequence[str]) -> None:
    """Rows: the images; columns: the image, then each method's map.

    Args:
        path: PNG to write.
        name: data set name (title).
        images: the images shown (raw) with their labels.
        preprocess: the classifier's preprocessing (to show what the classifier saw).
        target: class explained per image.
        maps: method → object with ``saliency`` ``[N,H,W]`` and ``binary`` (or None), one row per image.
        labels: column titles, one per method (same order as ``maps``).
    """
    plt = _pyplot()
    rows = list(range(len(images.labels)))
    if not rows:
        return
    x = preprocess(images.images)
    shown = np.clip(preprocess.denormalize(x), 0, 1).transpose(0, 2, 3, 1)
    cols = 1 + len(maps)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        img = shown[r]
        ax = axes[r][0]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(f"{images.classes[int(images.labels[i])]}\n→ {images.classes[int(target[i])]}", fontsize=6)
        for c, mp in enumerate(maps.values(), start=1):
            ax = axes[r][c]
            ax.imshow(_display(mp.saliency[i].detach().cpu().numpy()), cmap="inferno", vmin=0, vmax=1)
            if mp.binary is not None:
                ax.contour(mp.binary[i].detach().cpu().numpy().astype(float), levels=[0.5], colors="cyan",
                           linewidths=0.6)
            if images.masks is not None:
                ax.contour(images.masks[i].astype(float), levels=[0.5], colors="lime", linewidths=0.6)
    for c, title in enumerate(["image", *labels]):
        axes[0][c].set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name}: maps (bright = more important; cyan: binary mask; green: true lesion)", fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def metrics_figure(path: Path, result: Mapping[str, Any]) -> None:
    """One bar per method for each headline metric of one data set.

    Args:
        path: PNG to write.
        result: one data set's entry of ``results.json``.
    """
    plt = _pyplot()
    ms = result["methods"]
    names = [r["label"] for r in ms.values()]
    panels: list[tuple[str, list[float | None], bool]] = [
        ("keep 10% (↑)", [r["preservation"].get("0.1") for r in ms.values()], False),
        ("insertion AUC (↑)", [r["insertion_auc"] for r in ms.values()], False),
        ("deletion AUC (↓)", [r["deletion_auc"] for r in ms.values()], False),
        ("ρ after full randomization (↓)", [(r.get("sanity") or {}).get("final") for r in ms.values()], False),
        ("seconds / image (log)", [r["seconds_per_image"] for r in ms.values()], True),
    ]
    if result.get("localization"):
        panels += [("pointing game (↑)", [r.get("pointing") for r in ms.values()], False),
                   ("top-k IoU (↑)", [r.get("iou") for r in ms.values()], False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, vals, log) in zip(axes[0], panels, strict=True):
        y = [np.nan if v is None else v for v in vals]
        ax.bar(range(len(names)), y, color=["tab:red" if n.startswith(("medcam", "per-image")) else "tab:gray"
                                            for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=75, fontsize=6)
        ax.set_title(title, fontsize=8)
        if log:
            ax.set_yscale("log")
    fig.suptitle(result["name"], fontsize=9)
    fig.tight_layout()
    _save(fig, path)
