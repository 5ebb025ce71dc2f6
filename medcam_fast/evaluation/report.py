"""evaluation.report: TODO docstring (split from evaluate.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["paired_table", "dataset_table", "report_markdown"]


def paired_table(res: dict[str, Any]) -> str:
    """The Markdown table of one data set's paired comparisons (empty when there are none)."""
    paired = res.get("paired") or {}
    if not paired:
        return ""
    methods = list(dict.fromkeys(m for p in paired.values() for m in p["methods"]))  # medcam-fast methods, in order
    head = ["method", *(f"{p['title']}: Δ vs {res['methods'][p['against']]['label']}" for p in paired.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [res["methods"][m]["label"]]
        for p in paired.values():
            d = p["methods"].get(m)
            cells.append("–" if d is None else
                         f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], wins {d['wins']}/{d['n']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _best(values: dict[str, float | None], higher: bool) -> float | None:
    vals = [v for v in values.values() if v is not None]
    if not vals:
        return None
    return max(vals) if higher else min(vals)


def _mark(v: float | None, best: float | None) -> str:
    s = _fmt(v)
    if v is not None and best is not None and abs(v - best) < 1e-12:
        return f"**{s}**"
    return s


def dataset_table(res: dict[str, Any], fractions: Sequence[float]) -> str:
    """The Markdown table of one data set's results (best value of each column in bold)."""
    ms = res["methods"]
    cols: list[tuple[str, Callable[[dict[str, Any]], float | None], bool]] = [
        (f"keep {100 * a:g}% ↑", (lambda r, a=a: r["preservation"].get(f"{a:g}")), True) for a in fractions
    ]
    cols += [("deletion AUC ↓", lambda r: r["deletion_auc"], False),
             ("insertion AUC ↑", lambda r: r["insertion_auc"], True)]
    if res.get("localization"):
        cols += [("pointing ↑", lambda r: r.get("pointing"), True), ("top-k IoU ↑", lambda r: r.get("iou"), True)]
    cols += [("ρ after full randomization ↓", lambda r: (r.get("sanity") or {}).get("final"), False)]
    devices = {r.get("device") for r in ms.values()}
    header = ["method", *(c[0] for c in cols), "binary: kept / removed / area", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bests = {c[0]: _best({m: c[1](r) for m, r in ms.items()}, c[2]) for c in cols}
    for r in ms.values():
        cells = [r["label"]]
        for title, get, _higher in cols:
            cells.append(_mark(get(r), bests[title]))
        b = r.get("binary")
        cells.append(f"{_fmt(b['kept'])} / {_fmt(b['removed'])} / {_fmt(b['area'])}" if b else "–")
        cells.append(f"{r['seconds_per_image']:.4f}" + (f" ({r.get('device')})" if len(devices) > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _localization_note(res: dict[str, Any]) -> str:
    if not res.get("localization"):
        return ""
    who = (f"the {res['localization_n']} images of class {res['evidence_class']!r} that the classifier predicts "
           "as such (only there is the mask the evidence for the explained class)" if res.get("evidence_class")
           else f"all {res['localization_n']} images")
    return f" Pointing and top-k IoU: on {who}."


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``: how the run was made, one table per data set, the sanity check and what was skipped."""
    cfg = results["config"]
    env = results["env"]
    fr = cfg["fractions"]
    lines = [
        "# medcam-fast evaluate",
        "",
        f"{cfg['n']} test images per data set; class explained: the classifier's prediction. "
        f"Device: {env.get('gpu') or env.get('cpu')} ({env['device']}), torch {env['torch']}, "
        f"medcam-fast {env['medcam_fast']}. Refinement: {cfg['refine_steps']} logit steps; per-image fit: "
        f"{cfg['fit_steps']} steps; RISE {cfg['rise_masks']} masks; Extremal Perturbations {cfg['extremal_steps']} "
        f"steps per area. Sanity check on the first {cfg['sanity_n']} images, "
        f"{cfg['sanity_stages']} stages of cascading randomization.",
        "",
        "Columns: *keep a%* — target-class probability with only the top a% pixels of the map kept, the rest "
        "replaced by the explainer's baseline (the same pixel budget for every method); *deletion / insertion "
        "AUC* — RISE protocol (most salient pixels first; zero substrate for deletion, blurred for insertion); "
        "*pointing* and *top-k IoU* — against the true lesion (k = lesion area); *ρ after full randomization* — "
        "Spearman correlation between the map of the trained classifier and of the classifier with every layer "
        "re-initialized (Adebayo et al. 2018; low = the map depends on what the classifier learned); *binary* — "
        "medcam-fast's binary masks: probability with the evidence kept alone, with it removed, and its area. "
        "Best of each column in bold.",
        "",
    ]
    for name, res in results["datasets"].items():
        lines += [f"## {name}", "",
                  f"{res['n']} images, classifier accuracy on them {res['accuracy']:.3f}." + _localization_note(res),
                  "",
                  dataset_table(res, fr), ""]
        table = paired_table(res)
        if table:
            lines += ["Image by image against the best peer of each column (mean difference, bootstrap 95 % "
                      "interval over images, images where medcam-fast scores higher); an interval that excludes "
                      "0 is a difference the choice of images does not explain:", "", table, ""]
        road = {m: r["road"] for m, r in res["methods"].items() if r.get("road")}
        if road:
            keys = list(next(iter(road.values())))
            lines += ["ROAD (grad-cam's implementation, cross-check): " + "; ".join(
                f"{res['methods'][m]['label']}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k in keys)
                for m, r in road.items()), ""]
        stages = {m: r["sanity"]["stages"] for m, r in res["methods"].items() if r.get("sanity")}
        if stages:
            first = next(iter(stages.values()))
            head = ["method", *(f"{s['fraction']:.0%} randomized" for s in first)]
            lines += ["Cascading randomization (Spearman ρ, mean over images):", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for m, st in stages.items():
                lines.append("| " + " | ".join([res["methods"][m]["label"], *(_fmt(s["spearman"]) for s in st)]) + " |")
            lines.append("")
        if res["skipped"]:
            lines += ["Skipped: " + "; ".join(f"{m} ({why})" for m, why in res["skipped"].items()), ""]
        lines += [f"![{name} maps](figures/grid_{name}.png)", f"![{name} metrics](figures/metrics_{name}.png)", ""]
    lines += [
        "## Reading the sanity check",
        "",
        "The first guess of a meta-trained explainer is a function of the image (and the class asked for) "
        "only: at inference it never calls the classifier, so randomizing the classifier cannot change it and "
        "its ρ stays 1 by construction. It is only as faithful as the classifier it was trained against; the "
        "explainer refuses another classifier by its sha256. Refinement optimizes the mask against the "
        "classifier actually given, and the per-image fit does so from scratch: their ρ is what a user should "
        "read, and the first guess's row shows what refinement restores.",
        "",
    ]
    return "\n".join(lines)
