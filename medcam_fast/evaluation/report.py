"""The report of ``medcam-fast evaluate``: Markdown rendered from the measured results, and the one function
that writes a run's files.

:func:`report_markdown` turns ``results.json``'s content into ``report.md``: how the run was made, one
table per data set (the best value of each column in bold), the paired comparison against the best peer,
ROAD, the cascading-randomization stages and what was skipped and why. It reads only the results, so a
report can be rendered again from a saved ``results.json``. :func:`write_report` writes ``results.json``,
``report.md`` and the figures (:mod:`.figures`) of an :class:`~medcam_fast.evaluation.harness.Evaluation`;
the harness itself never writes them, the CLI job calls this after measuring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write, atomic_write_json

if TYPE_CHECKING:
    from .harness import Evaluation

__all__ = ["paired_table", "dataset_table", "report_markdown", "write_report"]


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


#: The verdict's keys in results written before the vocabulary was unified (read, never written).
_OLD_VERDICT = {"p_kept": "kept", "p_removed": "removed"}


def _verdict(binary: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(p_kept, p_removed, area)`` of a method's binary-mask entry, also from results with the old keys."""
    return (*(binary.get(k, binary.get(_OLD_VERDICT[k])) for k in ("p_kept", "p_removed")), binary.get("area"))


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
    header = ["method", *(c[0] for c in cols), "binary: p_kept / p_removed / area", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bests = {c[0]: _best({m: c[1](r) for m, r in ms.items()}, c[2]) for c in cols}
    for r in ms.values():
        cells = [r["label"]]
        for title, get, _higher in cols:
            cells.append(_mark(get(r), bests[title]))
        b = r.get("binary")
        cells.append(" / ".join(_fmt(v) for v in _verdict(b)) if b else "–")
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
        "medcam-fast's binary masks: p_kept, the probability with the evidence kept alone, p_removed, with it "
        "removed, and its area. "
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


def write_report(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write a run's ``results.json``, ``report.md`` and ``figures/{grid,metrics}_<name>.png`` under ``out_dir``.

    Args:
        evaluation: what :func:`~medcam_fast.evaluation.harness.evaluate_suite` measured.
        out_dir: the run folder.

    Returns:
        The files written (a data set without any evaluated method gets no figures).
    """
    from .figures import grid_figure, metrics_figure

    out = Path(out_dir)
    written = [atomic_write_json(out / "results.json", evaluation.results)]
    text = report_markdown(evaluation.results)
    written.append(atomic_write(out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8")))
    for name, result in evaluation.results["datasets"].items():
        grid = evaluation.grids.get(name)
        if not result["methods"]:
            continue
        if grid is not None and len(grid.images):
            written.append(grid_figure(out / "figures" / f"grid_{name}.png", grid))
        written.append(metrics_figure(out / "figures" / f"metrics_{name}.png", result))
    return written
