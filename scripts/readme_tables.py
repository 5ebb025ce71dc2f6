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


def evaluate() -> str:
    """Per data set: the headline metrics of every method."""
    res = _load(ROOT / "benchmarks" / "evaluate" / "results.json")
    out = []
    for name, ds in res["datasets"].items():
        loc = ds.get("localization")
        head = ["method", "keep 10% ↑", "insertion AUC ↑", "deletion AUC ↓"]
        head += ["pointing ↑", "top-k IoU ↑"] if loc else []
        head += ["ρ full random ↓", "s/image"]
        out += [f"**{name}** ({ds['n']} test images)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in ds["methods"].values():
            f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            row = [r["label"], f(r["preservation"].get("0.1")), f(r["insertion_auc"]), f(r["deletion_auc"])]
            row += [f(r.get("pointing")), f(r.get("iou"))] if loc else []
            row += [f((r.get("sanity") or {}).get("final")), f"{r['seconds_per_image']:.3f}"]
            out.append("| " + " | ".join(row) + " |")
        if ds["skipped"]:
            out.append(f"\nSkipped: {', '.join(ds['skipped'])}.")
        out.append("")
    return "\n".join(out + [_paired(res)])


def _paired(res: dict) -> str:
    """One row per data set and medcam-fast method: Δ against the best peer, with its bootstrap interval."""
    metrics = [("keep/0.1", "keep 10%"), ("insertion_auc", "insertion AUC"), ("iou", "top-k IoU (lesions)")]
    head = ["data set", "method", *(t + ": Δ vs best peer [95 % CI]" for _, t in metrics)]
    out = ["**Image by image against the best peer** (mean difference, bootstrap 95 % interval over images; "
           "the peer named is the best of that column)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ds in res["datasets"].items():
        paired = ds.get("paired") or {}
        for m in ("first-guess", "refined", "fit"):
            cells = []
            for key, _ in metrics:
                p = paired.get(key)
                d = p and p["methods"].get(m)
                cells.append("–" if not d else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] vs "
                             f"{ds['methods'][p['against']]['label']}")
            if any(c != "–" for c in cells):
                out.append(f"| {name} | {ds['methods'][m]['label']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print({"quality": quality, "evaluate": evaluate}[sys.argv[1]]())
