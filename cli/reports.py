"""Rich tables of what ``evaluate`` and ``bench`` measured: the library returns results, the CLI shows them.

Every cell that comes from user input (a data set or method name), and every bracket meant as text
(``[fill]``), is escaped before rich renders it: rich would read ``[zero]`` as a style tag and print nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from .console import escape

__all__ = ["evaluate_table", "per_image_table", "quality_table", "speed_table"]


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _dig(node: Any, *path: str) -> Any:
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def evaluate_table(results: Mapping[str, Any]) -> Table:
    """One row per data set and method (and the random-map control): keep 10 % and faithfulness correlation
    under the first headline fill (one no method was trained against), ROAD combined, top-k IoU, ρ after full
    randomization on signed and absolute maps, the binary verdict with the run's baseline beside the data
    set's p_original (the explained class's probability on the unchanged image), seconds per image.
    ``report.md`` has every fill and column."""
    table = Table(title=f"medcam-fast evaluate, {results['config']['n']} test images per data set")
    for col in ("data set", "method", "keep 10% ↑ [fill]", "faithfulness corr. ↑", "ROAD combined ↑",
                "top-k IoU ↑", "ρ full random ↓ (signed / abs)", "p_original / p_kept / p_removed / area [baseline]",
                "s/image"):
        table.add_column(escape(col))  # "[fill]" is text, not a rich style tag
    for name, ds in results["datasets"].items():
        head = (ds.get("headline_fills") or [None])[0]
        rows = list(ds["methods"].values())
        if _dig(ds, "controls", "random"):
            rows.append(ds["controls"]["random"])
        for r in rows:
            b = r.get("binary")
            sanity = r.get("sanity") or {}
            table.add_row(
                escape(name), escape(r["label"]),
                "–" if head is None else f"{_f(_dig(r, 'fills', head, 'preservation', '0.1'))} {escape(f'[{head}]')}",
                "–" if head is None else _f(_dig(r, "fills", head, "faithfulness_correlation")),
                _f(_dig(r, "road", "combined")), _f(r.get("iou")),
                "–" if not sanity else f"{_f(sanity.get('final'))} / {_f(sanity.get('final_abs'))}",
                "–" if not b else f"{_f(ds.get('p_original'))} / {_f(b['p_kept'])} / {_f(b['p_removed'])} / "
                                  f"{_f(b['area'])}",
                f"{r['seconds_per_image']:.4f}",
            )
        for m, why in ds["skipped"].items():
            table.add_row(escape(name), escape(m), "skipped", escape(why), "", "", "", "", "")
    return table


def per_image_table(results: Mapping[str, Any]) -> Table:
    """``bench per-image``: the per-image fit's verdict and the acceptance criteria per data set."""
    cfg = results["config"]
    table = Table(title=f"per-image fit, {cfg['steps']} steps, {results['n']} test images, binary masks")
    for col in ("data set", "p_original", "p_kept", "p_removed", "drop", "area", "s/image", "pass"):
        table.add_column(col)
    for name, r in results["datasets"].items():
        table.add_row(
            escape(name), _f(r["p_original"]), _f(r["p_kept"]), _f(r["p_removed"]), _f(r["drop"]), _f(r["area"]),
            f"{r['seconds_per_image_median']:.2f}", "yes" if all(r["pass"].values()) else "NO",
        )
    return table


def quality_table(results: Mapping[str, Any]) -> Table:
    """``bench quality``: every method and step count, with the loss and speed-up against the last fit."""
    table = Table(title=f"quality against time, {results['n']} test images, binary masks")
    for col in ("data set", "method", "steps", "loss", "÷ fit", "p_kept", "p_removed", "area", "s/image",
                "speed-up"):
        table.add_column(col)
    for name, r in results["datasets"].items():
        ref = r["curves"]["per-image fit"][-1]
        for method, pts in r["curves"].items():
            for p in pts:
                table.add_row(
                    escape(name), escape(method), str(p["steps"]), _f(p["loss"]), _f(p["loss"] / ref["loss"]),
                    _f(p["p_kept"]), _f(p["p_removed"]), _f(p["area"]), f"{p['seconds_per_image']:.4f}",
                    f"{ref['seconds_per_image'] / max(p['seconds_per_image'], 1e-9):.1f}×",
                )
    return table


def speed_table(results: Mapping[str, Any]) -> Table:
    """``bench speed``: milliseconds per image and the ratio to Grad-CAM."""
    table = Table(title=f"speed, median of {results['repeats']} repeats (Grad-CAM: {escape(results['grad_cam'])})")
    for col in ("size", "batch", "method", "ms / image", "time / Grad-CAM"):
        table.add_column(col)
    for r in results["rows"]:
        table.add_row(str(r["size"]), str(r["batch"]), escape(r["method"]), f"{1000 * r['seconds_per_image']:.2f}",
                      _f(r["ratio_to_grad_cam"], 2))
    return table
