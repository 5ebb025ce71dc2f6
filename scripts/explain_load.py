"""explain's speed on an idle machine and beside competing CPU-bound processes (``benchmarks/results/explain_load.*``).

A hospital server is never idle. This runs ``medcam-fast explain`` (the embedded demo bundle, 64 px lesion
images, default refinement) idle and beside one and two busy-looping processes, with the default thread
choice (:func:`medcam_fast._cpu.default_threads`) and with ``--threads N`` for N = the machine's cores (the
old default). Time is the explain time the per-image records report (start-up excluded); medians of
``--repeats`` runs; ratios to idle in the same run:

    python scripts/explain_load.py [--n 32] [--repeats 2]

Writes ``benchmarks/results/explain_load.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from medcam_fast import make_lesions
from medcam_fast._cpu import usable_cores
from medcam_fast._io import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "explain_load"
BUSY = "while True: pass"


def _explain_seconds(folder: Path, out: Path, threads: list[str]) -> float:
    r = subprocess.run([sys.executable, "-m", "medcam_fast.cli.main", "explain", str(folder), "--out", str(out),
                        "--format", "json", *threads], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    records = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name not in ("summary.json",
                                                                                           "manifest.json")]
    return sum(rec["seconds"] for rec in records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = usable_cores()
    settings = {"default": [], f"--threads {cores}": ["--threads", str(cores)]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i, img in enumerate(make_lesions(args.n, size=64, seed=7).images):
            Image.fromarray(img).save(folder / f"l{i:03d}.png")
        for busy in (0, 1, 2):
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
            try:
                for name, flags in settings.items():
                    runs = [_explain_seconds(folder, Path(tmp) / f"o-{busy}-{name}-{k}".replace(" ", ""), flags)
                            for k in range(args.repeats)]
                    rows.append({"competing": busy, "threads": name, "seconds": statistics.median(runs),
                                 "runs": runs, "images_per_second": args.n / statistics.median(runs)})
                    print(rows[-1], flush=True)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    idle = {r["threads"]: r["seconds"] for r in rows if r["competing"] == 0}
    for r in rows:
        r["slowdown_vs_idle"] = r["seconds"] / idle[r["threads"]]
    lines = [f"{args.n} 64 px images, {cores} usable cores; median of {args.repeats} runs.", "",
             "| competing processes | threads | images/s | slowdown vs idle |", "|---|---|---|---|"]
    lines += [f"| {r['competing']} | {r['threads']} | {r['images_per_second']:.1f} | {r['slowdown_vs_idle']:.2f}× |"
              for r in rows]
    atomic_write_json(OUT.with_suffix(".json"), {"n": args.n, "cores": cores, "rows": rows})
    atomic_write_bytes(OUT.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
