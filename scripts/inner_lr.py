"""Which Adam step the logits inner loop should default to (``benchmarks/results/inner_lr.*``).

The logits loop is both refinement at inference and the inner loop of ``inner_mode="logits"``
meta-training, so its default step size (:data:`medcam_fast.method.inner.STEP_SIZES`) must suit both. This
measures refinement from each shipped explainer's first guess, through the public API, at several steps:
composite loss, p_kept and area of the binary masks after K steps, on the first ``--n`` test images.

    MEDCAM_DATA_DIR=../shared/data python scripts/inner_lr.py [--n 32] [--k 3,10] [--lrs 0.03,0.1,0.3,1]

Writes ``benchmarks/results/inner_lr.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from medcam_fast import MedCAM
from medcam_fast._io import atomic_write_bytes, atomic_write_json
from medcam_fast.data.medmnist import load_npz, resolve_data
from medcam_fast.method.refine import RefineConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "inner_lr"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="breast,pneumonia,blood,path")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--k", default="3,10")
    ap.add_argument("--lrs", default="0.03,0.1,0.3,1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.sets.split(","):
        images = load_npz(resolve_data(name), "test").images[: args.n]
        folder = ROOT / "models" / name
        for k in (int(v) for v in args.k.split(",")):
            for lr in (float(v) for v in args.lrs.split(",")):
                with MedCAM(folder / "classifier", folder / "explainer",
                            refine_config=RefineConfig(steps=k, lr=lr)) as explain:
                    ex = explain(images)
                rows.append({"set": name, "k": k, "lr": lr, "loss": float(np.mean(ex.loss)),
                             "p_kept": float(np.mean(ex.p_kept)), "area": float(np.mean(ex.area)),
                             "p_removed": float(np.mean(ex.p_removed))})
                print(rows[-1], flush=True)
    best = {}
    for r in rows:
        key = (r["set"], r["k"])
        if key not in best or r["loss"] < best[key]["loss"]:
            best[key] = r
    lines = ["| set | K | lr | loss | p_kept | p_removed | area |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **best**" if best[(r["set"], r["k"])] is r else ""
        lines.append(f"| {r['set']} | {r['k']} | {r['lr']:g}{mark} | {r['loss']:.3f} | {r['p_kept']:.3f} | "
                     f"{r['p_removed']:.3f} | {r['area']:.3f} |")
    ratio = {lr: statistics.median(r["loss"] / best[(r["set"], r["k"])]["loss"] for r in rows if r["lr"] == lr)
             for lr in sorted({r["lr"] for r in rows})}
    lines += ["", "Median over sets and K of loss / best loss: "
              + ", ".join(f"lr {lr:g}: {v:.3f}" for lr, v in ratio.items())]
    atomic_write_json(OUT.with_suffix(".json"), {"n": args.n, "rows": rows, "median_ratio_to_best": ratio})
    atomic_write_bytes(OUT.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
