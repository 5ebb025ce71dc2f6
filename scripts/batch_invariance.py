"""What bit-identical results at any batch size cost (``benchmarks/results/batch_invariance.*``).

float32 kernels round differently at different batch sizes, and refinement's first Adam steps turn that
rounding into flipped mask pixels, so an image's mask depended on the batch it came in. Candidates, on the
demo bundle (64 px lesions, decoder explainer, K = 10 logits steps, one torch thread):

* kernel probes: the classifier's ``layer4`` activations of 32 images computed at batch 32 against batch 1,
  by default, with oneDNN off (PyTorch's own convolutions: "deterministic kernels") and under
  ``torch.func.vmap`` over single images; a fixed batch of 8 with the images in other positions; 1 against
  2 threads;
* ``MedCAM(chunk=W)``: every call cut into chunks of exactly ``W`` images, the last padded (W = 1 is the
  per-image loop); "before" is the caller's batch as the kernel batch (the code before the chunks).

For each: exact or not (every array of :class:`~medcam_fast.explain.Explanation` of 12 images equal at caller
batches 1, 7 and 12), and images per second explaining 64 images (16 at caller batch 1) at caller batch 16
(the CLI's default), 1, 7 and 32: the median of 3 rounds, candidates interleaved, in CPU time
(``process_time``; the machine is shared, so wall time is reported too but is not what decides).

    python scripts/batch_invariance.py

Writes ``benchmarks/results/batch_invariance.json`` and ``.md``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcam_fast import MedCAM, make_lesions
from medcam_fast._assets import DEMO_DIR
from medcam_fast._io import atomic_write_bytes, atomic_write_json
from medcam_fast.evaluation.bench import machine_facts

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "batch_invariance"
STEPS = 10
FIELDS = ("soft", "binary", "logits", "kept", "predicted", "target", "p_original", "p_kept", "p_removed", "area",
          "loss")


class Before(MedCAM):
    """MedCAM as it was: the caller's batch is the kernel batch."""

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        self.chunk = len(images)
        return super().__call__(images, *args, **kwargs)


def _medcam(chunk: int | None) -> MedCAM:
    if chunk is None:
        return Before(DEMO_DIR / "classifier", DEMO_DIR / "explainer")
    return MedCAM(DEMO_DIR / "classifier", DEMO_DIR / "explainer", chunk=chunk)


def kernel_probes(x: torch.Tensor) -> dict[str, float]:
    """max |Δ| of the classifier's layer4 activations between ways of computing them."""
    clf = _medcam(8).classifier

    def acts(batch: int, xs: torch.Tensor = x) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([clf(xs[s : s + batch])[1]["layer4"] for s in range(0, len(xs), batch)])

    out = {"batch 1 vs 32": (acts(1) - acts(32)).abs().max().item()}
    shifted = torch.roll(acts(8, torch.roll(x, 3, 0)), -3, 0)
    out["batch 8 vs batch 8, other positions and neighbours"] = (acts(8) - shifted).abs().max().item()
    one = acts(8)
    torch.set_num_threads(2)
    try:
        out["batch 8: 1 vs 2 threads"] = (one - acts(8)).abs().max().item()
    finally:
        torch.set_num_threads(1)
    with torch.no_grad():
        vm = torch.func.vmap(lambda xi: clf(xi[None])[1]["layer4"][0])(x)
    out["vmap over single images vs batch 1"] = (vm - acts(1)).abs().max().item()
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        out["oneDNN off: batch 1 vs 32"] = (acts(1) - acts(32)).abs().max().item()
        out["oneDNN off: batch 1 vs 8"] = (acts(1) - acts(8)).abs().max().item()
    finally:
        torch.backends.mkldnn.enabled = mkldnn
    return out


def exact(chunk: int | None, images: np.ndarray) -> bool:
    """Every array equal at caller batches 1, 7 and len(images)."""
    m = _medcam(chunk)
    runs = {b: [m(images[s : s + b], refine_steps=STEPS) for s in range(0, len(images), b)]
            for b in (1, 7, len(images))}
    return all(np.array_equal(*(np.concatenate([getattr(r, f) for r in runs[k]]) for k in (1, b)))
               for b in (7, len(images)) for f in FIELDS)


def main() -> None:
    torch.set_num_threads(1)
    images = make_lesions(64, size=64, seed=4).images
    x = _medcam(8).prepare(images[:32])
    probes = kernel_probes(x)
    for k, v in probes.items():
        print(f"{k}: {v:.3g}", flush=True)
    candidates: list[int | None] = [None, 1, 2, 4, 8, 16]
    is_exact = {str(c): exact(c, images[:12]) for c in candidates}
    print(is_exact, flush=True)
    specs = [(c, 16) for c in candidates] + [(c, b) for b in (1, 7, 32) for c in (None, 1, 8, 16)]
    medcams = {c: _medcam(c) for c in candidates}
    cpu: dict[tuple[int | None, int], list[float]] = {s: [] for s in specs}
    wall: dict[tuple[int | None, int], list[float]] = {s: [] for s in specs}
    for c in candidates:
        medcams[c](images[:8], refine_steps=STEPS)  # warm-up
    for _ in range(3):
        for c, b in specs:
            m, n = medcams[c], 16 if b == 1 else 64
            t, p = time.perf_counter(), time.process_time()
            for s in range(0, n, b):
                m(images[s : min(s + b, n)], refine_steps=STEPS)
            wall[(c, b)].append(n / (time.perf_counter() - t))
            cpu[(c, b)].append(n / (time.process_time() - p))
    rows = [{"chunk": "before" if c is None else c, "caller_batch": b, "exact": is_exact[str(c)],
             "images_per_s_cpu": statistics.median(cpu[(c, b)]), "images_per_s_wall": statistics.median(wall[(c, b)]),
             "samples_cpu": cpu[(c, b)], "samples_wall": wall[(c, b)]} for c, b in specs]
    for r in rows:
        print(r, flush=True)
    results = {"machine": machine_facts(), "steps": STEPS, "threads": 1, "kernel_probes": probes, "rows": rows}
    atomic_write_json(OUT.with_suffix(".json"), results)
    atomic_write_bytes(OUT.with_suffix(".md"), markdown(results).encode())


def markdown(results: dict[str, Any]) -> str:
    lines = ["Kernel probes (classifier layer4 activations, 32 demo images, max |Δ|):", "",
             "| comparison | max abs difference |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in results["kernel_probes"].items()]
    lines += ["", f"MedCAM on the demo bundle, K = {results['steps']}, one thread: images per second, median of 3 "
              "(CPU time; wall time in brackets, the machine was shared). Exact: every array equal at caller batches "
              "1, 7 and 12.", "", "| chunk | exact | caller batch | images/s (CPU) | (wall) |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['chunk']} | {'yes' if r['exact'] else 'no'} | {r['caller_batch']} | "
                     f"{r['images_per_s_cpu']:.1f} | ({r['images_per_s_wall']:.1f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
