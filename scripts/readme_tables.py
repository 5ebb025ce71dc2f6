"""Print the README's summary tables from the committed result files (no measurement happens here).

    python scripts/readme_tables.py quality   # from benchmarks/results/quality_<set>.json
    python scripts/readme_tables.py evaluate  # from benchmarks/evaluate/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETS = ("breast", "pneumonia", "blood", "path")

#: The verdict's keys in result files written before it had one vocabulary → today's (p_original, p_kept,
#: p_removed, area). Files are read with them renamed, so old and new result files print the same tables.
_OLD_KEYS = {"original": "p_original", "masked": "p_kept", "p_masked": "p_kept", "kept": "p_kept",
             "complement": "p_removed", "removed": "p_removed"}


def _renamed(obj: Any) -> Any:
    """``obj`` with every dict key of :data:`_OLD_KEYS` renamed (recursively)."""
    if isinstance(obj, dict):
        return {_OLD_KEYS.get(k, k): _renamed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v) for v in obj]
    return obj


def _load(path: Path) -> dict:
    """A committed result file, in today's vocabulary."""
    return _renamed(json.loads(path.read_text(encoding="utf-8")))


def _point(curve: list[dict], steps: int) -> dict | None:
    return next((p for p in curve if p["steps"] == steps), None)


def quality() -> str:
    """One row per data set: the acceptance figures of the meta-trained explainer against the 300-step fit."""
    head = ("| data set | fit-300 loss | meta K=10 loss (÷ fit) | meta K=10 p_kept (fit) | speed-up K=10 | "
            "meta / amortized loss K=5 | K=10 | first guess p_kept ÷ fit | other class raised |")
    lines = [head, "|" + "---|" * 9]
    for name in SETS:
        path = ROOT / "benchmarks" / "results" / f"quality_{name}.json"
        if not path.exists():
            continue
        res = _load(path)["datasets"][name]
        c = res["curves"]
        meta = next(v for k, v in c.items() if k.startswith("maml") and k.endswith("+logits"))
        amort = c["amortized+logits"]
        fit = _point(c["per-image fit"], 300)
        m10, m5, m0 = _point(meta, 10), _point(meta, 5), _point(meta, 0)
        a10, a5 = _point(amort, 10), _point(amort, 5)
        lines.append(
            f"| {name} | {fit['loss']:.3f} | {m10['loss']:.3f} ({m10['loss'] / fit['loss']:.3f}) | "
            f"{m10['p_kept']:.3f} ({fit['p_kept']:.3f}) | "
            f"{fit['seconds_per_image'] / m10['seconds_per_image']:.0f}× | "
            f"{m5['loss']:.3f} / {a5['loss']:.3f} | {m10['loss']:.3f} / {a10['loss']:.3f} | "
            f"{m0['p_kept'] / fit['p_kept']:.3f} | {res['other_class']['raised_fraction']:.0%} |")
    return "\n".join(lines)


def evaluate(path: Path = ROOT / "benchmarks" / "evaluate" / "results.json") -> str:
    """From ``evaluate``'s results: per data set the at-a-glance table, then every binary mask's verdict and
    readability, then the refined masks against the best peer (the report's own table functions)."""
    from medcam_fast.evaluation.report import (
        best_peer_glance_rows,
        binary_glance_rows,
        glance_table,
        markdown_table,
    )

    res = json.loads(path.read_text(encoding="utf-8"))
    fractions = res["config"]["fractions"]
    out: list[str] = []
    binary: list[list[str]] = []
    paired: list[list[str]] = []
    for name, ds in res["datasets"].items():
        out += [f"**{name}** ({ds['n']} test images; p(original) {ds['p_original']:.3f})", "",
                glance_table(ds, fractions), ""]
        binary += binary_glance_rows(ds)
        paired += best_peer_glance_rows(ds, "refined", ("keep 10%", "faithfulness corr.", "ROAD combined",
                                                        "top-k IoU"))
    out += ["**The binary masks: their verdict beside a random blob of the same area, and their readability**", "",
            *markdown_table(["data set", "mask", "fill", "area", "p(original)", "p_kept / p_removed",
                     "random blob: p_kept / p_removed", "pieces (median)", "largest piece", "lattice flagged"],
                    binary), "",
            "**Refined masks against the best peer of each headline column** (paired over images; † survives "
            "Holm over the data set's family of comparisons)", "",
            *markdown_table(["data set", "method", "column", "best peer", "Δ [95 % CI]", "p (Holm)", "†"], paired)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print({"quality": quality, "evaluate": evaluate}[sys.argv[1]]())
