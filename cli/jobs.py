"""End-to-end jobs behind the CLI: train a classifier bundle, explain files, run the demo.

They print with rich (a console is passed in) and return exit codes, so the Typer layer stays a thin parser.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .._assets import DEMO_DIR
from .._cpu import default_threads
from .._io import SEAL_KEY, atomic_write_json, seal, sha256_file
from ..classifiers.bundle import load_classifier, save_classifier
from ..classifiers.frozen import ClassifierBundle
from ..classifiers.training import TrainConfig, train_classifier
from ..data.geometry import DEFAULT_OUTPUT_GRID, OutputGrid, input_views
from ..data.images import ImageSet, decode, list_images, load_folder, probe_image
from ..data.labelled import LabelTable
from ..data.lesions import make_lesions
from ..data.medical import (
    DEFAULT_SLICE_AXIS,
    Decoded,
    SourceKind,
    Window,
    list_frames,
    medical_stem,
    parse_window,
    sniff_kind,
)
from ..data.medmnist import load_npz, resolve_data, stratified_split
from ..data.preprocess import Preprocess
from ..errors import DataError, MedCamError, ModelError, UsageError
from ..explain import Explanation, MedCAM
from ..explainer.bundle import ExplainerBundle, load_explainer
from ..explainer.meta import MetaConfig, meta_train
from ..method.fit import FitConfig
from ..method.refine import RefineConfig
from ..types import Architecture, Engine, RefineMode, choice
from .console import LogConsole, escape, print_error
from .progress import StepProgress
from .runfolder import RunFolder, output_stems
from .writers import FORMATS, output_paths, write_explanation, write_summary

__all__ = [
    "train_classifier_bundle", "import_classifier_bundle", "meta_train_bundle", "export_bundle", "explain_inputs", "run_demo",
    "load_splits", "classifier_splits", "evaluate_job", "dataset_name",
]



#: Seed of the lesion images ``medcam-fast demo`` generates: one no split of ``load_splits`` uses (0, 1, 2).
DEMO_SEED = 20261126


def load_splits(data: str | Path, data_dir: str | Path | None = None, seed: int = 0,
                labels: LabelTable | None = None, image_size: int | None = None) -> dict[str, ImageSet]:
    """Train/val/test sets of a data set: a short name (breast, …), an ``.npz`` file, a class-per-folder tree, a
    flat folder of files (one ``unlabelled`` class: images for meta-training; train-classifier refuses it), or,
    with ``labels``, the folder of a label table's files, split by group (``seed``; resized to ``image_size``)."""
    if labels is not None:
        return _labelled_splits(data, labels, image_size, seed)[0]
    if str(data) == "lesions":
        return {
            "train": make_lesions(2000, size=64, seed=seed),
            "val": make_lesions(300, size=64, seed=seed + 1),
            "test": make_lesions(500, size=64, seed=seed + 2),
        }
    path = Path(data) if Path(data).exists() else resolve_data(str(data), None if data_dir is None else str(data_dir))
    if path.is_dir() and not any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir()):
        from ..data.labelled import load_unlabelled  # a flat folder (of DICOM files, say): images, no labels

        full = load_unlabelled(path)
        parts = stratified_split(full.labels, seed)
        return {k: full.subset(v) for k, v in parts.items()}
    if path.is_dir():
        full = load_folder(path)
        parts = stratified_split(full.labels, seed)
        return {k: full.subset(v) for k, v in parts.items()}
    return {s: load_npz(path, s, seed) for s in ("train", "val", "test")}


def _training_images(sets: dict[str, ImageSet], data: str | Path, splits: Sequence[str],
                     classes: bool = False) -> None:
    """Refuse, as a data error naming the data set, empty splits (and with ``classes`` a training split of
    one class: a classifier would have nothing to tell apart)."""
    total = sum(len(v) for v in sets.values())
    for split in splits:
        if len(sets[split]) == 0:
            raise DataError(f"the {split} split has no images ({total} in all: too few to split 70/10/20)", data)
    labels = np.asarray(sets["train"].labels)
    if classes and labels.size and len(np.unique(labels)) < 2:
        raise DataError("the training split holds one class only: nothing to tell apart", data)


def _writable_folder(out: Path) -> None:
    """Create ``out`` if needed and check that files can be written in it (UsageError otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medcam-write-test-", dir=out)  # O_EXCL: never follows a link
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to the output folder: {e.strerror or e}", out) from None


def _check_out(out: Path, marker: str, overwrite: bool) -> None:
    if (out / marker).exists() and not overwrite:
        raise UsageError(f"{marker} already exists; pass --overwrite to replace it", out)
    if out.exists() and not out.is_dir():
        raise UsageError("output path exists and is not a folder", out)


def train_classifier_bundle(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    data_dir: str | Path | None = None,
    overwrite: bool = False,
    console: Console | None = None,
    classes: Sequence[str] | None = None,
    labels: LabelTable | None = None,
    image_size: int | None = None,
) -> tuple[ClassifierBundle, Path]:
    """Train a built-in classifier on ``data`` and save its bundle to ``out``, with a progress bar on
    ``console``'s stderr twin. Returns the bundle and folder.

    Args:
        classes: class names in label order, replacing the data's own (an ``.npz`` file's ``classes`` /
            ``class_names``, a tree's folder names, else ``class_<k>``); as many as the data has classes.
        labels: a label table naming files of the folder ``data`` (DICOM, NIfTI or images) and their labels; the
            split keeps each of its groups (``group_column``, e.g. ``PatientID``) in one split only.
        image_size: the side labelled images are resized to (default
            :data:`~medcam_fast.data.labelled.DEFAULT_LABELLED_SIZE`).
    """
    out = Path(out)
    _check_out(out, "classifier.json", overwrite)
    split_facts = None
    if labels is not None:
        sets, split_facts = _labelled_splits(data, labels, image_size, config.seed)
    else:
        if image_size is not None:
            raise UsageError("--image-size resizes the files of a --labels table; other data keep their size")
        sets = load_splits(data, data_dir, config.seed)
    if classes is not None:
        sets = {k: _renamed(v, classes, data) for k, v in sets.items()}
    _training_images(sets, data, ("train", "val"), classes=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  val acc {task.fields[acc]:.3f}"), TimeElapsedColumn(),
                   console=LogConsole(stderr=True), disable=console is None)
    with bar:
        task = bar.add_task(f"epoch 0/{config.epochs}", total=config.epochs, loss=float("nan"), acc=float("nan"))

        def show(epoch: int, epochs: int, log: dict[str, float]) -> None:
            bar.update(task, advance=1, description=f"epoch {epoch}/{epochs}", loss=log["loss"],
                       acc=log["val_accuracy"])

        bundle = train_classifier(sets["train"], sets["val"], sets["test"], config, callback=show)
    bundle.metrics["data"] = sets["train"].name
    if split_facts is not None:
        bundle.metrics["split"] = split_facts
    return bundle, save_classifier(bundle, out)


def classifier_splits(data: str | Path, data_dir: str | Path | None, classifier: ClassifierBundle,
                      labels: LabelTable | None = None) -> dict[str, ImageSet]:
    """The splits of ``data`` as ``classifier`` was trained on them: with a label table, the same grouped split
    (the seed and image size ``train-classifier`` recorded in the bundle's ``metrics["split"]``; a bundle without
    them: seed 0 and the classifier's input size), so its test split holds only groups it never saw; else
    :func:`load_splits`."""
    if labels is None:
        return load_splits(data, data_dir)
    facts = classifier.metrics.get("split") or {}
    size = facts.get("image_size") or int(classifier.preprocess.size[0])
    return load_splits(data, data_dir, int(facts.get("seed", 0)), labels=labels, image_size=int(size))


def _labelled_splits(data: str | Path, labels: LabelTable, image_size: int | None,
                     seed: int) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """Train/val/test of a labelled folder, split by group; and the split's facts for the bundle."""
    from ..data.labelled import DEFAULT_LABELLED_SIZE, grouped_split, load_labelled

    size = DEFAULT_LABELLED_SIZE if image_size is None else int(image_size)
    if size < 8:
        raise UsageError(f"--image-size must be at least 8, got {size}")
    full, groups = load_labelled(data, labels, size)
    parts = grouped_split(full.labels, groups, seed)
    facts: dict[str, Any] = {"labels": str(labels.path), "label_column": labels.label_column,
                             "file_column": labels.file_column, "group_column": labels.group_column,
                             "image_size": size, "seed": int(seed), "grouped": labels.group_column is not None}
    for name, idx in parts.items():
        facts[f"{name}_images"] = int(len(idx))
        facts[f"{name}_groups"] = int(len(set(groups[idx].tolist())))
    return {k: full.subset(v) for k, v in parts.items()}, facts


def _renamed(images: ImageSet, classes: Sequence[str], data: str | Path) -> ImageSet:
    """``images`` with its classes named ``classes`` (UsageError unless there are as many, distinct, non-empty)."""
    names = [c.strip() for c in classes]
    if len(names) != len(images.classes):
        raise UsageError(f"--classes names {len(names)} classes, the data has {len(images.classes)} "
                         f"({', '.join(images.classes)})", data)
    if any(not c for c in names) or len(set(names)) != len(names):
        raise UsageError(f"--classes needs distinct, non-empty names, got {','.join(names)!r}")
    return replace(images, classes=names)


def dataset_name(data: str | Path) -> str:
    """What a data set is called in reports and result files: an existing file's or folder's stem
    (``own.npz`` → ``own``), else the short name as given (``breast``)."""
    p = Path(data)
    return p.stem if p.exists() else str(data)


@dataclass
class _Item:
    """One input: a file decoded only when its batch comes (``path``), or an array from an ``.npz``."""

    stem: str
    source: str
    path: Path | None = None
    array: np.ndarray | None = None
    error: DataError | None = None
    sha256: str | None = None
    frame: int = 0
    kind: SourceKind | None = None
    window: Window | None = None
    slice_axis: int = DEFAULT_SLICE_AXIS
    decoded: Decoded | None = None

    def load(self, max_pixels: int) -> np.ndarray:
        """The image's pixels (decoded now, for a file, through :func:`~medcam_fast.data.medical.decode`: the
        window applied and recorded in ``decoded``; its sha256 recorded)."""
        if self.array is not None:
            return self.array
        assert self.path is not None
        self.sha256 = sha256_file(self.path)
        self.decoded = decode(self.path, kind=self.kind, frame=self.frame, window=self.window,
                              slice_axis=self.slice_axis, max_pixels=max_pixels)
        return self.decoded.pixels

    def outputs(self, out: Path, formats: Sequence[str]) -> dict[str, Path]:
        """The files this input's explanation writes (a DICOM SEG for a DICOM source, NIfTI masks for a NIfTI
        one, when ``formats`` asks for them)."""
        medical = self.kind.value if self.kind in (SourceKind.DICOM, SourceKind.NIFTI) else None
        return output_paths(out, self.stem, formats, source=medical)


def _parse_index(spec: str | None, n: int, where: str) -> list[int]:
    if spec is None:
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"bad --index {spec!r}: use e.g. 0-9,15")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b >= n or a > b:
            raise UsageError(f"--index {part} is outside 0..{n - 1}", where)
        out.extend(range(a, b + 1))
    return out


def _file_items(f: Path, max_pixels: int, window: Window | None, slice_axis: int,
                slices: str | None) -> list[_Item]:
    """The items of one file: one per frame of a multi-frame DICOM object (``NAME_f0003``), one per slice of a
    NIfTI volume (``NAME_z012``: the canonical axis letter x, y or z), else one. Reads headers only."""
    kind = sniff_kind(f)
    if kind is SourceKind.IMAGE:
        probe_image(f, max_pixels=max_pixels)  # the header only: pixels are decoded batch by batch
        return [_Item(f.stem, str(f), path=f, kind=kind, window=window)]
    frames = list_frames(f, kind, slice_axis=slice_axis, slices=slices)
    stem = medical_stem(f)
    if len(frames) == 1 and frames[0] == 0:
        return [_Item(stem, str(f), path=f, kind=kind, window=window, slice_axis=slice_axis)]
    if kind is SourceKind.DICOM:
        return [_Item(f"{stem}_f{k:04d}", f"{f}#frame={k}", path=f, kind=kind, window=window, frame=k)
                for k in frames]
    axis = "xyz"[slice_axis]
    return [_Item(f"{stem}_{axis}{k:03d}", f"{f}#{axis}={k}", path=f, kind=kind, window=window, frame=k,
                  slice_axis=slice_axis) for k in frames]


def _gather(inputs: Sequence[str], split: str, index: str | None, fail_fast: bool,
            max_pixels: int = 50_000_000, window: Window | None = None, slice_axis: int = DEFAULT_SLICE_AXIS,
            slices: str | None = None) -> list[_Item]:
    items: list[_Item] = []
    for spec in inputs:
        p = Path(spec)
        if p.suffix.lower() == ".npz" and p.is_file():
            ds = load_npz(p, split)
            digest = sha256_file(p)
            for i in _parse_index(index, len(ds), spec):
                items.append(_Item(f"{p.stem}_{split}_{i:05d}", f"{p}#{split}/{i}", array=ds.images[i],
                                   sha256=digest))
            continue
        for f in list_images(spec):
            try:
                items.extend(_file_items(f, max_pixels, window, slice_axis, slices))
            except DataError as e:
                if fail_fast:
                    raise
                items.append(_Item(f.stem, str(f), path=f, error=e))
    for it, stem in zip(items, output_stems([it.stem for it in items], [it.source for it in items]), strict=True):
        it.stem = stem
    return items


def _summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("image", overflow="fold")
    for col in ("predicted", "target"):
        table.add_column(col, overflow="fold")
    for col in ("p_original", "p_kept", "p_removed", "area", "s/img"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            escape(r["image"]), escape(r["predicted_name"]), escape(r["target_name"]), f"{r['p_original']:.3f}", f"{r['p_kept']:.3f}",
            f"{r['p_removed']:.3f}", f"{r['area']:.3f}", f"{r['seconds']:.2f}",
        )
    table.caption = _kept_first_guess(rows)
    return table


def _kept_first_guess(rows: list[dict[str, Any]]) -> str | None:
    """The summary's caption when refinement kept some images' first guess (its loss was lower than after the
    steps: ``RefineConfig.keep_best``), else None. Records without the field (a resumed run's) are not
    counted."""
    refined = [r for r in rows if r.get("refined") is not None and r.get("steps", 0) > 0]
    kept = [r for r in refined if not r["refined"]]
    if not kept:
        return None
    return f"{len(kept)} of {len(refined)} kept their first guess: refinement did not lower its loss (\"refined\": false)"


def _bit_depth_warning(source: str, pixels: np.ndarray) -> str | None:
    """The warning for a 16-bit image that uses 12 bits at most (it looks nearly black once scaled), or None."""
    if pixels.dtype == np.uint16 and 0 < int(pixels.max()) < 4096:
        return (f"{source}: a 16-bit image that uses 12 bits at most (max {int(pixels.max())}); it is scaled by "
                "1/65535 and looks nearly black to the classifier")
    return None


def _write_images(out: Path, items: Sequence[_Item], ex: Explanation, formats: Sequence[str],
                  preprocess: Preprocess | None = None, grid: OutputGrid = DEFAULT_OUTPUT_GRID,
                  ) -> tuple[dict[str, dict[str, Path]], dict[str, dict[str, Any]]]:
    """Write each image's outputs (atomically; not the manifest): ``(stem → kind → path, stem → record)``. If a
    write fails (a full disk), the batch's files are removed again and the OSError raised.

    With ``preprocess`` (the classifier's), masks and overlays are mapped back to each input's own grid when
    ``grid`` is ``input`` (the geometry is recorded either way); DICOM SEG and NIfTI masks are always on the
    source's grid. Without it, everything stays on the model's grid."""
    written, rows = {}, {}
    try:
        for i, it in enumerate(items):
            rec = {"image": it.stem, "source": it.source, "source_sha256": it.sha256, **ex.record(i)}
            views = [ex.images[i], ex.soft[i], ex.binary[i], ex.kept[i]]
            source_masks = None
            if it.decoded is not None:
                rec["input"] = it.decoded.record
            pixels = it.decoded.pixels if it.decoded is not None else it.array
            if preprocess is not None and pixels is not None:
                geometry, *on_input = input_views(np.asarray(pixels), preprocess, *views[1:])
                rec["geometry"] = geometry.to_dict()
                rec["mask_grid"] = grid.value
                source_masks = (on_input[2], on_input[1])  # binary, soft on the source's grid
                if grid is OutputGrid.INPUT:
                    views = on_input
            written[it.stem] = write_explanation(
                out, it.stem, *views, rec, formats, paths=it.outputs(out, formats),
                source=it.decoded, source_masks=source_masks,
            )
            rows[it.stem] = rec
    except OSError:
        for it in items:
            for path in it.outputs(out, formats).values():
                path.unlink(missing_ok=True)
        raise
    return written, rows


def _write_batch(run: RunFolder, items: Sequence[_Item], ex: Explanation, formats: Sequence[str],
                 preprocess: Preprocess | None = None, grid: OutputGrid = DEFAULT_OUTPUT_GRID) -> None:
    """Write one batch's outputs, then list them in the run's manifest. If a write fails (a full disk), the
    batch's files are removed again, so nothing half-written or unlisted stays behind."""
    try:
        run.intend(p for it in items for p in it.outputs(run.out, formats).values())
        run.record(*_write_images(run.out, items, ex, formats, preprocess, grid))
    except OSError:
        for it in items:
            for path in it.outputs(run.out, formats).values():
                path.unlink(missing_ok=True)
        raise


def explain_inputs(
    inputs: Sequence[str],
    *,
    classifier: str | Path | None,
    out: Path,
    explainer: str | Path | None = None,
    mode: RefineMode | None = None,
    allow_mismatch: bool = False,
    allow_import: bool = False,
    allow_unsealed: bool = False,
    device: str = "cpu",
    steps: int | None = None,
    smooth: float | None = None,
    learned_steps: bool | None = None,
    target: int | None = None,
    batch_size: int = 16,
    formats: str = "png,npy,json,seg,nii",
    split: str = "test",
    index: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    fail_fast: bool = False,
    max_pixels: int = 50_000_000,
    threads: int | None = None,
    console: Console | None = None,
    err_console: Console | None = None,
    title: str = "medcam-fast",
    engine: Engine | str = Engine.LOCAL,
    address: str | None = None,
    workers: int | None = None,
    window: str | None = None,
    slice_axis: int = DEFAULT_SLICE_AXIS,
    slices: str | None = None,
    mask_grid: OutputGrid | str = DEFAULT_OUTPUT_GRID,
) -> int:
    """Explain every input image and write its outputs; returns the exit code (0, or 5 if some inputs failed).

    ``window`` (``C,W`` or a preset, :func:`~medcam_fast.data.medical.parse_window`) overrides the window of
    DICOM, NIfTI, 16-bit and float inputs; ``slice_axis`` and ``slices`` pick the slices of NIfTI volumes;
    ``mask_grid`` says whether masks and overlays are written on the input's grid or the model's.

    ``engine="ray"`` explains and writes the pending images in a pool of ``workers`` Ray actors (on the cluster
    at ``address``, else a local instance), with the same listing, manifest, resume and outputs
    (:mod:`medcam_fast.cli.ray_engine`)."""
    engine = choice(Engine, engine, "engine")
    grid = choice(OutputGrid, mask_grid, "--mask-grid")
    user_window = parse_window(window)
    console = console or Console()
    err_console = err_console or Console(stderr=True, soft_wrap=True)
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"unknown --format {','.join(bad) or formats!r}: choose from {', '.join(FORMATS)}")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if steps is not None and steps > _MANY_STEPS:
        print_error(f"--steps {steps}: time grows with the steps (refinement's default is {RefineConfig().steps}, "
                    f"the paper's per-image fit {FitConfig().steps})", "warning", on=err_console)
    bundle = load_classifier(classifier if classifier is not None else DEMO_DIR / "classifier",
                             allow_import=allow_import, allow_unsealed=allow_unsealed)
    if target is not None and not 0 <= target < bundle.num_classes:
        raise UsageError(f"--target {target} is out of range: the classifier has {bundle.num_classes} classes "
                         f"(0..{bundle.num_classes - 1})", classifier)
    if explainer is None and classifier is None and (DEMO_DIR / "explainer" / "explainer.json").exists():
        explainer = DEMO_DIR / "explainer"
    if not any(Path(i).suffix.lower() == ".npz" for i in inputs) and (index is not None or split != "test"):
        raise UsageError("--index and --split select images of .npz inputs; none of the inputs is one")
    items = _gather(inputs, split, index, fail_fast, max_pixels, user_window, slice_axis, slices)
    failures = [it for it in items if it.error]
    todo = [it for it in items if not it.error]
    if not todo:
        _no_readable_image(failures, inputs, err_console)
    threads = threads or default_threads(max(bundle.preprocess.size))
    medcam = MedCAM(bundle, explainer, mode=mode, refine_steps=steps, smooth=smooth, learned_steps=learned_steps,
                    allow_mismatch=allow_mismatch,
                    allow_unsealed=allow_unsealed, device=device, threads=threads)
    for warning in medcam.warnings:  # also in every record; said once here, where the user looks
        print_error(warning, "warning", on=err_console)
    with RunFolder(out) as run:
        _writable_folder(out)
        run.plan("summary", {"csv": out / "summary.csv", "json": out / "summary.json"}, overwrite=True,
                 resume=True)
        pending = [it for it in todo
                   if run.plan(it.stem, it.outputs(out, fmts), overwrite=overwrite, resume=resume)]
        with medcam as explain, Progress(
            TextColumn("[bold]explain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("explain", total=len(pending))
            if engine is Engine.RAY:  # the same images, explained and written by Ray actors
                from .ray_engine import WorkerSpec, explain_on_ray

                spec = WorkerSpec(str(classifier if classifier is not None else DEMO_DIR / "classifier"),
                                  None if explainer is None else str(explainer), None if mode is None else str(mode),
                                  steps, target, allow_mismatch, allow_import, allow_unsealed, device, threads,
                                  tuple(fmts), grid.value, max_pixels, str(out), os.getcwd(), _write_images,
                                  _bit_depth_warning, smooth, learned_steps)
                explain_on_ray(run, pending, failures, spec, batch_size=batch_size, workers=workers, address=address,
                               fail_fast=fail_fast, warn=lambda w: print_error(w, "warning", on=err_console),
                               advance=lambda n: bar.advance(task, n),
                               finish=lambda: _finish(run, out, todo, items, bundle, classifier, explainer, console,
                                                      title))
            for start in range(0, len(pending) if engine is Engine.LOCAL else 0, batch_size):
                chunk, xs = [], []
                for it in pending[start : start + batch_size]:  # at most one batch of pixels in memory
                    try:
                        pixels = it.load(max_pixels)
                        if warning := _bit_depth_warning(it.source, pixels):
                            print_error(warning, "warning", on=err_console)
                        for warning in it.decoded.warnings if it.decoded is not None else ():
                            print_error(f"{it.source}: {warning}", "warning", on=err_console)
                        xs.append(bundle.preprocess(pixels))
                        chunk.append(it)
                    except DataError as e:
                        if fail_fast:
                            raise
                        it.error = e
                        failures.append(it)
                if chunk:
                    x = torch.from_numpy(np.concatenate(xs))
                    ex = explain(x, targets=target)
                    try:
                        _write_batch(run, chunk, ex, fmts, bundle.preprocess, grid)
                    except OSError as e:  # a full disk, a quota, a file-size limit: stop, keep what is whole
                        _finish(run, out, todo, items, bundle, classifier, explainer, console, title)
                        raise DataError(f"cannot write the outputs of {chunk[0].stem}: {e.strerror or e}; the "
                                        "images before it are complete (--resume goes on)", out) from None
                    for it in chunk:
                        it.decoded = None  # at most one batch of pixels in memory
                        if seg_error := run.images.get(it.stem, {}).get("seg_error"):
                            print_error(f"{it.source}: {seg_error}", "warning", on=err_console)
                bar.advance(task, len(pending[start : start + batch_size]))
        if failures and not any(it.stem in run.images for it in todo):
            _no_readable_image(failures, inputs, err_console)
        _finish(run, out, todo, items, bundle, classifier, explainer, console, title)
    explained = len(pending) - sum(1 for it in pending if it.error)
    console.print(f"{explained} explained, {len(todo) - len(pending)} skipped (complete), {len(failures)} failed "
                  f"→ {escape(str(out))}")
    for it in failures:
        print_error(it.error, "failed", on=err_console)
    return 5 if failures else 0


#: More steps than this get a warning: ten times the paper's per-image fit.
_MANY_STEPS = 3000


def _finish(run: RunFolder, out: Path, todo: Sequence[_Item], items: Sequence[_Item], bundle: ClassifierBundle,
            classifier: str | Path | None, explainer: str | Path | None, console: Console, title: str) -> None:
    """Write the run's summary (all of it, resumed or not) and show its table; a summary that cannot be
    written (the disk is full) is still shown."""
    facts = {"classifier": str(classifier or "embedded demo"), "classifier_sha256": bundle.sha256,
             "explainer": None if explainer is None else str(explainer),
             "failures": [{"image": it.stem, "source": it.source, "error": str(it.error)}
                          for it in items if it.error]}
    rows = run.rows([it.stem for it in todo])
    if not rows:
        return
    console.print(_summary_table(rows, title))
    try:
        run.intend([out / "summary.csv", out / "summary.json"])
        write_summary(out, rows, facts)
        run.record({"summary": {"csv": out / "summary.csv", "json": out / "summary.json"}}, {})
    except OSError as e:
        for name in ("summary.csv", "summary.json"):  # never leave a file the manifest does not list
            if name not in run.files:
                (out / name).unlink(missing_ok=True)
        print_error(f"cannot write the summary: {e.strerror or e}", "warning")


def _no_readable_image(failures: Sequence[_Item], inputs: Sequence[str], err_console: Console) -> NoReturn:
    """No input could be read: the one error as it is, or each on a line and a summary error."""
    if len(failures) == 1 and failures[0].error is not None:
        raise failures[0].error
    for it in failures:
        print_error(it.error, on=err_console)
    raise DataError("no readable images among the inputs", ", ".join(inputs))


def run_demo(
    out: Path,
    n: int = 8,
    steps: int | None = None,
    overwrite: bool = True,
    threads: int | None = None,
    console: Console | None = None,
    err_console: Console | None = None,
) -> int:
    """Generate ``n`` lesion images (unseen seed), explain them with the shipped demo bundle, write outputs."""
    from .._io import atomic_write_bytes
    from .writers import png_bytes

    console = console or Console()
    if not (DEMO_DIR / "classifier" / "classifier.json").exists():
        raise MedCamError("the embedded demo bundle is missing: run `make demo-bundle`", DEMO_DIR)
    ds = make_lesions(n, size=64, seed=DEMO_SEED)
    inputs_dir = out / "inputs"
    for i, img in enumerate(ds.images):
        atomic_write_bytes(inputs_dir / f"lesion_{i:03d}_{ds.classes[ds.labels[i]]}.png", png_bytes(img))
    t0 = time.perf_counter()
    code = explain_inputs(
        [str(inputs_dir)], classifier=None, out=out / "explanations", steps=steps, overwrite=overwrite, threads=threads,
        console=console, err_console=err_console, title="medcam-fast demo (embedded bundle)",
    )
    overlays = sorted((out / "explanations").glob("*_overlay.png"))[:4]
    if overlays:
        from PIL import Image

        tiles = [np.asarray(Image.open(p).convert("RGB")) for p in overlays]
        gap = np.full((8, tiles[0].shape[1], 3), 255, dtype=np.uint8)
        grid = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=0)
        atomic_write_bytes(out / "overview.png", png_bytes(grid))
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s; see {out / 'overview.png'} and "
                  f"{out / 'explanations'}/")
    return code


def _floats(text: str, what: str, n: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise UsageError(f"--{what} needs 1 or {n} values, got {len(vals)}")
    return vals


def import_classifier_bundle(
    out: str | Path,
    *,
    classes: str,
    size: int,
    channels: int,
    mean: str,
    std: str,
    factory: str | None = None,
    weights: str | Path | None = None,
    program: str | Path | None = None,
    timm_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Bundle a user's classifier: ``package.module:factory`` + safetensors, a ``.pt2`` program, or a timm name."""
    from ..classifiers.sources import load_exported, load_import_path, load_timm
    from ..data.preprocess import Preprocess

    out = Path(out)
    _check_out(out, "classifier.json", overwrite)
    if sum(v is not None for v in (factory, program, timm_name)) != 1:
        raise UsageError("name exactly one model: --import, --program or --timm")
    if channels not in (1, 3):
        raise UsageError(f"--channels must be 1 or 3, got {channels}")
    names = [c.strip() for c in classes.split(",") if c.strip()]
    pre = Preprocess((size, size), channels, _floats(mean, "mean", channels), _floats(std, "std", channels))
    if program is not None:
        bundle = load_exported(program, pre, names)
    else:
        if weights is None:
            raise UsageError("--import and --timm need --weights FILE.safetensors")
        if factory is not None:
            bundle = load_import_path(factory, weights, pre, names)
        else:
            bundle = load_timm(str(timm_name), len(names), weights, pre, names)
    return save_classifier(bundle, out)


def meta_train_bundle(
    classifier: str | Path,
    data: str | Path,
    out: str | Path,
    config: MetaConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    console: Console | None = None,
    time_budget: float | None = None,
    init: str | Path | None = None,
    workers: int = 1,
    labels: LabelTable | None = None,
) -> ExplainerBundle:
    """Meta-train an explainer for the classifier bundle on the training split of ``data`` (with ``labels``: the
    classifier's own grouped split, :func:`classifier_splits`); live progress (on ``workers`` processes:
    :mod:`medcam_fast.explainer.distributed`)."""
    console = console or Console()
    out = Path(out)
    if not resume and not overwrite and ((out / "explainer.json").exists() or (out / "checkpoint.json").exists()):
        raise UsageError("holds an explainer or checkpoint; pass --resume to continue or --overwrite", out)
    if overwrite and not resume:
        for name in ("checkpoint.json", "checkpoint.safetensors"):
            (out / name).unlink(missing_ok=True)
    bundle = load_classifier(classifier)
    sets = classifier_splits(data, data_dir, bundle, labels)
    _training_images(sets, data, ("train",))
    train = sets["train"]
    with StepProgress(console, "meta-train", total_steps=config.outer_steps, budget_seconds=time_budget) as bar:
        explainer = meta_train(bundle, train.images, config, out_dir=out, resume=resume, callback=bar.update,
                               time_budget=time_budget, init=None if init is None else load_explainer(init),
                               workers=workers)
    console.print(f"wrote {out}: {explainer.training['method']}, {explainer.training['steps_done']} steps, "
                  f"{explainer.training['seconds']:.0f} s")
    return explainer


def export_bundle(explainer: str | Path, out: str | Path | None, *, combined: str | Path | None = None,
                  overwrite: bool = False, allow_unsealed: bool = False) -> Path:
    """Export an explainer bundle to ONNX (optionally with its classifier as an explain-and-verify graph).
    The bundle's own ``explainer.onnx`` (the default target) is recorded in its sealed ``explainer.json``."""
    from ..export.onnx_export import export_combined, export_explainer

    bundle = load_explainer(explainer, allow_unsealed=allow_unsealed, check_onnx=False)
    folder = Path(explainer).parent if Path(explainer).suffix == ".json" else Path(explainer)
    target = Path(out) if out is not None else folder / "explainer.onnx"
    if target.exists() and not overwrite:
        raise UsageError("already exists; pass --overwrite to replace it", target)
    if combined is None and bundle.architecture is Architecture.DECODER:
        raise UsageError("this explainer reads its classifier's features: pass the classifier bundle it was "
                         "trained for with --combined", folder)
    if combined is not None:
        return export_combined(bundle, load_classifier(combined, allow_unsealed=allow_unsealed).model, target)
    return export_explainer(bundle, target)  # into the bundle's folder: recorded in its explainer.json


def seal_bundles(folders: Sequence[str | Path]) -> list[Path]:
    """Seal bundles written by 0.1.0 (``classifier.json`` / ``explainer.json`` without a content hash) after
    checking what can be checked: the weights' (and program's) sha256, and that the bundle loads. Returns the
    JSON files sealed; an already sealed bundle is checked and left as it is.

    Raises:
        ModelError: a bundle that does not load even unsealed (its weights changed, say).
    """
    sealed = []
    for folder in map(Path, folders):
        if (folder / "classifier.json").is_file():
            path = folder / "classifier.json"
            load_classifier(folder, allow_unsealed=True, allow_import=False)
        elif folder.is_dir() and not (folder / "explainer.json").is_file():
            raise ModelError("no classifier.json or explainer.json here (not a medcam-fast bundle)", folder)
        else:
            path = folder / "explainer.json"
            bundle = load_explainer(folder, allow_unsealed=True)
            onnx_file = folder / "explainer.onnx"
            if onnx_file.is_file() and bundle.onnx_sha256 is None:
                from ..export.runtime import OnnxExplainer

                OnnxExplainer(onnx_file)  # a medcam-fast explainer graph, or a ModelError
            # a recorded explainer.onnx was checked against its sha256 by load_explainer
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get(SEAL_KEY):
            continue
        if path.name == "explainer.json" and (folder / "explainer.onnx").is_file():
            meta["onnx_sha256"] = sha256_file(folder / "explainer.onnx")
        atomic_write_json(path, seal(meta))
        sealed.append(path)
    return sealed


def evaluate_specs(
    datasets: Sequence[str],
    *,
    classifier: str | Path | None = None,
    explainer: str | Path | None = None,
    models: str | Path = "models",
    data_dir: str | Path | None = None,
    labels: LabelTable | None = None,
) -> list[tuple[str, Path, Path | None, ImageSet]]:
    """``(name, classifier, explainer, test images)`` per data set for :func:`~medcam_fast.evaluation.harness.evaluate_suite`.

    With ``classifier`` (and ``explainer``) given, ``datasets`` must hold one data set, explained by them.
    Otherwise each data set ``d`` uses ``models/d/classifier`` and ``models/d/explainer`` (a path: its stem,
    ``own.npz`` → ``models/own/``), and ``lesions``
    (the procedural set with known evidence) the embedded demo bundle. With ``labels`` (one data set: the folder
    of the table's files) the test split is the classifier's own grouped one (:func:`classifier_splits`).
    """
    if labels is not None and len(datasets) != 1:
        raise UsageError("--labels names the files of one data set: give one --data")
    if classifier is not None:
        if len(datasets) != 1:
            raise UsageError("--classifier evaluates one data set: give one --data")
        name = dataset_name(datasets[0])
        ex = Path(explainer) if explainer is not None else None
        test = classifier_splits(datasets[0], data_dir, load_classifier(classifier), labels)["test"]
        return [(name, Path(classifier), ex, test)]
    specs: list[tuple[str, Path, Path | None, ImageSet]] = []
    for d in datasets:
        name = dataset_name(d)  # a path's stem: own.npz → models/own/
        folder = DEMO_DIR if d == "lesions" else Path(models) / name
        for part in ("classifier", "explainer"):
            if not (folder / part).is_dir():
                raise UsageError(f"no {part} bundle for data set {d!r} (pass --classifier and --explainer, or "
                                 f"put them in {Path(models) / name}/)", folder / part)
        sets = (load_splits(d, data_dir) if labels is None
                else classifier_splits(d, data_dir, load_classifier(folder / "classifier"), labels))
        specs.append((name, folder / "classifier", folder / "explainer", sets["test"]))
    return specs


def evaluate_job(
    datasets: Sequence[str],
    out: str | Path,
    config: Any,
    *,
    classifier: str | Path | None = None,
    explainer: str | Path | None = None,
    models: str | Path = "models",
    data_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    labels: LabelTable | None = None,
) -> Any:
    """Run ``medcam-fast evaluate`` with a progress bar, then write its report (results.json, report.md,
    figures/) and print its table; refuses to replace an earlier report unless asked. Returns the
    :class:`~medcam_fast.evaluation.harness.Evaluation`."""
    from ..evaluation.baselines import available_peers
    from ..evaluation.harness import EXPLAINER_METHODS, evaluate_suite
    from ..evaluation.quiet import quiet_progress_bars
    from ..evaluation.report import write_report
    from .reports import evaluate_table

    console = console or Console()
    out = Path(out)
    if (out / "results.json").exists() and not (resume or overwrite):
        raise UsageError("holds an earlier evaluation; pass --resume to reuse its finished methods or --overwrite", out)
    if overwrite and not resume:
        import shutil

        shutil.rmtree(out / "datasets", ignore_errors=True)
    if any(m in EXPLAINER_METHODS for m in config.methods) and explainer is None and classifier is not None:
        raise UsageError("medcam-fast's first guess and refinement need --explainer (a bundle folder or explainer.onnx)")
    specs = evaluate_specs(datasets, classifier=classifier, explainer=explainer, models=models, data_dir=data_dir,
                           labels=labels)
    for (name, _, _, images), given in zip(specs, datasets, strict=False):  # one spec per data set, in order
        if len(images) == 0:
            try:
                where: str | Path = resolve_data(given, None if data_dir is None else str(data_dir))
            except MedCamError:
                where = name
            raise DataError(f"the test split of {name!r} has no images: nothing to evaluate", where)
    for _, clf_path, ex_path, _ in specs:  # a broken bundle is one error line before anything starts
        load_classifier(clf_path)
        if ex_path is not None and ex_path.suffix != ".onnx":
            load_explainer(ex_path)
    _writable_folder(out)
    missing = {m: why for m, why in available_peers().items() if why is not None and m in config.methods}
    for m, why in missing.items():
        console.print(f"[yellow]skipping {escape(m)}[/]: {escape(why)}")
    live = [m for m in config.methods if m not in missing]
    units = len(specs) * (len(config.methods) + len(live) * (config.sanity_stages if config.sanity_n else 0))
    columns = (TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar, quiet_progress_bars():  # ours only: no peer's tqdm bars
        task = bar.add_task("evaluate", total=units, info="")
        evaluation = evaluate_suite(specs, config, out, resume=resume,
                                    progress=lambda label: bar.update(task, advance=1, info=escape(label)))
    write_report(evaluation, out)
    console.print(evaluate_table(evaluation.results))
    console.print(f"wrote {escape(str(out / 'report.md'))}, {escape(str(out / 'results.json'))} and "
                  f"{escape(str(out / 'figures'))}")
    return evaluation
