"""Peak memory of ``medcam-fast explain`` over many small and a few huge images (``benchmarks/results/explain_memory.*``).

Inputs are decoded batch by batch (only headers are read up front), so the peak should not grow with the
number of images, and a huge image is reduced to the classifier's input size as soon as it is decoded.
Measured in a child process as its ``VmHWM`` (``ru_maxrss`` can report the parent's peak after a fork),
with the embedded demo bundle and ``--steps 0`` (refinement does not change what is held):

    python scripts/explain_memory.py [--small 2000] [--huge 10]

Writes ``benchmarks/results/explain_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medcam_fast._io import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "explain_memory"


def _peak_mib(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS MiB of the child, seconds, exit code) of one explain run in a fresh process."""
    code = ("import sys\nfrom pathlib import Path\nfrom medcam_fast.cli.main import main\n"
            "sys.argv = ['medcam-fast', *sys.argv[1:]]\ntry:\n    main()\nfinally:\n"
            "    hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
            "    print('PEAK', hwm[0].split()[1], file=sys.stderr)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = [line for line in r.stderr.splitlines() if line.startswith("PEAK")]
    if not peak:
        raise SystemExit(f"explain failed: {r.stderr[-2000:]}")
    return int(peak[-1].split()[1]) / 1024, seconds, r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--huge", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small, huge = Path(tmp) / "small", Path(tmp) / "huge"
        small.mkdir()
        huge.mkdir()
        for i in range(args.small):
            Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(small / f"s{i:05d}.png")
        for i in range(args.huge):  # compressible (a gradient), so a 7000 x 7000 file is small on disk
            ramp = np.add.outer(np.arange(7000) // 28, np.arange(7000) // 28 + i).astype(np.uint8)
            Image.fromarray(ramp).save(huge / f"h{i:02d}.png")
        baseline = _peak_mib(["explain", str(small / "s00000.png"), "--steps", "0", "--out", f"{tmp}/o0"])
        for name, folder, n, limit in (("64 px PNGs", small, args.small, 1024), ("7000x7000 PNGs", huge, args.huge,
                                                                                 1536)):
            peak, seconds, code = _peak_mib(["explain", str(folder), "--steps", "0", "--out", f"{tmp}/o-{n}"])
            rows.append({"inputs": f"{n} {name}", "peak_mib": round(peak, 1), "one_image_peak_mib": round(baseline[0], 1),
                         "limit_mib": limit, "seconds": round(seconds, 1), "exit_code": code,
                         "disk_mib": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1)})
            print(rows[-1], flush=True)
    lines = ["| inputs | on disk (MiB) | peak RSS (MiB) | one image's run (MiB) | limit (MiB) | seconds | exit |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['inputs']} | {r['disk_mib']} | {r['peak_mib']} | {r['one_image_peak_mib']} | {r['limit_mib']} | "
              f"{r['seconds']} | {r['exit_code']} |" for r in rows]
    atomic_write_json(OUT.with_suffix(".json"), {"rows": rows, "measure": "VmHWM of the explain process"})
    atomic_write_bytes(OUT.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
