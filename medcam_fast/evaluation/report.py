"""The report of ``medcam-fast evaluate``: Markdown rendered from the measured results, and the one function
that writes a run's files.

:func:`report_markdown` turns ``results.json``'s content into ``report.md``: how the run was made (and where
its settings are below the full protocol), then per data set

* which fill each method was trained or tuned against, and the *headline* — the fills no method was trained
  against, plus ROAD — with the controls (random map, fill alone) as rows;
* one table per fill (keep a %, deletion and insertion AUC, faithfulness correlation, monotonicity), the home
  ground of a fill named in its title;
* the binary masks: their verdict beside a random blob of the same area, and their readability (pieces,
  largest piece, lattice check);
* at the mask's own area: every other map's top-k pixels and the random blob judged at the mask's budget;
* the paired comparisons, each table one family: how many comparisons it makes, and ``†`` on the
  differences that survive Holm's correction;
* localization, the sanity check under both conventions (signed and absolute Spearman) and SSIM, time.

It reads only the results, so a report can be rendered again from a saved ``results.json``.
:func:`write_report` writes ``results.json``, ``report.md`` and the figures (:mod:`.figures`) of an
:class:`~medcam_fast.evaluation.harness.Evaluation`; the harness itself never writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write, atomic_write_json
from .metrics import LATTICE_THRESHOLD

if TYPE_CHECKING:
    from .harness import Evaluation

__all__ = ["markdown_table", "paired_table", "dataset_table", "glance_table", "binary_glance_rows", "best_peer_glance_rows",
           "report_markdown", "write_report", "FULL_PROTOCOL"]


#: The full protocol (``evaluate``'s defaults): a run below any of these says so in its header.
FULL_PROTOCOL: dict[str, int] = {"n": 64, "rise_masks": 4000, "extremal_steps": 300, "sanity_n": 32,
                                 "sanity_stages": 4, "fit_steps": 300}

_MEDCAM = ("first-guess", "refined", "fit")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _signed(v: Any) -> str:
    return "–" if v is None else f"{v:+.3f}"


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


def _dig(node: Any, *path: str) -> Any:
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the head, the rule, one line per row."""
    return [_row(head), "|" + "---|" * len(head), *(_row(r) for r in rows)]


#: A column: title, getter on a method's (or the random control's) result, higher is better.
_Col = tuple[str, Callable[[dict[str, Any]], Any], bool]

#: The localization columns (sets with known evidence).
_LOCALIZATION: list[_Col] = [("pointing", lambda r: r.get("pointing"), True),
                             ("top-k IoU", lambda r: r.get("iou"), True)]


def _method_table(res: dict[str, Any], cols: Sequence[_Col], fill_alone: dict[str, float | None] | None = None,
                  extra: Sequence[tuple[str, Callable[[dict[str, Any]], str]]] = ()) -> list[str]:
    """Rows: every method, then the random map and (optionally) the fill alone; columns ``cols`` with the best
    *method* value in bold (controls are shown, never bold)."""
    ms = res["methods"]
    bests = {c[0]: _best({m: c[1](r) for m, r in ms.items()}, c[2]) for c in cols}
    head = ["method", *(f"{c[0]} {'↑' if c[2] else '↓'}" for c in cols), *(e[0] for e in extra)]
    rows = [[r["label"], *(_mark(c[1](r), bests[c[0]]) for c in cols), *(e[1](r) for e in extra)] for r in ms.values()]
    rnd = res.get("controls", {}).get("random")
    if rnd:
        rows.append(["*control: random map*", *(_fmt(c[1](rnd)) for c in cols), *("–" for _ in extra)])
    if fill_alone is not None:
        rows.append(["*control: fill alone (nothing kept)*", *(_fmt(fill_alone.get(c[0])) for c in cols),
                     *("–" for _ in extra)])
    return markdown_table(head, rows)


def _keep_key(fractions: Sequence[float]) -> str:
    return f"{0.1 if any(abs(f - 0.1) < 1e-9 for f in fractions) else fractions[0]:g}"


def _headline_cols(res: dict[str, Any], fractions: Sequence[float]) -> list[_Col]:
    a = _keep_key(fractions)
    cols: list[_Col] = []
    for f in res.get("headline_fills", []):
        cols += [
            (f"keep {100 * float(a):g}% [{f}]", lambda r, f=f: _dig(r, "fills", f, "preservation", a), True),
            (f"insertion AUC [{f}]", lambda r, f=f: _dig(r, "fills", f, "insertion_auc"), True),
            (f"deletion AUC [{f}]", lambda r, f=f: _dig(r, "fills", f, "deletion_auc"), False),
            (f"faithfulness corr. [{f}]", lambda r, f=f: _dig(r, "fills", f, "faithfulness_correlation"), True),
            (f"monotonicity [{f}]", lambda r, f=f: _dig(r, "fills", f, "monotonicity"), True),
        ]
    nl = "noisy-linear"
    if nl in res.get("fills", []):
        cols.append((f"keep {100 * float(a):g}% [{nl}]", lambda r: _dig(r, "fills", nl, "preservation", a), True))
    if res.get("road_n"):
        cols += [(f"ROAD MoRF [{nl}]", lambda r: _dig(r, "road", "morf"), False),
                 (f"ROAD LeRF [{nl}]", lambda r: _dig(r, "road", "lerf"), True),
                 (f"ROAD combined [{nl}]", lambda r: _dig(r, "road", "combined"), True)]
    return cols


def _fill_alone_cells(res: dict[str, Any], cols: Sequence[_Col], fractions: Sequence[float]) -> dict[str, Any]:
    """The fill-alone control's value in each keep column (nothing kept: the fill's own probability)."""
    alone = res.get("controls", {}).get("fill_alone", {})
    out: dict[str, Any] = {}
    for f, v in alone.items():
        for a in fractions:
            out[f"keep {100 * a:g}% [{f}]"] = v.get("p")
    return {c[0]: out.get(c[0]) for c in cols}


def dataset_table(res: dict[str, Any], fractions: Sequence[float]) -> str:
    """The headline table of one data set: the fills no method was trained against and ROAD, every method
    and the controls (best method value of each column in bold)."""
    cols = _headline_cols(res, fractions)
    if res.get("localization"):
        cols += _LOCALIZATION
    return "\n".join(_method_table(res, cols, _fill_alone_cells(res, cols, fractions),
                                   extra=[("s/image", lambda r: f"{r['seconds_per_image']:.4f}")]))


def _glance_fill(res: dict[str, Any]) -> str | None:
    """The fill of the at-a-glance tables: the first headline fill (no method trained on it), else the first."""
    fills = res.get("headline_fills") or res.get("fills") or [None]
    return fills[0]


def _glance_cols(res: dict[str, Any], fractions: Sequence[float]) -> list[_Col]:
    f, a = _glance_fill(res), _keep_key(fractions)
    cols: list[_Col] = []
    if f is not None:
        cols += [(f"keep {100 * float(a):g}% [{f}]", lambda r: _dig(r, "fills", f, "preservation", a), True),
                 (f"insertion AUC [{f}]", lambda r: _dig(r, "fills", f, "insertion_auc"), True),
                 (f"faithfulness corr. [{f}]", lambda r: _dig(r, "fills", f, "faithfulness_correlation"), True)]
    if res.get("road_n"):
        cols.append(("ROAD combined", lambda r: _dig(r, "road", "combined"), True))
    if res.get("localization"):
        cols += _LOCALIZATION
    if res.get("sanity_n"):
        cols += [("ρ full random", lambda r: _dig(r, "sanity", "final"), False),
                 ("ρ abs", lambda r: _dig(r, "sanity", "final_abs"), False)]
    return cols


def glance_table(res: dict[str, Any], fractions: Sequence[float]) -> str:
    """One data set at a glance (the README's table): under the first headline fill keep a %, insertion AUC and
    faithfulness correlation, then ROAD combined, localization, the sanity check's ρ after full randomization
    (signed and absolute), time; every method and the controls, the best method value in bold."""
    cols = _glance_cols(res, fractions)
    return "\n".join(_method_table(res, cols, _fill_alone_cells(res, cols, fractions),
                                   extra=[("s/image", lambda r: f"{r['seconds_per_image']:.4f}")]))


def binary_glance_rows(res: dict[str, Any]) -> list[list[str]]:
    """One row per binary mask of a data set, under the first headline fill: area, p(original), p_kept /
    p_removed, the same-area random blob's p_kept / p_removed, pieces, largest piece, lattice-flagged share."""
    f = _glance_fill(res)
    own = res.get("controls", {}).get("own_area", {})
    rows = []
    for m, r in res["methods"].items():
        if m not in own or f is None:
            continue
        read = r.get("readability") or {}
        b = _dig(r, "fills", f, "binary") or {}
        blob = _dig(own[m], "rows", "blob", "means", f) or {}
        rows.append([res["name"], r["label"], f, _fmt(b.get("area")), _fmt(res.get("p_original")),
                     f"{_fmt(b.get('p_kept'))} / {_fmt(b.get('p_removed'))}",
                     f"{_fmt(blob.get('p_kept'))} / {_fmt(blob.get('p_removed'))}",
                     _fmt(read.get("pieces_median"), 1), _fmt(read.get("largest_fraction_median")),
                     "–" if read.get("lattice_flagged") is None else f"{read['lattice_flagged']:.0%}"])
    return rows


def best_peer_glance_rows(res: dict[str, Any], method: str, columns: Sequence[str]) -> list[list[str]]:
    """``method``'s paired comparisons with the best peer in the headline ``columns`` (matched by prefix):
    Δ [95 % CI], the peer, Holm-adjusted p and ``†`` where the difference survives."""
    label = {k: r["label"] for k, r in res["methods"].items()}
    rows = []
    for c in (_dig(res, "paired", "best_peer") or {}).get("comparisons", []):
        if c["ours"] == method and any(c["column"].startswith(p) for p in columns):
            rows.append([res["name"], label.get(method, method), c["column"], label.get(c["theirs"], c["theirs"]),
                         f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]", f"{c['p_holm']:.4f}",
                         "†" if c["holm"] else ""])
    return rows


def _fill_table(res: dict[str, Any], f: str, fractions: Sequence[float]) -> list[str]:
    cols: list[_Col] = [(f"keep {100 * a:g}% [{f}]", lambda r, a=a: _dig(r, "fills", f, "preservation", f"{a:g}"),
                         True) for a in fractions]
    if f != "noisy-linear":
        cols += [(f"deletion AUC [{f}]", lambda r: _dig(r, "fills", f, "deletion_auc"), False),
                 (f"insertion AUC [{f}]", lambda r: _dig(r, "fills", f, "insertion_auc"), True),
                 (f"faithfulness corr. [{f}]", lambda r: _dig(r, "fills", f, "faithfulness_correlation"), True),
                 (f"monotonicity [{f}]", lambda r: _dig(r, "fills", f, "monotonicity"), True)]
    return _method_table(res, cols, _fill_alone_cells(res, cols, fractions))


def _binary_table(res: dict[str, Any]) -> list[str]:
    """Each binary method's verdict under every fill — p_kept beside the data set's p(original), which it is
    read against — beside a random blob of its area, and its readability."""
    fills = res.get("fills", [])
    own = res.get("controls", {}).get("own_area", {})
    head = ["mask", "area", "p_original", *(f"p_kept / p_removed [{f}]" for f in fills), "pieces (median)",
            "largest piece (median)", "lattice score (median)", "lattice flagged"]
    p_original = _fmt(res.get("p_original"))
    rows = []
    for m, r in res["methods"].items():
        if m not in own:
            continue
        read = r.get("readability") or {}
        area = _dig(r, "fills", fills[0], "binary", "area") if fills else None
        rows.append([r["label"], _fmt(area), p_original, *(
            f"{_fmt(_dig(r, 'fills', f, 'binary', 'p_kept'))} / {_fmt(_dig(r, 'fills', f, 'binary', 'p_removed'))}"
            for f in fills), _fmt(read.get("pieces_median"), 1), _fmt(read.get("largest_fraction_median")),
            _fmt(read.get("lattice_median"), 2),
            "–" if read.get("lattice_flagged") is None else f"{read['lattice_flagged']:.0%}"])
        blob = own[m]["rows"].get("blob", {}).get("means", {})
        rows.append([f"*control: random blob, area of {r['label']}*", _fmt(area), p_original, *(
            f"{_fmt(_dig(blob, f, 'p_kept'))} / {_fmt(_dig(blob, f, 'p_removed'))}" for f in fills),
            "1.0", "1.000", "–", "–"])
    return markdown_table(head, rows) if rows else []


def _survivors(family: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(column, ours, theirs)`` → comparison."""
    return {(c["column"], c["ours"], c["theirs"]): c for c in family.get("comparisons", [])}


def _own_area_table(res: dict[str, Any], m: str) -> list[str]:
    """At mask ``m``'s own area: every other map's top-k and the blob, p_kept and p_removed per fill; ``†``
    where the difference from the mask survives Holm."""
    table = res["controls"]["own_area"][m]
    family = _survivors(_dig(res, "paired", "own_area", m) or {})
    fills = res.get("fills", [])
    head = ["pixels chosen by", *(f"{k} [{f}] {'↑' if k == 'p_kept' else '↓'}" for f in fills
                                  for k in ("p_kept", "p_removed"))]
    labels = {**{k: r["label"] for k, r in res["methods"].items()}, "random": "*control: random map, top-k*",
              "blob": "*control: random blob*", "self": f"**{res['methods'][m]['label']} (its binary mask)**"}
    rows = []
    for other, row in table["rows"].items():
        cells = [labels.get(other, other) + ("" if other in ("self", "random", "blob") else ", top-k")]
        for f in fills:
            for k in ("p_kept", "p_removed"):
                v = _dig(row, "means", f, k)
                c = family.get((f"{k} [{f}]", m, other))
                cells.append(_fmt(v) + ("†" if c and c.get("holm") else ""))
        rows.append(cells)
    return markdown_table(head, rows)


def paired_table(res: dict[str, Any], family: str = "best_peer") -> str:
    """The Markdown table of one family of paired comparisons (empty when there are none): Δ (positive favours
    the first method), bootstrap 95 % interval, wins, p-value, Holm-adjusted p-value and ``†`` when the
    difference survives Holm."""
    fam = _dig(res, "paired", family) or {}
    comps = fam.get("comparisons", [])
    if not comps:
        return ""
    label = {**{k: r["label"] for k, r in res["methods"].items()}, "random": "random map"}
    head = ["method", "column", "against", "Δ [95 % CI]", "wins", "p", "p (Holm)", "survives Holm"]
    rows = [[label.get(c["ours"], c["ours"]), c["column"], label.get(c["theirs"], c["theirs"]),
             f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]", f"{c['wins']}/{c['n']}", f"{c['p_value']:.4f}",
             f"{c['p_holm']:.4f}", "†" if c["holm"] else ""] for c in comps]
    return "\n".join(markdown_table(head, rows))


def _random_table(res: dict[str, Any]) -> list[str]:
    """Every method against the random map, compact: Δ per headline column, ``†`` where it survives Holm."""
    fam = _dig(res, "paired", "random") or {}
    comps = fam.get("comparisons", [])
    if not comps:
        return []
    columns = list(dict.fromkeys(c["column"] for c in comps))
    by = {(c["ours"], c["column"]): c for c in comps}
    rows = []
    for m, r in res["methods"].items():
        cells = [r["label"]]
        for col in columns:
            c = by.get((m, col))
            cells.append("–" if c is None else f"{c['mean']:+.3f}" + ("†" if c["holm"] else ""))
        rows.append(cells)
    return markdown_table(["method", *columns], rows)


def _sanity_tables(res: dict[str, Any]) -> list[str]:
    stages = {m: r["sanity"]["stages"] for m, r in res["methods"].items() if (r.get("sanity") or {}).get("stages")}
    if not stages:
        return []
    first = next(iter(stages.values()))
    head = ["method", *(f"{s['fraction']:.0%} randomized: ρ / ρ abs / SSIM" for s in first)]
    rows = [[res["methods"][m]["label"], *(f"{_fmt(s['spearman'])} / {_fmt(s.get('spearman_abs'))} / "
                                           f"{_fmt(s.get('ssim'))}" for s in st)] for m, st in stages.items()]
    return markdown_table(head, rows)


def _summary_table(res: dict[str, Any]) -> list[str]:
    cols: list[_Col] = []
    if res.get("localization"):
        cols += _LOCALIZATION
    cols += [("ρ full random, signed", lambda r: _dig(r, "sanity", "final"), False),
             ("ρ full random, abs", lambda r: _dig(r, "sanity", "final_abs"), False),
             ("SSIM full random", lambda r: _dig(r, "sanity", "final_ssim"), False)]
    ms = res["methods"]
    devices = {r.get("device") for r in ms.values()}
    bests = {c[0]: _best({m: c[1](r) for m, r in ms.items()}, c[2]) for c in cols}
    head = ["method", "trained / tuned against", *(f"{c[0]} {'↑' if c[2] else '↓'}" for c in cols), "s/image"]
    rows = [[r["label"], r.get("trained_fill") or "none", *(_mark(c[1](r), bests[c[0]]) for c in cols),
             f"{r['seconds_per_image']:.4f}" + (f" ({r.get('device')})" if len(devices) > 1 else "")]
            for r in ms.values()]
    return markdown_table(head, rows)


def _localization_note(res: dict[str, Any]) -> str:
    if not res.get("localization"):
        return ""
    who = (f"the {res['localization_n']} images of class {res['evidence_class']!r} that the classifier predicts "
           "as such (only there is the mask the evidence for the explained class)" if res.get("evidence_class")
           else f"all {res['localization_n']} images")
    return f" Pointing and top-k IoU: on {who}."


def _reduced(cfg: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """What in this run is below the full protocol (road on fewer than all images included)."""
    out = [f"{k.replace('_', ' ')} {cfg.get(k)} (full: {v})" for k, v in FULL_PROTOCOL.items()
           if cfg.get(k) is not None and cfg[k] < v]
    road_short = [name for name, ds in results["datasets"].items() if 0 < ds.get("road_n", 0) < ds["n"]]
    if road_short:
        out.append("ROAD on fewer than all images (" + ", ".join(road_short) + ")")
    return out


def _home(res: dict[str, Any]) -> dict[str, list[str]]:
    """fill → labels of the methods trained or tuned against it."""
    out: dict[str, list[str]] = {}
    for r in res["methods"].values():
        if r.get("trained_fill"):
            out.setdefault(r["trained_fill"], []).append(r["label"])
    return out


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``: how the run was made, then per data set the headline, every fill, the binary masks, the
    own-area comparison, the paired comparisons with Holm's correction, localization, sanity and time."""
    cfg = results["config"]
    env = results["env"]
    fr = cfg["fractions"]
    reduced = _reduced(cfg, results)
    lines = [
        "# medcam-fast evaluate",
        "",
        f"{cfg['n']} test images per data set; class explained: the classifier's prediction. "
        f"Device: {env.get('gpu') or env.get('cpu')} ({env['device']}), torch {env['torch']}, "
        f"medcam-fast {env['medcam_fast']}. Refinement: {cfg['refine_steps']} logit steps; per-image fit: "
        f"{cfg['fit_steps']} steps; RISE {cfg['rise_masks']} masks; Extremal Perturbations {cfg['extremal_steps']} "
        f"steps per area. Fills: {', '.join(cfg.get('fills', []))}. Faithfulness correlation: "
        f"{cfg.get('fc_subsets')} random subsets of {100 * cfg.get('fc_fraction', 0):g} % of the pixels; "
        f"monotonicity: {cfg.get('monotonicity_groups')} pixel groups. Sanity check on the first "
        f"{cfg['sanity_n']} images, {cfg['sanity_stages']} stages of cascading randomization. ROAD on "
        + ("all images." if cfg.get("road_n") is None else f"the first {cfg['road_n']} images."),
        "",
    ]
    if reduced:
        lines += ["**Reduced settings** (below the full protocol, which is `medcam-fast evaluate`'s defaults): "
                  + "; ".join(reduced) + ".", ""]
    lines += [
        "**How to read it.** A removed pixel has to become something — the *fill* — and every column names its "
        "fill: `zero` (black), `mean` (the data set's mean colour), `blur` (the image blurred, σ = side/10), "
        "`noisy-linear` (ROAD's noisy linear imputation from the neighbours, which leaks no mask shape). A "
        "method scored under the fill it was trained or tuned against plays on its home ground: medcam-fast's "
        "explainers are trained against their baseline (blur), and the peers that perturb (RISE, Extremal "
        "Perturbations, Occlusion, Integrated Gradients) are given that same baseline; Score-CAM masks by "
        "multiplication (the mean). The **headline** therefore uses the fills no method was trained against, "
        "plus ROAD on every image. Controls: a seeded *random map* scored like a method, the *fill alone* (the "
        "probability with nothing kept), and for each binary mask a *random blob* of the same area. Columns: "
        "*keep a%* — the target's probability with only the map's top a% of pixels kept; *deletion / insertion "
        "AUC* — RISE's curves with that fill; *faithfulness corr.* — Bhatt et al. 2020, Pearson correlation "
        "between a random subset's attribution sum and the drop its removal causes (undefined for a constant "
        "map); *monotonicity* — Nguyen & Martínez 2020, Spearman correlation between a pixel group's mean "
        "|attribution| and the change its removal causes; *ROAD* — MoRF (most relevant imputed first, lower is "
        "better), LeRF (least relevant first, higher is better), combined = (LeRF − MoRF)/2; *pointing*, "
        "*top-k IoU* — against the true lesion; *ρ full random* — Spearman correlation between the map of the "
        "trained classifier and of the fully randomized one (Adebayo et al. 2018), on the signed maps and on "
        "their absolute values (*abs*), with SSIM — low means the map depends on what the classifier learned. "
        "medcam-fast's maps are its mask logits u, read as softplus(u) = log(1 + eᵘ) wherever a metric uses values "
        "and not only their order (faithfulness correlation, monotonicity, ρ abs, SSIM): non-negative and in the "
        "same order, whereas |u| would rank a pixel surely outside the evidence above one inside it. "
        "Best method value of each column in bold (controls never). Paired comparisons: mean per-image "
        "difference with a bootstrap 95 % interval and p-value; each table is one family, corrected by Holm at "
        "α = 0.05, and `†` marks a difference that survives. `–`: not computed (noisy linear imputation is a "
        "sparse solve per composite, so its curves, faithfulness correlation and monotonicity are left to ROAD).",
        "",
    ]
    for name, res in results["datasets"].items():
        home = _home(res)
        lines += [f"## {name}", "",
                  f"{res['n']} images, classifier accuracy on them {res['accuracy']:.3f}; p(original) — the "
                  f"explained class's probability on the unchanged image, what p_kept is read against — "
                  f"{_fmt(res.get('p_original'))} (mean)." + _localization_note(res),
                  "Trained or tuned against: " + ("; ".join(f"{f} — {', '.join(ms)}" for f, ms in home.items())
                                                  or "no fill") + ". Headline fills (no method trained on them): "
                  + (", ".join(res.get("headline_fills", [])) or "none") + (" and ROAD" if res.get("road_n") else "")
                  + ".", ""]
        if res.get("fills_skipped"):
            lines += ["Fills not computed: " + "; ".join(f"{f} ({why})" for f, why in res["fills_skipped"].items()),
                      ""]
        lines += ["### Headline", "", dataset_table(res, fr), ""]
        for f in res.get("fills", []):
            owners = home.get(f)
            lines += [f"### Fill: {f}" + (f" — home ground of {', '.join(owners)}" if owners else
                                           " — no method trained on it"), "", *_fill_table(res, f, fr), ""]
        binary = _binary_table(res)
        if binary:
            lines += ["### Binary masks: verdict and readability", "",
                      "Each binary mask beside a random blob of the same area at a random place. Readability: "
                      "8-connected pieces (median), the fraction of the mask in its largest piece (median), and "
                      "the lattice check — the mask's spectral peak at the harmonics of the classifier's strides "
                      f"({', '.join(str(s) for s in res.get('strides', [])) or 'none'} px) over its mean spectral "
                      f"power, flagged at ≥ {LATTICE_THRESHOLD:g} (an extended dot or stripe lattice scores in the "
                      "hundreds, a region about 1 or less).",
                      "", *binary, ""]
        for m in res.get("controls", {}).get("own_area", {}):
            fam = _dig(res, "paired", "own_area", m) or {}
            lines += [f"### At the own area of {res['methods'][m]['label']}", "",
                      "For each image, every other map's k most salient pixels, k = this mask's pixel count on "
                      f"that image, judged like the mask. {fam.get('m', 0)} comparisons with the mask (p_kept "
                      "higher, p_removed lower is better), Holm-corrected as one family; † = the difference from "
                      "the mask survives.", "", *_own_area_table(res, m), ""]
        best = _dig(res, "paired", "best_peer") or {}
        table = paired_table(res, "best_peer")
        if table:
            lines += ["### Image by image against the best peer", "",
                      f"Each medcam-fast method against the best peer of each headline column: {best['m']} "
                      "comparisons, Holm-corrected as one family (Δ > 0 favours medcam-fast).", "", table, ""]
        rnd = _dig(res, "paired", "random") or {}
        rtable = _random_table(res)
        if rtable:
            lines += ["### Against the random map", "",
                      f"Every method minus the random-map control, per headline column (Δ > 0 = better than "
                      f"random): {rnd['m']} comparisons, Holm-corrected as one family; † = survives.", "",
                      *rtable, ""]
        lines += ["### Localization, sanity and time", "", *_summary_table(res), ""]
        sanity = _sanity_tables(res)
        if sanity:
            ssim_note = (f" SSIM not computed: {res['sanity_ssim']}." if res.get("sanity_ssim") else "")
            lines += [f"Cascading randomization on {res.get('sanity_n')} images (mean over images; the random map "
                      "ignores the classifier, so its ρ would be 1 by construction)." + ssim_note, "", *sanity, ""]
        if res["skipped"]:
            lines += ["Skipped: " + "; ".join(f"{m} ({why})" for m, why in res["skipped"].items()), ""]
        lines += [f"![{name} maps](figures/grid_{name}.png)", f"![{name} metrics](figures/metrics_{name}.png)", ""]
    lines += [
        "## Reading the sanity check",
        "",
        "A decoder explainer's first guess reads the explained classifier's own features and head, so "
        "randomizing the classifier changes it, and it is judged like every other map; meta-training adds an "
        "independence term against randomized classifiers so that it does not learn the image's prior instead "
        "(a U-Net explainer of 0.1 reads the image only: its ρ is 1 by construction). Refinement optimizes the "
        "mask against the classifier actually given, and the per-image fit does so from scratch. The two "
        "conventions differ for signed maps: a map whose sign flips but whose magnitude stays (Integrated "
        "Gradients' |x − b| factor) keeps a "
        "high ρ on absolute values.",
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
