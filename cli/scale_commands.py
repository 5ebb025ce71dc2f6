"""The Typer commands of the ``[scale]`` extra: ``serve`` and ``bench serve`` (registered by :mod:`.main`).

Nothing here imports Ray at module level: ``medcam-fast --help`` stays fast, and without the extra these
commands stop with one line (exit 2) naming it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from .console import console, escape

__all__ = ["serve_cmd", "bench_serve_cmd"]


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def serve_cmd(
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder (default: the embedded demo)."),
    explainer: Path | None = typer.Option(None, help="Explainer bundle folder holding explainer.onnx, the combined "
                                          "graph (default: the demo's)."),
    address: str | None = typer.Option(None, help="Ray cluster to join, e.g. ray://head:10001 (default: start a "
                                       "local Ray instance on this machine)."),
    host: str = typer.Option("127.0.0.1", help="Address the HTTP proxy listens on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="HTTP port."),
    replicas: int | None = typer.Option(None, min=1, help="First-guess (ONNX) replicas (default: 1)."),
    refine_replicas: int | None = typer.Option(None, min=0, help="Torch refinement replicas; 0 refuses "
                                               "refine=true (default: 1)."),
    refine_steps: int | None = typer.Option(None, min=0, help="K for refine=true requests that give no steps "
                                            "(default: 10, as explain)."),
    max_steps: int | None = typer.Option(None, min=0, help="Most steps a request may ask for (default: 50)."),
    max_batch_size: int | None = typer.Option(None, min=1, help="Most images in one first-guess batch (default: 32)."),
    max_body_mb: float | None = typer.Option(None, min=0.001, help="Largest request body in MiB (default: 20)."),
    max_pixels: int | None = typer.Option(None, min=1, help="Largest image, width x height, checked before decoding "
                                          "(default: 50,000,000)."),
    timeout: float | None = typer.Option(None, min=0.1, help="Seconds before a request is answered 504 "
                                         "(default: 60)."),
    threads: int | None = typer.Option(None, min=1, help="Threads per replica (default: 1)."),
    replica_cpus: float | None = typer.Option(None, min=0.01, help="Ray CPUs each replica reserves (default: 1)."),
    allow_unsealed: bool = typer.Option(False, help="Accept bundles without a content hash (made by 0.1.0)."),
) -> None:
    """Serve explanations over HTTP (Ray Serve): POST /explain, GET /healthz, /metadata, /docs."""
    from .._assets import DEMO_DIR
    from .ray_cluster import require_ray

    require_ray()
    from .serve import ServeConfig, start_service, stop_service

    config = ServeConfig(
        str(classifier or DEMO_DIR / "classifier"), str(explainer or DEMO_DIR / "explainer"),
        **_given(refine_steps=refine_steps, max_steps=max_steps, replicas=replicas, refine_replicas=refine_replicas,
                 replica_cpus=replica_cpus, threads=threads, max_batch_size=max_batch_size,
                 max_body_bytes=None if max_body_mb is None else int(max_body_mb * 2**20), max_pixels=max_pixels,
                 timeout_s=timeout, allow_unsealed=allow_unsealed or None),
    )
    url = start_service(config, host=host, port=port, address=address)
    console.print(f"serving on {escape(url)} (docs: {escape(url)}/docs); try:\n"
                  f"  curl -s --data-binary @image.png '{escape(url)}/explain?format=png' -o mask.png\n"
                  "Ctrl-C stops the service.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop_service()
        console.print("stopped")


def bench_serve_cmd(
    requests: int | None = typer.Option(None, min=1, help="Requests per scenario (default: 2000)."),
    concurrency: int | None = typer.Option(None, min=1, help="Requests in flight at once (default: 32)."),
    images: int | None = typer.Option(None, min=1, help="Distinct generated images (default: 64)."),
    refine_steps: int | None = typer.Option(None, min=0, help="K of the refined scenario; 0 skips it (default: 3)."),
    replicas: int = typer.Option(1, min=1, help="First-guess replicas."),
    refine_replicas: int = typer.Option(1, min=1, help="Refinement replicas."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port of the service on 127.0.0.1."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of serve_load.json and serve_load.md."),
) -> None:
    """Load-test the HTTP service on 127.0.0.1 (first guess, and K refinement steps): throughput, p50/p95/p99,
    errors, and whether every answer equals the CLI's record of the same image."""
    from .loadtest import LoadSettings, load_table, load_test
    from .ray_cluster import require_ray

    require_ray()
    settings = LoadSettings(**_given(requests=requests, concurrency=concurrency, images=images,
                                     refine_steps=refine_steps))
    report = load_test(settings, replicas=replicas, refine_replicas=refine_replicas, port=port, out_dir=out,
                       progress=lambda line: console.print("  " + escape(line)))
    console.print(load_table(report))
