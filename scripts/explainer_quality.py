"""The classifier-aware explainer against the classifier-blind U-Net and the per-image fit, per data set, in
one run (issue 12): quality at K refinement steps, the randomization sanity check, and readability.

For each set, ``n`` test images drawn as ``evaluate`` draws them (``pick_images``, seed :data:`SAMPLE_SEED`;
lesions: the demo's generated images, ``DEMO_SEED``), each explained for its predicted class by

* ``decoder`` — ``models/<set>/explainer`` (lesions: the shipped demo explainer), K ∈ ``--ks`` logit steps
  (its learned steps first when it ships them, as ``explain`` does);
* ``decoder-adam`` — the same explainer refined with Adam steps only (``RefineConfig(learned=False)``), K ∈
  ``--adam-ks``, when it ships learned steps: what they buy, in the same run;
* ``unet`` — ``models/<set>/unet`` (the 0.1 U-Net explainer), K ∈ ``--unet-ks``;
* ``fit-coarse`` / ``fit-pixel`` — the per-image fit, 300 steps, on the coarse grid (the decoder's
  parameterization, the default) and on pixels (the paper's), with the explainer's loss weights and baseline.

Every row gives the medians over images of the binary masks' composite loss, ``p_kept``, ``p_removed``, area,
the 8-connected pieces and the largest piece's share, the share of masks flagged as a lattice at any of the
classifier's own strides (``evaluation.scoring.readability`` at ``classifier_strides``: ``evaluate``'s one
definition, medians the lower middle value), the share of images whose
mask is the K-step one (``refined``: the rest kept their first guess, ``RefineConfig.keep_best``) and seconds per
image (wall, the classifier's passes included, one thread). Sanity: every method of the explainers is run again on
the classifier with **every** layer re-initialized (the last stage of ``cascading_randomization``), for the
same classes; Spearman ρ between the two mask-logit maps, signed and absolute, mean and median over images.
Every row also keeps its per-image loss, ``p_kept`` and area (``per_image``), so the README table gives each
ratio to the fit with a paired bootstrap 95 % interval (:func:`ratio_interval`): 32 images decide whether a
set meets a target or not, and the interval says how firmly.

    MEDCAM_DATA_DIR=../shared/data python scripts/explainer_quality.py --sets breast --out benchmarks/results

writes ``explainer_quality_<set>.json`` and ``.md``; ``--summary`` prints the README's table from them. A candidate
is judged on validation images against the shipped explainer's committed result there
(:func:`replacement_verdict`)::

    python scripts/explainer_quality.py --sets path --split val --explainer CANDIDATE --reuse --out DIR \
        --against benchmarks/results/explainer_quality_path_val.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medcam_fast._assets import DEMO_DIR
from medcam_fast.classifiers.bundle import load_classifier
from medcam_fast.classifiers.frozen import ClassifierBundle
from medcam_fast.cli.jobs import DEMO_SEED, load_splits
from medcam_fast.data.lesions import make_lesions
from medcam_fast.evaluation.harness import pick_images
from medcam_fast.evaluation.metrics import cascading_randomization, spearman
from medcam_fast.evaluation.scoring import classifier_strides, readability
from medcam_fast.explain import Explanation, MedCAM
from medcam_fast.method.fit import FitConfig
from medcam_fast.method.refine import RefineConfig
from medcam_fast.types import MaskGrid

#: The images a split reads.
SPLITS = ("test", "val")
#: Seeds the sample of a split's images (``pick_images``, as ``evaluate --seed``). Results before it read the
#: first ``n`` images of a split, which are one class of four on brain's test split; they carry no ``sample``.
SAMPLE_SEED = 0


def _images(name: str, n: int, split: str = "test") -> tuple[np.ndarray, str]:
    """``n`` images of the classifier's own ``split`` (``load_splits``), sampled by ``pick_images`` with
    :data:`SAMPLE_SEED`, except lesions' test images: the demo's generated ones (``DEMO_SEED``), which this
    table has always used and no split overlaps. Returns the images and how they were drawn (results record it
    as ``sample``)."""
    if name == "lesions" and split == "test":
        return make_lesions(n, size=64, seed=DEMO_SEED).images, f"make_lesions seed {DEMO_SEED}"
    return pick_images(load_splits(name)[split], n, SAMPLE_SEED).images, f"pick_images seed {SAMPLE_SEED}"


def _drawn(res: dict) -> tuple:
    """Which images a result read: set, split, number and sample (None: the first ``n``, before the sample)."""
    return res["set"], res.get("split", "test"), res["n"], res.get("sample")


def _same_images(a: dict, b: dict) -> None:
    """ValueError unless results ``a`` and ``b`` read the same images (:func:`_drawn`): rows of different
    images are never compared."""
    if _drawn(a) != _drawn(b):
        raise ValueError(f"results of different images: {_drawn(a)} and {_drawn(b)}")


def result_name(name: str, split: str = "test", smooth: float = 0.0) -> str:
    """The file stem of a set's results: ``explainer_quality_<set>``, with ``_val`` for validation images and
    ``_smooth<σ>`` for smoothed refinement."""
    return (f"explainer_quality_{name}" + ("" if split == "test" else f"_{split}")
            + (f"_smooth{smooth:g}" if smooth else ""))


def _randomized(bundle: ClassifierBundle) -> ClassifierBundle:
    *_, (_, model) = cascading_randomization(bundle.model, seed=0)
    return ClassifierBundle(**{**bundle.__dict__, "model": model})


def _row(r: Explanation, seconds: float, strides: list[int]) -> dict[str, float]:
    """One row: medians over images, readability as ``evaluate`` reads it (``evaluation.scoring.readability``:
    pieces, the largest piece's share, lattices at the classifier's own strides), and the per-image values."""
    read = readability(torch.from_numpy(r.binary), strides)
    med = lambda a: float(np.nanmedian(a))  # noqa: E731
    return {"loss": med(r.loss), "p_kept": med(r.p_kept), "p_removed": med(r.p_removed), "area": med(r.area),
            "p_original": med(r.p_original), "pieces": read["pieces_median"],
            "largest": read["largest_fraction_median"], "lattice": read["lattice_flagged"],
            "strides": read["strides"], "refined": float(r.refined.mean()), "seconds_per_image": seconds / len(r),
            "per_image": {k: [float(v) for v in getattr(r, k)] for k in PER_IMAGE}}


#: The per-image values each row keeps (for :func:`ratio_interval`).
PER_IMAGE = ("loss", "p_kept", "area")
#: Bootstrap resamples of :func:`ratio_interval`.
N_BOOT = 10_000


def ratio_interval(a: list[float], b: list[float], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Paired percentile-bootstrap 95 % interval of ``median(a) / median(b)`` over the same images.

    Resample the ``n`` image indices with replacement ``n_boot`` times (Efron & Tibshirani 1993, ch. 13), the
    same indices for both methods (they explain the same images): ``r* = median(a[I*]) / median(b[I*])``;
    the interval is the 2.5th and 97.5th percentiles of ``r*``.

    Args:
        a: one value per image of the method (e.g. the decoder's loss at K = 3).
        b: the same images' values of the reference (the 300-step fit), in the same order.
        n_boot: resamples.
        seed: seeds the resampling, so the table is reproducible.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values of different lengths: {x.shape} and {y.shape}")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    r = np.median(x[idx], axis=1) / np.maximum(np.median(y[idx], axis=1), 1e-12)
    lo, hi = np.percentile(r, [2.5, 97.5])
    return float(lo), float(hi)


def _share(v: float | None) -> str:
    """A share of masks, "–" where the classifier has no stride the lattice check can resolve."""
    return "–" if v is None else f"{v:.2f}"


def _ratio(row: dict, ref: dict, key: str, digits: int) -> str:
    """``row[key] / ref[key]`` and, when both rows kept their per-image values, its 95 % interval."""
    value = f"{row[key] / max(ref[key], 1e-12):.{digits}f}"
    if "per_image" not in row or "per_image" not in ref:
        return value
    lo, hi = ratio_interval(row["per_image"][key], ref["per_image"][key])
    return f"{value} ({lo:.{digits}f}–{hi:.{digits}f})"


#: Refinement's default steps (``RefineConfig``).
VERDICT_K = RefineConfig().steps
#: The few steps issue 12 sets a target at (loss ≤ 1.05 × the fit's at K = 3).
FEW_STEPS = 3
#: The refinement steps whose composite loss decides a replacement: the first guess, a few steps, the default.
VERDICT_KS = (0, FEW_STEPS, VERDICT_K)
#: Issue 12's sanity line: a mask's rank correlation with the mask made through the fully randomized
#: classifier must stay below it (signed and absolute).
SANITY_LIMIT = 0.3


def replacement_verdict(candidate: dict, shipped: dict) -> dict:
    """Whether a candidate explainer replaces the shipped one, from both explainers' results on the same
    validation images (``--split val``): the candidate must be **firmly** better somewhere and firmly worse
    nowhere, not better by a median that the next 64 images could reverse.

    With ``L_K`` the per-image composite loss after K refinement steps, K ∈ :data:`VERDICT_KS` (0, the first
    guess alone; :data:`FEW_STEPS`, where issue 12 sets its few-steps target; :data:`VERDICT_K`, refinement's
    default), ``A`` the first guess's area, and ``[lo, hi]`` the paired bootstrap 95 % interval of a ratio of
    medians (:func:`ratio_interval`)::

        r_K = median(L_K,cand) / median(L_K,ship)     r_A = median(A_cand) / median(A_ship)
        replace  ⇔  sane   ∧   ∀K: lo(r_K) ≤ 1   ∧   (∃K: hi(r_K) < 1  ∨  hi(r_A) < 1)

    no loss firmly higher at any of them, and a loss firmly lower at one or a first guess firmly smaller
    (the fast path's output, whose area is a target of its own). K = 3 joined K = 0 and 10 when training
    recipes aimed at it were judged, before any of them was scored. Seeds of one recipe differ by ±5 % in these
    medians, so a rule that followed the median alone would swap explainers on noise. The first guess's own loss
    is in the rule because a smaller first guess is no gain when the composite loss, which prices area, says
    the mask got worse (a 20-minute breast run: area 0.84 × the shipped first guess's, loss 1.19 × [1.10, 1.32]).
    ``sane``: the candidate's masks pass the randomization sanity check at every K of :data:`VERDICT_KS`
    (mean ρ < :data:`SANITY_LIMIT`, signed and absolute, where the rows carry it): lower losses bought with
    masks that no longer depend on the classifier are no gain (pneumonia's learned refinement steps: ρ 0.46 /
    0.50 at K = 3 / 10 on its validation images, at lower loss).

    Args:
        candidate: the candidate's result (``run(..., explainer=candidate)``), decoder rows at every K of
            :data:`VERDICT_KS` with their per-image values.
        shipped: the shipped explainer's result on the same set, split and images.

    Returns:
        ``replace`` (bool), ``reason``, ``loss`` (``{K: (ratio, lo, hi)}`` for K in :data:`VERDICT_KS`) and
        ``area`` (``(ratio, lo, hi)``).

    Raises:
        ValueError: the two results are of different sets, splits or numbers of images.
    """
    _same_images(candidate, shipped)

    def ratio(k: int, key: str) -> tuple[float, float, float]:
        a, b = (next(r for r in res["rows"] if (r["method"], r["steps"]) == ("decoder", k))["per_image"][key]
                for res in (candidate, shipped))
        return (float(np.median(a) / max(np.median(b), 1e-12)), *ratio_interval(a, b))

    loss, area = {k: ratio(k, "loss") for k in VERDICT_KS}, ratio(0, "area")
    worse = [k for k, (_, lo, _) in loss.items() if lo > 1]
    better = [k for k, (_, _, hi) in loss.items() if hi < 1]
    rows = {r["steps"]: r for r in candidate["rows"] if r["method"] == "decoder"}
    insane = [k for k in VERDICT_KS if max(abs(rows[k].get("rho", 0.0)), abs(rows[k].get("rho_abs", 0.0))) >= SANITY_LIMIT]
    if insane:
        replace, reason = False, f"fails the sanity check at K = {insane[0]} (ρ ≥ {SANITY_LIMIT})"
    elif worse:
        replace, reason = False, f"firmly higher loss at K = {worse[0]}"
    elif better:
        replace, reason = True, f"firmly lower loss at K = {better[0]}, firmly higher nowhere"
    elif area[2] < 1:
        replace, reason = True, f"loss ties at K = {_ks()} and a firmly smaller first guess"
    else:
        replace, reason = False, f"loss ties at K = {_ks()} and no firmly smaller first guess"
    return {"replace": replace, "reason": reason, "loss": loss, "area": area}


def _ks() -> str:
    """:data:`VERDICT_KS` in words: "0, 3 and 10"."""
    *head, last = (str(k) for k in VERDICT_KS)
    return f"{', '.join(head)} and {last}"


def verdict_line(v: dict) -> str:
    """One line: the decision, its reason and every ratio with its interval."""
    losses = ", ".join(f"K = {k} {r:.3f} [{lo:.3f}, {hi:.3f}]" for k, (r, lo, hi) in v["loss"].items())
    a, alo, ahi = v["area"]
    return (f"{'replace' if v['replace'] else 'keep the shipped explainer'}: {v['reason']} "
            f"(loss ÷ shipped {losses}; first-guess area ÷ shipped {a:.2f} [{alo:.2f}, {ahi:.2f}])")


def _sanity(a: Explanation, b: Explanation) -> dict[str, float]:
    la, lb = torch.from_numpy(a.logits), torch.from_numpy(b.logits)
    out = {}
    for key, absolute in (("rho", False), ("rho_abs", True)):
        rho = spearman(la, lb, absolute=absolute).numpy()
        out[key], out[key + "_median"] = float(np.nanmean(rho)), float(np.nanmedian(rho))
    return out


def run(name: str, n: int, n_pixel: int, ks: list[int], unet_ks: list[int], models: Path,
        explainer: Path | None = None, reuse: dict | None = None, split: str = "test", smooth: float = 0.0,
        adam_ks: tuple[int, ...] = (3, 10)) -> dict:
    """One set's rows. ``explainer`` replaces the shipped decoder (a candidate); ``reuse`` is a previous result
    of the same set and ``n`` whose fit rows are kept instead of recomputed (they depend on neither explainer
    nor refinement: the same classifier, images, predicted classes, loss weights and baseline); ``split``: the
    test images, or the validation images a candidate is judged on before it replaces a shipped explainer;
    ``smooth``: refinement's σ (``RefineConfig.smooth``) for the decoder's rows, labelled ``decoder-smooth``
    (Adam steps: smoothing shapes them); ``adam_ks``: the ``decoder-adam`` rows' K, when the explainer ships
    learned steps."""
    torch.set_num_threads(1)
    folder = DEMO_DIR if name == "lesions" else models / name
    bundle = load_classifier(folder / "classifier")
    rand = _randomized(bundle)
    x, sample = _images(name, n, split)
    strides = classifier_strides(bundle.frozen(), torch.from_numpy(bundle.preprocess(x[:1])))
    out: dict = {"set": name, "split": split, "n": int(len(x)), "sample": sample,
                 "n_pixel_fit": min(n_pixel, len(x)), "smooth": smooth, "rows": []}
    decoder = explainer if explainer is not None else folder / "explainer"
    main = MedCAM(bundle, decoder)
    assert main.settings is not None
    targets = None
    if reuse is not None and _drawn(reuse) != _drawn(out):
        raise SystemExit(f"{name}: the reused result read other images ({_drawn(reuse)}), not {_drawn(out)}: "
                         "rerun without --reuse")
    learned = main.explainer is not None and main.explainer.steps is not None and not smooth
    methods = (("decoder-smooth" if smooth else "decoder", decoder, ks, smooth, True),
               ("decoder-adam", decoder, adam_ks if learned else (), 0.0, False),
               ("unet", models / name / "unet", unet_ks, 0.0, True))
    for label, path, kk, sigma, steps_net in methods:
        if not (path / "explainer.json").exists():
            continue
        for k in kk:
            config = RefineConfig(steps=k, smooth=sigma, learned=steps_net)
            ex = MedCAM(bundle, path, refine_config=config)
            t0 = time.perf_counter()
            r = ex(x, targets=targets)
            seconds = time.perf_counter() - t0
            targets = r.target if targets is None else targets
            rr = MedCAM(rand, path, refine_config=config, allow_mismatch=True)(x, targets=r.target)
            out["rows"].append({"method": label, "steps": k, **_row(r, seconds, strides), **_sanity(r, rr)})
            print(name, out["rows"][-1], flush=True)
    if reuse is not None:
        out["rows"] += [r for r in reuse["rows"] if r["method"].startswith("fit-")]
        out["n_pixel_fit"] = reuse["n_pixel_fit"]
        return out
    for grid, m in ((MaskGrid.COARSE, len(x)), (MaskGrid.PIXEL, min(n_pixel, len(x)))):
        fit = MedCAM(bundle, fit_config=FitConfig(weights=main.settings.weights, baseline=main.settings.baseline,
                                                  grid=grid))
        t0 = time.perf_counter()
        r = fit(x[:m], targets=targets[:m])
        row = _row(r, time.perf_counter() - t0, strides)
        del row["refined"]  # the fit has no first guess to keep
        out["rows"].append({"method": f"fit-{grid.value}", "steps": 300, **row})
        print(name, out["rows"][-1], flush=True)
    return out


def markdown(res: dict) -> str:
    ref = next(r for r in res["rows"] if r["method"] == "fit-coarse")
    lines = [f"**{res['set']}** — {res['n']} {res.get('split', 'test')} images (pixel fit: {res['n_pixel_fit']}); medians over images; "
             "ρ: mean Spearman of the mask logits against the fully randomized classifier's (signed / absolute); "
             f"lattice: share of masks flagged at the classifier's strides {ref.get('strides', '2–16')}", "",
             "| method | K | loss | loss / fit | p_kept | p_kept / fit | p_removed | area | area / fit | pieces | "
             "largest | lattice | refined | ρ | ρ abs | s/image | fit speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        rho = f"{r['rho']:.2f} | {r['rho_abs']:.2f}" if "rho" in r else "– | –"
        refined = f"{r['refined']:.2f}" if "refined" in r else "–"
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['loss']:.3f} | {r['loss'] / ref['loss']:.3f} | {r['p_kept']:.3f} | "
            f"{r['p_kept'] / ref['p_kept']:.3f} | {r['p_removed']:.3f} | {r['area']:.3f} | "
            f"{r['area'] / max(ref['area'], 1e-9):.2f} | {r['pieces']:.0f} | {r['largest']:.2f} | {_share(r['lattice'])} | "
            f"{refined} | {rho} | {r['seconds_per_image']:.4f} | {ref['seconds_per_image'] / r['seconds_per_image']:.0f}× |")
    return "\n".join(lines) + "\n"


def summary(results: list[dict]) -> str:
    """The README table: one row per set, the issue's targets in the header; each ratio to the fit with its
    paired bootstrap 95 % interval in brackets (:func:`ratio_interval`)."""
    lines = ["| set | first guess p_kept ÷ fit (≥ 0.95) | area ÷ fit (≤ 1.2) | loss ÷ fit K=3 (≤ 1.05) | K=10 (≤ 1.02) | "
             "K=3 / K=10, Adam steps only | ρ signed / abs, K=0 (< 0.3) | K=3 | K=10 | "
             "pieces / largest, K=0 (≤ 3 / ≥ 0.7) | K=10 | lattice K=0 / K=10 | U-Net ρ K=0 / K=10 | "
             "pixel fit loss / area ÷ coarse fit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        rows = {(r["method"], r["steps"]): r for r in res["rows"]}
        fit, pix = rows[("fit-coarse", 300)], rows[("fit-pixel", 300)]
        d0, d3, d10 = rows[("decoder", 0)], rows[("decoder", 3)], rows[("decoder", 10)]
        u0, u10 = rows.get(("unet", 0)), rows.get(("unet", 10))
        unet = f"{u0['rho']:.2f} / {u10['rho']:.2f}" if u0 and u10 else "–"
        a3, a10 = rows.get(("decoder-adam", 3)), rows.get(("decoder-adam", 10))
        adam = f"{a3['loss'] / fit['loss']:.3f} / {a10['loss'] / fit['loss']:.3f}" if a3 and a10 else "–"
        lines.append(
            f"| {res['set']} | {_ratio(d0, fit, 'p_kept', 3)} | {_ratio(d0, fit, 'area', 2)} | "
            f"{_ratio(d3, fit, 'loss', 3)} | {_ratio(d10, fit, 'loss', 3)} | {adam} | "
            f"{d0['rho']:.2f} / {d0['rho_abs']:.2f} | "
            f"{d3['rho']:.2f} / {d3['rho_abs']:.2f} | {d10['rho']:.2f} / {d10['rho_abs']:.2f} | "
            f"{d0['pieces']:.0f} / {d0['largest']:.2f} | {d10['pieces']:.0f} / {d10['largest']:.2f} | "
            f"{_share(d0['lattice'])} / {_share(d10['lattice'])} | {unet} | "
            f"{pix['loss'] / fit['loss']:.2f} / {pix['area'] / max(fit['area'], 1e-9):.2f} |")
    return "\n".join(lines) + "\n"


def smoothing_summary(plain: list[dict], smoothed: list[dict]) -> str:
    """The README's table of what smoothed refinement costs and buys: per set and K, the decoder's rows
    without smoothing → with it (``--smooth``), on the same images, ratios to the same fit. Smoothing shapes
    Adam's steps, so the unsmoothed side is the Adam-steps row (``decoder-adam``) where the explainer ships
    learned steps."""
    sigma = smoothed[0]["smooth"]
    lines = [f"| set | K | loss ÷ fit, σ = 0 → {sigma:g} | p_kept ÷ fit | area ÷ fit | pieces / largest | "
             f"lattice | ρ signed / abs (σ = {sigma:g}) |",
             "|---|---|---|---|---|---|---|---|"]
    for a, b in zip(plain, smoothed, strict=True):
        _same_images(a, b)
        fit = next(r for r in a["rows"] if r["method"] == "fit-coarse")
        rows = {(r["method"], r["steps"]): r for res in (a, b) for r in res["rows"]}
        for k in sorted(r["steps"] for r in b["rows"] if r["method"] == "decoder-smooth"):
            p, q = rows.get(("decoder-adam", k), rows[("decoder", k)]), rows[("decoder-smooth", k)]
            lines.append(
                f"| {a['set']} | {k} | {p['loss'] / fit['loss']:.3f} → {_ratio(q, fit, 'loss', 3)} | "
                f"{p['p_kept'] / fit['p_kept']:.3f} → {q['p_kept'] / fit['p_kept']:.3f} | "
                f"{p['area'] / max(fit['area'], 1e-9):.2f} → {q['area'] / max(fit['area'], 1e-9):.2f} | "
                f"{p['pieces']:.0f} / {p['largest']:.2f} → {q['pieces']:.0f} / {q['largest']:.2f} | "
                f"{_share(p['lattice'])} → {_share(q['lattice'])} | {q['rho']:.2f} / {q['rho_abs']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-pixel", type=int, default=16)
    ap.add_argument("--ks", default="0,1,2,3,5,10,20")
    ap.add_argument("--unet-ks", default="0,3,10")
    ap.add_argument("--adam-ks", default="3,10", help="K of the decoder-adam rows (Adam steps only), when the "
                    "explainer ships learned steps")
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--summary", action="store_true", help="print the README table from the written JSON files")
    ap.add_argument("--explainer", type=Path, help="a candidate decoder bundle instead of the shipped one (one set)")
    ap.add_argument("--split", choices=SPLITS, default="test",
                    help="test images (the README's table) or validation images (to judge a candidate --explainer)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the fit rows of the JSON already in --out (they depend on neither explainer nor refinement)")
    ap.add_argument("--smooth", type=float, default=0.0,
                    help="refinement's σ for the decoder's rows (with --reuse: the fit rows of the unsmoothed JSON); "
                         "written as explainer_quality_<set>[_val]_smooth<σ>")
    ap.add_argument("--against", type=Path,
                    help="the shipped explainer's result on the same images (e.g. benchmarks/results/"
                         "explainer_quality_<set>_val.json): print whether the candidate replaces it")
    args = ap.parse_args()
    if args.summary:
        plain = [json.loads((args.out / f"{result_name(n, args.split)}.json").read_text()) for n in args.sets]
        if args.smooth:
            smoothed = [json.loads((args.out / f"{result_name(n, args.split, args.smooth)}.json").read_text())
                        for n in args.sets]
            print(smoothing_summary(plain, smoothed), end="")
        else:
            print(summary(plain), end="")
        return
    for name in args.sets:
        stem = result_name(name, args.split, args.smooth)
        reuse = json.loads((args.out / f"{result_name(name, args.split)}.json").read_text()) if args.reuse else None
        res = run(name, args.n, args.n_pixel, [int(k) for k in args.ks.split(",") if k],
                  [int(k) for k in args.unet_ks.split(",") if k], args.models, args.explainer, reuse, args.split,
                  args.smooth, tuple(int(k) for k in args.adam_ks.split(",") if k))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        (args.out / f"{stem}.md").write_text(markdown(res))
        if args.against is not None:
            try:
                verdict = replacement_verdict(res, json.loads(args.against.read_text()))
            except ValueError as e:
                raise SystemExit(f"{args.against}: {e} (rerun the shipped explainer's result on these images)") from e
            print(f"{name}: {verdict_line(verdict)}")


if __name__ == "__main__":
    main()
