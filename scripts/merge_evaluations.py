"""Merge the ``results.json`` of several ``medcam-fast evaluate`` runs, one data set or more each, into one
results file and its ``report.md`` — how the committed report is assembled when the sets run in separate
processes (one per core) instead of one after the other.

    python scripts/merge_evaluations.py run-a/results.json run-b/results.json --out benchmarks/evaluate \
        --order lesions,breast,pneumonia,path,blood,brain

The runs must share their settings (the ``config`` block, checked) — the report states them once; a data
set found in several runs is taken from the last one given. Figures are per data set and written by each run
(``figures/{grid,metrics}_<set>.png``); copy them beside the merged report when the runs used other folders.
``report.md`` is rendered by :func:`medcam_fast.evaluation.report.report_markdown`, as ``evaluate`` renders it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def merge(paths: list[Path], order: list[str] | None = None) -> dict:
    """The merged results: the first run's ``config`` and ``env``, every run's data sets (in ``order`` when
    given, else as found). Raises ValueError when two runs' settings differ."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    config = runs[0]["config"]
    for p, r in zip(paths[1:], runs[1:], strict=True):
        if r["config"] != config:
            differ = sorted(k for k in set(config) | set(r["config"]) if config.get(k) != r["config"].get(k))
            raise ValueError(f"{p}: other settings than {paths[0]} ({', '.join(differ)})")
    datasets: dict = {}
    for r in runs:
        datasets.update(r["datasets"])
    if order:
        missing = [n for n in order if n not in datasets]
        if missing:
            raise ValueError(f"no run has the data set(s) {', '.join(missing)}")
        datasets = {n: datasets[n] for n in order} | {n: d for n, d in datasets.items() if n not in order}
    return {**runs[0], "datasets": datasets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--order", default=None, help="comma-separated data set names, the report's order")
    a = ap.parse_args(argv)
    from medcam_fast._io import atomic_write, atomic_write_json
    from medcam_fast.evaluation.report import report_markdown

    try:
        merged = merge(a.results, None if a.order is None else a.order.split(","))
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"merge_evaluations: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "results.json", merged)
    text = report_markdown(merged)
    atomic_write(a.out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"wrote {a.out / 'results.json'} and {a.out / 'report.md'} ({', '.join(merged['datasets'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
