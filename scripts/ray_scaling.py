"""``explain --engine ray`` against the local engine: images per second with 1 and 2 actors, outputs compared.

    python scripts/ray_scaling.py [--n 2000] [--workers 1,2] [--steps 0] [--batch-size 16]

Generates ``n`` lesion PNGs (64 px, the demo bundle's), explains them once with the local engine and once per
worker count with ``--engine ray`` (one local Ray instance with as many logical CPUs as the most workers,
started before the clock), first guess only by default, one thread per process. Reported per run: wall
seconds (the whole ``explain_inputs`` call: listing, actor start-up, explaining, writing, summary) and the
steady rate (images per second between the first and the last image's JSON being written: the start-up left
out), and whether every output file equals the local engine's (JSON records without their timing).
Writes ``benchmarks/results/ray_explain.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ray_explain"


def _outputs(folder: Path) -> dict[str, object]:
    files: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.name in ("manifest.json", "summary.csv", "summary.json", ".medcam-fast.lock"):
            continue
        if p.suffix == ".json":
            record = json.loads(p.read_text(encoding="utf-8"))
            record.pop("seconds", None)
            files[p.name] = record
        else:
            files[p.name] = p.read_bytes()
    return files


def _steady_rate(folder: Path) -> float:
    stamps = sorted(p.stat().st_mtime for p in folder.glob("*.json")
                    if p.name not in ("manifest.json", "summary.json"))
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import ray
    from rich.console import Console

    from medcam_fast import make_lesions
    from medcam_fast.cli.jobs import explain_inputs
    from medcam_fast.cli.ray_cluster import init_ray
    from medcam_fast.cli.writers import png_bytes

    workers = [int(w) for w in args.workers.split(",")]
    quiet = Console(file=io.StringIO())
    runs = []
    with tempfile.TemporaryDirectory(prefix="medcam-ray-scaling-") as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for i, img in enumerate(make_lesions(args.n, size=64, seed=20261129).images):
            (inputs / f"lesion_{i:05d}.png").write_bytes(png_bytes(img))
        common = {"classifier": None, "steps": args.steps, "threads": 1, "batch_size": args.batch_size,
                  "console": quiet, "err_console": quiet}
        t0 = time.perf_counter()
        assert explain_inputs([str(inputs)], out=Path(tmp) / "local", **common) == 0
        local = {"engine": "local", "workers": 1, "seconds": time.perf_counter() - t0,
                 "steady_images_per_s": _steady_rate(Path(tmp) / "local")}
        runs.append(local)
        reference = _outputs(Path(tmp) / "local")
        init_ray(None, num_cpus=max(workers))
        for w in workers:
            out = Path(tmp) / f"ray-{w}"
            t0 = time.perf_counter()
            assert explain_inputs([str(inputs)], out=out, engine="ray", workers=w, **common) == 0
            seconds = time.perf_counter() - t0
            same = _outputs(out) == reference
            runs.append({"engine": "ray", "workers": w, "seconds": seconds,
                         "steady_images_per_s": _steady_rate(out), "outputs_equal_local": same})
        ray.shutdown()
    for r in runs:
        r["images_per_s"] = args.n / r["seconds"]
    one = next(r for r in runs if r["engine"] == "ray" and r["workers"] == 1)
    for r in runs:
        r["speedup_vs_one_worker"] = r["images_per_s"] / one["images_per_s"]
        r["steady_speedup_vs_one_worker"] = r["steady_images_per_s"] / one["steady_images_per_s"]
    report = {"n": args.n, "steps": args.steps, "batch_size": args.batch_size, "size": 64,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_1min": os.getloadavg()[0]}, "runs": runs}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"`explain` of {args.n} generated 64-px lesion PNGs (demo bundle, {'first guess only' if not args.steps else f'K = {args.steps}'}, "
             f"batch {args.batch_size}, 1 thread per process) on {os.cpu_count()} CPU cores shared with other work "
             f"(1-min load {report['machine']['load_average_1min']:.1f} at the end).", "",
             "| engine | workers | wall s | images/s | steady images/s | × 1 worker (wall) | × 1 worker (steady) | "
             "outputs = local |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['steady_images_per_s']:.1f} | {r['speedup_vs_one_worker']:.2f} | "
                     f"{r['steady_speedup_vs_one_worker']:.2f} | {r.get('outputs_equal_local', '—')} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
