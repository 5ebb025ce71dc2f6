"""The one prepared GPU check of issue 12: which onnxruntime provider the ONNX graph actually runs on, CUDA
against CPU parity, and GPU timings of the first guess and of 3 and 10 refinement steps at 224 px.

On a lent GPU machine (the ``device`` tool; its image has torch with CUDA and plain onnxruntime), from the
repository root, in one call:

    pip install --no-deps -e . >/dev/null && PYTHONUNBUFFERED=1 python scripts/device_check.py --out "$OUT"

Every import it needs beyond torch, numpy and onnxruntime (safetensors, onnx, onnxscript for the export) is
checked first and named in one line if missing. Without CUDA it still runs (``--device cpu``: the parity rows
compare CPU with itself and must be 0), which is how CI-less machines and the test check the script itself.

For each classifier (the built-in ResNet-18 and ViT at 224 px, as ``bench speed`` builds them: random weights,
timing does not depend on them) it builds a decoder explainer as meta-training does (one step) and its ONNX
graph, then records:

* ``providers``: what onnxruntime offers and what the session uses (the plain ``onnxruntime`` wheel offers no
  CUDA: then the ONNX rows are CPU rows, and the record says so);
* ``parity``: max |Δ| of the first guess's mask logits and of the 3-step refined mask logits between the CPU
  and the device, the share of binary-mask pixels that agree, the max |Δ| of p_kept; ONNX on its provider
  against torch on the CPU;
* ``timings``: median seconds per image (after a warm-up; ``torch.cuda.synchronize`` around each call) at
  batch 1 and 32 of the torch first guess, the ONNX graph, first guess + 3 and + 10 steps (``MedCAM``).

Writes ``device_check.json`` and ``device_check.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

NEEDED = ("torch", "numpy", "onnxruntime", "onnx", "onnxscript", "safetensors", "PIL")


def _missing() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def check(device: str, models: list[str], size: int, batches: list[int], steps: list[int], repeats: int) -> dict:
    """The record described in the module docstring."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from medcam_fast.evaluation.bench import _speed_classifier, _times
    from medcam_fast.explain import MedCAM
    from medcam_fast.explainer.meta import MetaConfig, meta_train
    from medcam_fast.export.onnx_export import export_combined
    from medcam_fast.export.runtime import OnnxExplainer

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    record: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "size": size,
        "providers": {"available": ort.get_available_providers()}, "models": [],
    }
    for spec in models:
        bundle, label = _speed_classifier(spec, size)
        pre = bundle.preprocess
        images = np.random.default_rng(0).integers(0, 256, (2, size, size, pre.channels), dtype=np.uint8)
        if pre.channels == 1:
            images = images[..., 0]
        explainer = meta_train(bundle, images, MetaConfig(inner_steps=0, outer_steps=1, meta_batch=1))
        x = torch.randn(2, pre.channels, size, size, generator=torch.Generator().manual_seed(1))
        row: dict[str, Any] = {"classifier": label, "parity": {}, "timings": []}
        with tempfile.TemporaryDirectory() as tmp:
            path = export_combined(explainer, bundle.model, Path(tmp) / "graph.onnx")
            graph = OnnxExplainer(path)  # default providers: CUDA first when this onnxruntime offers it
            record["providers"]["used"] = graph.provider
            cpu = MedCAM(bundle, explainer, device="cpu")
            dev = MedCAM(bundle, explainer, device=device)
            on_cpu = {k: cpu(x, refine_steps=k) for k in (0, 3)}
            for k, a in on_cpu.items():
                b = dev(x, refine_steps=k)
                row["parity"][f"K={k}"] = {
                    "max_abs_logits": float(np.abs(a.logits - b.logits).max()),
                    "binary_agreement": float((a.binary == b.binary).mean()),
                    "max_abs_p_kept": float(np.abs(a.p_kept - b.p_kept).max())}
            onnx = graph(x.numpy(), preprocessed=True)
            ref = on_cpu[0]
            row["parity"][f"onnx ({graph.provider}) vs torch cpu"] = {
                "max_abs_p_kept": float(np.abs(np.asarray(onnx.p_kept) - ref.p_kept).max())}
            for batch in batches:
                xb = torch.randn(batch, pre.channels, size, size).to(device)
                xn = xb.cpu().numpy()
                rows = {"first guess (torch)": lambda dev=dev, xb=xb: dev(xb, refine_steps=0),
                        f"graph, all classes + verdict (onnx, {graph.provider})":
                            lambda graph=graph, xn=xn: graph(xn, preprocessed=True)}
                rows.update({f"first guess + {k} steps": (lambda k=k, dev=dev, xb=xb: dev(xb, refine_steps=k))
                             for k in steps})
                for method, fn in rows.items():
                    sec = statistics.median(_times(lambda fn=fn: (fn(), sync()), repeats))  # warm-up, then timed
                    row["timings"].append({"batch": batch, "method": method, "seconds_per_image": sec / batch})
                    print(f"{label} batch {batch}: {method}: {1000 * sec / batch:.2f} ms/image", flush=True)
        record["models"].append(row)
    return record


def markdown(r: dict) -> str:
    lines = [f"# Device check — {r['gpu'] or r['device']}", "",
             f"torch {r['torch']}, onnxruntime {r['onnxruntime']}; providers offered "
             f"{', '.join(r['providers']['available'])}; used by the ONNX graph: **{r['providers'].get('used')}**; "
             f"{r['size']} px; medians after a warm-up.", ""]
    for m in r["models"]:
        lines += [f"## {m['classifier']}", "", "| parity | max abs Δ logits | binary agreement | max abs Δ p_kept |",
                  "|---|---|---|---|"]
        for k, p in m["parity"].items():
            lines.append(f"| {k} | {p.get('max_abs_logits', '–')} | {p.get('binary_agreement', '–')} | "
                         f"{p['max_abs_p_kept']:.2e} |")
        lines += ["", "| batch | method | ms / image |", "|---|---|---|"]
        lines += [f"| {t['batch']} | {t['method']} | {1000 * t['seconds_per_image']:.3f} |" for t in m["timings"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default=None, help="default: cuda when torch sees one, else cpu")
    ap.add_argument("--models", default="resnet18,vit")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", default="3,10")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    missing = _missing()
    if missing:
        print(f"device_check: missing packages: {', '.join(missing)} (pip install them, or carry a wheelhouse)",
              file=sys.stderr)
        return 3
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = check(device, a.models.split(","), a.size, [int(b) for b in a.batches.split(",")],
                   [int(k) for k in a.steps.split(",")], a.repeats)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "device_check.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    (a.out / "device_check.md").write_text(markdown(record), encoding="utf-8")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
