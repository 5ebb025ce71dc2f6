"""``medcam-fast bench serve``: a bounded load test of the HTTP service, checked against the CLI.

It writes ``images`` generated lesion PNGs, explains them with ``medcam-fast explain``'s own code
(:func:`~medcam_fast.cli.jobs.explain_inputs`, once first guess only and once with K steps), starts the
service on 127.0.0.1 (or uses a running one), then sends ``requests`` requests per scenario at
``concurrency`` — request ``i`` carries image ``i mod images`` — and stops by itself. Per scenario it reports
throughput (answered requests per second of wall time), p50/p95/p99 latency, errors (any status but 200 or
a failed connection), and how the answers differ from the CLI's records of the same images
(:func:`~medcam_fast.cli.serve.compare_records`: every answer, not a sample).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._assets import DEMO_DIR
from .._io import atomic_write_bytes, atomic_write_json
from ..errors import UsageError
from .writers import png_bytes

__all__ = ["LoadSettings", "run_load", "load_test", "load_table"]


@dataclass(frozen=True)
class LoadSettings:
    """What the load test sends (the owner of its defaults).

    Args:
        requests: requests per scenario.
        concurrency: requests in flight at once.
        images: distinct generated images (request ``i`` sends image ``i mod images``).
        refine_steps: K of the refined scenario (0 skips it).
        seed: seed of the generated images.
        timeout_s: a request without an answer after this long counts as an error.
    """

    requests: int = 2000
    concurrency: int = 32
    images: int = 64
    refine_steps: int = 3
    seed: int = 20261129
    timeout_s: float = 120.0


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


async def _send_all(url: str, bodies: Sequence[bytes], n: int, concurrency: int, query: str,
                    timeout_s: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    first: dict[int, dict[str, Any]] = {}
    answers: list[tuple[int, dict[str, Any]]] = []
    counter = iter(range(n))
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            k = i % len(bodies)
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/explain{query}", data=bodies[k],
                                        headers={"Content-Type": "image/png"}) as r:
                    payload = await r.read()
                    status = str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status, payload = type(e).__name__, b""
            latencies.append(time.perf_counter() - t0)
            statuses[status] += 1
            if status == "200":
                record = json.loads(payload)
                answers.append((k, record))
                first.setdefault(k, record)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return {
        "requests": n, "concurrency": concurrency, "seconds": wall, "answered": ok,
        "errors": n - ok, "statuses": dict(statuses),
        "throughput_rps": ok / wall if wall > 0 else float("nan"),
        "latency_ms": {f"p{q}": 1000 * _percentile(latencies, q) for q in (50, 95, 99)},
        "_answers": answers,
    }


def run_load(url: str, bodies: Sequence[bytes], n: int, concurrency: int, query: str = "",
             timeout_s: float = 120.0) -> dict[str, Any]:
    """Send ``n`` ``POST /explain`` requests (bodies in turn) at ``concurrency``; throughput, latencies, errors.
    The answers are kept under ``_answers`` (image index, record) for :func:`load_test`'s comparison."""
    return asyncio.run(_send_all(url, bodies, n, concurrency, query, timeout_s))


def _cli_records(inputs: Path, out: Path, steps: int, classifier: Path, explainer: Path,
                 names: Sequence[str]) -> list[tuple[dict[str, Any], np.ndarray]]:
    """``medcam-fast explain`` on ``inputs`` (its own code, 1 thread): each image's JSON and binary mask."""
    from rich.console import Console

    from .jobs import explain_inputs

    quiet = Console(file=io.StringIO())
    code = explain_inputs([str(inputs)], classifier=classifier, explainer=explainer, out=out, steps=steps,
                          formats="png,json", threads=1, console=quiet, err_console=quiet)
    if code != 0:
        raise UsageError(f"the CLI reference run failed with exit code {code}", out)
    return [(json.loads((out / f"{s}.json").read_text(encoding="utf-8")),
             np.asarray(Image.open(out / f"{s}_mask.png")) > 0) for s in names]


def _compare(answers: Sequence[tuple[int, dict[str, Any]]],
             reference: Sequence[tuple[dict[str, Any], np.ndarray]]) -> dict[str, Any]:
    from .serve import compare_records

    worst, pixels, keys, compared = 0.0, 0, Counter[str](), 0
    for k, record in answers:
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(record["mask_png"])))) > 0
        diff = compare_records(record, reference[k][0], mask, reference[k][1])
        worst = max(worst, diff["max_abs_diff"])
        pixels = max(pixels, diff["mask_pixels_differ"]) if diff["mask_pixels_differ"] >= 0 else 10**9
        keys.update(diff["mismatched_keys"])
        compared += 1
    return {"compared": compared, "mismatched_keys": dict(keys), "max_abs_diff": worst,
            "max_mask_pixels_differ": pixels,
            "equal": compared > 0 and not keys and pixels == 0}


def load_test(
    settings: LoadSettings = LoadSettings(),
    *,
    url: str | None = None,
    replicas: int = 1,
    refine_replicas: int = 1,
    port: int = 8765,
    num_cpus: float | None = None,
    replica_cpus: float = 1.0,
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the load test (see the module docstring) and, with ``out_dir``, write ``serve_load.json`` and
    ``serve_load.md`` there. Starts the demo-bundle service on 127.0.0.1:``port`` and stops it afterwards
    unless ``url`` names a running one. Returns the results."""
    from .serve import ServeConfig, start_service, stop_service

    say = progress or (lambda line: None)
    if settings.requests < 1 or settings.concurrency < 1 or settings.images < 1:
        raise UsageError("requests, concurrency and images must be >= 1")
    classifier, explainer = DEMO_DIR / "classifier", DEMO_DIR / "explainer"
    from ..data.lesions import make_lesions

    images = make_lesions(settings.images, size=64, seed=settings.seed).images
    names = [f"lesion_{i:04d}" for i in range(len(images))]
    bodies = [png_bytes(img) for img in images]
    scenarios: list[tuple[str, str, int]] = [("first guess (onnx)", "", 0)]
    if settings.refine_steps > 0:
        scenarios.append((f"refined, K = {settings.refine_steps}",
                          f"?refine=true&steps={settings.refine_steps}", settings.refine_steps))
    with tempfile.TemporaryDirectory(prefix="medcam-load-") as tmp:
        inputs = Path(tmp) / "inputs"
        for name, body in zip(names, bodies, strict=True):
            atomic_write_bytes(inputs / f"{name}.png", body)
        references = {}
        for label, _, steps in scenarios:
            say(f"CLI reference: {label}")
            references[steps] = _cli_records(inputs, Path(tmp) / f"cli-{steps}", steps, classifier, explainer,
                                             names)
        started = url is None
        if url is None:
            say("starting the service")
            url = start_service(ServeConfig(str(classifier), str(explainer), replicas=replicas,
                                            refine_replicas=refine_replicas if settings.refine_steps else 0,
                                            replica_cpus=replica_cpus), port=port, num_cpus=num_cpus)
        try:
            results = []
            for label, query, steps in scenarios:
                say(f"{label}: {settings.requests} requests at concurrency {settings.concurrency}")
                run_load(url, bodies, min(settings.concurrency, 4), min(settings.concurrency, 4), query,
                         settings.timeout_s)  # warm-up: the replicas' first batches
                r = run_load(url, bodies, settings.requests, settings.concurrency, query, settings.timeout_s)
                r["vs_cli"] = _compare(r.pop("_answers"), references[steps])
                results.append({"scenario": label, "steps": steps, **r})
        finally:
            if started:
                stop_service()
    report = {
        "settings": asdict(settings), "replicas": replicas,
        "refine_replicas": refine_replicas if settings.refine_steps else 0,
        "replica_cpus": replica_cpus, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                  "load_average_1min": os.getloadavg()[0]},
        "bundle": "embedded demo (lesions, resnet18, 64 px)", "results": results,
    }
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "serve_load.json", report)
        atomic_write_bytes(out / "serve_load.md", load_table(report).encode("utf-8"))
    return report


def load_table(report: dict[str, Any]) -> str:
    """The load test's Markdown table."""
    s = report["settings"]
    lines = [
        f"Load test of `medcam-fast serve` (demo bundle, 64 px): {s['requests']} requests per scenario at "
        f"concurrency {s['concurrency']}, {s['images']} distinct images; {report['replicas']} first-guess "
        f"replica(s), {report['refine_replicas']} refinement replica(s), on {report['machine']['cpus']} CPU "
        f"cores shared with other work (1-min load {report['machine']['load_average_1min']:.1f}).",
        "",
        "| scenario | req/s | p50 ms | p95 ms | p99 ms | errors | answers = CLI | max abs diff | mask px differ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lat, cmp = r["latency_ms"], r["vs_cli"]
        lines.append(f"| {r['scenario']} | {r['throughput_rps']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
                     f"{lat['p99']:.0f} | {r['errors']} | {'yes' if cmp['equal'] else 'no'} ({cmp['compared']}) | "
                     f"{cmp['max_abs_diff']:.1e} | {cmp['max_mask_pixels_differ']} |")
    return "\n".join(lines) + "\n"
