"""``medcam-fast explain --engine ray``: the same run as the local engine, its images explained by a pool of
Ray actors.

What stays with the driver (this process) is exactly the local engine's: the input listing and its checks
(:func:`~medcam_fast.cli.jobs.explain_inputs`), the output folder's lock, names and manifest
(:class:`~medcam_fast.cli.runfolder.RunFolder`), ``--resume``/``--overwrite`` planning, the summary and the exit
code. What moves to the actors is the per-image work: decoding, preprocessing, :class:`~medcam_fast.explain.MedCAM`
(one per actor, built with the driver's arguments, so one onnxruntime session per actor when the explainer
is an ``.onnx`` file) and the atomic writes of each image's files (the local engine's own writer,
``jobs._write_images``, handed over in the :class:`WorkerSpec`).

The pending images are a Ray Dataset (one row per image: the listing's own item — path, frame, window, or an
``.npz`` member's pixels); ``map_batches`` hands ``--batch-size`` rows at a time to an actor pool of ``--workers`` actors.
Results stream back to the driver, which lists them in the manifest at most a second after they arrive
(:class:`_Ledger`).

Crash safety: every output file is listed in the manifest (without a hash) *before* any actor starts, so a
file of this run is always known as this tool's; files are written atomically (a temporary file, then
``os.replace``). Ray restarts a killed actor and retries its batch (``max_restarts=-1``,
``max_task_retries=-1``, Ray Data's defaults for actor pools), so the batch is written again, whole; the
driver records each image once, when its batch's result arrives; temporary files of a killed write are swept
at the end. A driver killed mid-run leaves a manifest that ``--resume`` continues from, as the local engine's. Identical results: MedCAM computes every image in fixed chunks (:data:`medcam_fast.explain.CHUNK`),
so an image's mask and numbers do not depend on which images share its batch, and the actors use the driver's
thread count.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UsageError
from .runfolder import RunFolder

__all__ = ["WorkerSpec", "explain_on_ray"]


@dataclass(frozen=True)
class WorkerSpec:
    """What every actor needs to explain and write as the driver would.

    Args:
        classifier: classifier bundle folder (as given to the driver; the actor works in the driver's folder).
        explainer: explainer bundle folder or ``.onnx`` file, or None (per-image fit).
        mode, steps, target, allow_mismatch, allow_import, allow_unsealed, device: as ``explain_inputs``.
        threads: torch / onnxruntime threads per actor (the driver's resolved count: same arithmetic).
        formats: output kinds.
        grid: ``--mask-grid``: masks on the input's grid or the model's.
        max_pixels: the decoder's pixel limit.
        out: the output folder.
        cwd: the driver's working folder (relative paths in the listing are relative to it).
        write: the local engine's writer of a batch (``jobs._write_images``): its files, atomically, and records.
        warnings: the local engine's warning for an image's pixels (``jobs._bit_depth_warning``), or None.
        smooth: as ``explain_inputs``.
        learned_steps: as ``explain_inputs``.
    """

    classifier: str
    explainer: str | None
    mode: str | None
    steps: int | None
    target: int | None
    allow_mismatch: bool
    allow_import: bool
    allow_unsealed: bool
    device: str
    threads: int
    formats: tuple[str, ...]
    grid: str
    max_pixels: int
    out: str
    cwd: str
    write: Callable[..., tuple[dict[str, dict[str, Path]], dict[str, dict[str, Any]]]]
    warnings: Callable[[str, np.ndarray], str | None]
    smooth: float | None = None
    learned_steps: bool | None = None


class _ExplainActor:
    """One actor of the pool: a MedCAM, and the local engine's loading and writing. The pool runs a subclass
    that carries the run's :class:`WorkerSpec` as a class attribute (:func:`_actor_class`): the spec travels with
    the class, not as constructor arguments."""

    SPEC: WorkerSpec

    def __init__(self) -> None:
        import torch

        from ..classifiers.bundle import load_classifier
        from ..explain import MedCAM

        spec = self.SPEC
        if Path(spec.cwd).is_dir():
            os.chdir(spec.cwd)
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.bundle = load_classifier(spec.classifier, allow_import=spec.allow_import,
                                      allow_unsealed=spec.allow_unsealed)
        self.medcam = MedCAM(self.bundle, spec.explainer, mode=spec.mode, refine_steps=spec.steps, smooth=spec.smooth,
                             learned_steps=spec.learned_steps,
                             allow_mismatch=spec.allow_mismatch, allow_unsealed=spec.allow_unsealed,
                             device=spec.device, threads=spec.threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Explain and write one batch of rows (``jobs._Item`` objects); per row: its record (JSON) or its error."""
        import json

        import torch

        from ..data.geometry import OutputGrid

        spec = self.spec
        n = len(batch["item"])
        result: dict[str, list[str]] = {k: [""] * n for k in ("stem", "record", "error", "warning", "write_error")}
        items, xs, where = [], [], []
        for i, it in enumerate(batch["item"]):
            result["stem"][i] = it.stem
            try:
                pixels = it.load(spec.max_pixels)
                warnings = [spec.warnings(it.source, pixels)]
                warnings += [f"{it.source}: {w}" for w in (it.decoded.warnings if it.decoded is not None else ())]
                result["warning"][i] = "\n".join(w for w in warnings if w)
                xs.append(self.bundle.preprocess(pixels))
                items.append(it)
                where.append(i)
            except DataError as e:
                result["error"][i] = _encode_error(e)
        if items:
            ex = self.medcam(torch.from_numpy(np.concatenate(xs)), targets=spec.target)
            try:
                _, rows = spec.write(Path(spec.out), items, ex, spec.formats, self.bundle.preprocess,
                                     OutputGrid(spec.grid))
            except OSError as e:
                for i in where:
                    result["write_error"][i] = f"cannot write the outputs of {items[0].stem}: {e.strerror or e}"
            else:
                for i, it in zip(where, items, strict=True):
                    result["record"][i] = json.dumps(rows[it.stem], allow_nan=True)
        return {k: np.asarray(v, dtype=object) for k, v in result.items()}


def _actor_class(spec: WorkerSpec) -> type[_ExplainActor]:
    """The actor class of one run: :class:`_ExplainActor` with ``spec`` as a class attribute (shipped with the
    class itself)."""
    return type("ExplainActor", (_ExplainActor,), {"SPEC": spec, "__module__": __name__})


def _encode_error(e: DataError) -> str:
    import json

    return json.dumps({"cause": e.cause, "path": e.path})


def _decode_error(text: str) -> DataError:
    import json

    d = json.loads(text)
    return DataError(d["cause"], d["path"])


def explain_on_ray(
    run: RunFolder,
    pending: Sequence[Any],
    failures: list[Any],
    spec: WorkerSpec,
    *,
    batch_size: int,
    workers: int | None,
    address: str | None,
    fail_fast: bool,
    warn: Callable[[str], None],
    advance: Callable[[int], None],
    finish: Callable[[], None],
) -> None:
    """Explain and write ``pending`` (``jobs._Item``) with a pool of Ray actors; record each batch in ``run``'s
    manifest as it comes back. An image that cannot be read gets its ``error`` set and joins ``failures``
    (raised at once with ``fail_fast``).

    Args:
        run: the open run folder (its lock held by this process).
        spec: how each actor explains and writes.
        batch_size: images per actor call.
        workers: actors in the pool (default: the cluster's CPUs, at most one per batch).
        address: the Ray cluster to join; None starts a local instance with ``workers`` CPUs.
        warn: prints a warning line; advance: moves the progress bar; finish: writes the summary of what
            is done (before a write error is raised).

    Raises:
        DataError: an unreadable image with ``fail_fast``, or outputs that cannot be written (the images
            recorded before it are complete: ``--resume`` goes on).
        UsageError: Ray cannot be reached, or ``workers < 1``.
    """
    if not pending:
        return
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    from .ray_cluster import init_ray

    started = init_ray(address, num_cpus=workers)
    import ray

    try:
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # no "progress bars disabled", no plan logs
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        size = min(workers or max(1, int(cpus)), -(-len(pending) // batch_size))
        by_stem = {it.stem: it for it in pending}
        run.intend(p for it in pending for p in it.outputs(run.out, spec.formats).values())
        # one row per image: the listing's own item (path, frame, window … or an .npz member's pixels)
        ds = ray.data.from_items([{"item": it} for it in pending], override_num_blocks=-(-len(pending) // batch_size))
        results = ds.map_batches(_actor_class(spec), batch_size=batch_size, batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=size), num_cpus=min(1.0, cpus / size))
        ledger = _Ledger(run)
        try:
            for out in results.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                _record(ledger, out, by_stem, failures, spec, fail_fast, warn, advance, finish)
        finally:
            ledger.flush()  # what came back is listed, whatever stops the loop
    finally:
        run.sweep()  # temporary files of writes an actor was killed in
        if started:
            ray.shutdown()


class _Ledger:
    """The results not yet listed in the manifest, listed at most every :data:`FLUSH_S` seconds: the manifest
    is one JSON file rewritten whole, so listing each batch as it comes costs the driver time that grows with
    the run (measured: 10 % of the run's wall time on 800 images). Unlisted results are safe: their files were
    listed before the actors started, so ``--resume`` writes them again."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.written: dict[str, dict[str, Path]] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.last = time.monotonic()

    def add(self, written: dict[str, dict[str, Path]], rows: dict[str, dict[str, Any]]) -> None:
        self.written.update(written)
        self.rows.update(rows)
        if time.monotonic() - self.last >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.written:
            self.run.record(self.written, self.rows)
            self.written, self.rows = {}, {}
        self.last = time.monotonic()


#: Longest time a returned result waits to be listed in the manifest.
FLUSH_S = 1.0


def _record(ledger: _Ledger, out: dict[str, np.ndarray], by_stem: dict[str, Any], failures: list[Any],
            spec: WorkerSpec, fail_fast: bool, warn: Callable[[str], None], advance: Callable[[int], None],
            finish: Callable[[], None]) -> None:
    """Hand one returned batch to the ledger; note its failures; raise what the local engine raises (after
    listing what came back: the summary a write error leaves covers it)."""
    import json

    written, rows = {}, {}
    for i, stem in enumerate(out["stem"]):
        it = by_stem[str(stem)]
        for line in str(out["warning"][i]).splitlines():
            warn(line)
        if out["error"][i]:
            it.error = _decode_error(str(out["error"][i]))
            if fail_fast:
                raise it.error
            failures.append(it)
        elif out["write_error"][i]:
            ledger.add(written, rows)
            ledger.flush()
            finish()
            raise DataError(f"{out['write_error'][i]}; the images before it are complete (--resume goes on)",
                            ledger.run.out)
        else:
            written[it.stem] = it.outputs(ledger.run.out, spec.formats)
            rows[it.stem] = json.loads(str(out["record"][i]))
    ledger.add(written, rows)
    advance(len(out["stem"]))
