"""Meta-training steps per second on 1 and 2 processes (``meta_train(..., workers=N)``, gloo on CPU).

    python scripts/ddp_scaling.py [--steps 20] [--meta-batch 8] [--inner-steps 10]

The demo classifier (64 px lesions), 512 generated training images, the default decoder and logits inner
loop; one torch thread per process. Steps per second are the outer steps over rank 0's training time (the
loop alone: process start-up and data loading left out); wall seconds include them. Also reported: the
largest difference of the logged first-guess loss between the runs. Writes
``benchmarks/results/ddp_scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ddp_scaling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    import torch

    from medcam_fast import DEMO_DIR, make_lesions
    from medcam_fast.classifiers.bundle import load_classifier
    from medcam_fast.explainer.meta import MetaConfig, meta_train

    clf = load_classifier(DEMO_DIR / "classifier")
    images = make_lesions(512, size=64, seed=7).images
    config = MetaConfig(outer_steps=args.steps, meta_batch=args.meta_batch, inner_steps=args.inner_steps,
                        checkpoint_every=10**6)
    runs, curves = [], {}
    for w in (int(v) for v in args.workers.split(",")):
        torch.set_num_threads(w)  # one thread per process
        curve: list[float] = []
        t0 = time.perf_counter()
        bundle = meta_train(clf, images, config, workers=w, callback=lambda step, log, curve=curve: curve.append(log["zero"]))
        wall = time.perf_counter() - t0
        curves[w] = curve
        runs.append({"workers": w, "wall_seconds": wall, "train_seconds": bundle.training["seconds"],
                     "steps_per_s": args.steps / bundle.training["seconds"]})
    base = runs[0]["steps_per_s"]
    for r in runs:
        r["speedup"] = r["steps_per_s"] / base
        r["max_zero_loss_diff_vs_1"] = max(abs(a - b) for a, b in zip(curves[1], curves[r["workers"]], strict=True))
    report = {"steps": args.steps, "meta_batch": args.meta_batch, "inner_steps": args.inner_steps,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_1min": os.getloadavg()[0]}, "runs": runs}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"`meta_train(..., workers=N)`: {args.steps} outer steps, meta-batch {args.meta_batch}, K = "
             f"{args.inner_steps} (demo classifier, 64 px), one thread per process, on {os.cpu_count()} CPU cores "
             f"shared with other work (1-min load {report['machine']['load_average_1min']:.1f} at the end).", "",
             "| processes | steps/s | × 1 process | wall s (with start-up) | max Δ first-guess loss vs 1 |",
             "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['workers']} | {r['steps_per_s']:.2f} | {r['speedup']:.2f} | {r['wall_seconds']:.1f} | "
                     f"{r['max_zero_loss_diff_vs_1']:.1e} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
