"""The ``medcam-fast`` command: a thin Typer layer over the library.

Exit codes: 0 success · 1 internal error (a bug) · 2 usage error · 3 data error · 4 model error ·
5 some inputs of a batch failed (the others were written) · 130 interrupted.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import typer

from medcam_fast.cli.console import LOG_WIDTH, console, err_console, escape, print_error
from medcam_fast.cli.dataopts import (
    DATA_DIR,
    FILE_COLUMN,
    GROUP_COLUMN,
    LABEL_COLUMN,
    LABELS,
    THREADS,
    label_table,
)
from medcam_fast.cli.option_errors import OneLineErrorsGroup
from medcam_fast.data.geometry import DEFAULT_OUTPUT_GRID, OutputGrid
from medcam_fast.errors import EXIT_CODES, MedCamError
from medcam_fast.types import Architecture, Correlation, Engine, InnerMode, LRSchedule, RefineMode

_EXIT_HELP = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class _Typer(typer.Typer):
    """A Typer app whose help is rich's panels on a terminal and click's plain text elsewhere: in a pipe or a
    log rich would cut option names, types and choices to 80 columns with "…"; the plain text is
    :data:`~medcam_fast.cli.console.LOG_WIDTH` wide (``context_settings`` below, which rich's help ignores), so
    no word is cut and no option name is broken at a hyphen. Decided when the command is built (each run),
    from standard output."""

    @property  # type: ignore[override]
    def rich_markup_mode(self) -> Any:
        return self._markup_mode if sys.stdout.isatty() else None

    @rich_markup_mode.setter
    def rich_markup_mode(self, mode: Any) -> None:
        self._markup_mode = mode


app = _Typer(
    name="medcam-fast",
    cls=OneLineErrorsGroup,
    help="Evidence masks for frozen medical-image classifiers (Med-CAM, made fast).\n\n" + _EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"terminal_width": LOG_WIDTH, "max_content_width": LOG_WIDTH},
)
bench_app = typer.Typer(help="Benchmarks: measure, compare peers in the same run, print ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

F = TypeVar("F", bound=Callable[..., Any])

#: ``bench quality``'s explainer folders (``medcam_fast.evaluation.bench.QUALITY_FOLDERS``, held equal by a test).
_QUALITY_FOLDERS: tuple[str, ...] = ("explainer", "amortized", "unet")

#: ``evaluate``'s methods, as ``--methods`` lists them (tests/cli/test_own_data.py holds it equal to
#: ``medcam_fast.evaluation.harness.ALL_METHODS``, which is not imported here: it imports torch).
EVALUATE_METHODS: tuple[str, ...] = ("first-guess", "refined", "fit", "rise", "extremal", "gradcam", "gradcam++",
                                     "scorecam", "occlusion", "ig")


def handle_errors(fn: F) -> F:
    """Turn the library's errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedCamError as e:
            print_error(e)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print_error("stopped by the user", "interrupted")
            raise typer.Exit(130) from None

    return cast(F, wrapper)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): the rest defer to the library's configuration dataclasses, which
    own every default (``TrainConfig``, ``MetaConfig``, ``RefineConfig``, ``FitConfig``)."""
    return {k: v for k, v in options.items() if v is not None}


def _warn_unsealed(allowed: bool) -> None:
    if allowed:
        print_error("bundles without a content hash are accepted (--allow-unsealed): their JSON is not checked",
                    "warning")


def _threads(n: int | None) -> None:
    """``--threads``, or the free cores (:func:`medcam_fast._cpu.default_threads`)."""
    import torch

    from medcam_fast._cpu import default_threads

    torch.set_num_threads(n or default_threads())


@app.command("train-classifier")
@handle_errors
def train_classifier_cmd(
    data: str = typer.Option(..., help="Data set: a .npz path, a class-per-folder directory, "
                             "breast|pneumonia|blood|path|brain, or with --labels the folder of the table's files."),
    out: Path = typer.Option(..., help="Output folder of the classifier bundle."),
    classes: str | None = typer.Option(None, help="Class names in label order, comma-separated (default: the "
                                       ".npz file's classes or class_names key, the class folders' names, else "
                                       "class_0, class_1 and so on)."),
    arch: str | None = typer.Option(None, help="Architecture: resnet18 or vit (default: resnet18)."),
    epochs: int | None = typer.Option(None, min=1, help="Training epochs (default: 30)."),
    width: int | None = typer.Option(None, help="Architecture width (default: per architecture)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per step (default: 64)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default: 0.002)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = THREADS,
    overwrite: bool = typer.Option(False, help="Replace an existing bundle in OUT."),
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
    image_size: int | None = typer.Option(None, min=8, help="With --labels: the side images are resized to "
                                          "(default: 128)."),
) -> None:
    """Train a built-in classifier and write a classifier bundle (safetensors + JSON)."""
    from medcam_fast.classifiers.training import TrainConfig
    from medcam_fast.cli.jobs import train_classifier_bundle

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    cfg = TrainConfig(**_given(arch=arch, epochs=epochs, width=width, batch_size=batch_size, lr=lr, seed=seed))
    bundle, path = train_classifier_bundle(data, out, cfg, data_dir=data_dir, overwrite=overwrite, console=console,
                                           classes=None if classes is None else _csv(classes), labels=table,
                                           image_size=image_size)
    console.print(escape(_accuracy_line(path, bundle.arch, bundle.metrics, bundle.classes)), soft_wrap=True)
    for warning in bundle.metrics.get("warnings") or []:  # also in classifier.json
        print_error(warning, "warning")


def _accuracy_line(path: Path, arch: str, m: dict[str, Any], classes: list[str]) -> str:
    """``wrote PATH: arch, classes; per split: accuracy (majority-class rate, balanced accuracy)``."""
    def split(name: str) -> str:
        acc = m.get(f"{name}_accuracy")
        if acc is None:
            return f"{name}: –"
        return (f"{name} accuracy {acc:.3f} (majority class {m.get(f'{name}_majority_rate', float('nan')):.3f}, "
                f"balanced {m.get(f'{name}_balanced_accuracy', float('nan')):.3f})")
    return (f"wrote {path}: {arch}, classes {', '.join(classes)}; {split('val')}; {split('test')}; "
            f"trained with {m.get('threads', '?')} thread(s)")


@app.command("import-classifier")
@handle_errors
def import_classifier_cmd(
    out: Path = typer.Option(..., help="Output folder of the classifier bundle."),
    classes: str = typer.Option(..., help="Class names, comma-separated, in logit order."),
    size: int = typer.Option(..., min=8, help="Input side in pixels (square)."),
    channels: int = typer.Option(..., min=1, max=3, help="Input channels (1 or 3)."),
    mean: str = typer.Option(..., help="Normalization mean per channel, pixel values scaled to 0–1, comma-separated."),
    std: str = typer.Option(..., help="Normalization std per channel, comma-separated."),
    factory: str | None = typer.Option(None, "--import", help="Your model: package.module:factory (needs --weights)."),
    weights: Path | None = typer.Option(None, help="safetensors state dict for --import or --timm."),
    program: Path | None = typer.Option(None, help="A torch.export .pt2 program."),
    timm_name: str | None = typer.Option(None, "--timm", help="A timm architecture name (needs --weights)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle in OUT."),
) -> None:
    """Wrap your own classifier (import path, .pt2 program or timm name) as a bundle every command accepts."""
    from medcam_fast.cli.jobs import import_classifier_bundle

    path = import_classifier_bundle(
        out, classes=classes, size=size, channels=channels, mean=mean, std=std, factory=factory,
        weights=weights, program=program, timm_name=timm_name, overwrite=overwrite,
    )
    console.print(f"wrote {escape(str(path))}")


@app.command("explain")
@handle_errors
def explain_cmd(
    inputs: list[str] = typer.Argument(..., help="Image files (PNG, TIFF and the other Pillow formats, DICOM, NIfTI), folders, glob patterns or "
                                       "MedMNIST .npz files."),
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder (default: the embedded demo)."),
    explainer: Path | None = typer.Option(None, help="Explainer bundle folder or .onnx file (default: the demo's, "
                                          "with the demo classifier; none with another classifier: per-image fit)."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Refine the first guess (--no-refine: 0 steps)."),
    mode: RefineMode | None = typer.Option(None, help="How masks are made (default: logits with an explainer, "
                                           "full without)."),
    steps: int | None = typer.Option(None, min=0, help="Refinement steps per image (default: 10; full mode 300)."),
    smooth: float | None = typer.Option(None, min=0.0, help="σ in mask-grid cells: refinement's and the fit's steps "
                                        "change the mask by Gaussian blobs, fewer pieces at some loss "
                                        "(default: 0, off; not with --mode weights)."),
    learned_steps: bool | None = typer.Option(None, "--learned-steps/--adam-steps", help="Take the explainer's "
                                              "learned refinement steps first when it has them (train-steps), or "
                                              "Adam steps only (default: learned)."),
    allow_mismatch: bool = typer.Option(False, help="Use an explainer trained for another classifier."),
    allow_import: bool = typer.Option(False, help="Let a bundle made by import-classifier --import run its factory."),
    allow_unsealed: bool = typer.Option(False, help="Accept bundles without a content hash (made by 0.1.0; "
                                        "`medcam-fast seal` adds one)."),
    out: Path = typer.Option(Path("medcam-out"), help="Output folder."),
    target: int | None = typer.Option(None, min=0, help="Class to explain (default: the predicted class)."),
    batch_size: int = typer.Option(16, min=1, help="Images read and written per step (computed in chunks of "
                                    "8, the last padded: no result depends on it)."),
    device: str = typer.Option("cpu", help="torch device: cpu or cuda (onnxruntime picks CUDA itself when it can)."),
    fmt: str = typer.Option("png,npy,json,seg,nii", "--format", help="Outputs: any of png, npy, json, seg (a DICOM "
                            "SEG for DICOM inputs), nii (NIfTI masks for NIfTI inputs), comma-separated."),
    window: str | None = typer.Option(None, help="Window for DICOM, NIfTI, 16-bit and float inputs: CENTER,WIDTH in "
                                      "the data's units (HU for CT) or lung, mediastinum, brain, bone (default: the "
                                      "DICOM file's first window, else the data's range)."),
    slice_axis: int = typer.Option(2, min=0, max=2, help="NIfTI volumes: the canonical (RAS+) axis to slice along "
                                   "(2: axial)."),
    slices: str | None = typer.Option(None, help="NIfTI volumes: which slices, all or a-b (default: all)."),
    mask_grid: OutputGrid = typer.Option(DEFAULT_OUTPUT_GRID, help="Grid of masks and overlays: input (the image's own pixels) or "
                                  "model (the classifier's input size)."),
    split: str = typer.Option("test", help="Split of .npz inputs: train, val, test or all."),
    index: str | None = typer.Option(None, help="Indices of .npz images, e.g. 0-9,15 (default: all)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    resume: bool = typer.Option(False, help="Skip images whose outputs are complete."),
    fail_fast: bool = typer.Option(False, help="Stop at the first input that cannot be read."),
    max_pixels: int = typer.Option(50_000_000, min=1, help="Refuse image files with more pixels (checked before decoding)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch and onnxruntime (default: 1 for "
                                       "images up to 96 px, else the cores not busy with other work)."),
    engine: Engine = typer.Option(Engine.LOCAL, help="Where to compute: local (this process) or ray (a pool of Ray "
                                  "actors, same outputs; needs the optional 'scale' extra)."),
    address: str | None = typer.Option(None, help="With --engine ray: the Ray cluster to join, e.g. "
                                       "ray://head:10001 (default: start a local instance)."),
    workers: int | None = typer.Option(None, min=1, help="With --engine ray: actors in the pool (default: the "
                                       "cluster's CPUs)."),
) -> None:
    """Explain images: binary mask, soft mask, overlay and JSON per image; summary.csv/json per run."""
    from medcam_fast.cli.jobs import explain_inputs

    _warn_unsealed(allow_unsealed)
    if not refine and steps:
        raise typer.BadParameter("--no-refine and --steps exclude each other")
    if engine is Engine.LOCAL and (address is not None or workers is not None):
        raise typer.BadParameter("--address and --workers need --engine ray")
    code = explain_inputs(
        inputs, classifier=classifier, explainer=explainer, mode=mode, allow_mismatch=allow_mismatch,
        allow_import=allow_import, allow_unsealed=allow_unsealed, device=device, out=out,
        steps=0 if not refine else steps, smooth=smooth, learned_steps=learned_steps, target=target, batch_size=batch_size,
        formats=fmt, split=split, index=index, overwrite=overwrite, resume=resume, fail_fast=fail_fast,
        max_pixels=max_pixels, threads=threads,
        console=console, err_console=err_console, engine=engine, address=address, workers=workers,
        window=window, slice_axis=slice_axis, slices=slices, mask_grid=mask_grid,
    )
    raise typer.Exit(code)


@app.command("meta-train")
@handle_errors
def meta_train_cmd(
    classifier: Path = typer.Option(..., help="Classifier bundle folder the explainer is for."),
    data: str = typer.Option(..., help="Training images: a .npz path, a class-per-folder directory, a folder of "
                             "files (with --labels: the classifier's training split of it), or a short name."),
    out: Path = typer.Option(..., help="Output folder of the explainer bundle (with --one-phase: and its "
                             "checkpoints)."),
    architecture: Architecture | None = typer.Option(None, help="First-guess network: decoder (reads the "
                                                     "classifier's features, every class at once) or unet "
                                                     "(classifier-blind) (default: decoder)."),
    inner_steps: int | None = typer.Option(None, min=0, help="K, inner adaptation steps (0 = amortized "
                                           "training) (default: 10)."),
    inner_mode: InnerMode | None = typer.Option(None, help="What the inner loop adapts: logits (the mask logits, as "
                                                "refinement does; first-order) or weights (MAML on a U-Net) "
                                                "(default: logits)."),
    first_order: bool | None = typer.Option(None, "--first-order/--second-order",
                                            help="First-order MAML, no second-order terms (default: first order)."),
    meta_sgd: bool | None = typer.Option(None, "--meta-sgd", help="Learn the inner step sizes (Meta-SGD)."),
    outer_steps: int | None = typer.Option(None, min=1, help="Meta-updates: with the recipe at most this many per "
                                           "phase (default: until the time is up); with --one-phase (default: "
                                           "400)."),
    meta_batch: int | None = typer.Option(None, min=1, help="Images per meta-update (default: 8)."),
    inner_lr: float | None = typer.Option(None, help="Inner step size (default: 0.1 weights, 1.0 logits)."),
    outer_lr: float | None = typer.Option(None, help="Outer (Adam) learning rate: of the recipe's MAML phase "
                                          "(default: 0.001), or of --one-phase (default: 0.002)."),
    lr_schedule: LRSchedule | None = typer.Option(None, help="How the outer learning rate moves over each run "
                                                  "(each phase of the recipe): constant, or cosine (annealed to "
                                                  "zero by the end of its time or steps) (default: constant)."),
    width: int | None = typer.Option(None, min=2, help="Network width (default: 32 decoder, 16 U-Net)."),
    checkpoint_every: int | None = typer.Option(None, min=1, help="Outer steps between checkpoints (default: 25)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    independence: float | None = typer.Option(None, min=0.0, help="Weight of the decoder's independence term: its "
                                              "first guess read through a randomized copy of the classifier must "
                                              "not correlate with the trained one's (default: 3; 0: off)."),
    independence_measure: Correlation | None = typer.Option(None, help="The correlation the independence term "
                                                            "penalizes: spearman (soft ranks, what the sanity "
                                                            "check reports) or pearson (soft-clipped logits, the "
                                                            "first decoders' term) (default: spearman)."),
    minutes: float | None = typer.Option(None, min=0.001, help="Training time in minutes: the recipe's whole "
                                         "budget, split between its phases (default: 10); with --one-phase, "
                                         "finish after this much (default: no limit)."),
    amortized_share: float | None = typer.Option(None, min=0.0, max=1.0, help="Share of --minutes for the "
                                                 "recipe's amortized phase; the logits-MAML phase gets the rest "
                                                 "(default: 0.5)."),
    comparison: bool = typer.Option(False, "--comparison", help="Also train the equal-budget explainer that "
                                    "bench quality compares against: amortized training alone for all of "
                                    "--minutes."),
    comparison_out: Path | None = typer.Option(None, help="Folder of the --comparison explainer (default: "
                                               "amortized beside OUT, where bench quality looks)."),
    work: Path | None = typer.Option(None, help="Folder of the recipe's phases, each with its checkpoint (default: "
                                     "OUT-phases beside OUT)."),
    one_phase: bool = typer.Option(False, "--one-phase", help="Run one meta-training exactly as the other "
                                   "options set it, checkpoints in OUT, instead of the recipe."),
    init: Path | None = typer.Option(None, help="Start from this explainer bundle (e.g. an amortized one)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run: the recipe's finished phases are "
                                "kept, the interrupted one continues from its checkpoint."),
    overwrite: bool = typer.Option(False, help="Start afresh even if OUT holds a checkpoint or bundle."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch (shared by the --workers)."),
    workers: int = typer.Option(1, "--workers", "--nproc", min=1,
                                help="Training processes (torch.distributed, gloo; --nproc, torchrun's name, is the "
                                "same option): each computes a share of every meta-batch, gradients averaged; "
                                "--meta-batch must be a multiple."),
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
) -> None:
    """Meta-train an explainer for a classifier with the shipped recipe: amortized training for a share of
    --minutes, then MAML through the logits inner loop that refinement runs (K = 10) for the rest.
    The inner-loop options and --outer-lr set the MAML phase (--outer-lr default: 0.001 there; the amortized
    phase keeps 0.002); --outer-steps caps each phase (default: the time decides). --one-phase runs a single
    meta-training as the options say."""
    from medcam_fast.cli.jobs import meta_train_bundle
    from medcam_fast.explainer.meta import MetaConfig

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    if not one_phase:
        from medcam_fast.cli.metatrain import meta_train_recipe
        from medcam_fast.explainer.recipe import RecipeConfig

        recipe = RecipeConfig(**_given(minutes=minutes, amortized_share=amortized_share, maml_outer_lr=outer_lr,
                                       phase_steps=outer_steps))
        cfg = MetaConfig(**_given(architecture=architecture, inner_steps=inner_steps, inner_mode=inner_mode,
                                  first_order=first_order, meta_sgd=meta_sgd, meta_batch=meta_batch,
                                  inner_lr=inner_lr, width=width, seed=seed, checkpoint_every=checkpoint_every,
                                  independence=independence, independence_measure=independence_measure,
                                  lr_schedule=lr_schedule))
        meta_train_recipe(classifier, data, out, cfg, recipe, work=work, comparison=comparison,
                          comparison_out=comparison_out, resume=resume, overwrite=overwrite, data_dir=data_dir,
                          init=init, console=console, workers=workers, labels=table)
        return
    for flag, given in (("--amortized-share", amortized_share is not None), ("--comparison", comparison),
                        ("--comparison-out", comparison_out is not None), ("--work", work is not None)):
        if given:
            raise typer.BadParameter(f"{flag} sets the recipe: leave out --one-phase")
    cfg = MetaConfig(**_given(architecture=architecture, inner_steps=inner_steps, inner_mode=inner_mode, first_order=first_order,
                              meta_sgd=meta_sgd, outer_steps=outer_steps, meta_batch=meta_batch, inner_lr=inner_lr,
                              outer_lr=outer_lr, width=width, seed=seed, checkpoint_every=checkpoint_every,
                              independence=independence, independence_measure=independence_measure,
                              lr_schedule=lr_schedule))
    meta_train_bundle(classifier, data, out, cfg, resume=resume, overwrite=overwrite, data_dir=data_dir,
                      console=console, time_budget=None if minutes is None else minutes * 60, init=init,
                      workers=workers, labels=table)


@app.command("train-steps")
@handle_errors
def train_steps_cmd(
    explainer: Path = typer.Option(..., help="Explainer bundle folder whose refinement the steps start."),
    classifier: Path = typer.Option(..., help="Classifier bundle folder the explainer is for."),
    data: str = typer.Option(..., help="Training images, as meta-train takes them (the classifier's training "
                             "split)."),
    out: Path | None = typer.Option(None, help="Folder of the explainer with its learned steps (default: the "
                                    "explainer's own, with --overwrite)."),
    steps: int | None = typer.Option(None, min=1, help="K_φ, learned steps (refinement's first; Adam after) "
                                     "(default: 3)."),
    minutes: float | None = typer.Option(None, min=0.001, help="Training time in minutes (default: 8)."),
    updates: int | None = typer.Option(None, min=1, help="Stop after this many updates (default: the time "
                                       "decides)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    independence: float | None = typer.Option(None, min=0.0, help="λ of the independence term: the steps taken "
                                              "through a randomized classifier must not land where they land "
                                              "through the trained one (default: 0, off; doubles the cost)."),
    overwrite: bool = typer.Option(False, help="Replace the explainer bundle at OUT."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
) -> None:
    """Train an explainer's learned refinement steps: a small network that turns the classifier's gradient
    into refinement's first steps (the explainer and classifier stay frozen); refinement takes them first."""
    from medcam_fast.cli.metatrain import train_steps_job
    from medcam_fast.explainer.steps import StepTrainConfig
    from medcam_fast.method.learned import StepNetConfig

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    config = StepTrainConfig(**_given(net=None if steps is None else StepNetConfig(steps=steps), minutes=minutes,
                                      updates=updates, seed=seed, independence=independence))
    train_steps_job(explainer, classifier, data, config, out=out, overwrite=overwrite, data_dir=data_dir,
                    console=console, labels=table)


@app.command("export")
@handle_errors
def export_cmd(
    explainer: Path = typer.Option(..., help="Explainer bundle folder."),
    out: Path | None = typer.Option(None, help="ONNX file to write (default: explainer.onnx in the bundle)."),
    combined: Path | None = typer.Option(None, help="Also embed this classifier bundle: an explain-and-verify graph."),
    overwrite: bool = typer.Option(False, help="Replace an existing file."),
    allow_unsealed: bool = typer.Option(False, help="Accept bundles without a content hash (made by 0.1.0)."),
) -> None:
    """Export an explainer to one self-contained ONNX file (metadata included, parity-checked)."""
    from medcam_fast.cli.jobs import export_bundle

    _warn_unsealed(allow_unsealed)
    path = export_bundle(explainer, out, combined=combined, overwrite=overwrite, allow_unsealed=allow_unsealed)
    console.print(f"wrote {escape(str(path))}")


@app.command("seal")
@handle_errors
def seal_cmd(
    bundles: list[Path] = typer.Argument(..., help="Classifier or explainer bundle folders made by 0.1.0."),
) -> None:
    """Add a content hash to bundles made by 0.1.0, after checking their weights (and ONNX file) load."""
    from medcam_fast.cli.jobs import seal_bundles

    sealed = seal_bundles(bundles)
    for path in sealed:
        console.print(f"sealed {escape(str(path))}")
    console.print(f"{len(sealed)} sealed, {len(bundles) - len(sealed)} already sealed")


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), help="Output folder."),
    n: int = typer.Option(8, min=1, max=256, help="Number of generated sample images."),
    steps: int | None = typer.Option(None, min=0, help="Optimization steps per image."),
    overwrite: bool = typer.Option(True, help="Replace earlier demo outputs."),
    threads: int | None = THREADS,
) -> None:
    """Generate lesion images, explain them with the shipped demo bundle, print the summary."""
    from medcam_fast.cli.jobs import run_demo

    raise typer.Exit(run_demo(out, n=n, steps=steps, overwrite=overwrite, threads=threads, console=console,
                              err_console=err_console))


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder (one data set); default: --models."),
    explainer: Path | None = typer.Option(None, help="Explainer bundle folder or explainer.onnx for --classifier."),
    data: list[str] = typer.Option(["breast", "pneumonia", "blood", "path", "lesions"], help="Data set: a short "
                                   "name, an .npz file, a class-per-folder tree (repeat the option for several), or with --labels the folder "
                                   "of the table's files."),
    models: Path = typer.Option(Path("models"), help="Folder with <dataset>/classifier and <dataset>/explainer "
                                "(a --data path's stem: own.npz → <models>/own/); not read with --classifier."),
    methods: str | None = typer.Option(None, help="Comma-separated subset of the methods: "
                                       + ", ".join(EVALUATE_METHODS) + " (default: all)."),
    n: int | None = typer.Option(None, min=1, help="Test images per data set (default: 64)."),
    out: Path = typer.Option(Path("evaluate-out"), help="Output folder: report.md, results.json, figures/."),
    fills: str | None = typer.Option(None, help="Comma-separated fills for removed pixels, each scored in its own "
                                     "columns: zero, mean, blur, noisy-linear (ROAD's imputation; needs grad-cam) "
                                     "(default: all four)."),
    fc_subsets: int | None = typer.Option(None, min=2, help="Random pixel subsets per image for faithfulness "
                                          "correlation (default: 64)."),
    monotonicity_groups: int | None = typer.Option(None, min=2, help="Pixel groups per image for monotonicity "
                                                   "(default: 32)."),
    sanity_n: int | None = typer.Option(None, min=0, help="Images of the cascading-randomization check (0 skips "
                                        "it) (default: 32)."),
    sanity_stages: int | None = typer.Option(None, min=1, help="Randomization stages reported (default: 4)."),
    road_n: int | None = typer.Option(None, min=0, help="Images of ROAD (needs grad-cam; 0 skips it) (default: "
                                      "every image)."),
    refine_steps: int | None = typer.Option(None, min=0, help="Refinement steps of the refined method (default: 10)."),
    start_clip: float | None = typer.Option(None, min=0.0, help="The refined method's first guess is clipped to ± "
                                            "this before its steps (default: 3)."),
    fit_steps: int | None = typer.Option(None, min=1, help="Steps of the per-image fit (default: 300)."),
    rise_masks: int | None = typer.Option(None, min=1, help="Random masks per image for RISE (default: 4000)."),
    extremal_steps: int | None = typer.Option(None, min=1, help="Steps per area for Extremal Perturbations "
                                              "(default: 300)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per method call (default: 16)."),
    device: str | None = typer.Option(None, help="torch device, e.g. cpu or cuda (default: cpu)."),
    seed: int | None = typer.Option(None, help="Picks the images and seeds the random methods (default: 0)."),
    resume: bool = typer.Option(False, help="Reuse the methods an earlier run in OUT finished with the same settings."),
    overwrite: bool = typer.Option(False, help="Replace an earlier evaluation in OUT."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = THREADS,
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
) -> None:
    """Faithfulness under several fills, controls, localization, sanity and speed of medcam-fast against Grad-CAM,
    RISE and the other peers on the same images."""
    from medcam_fast.cli.jobs import evaluate_job
    from medcam_fast.evaluation.harness import EvalConfig

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
    cfg = EvalConfig(**_given(methods=chosen, n=n, fills=None if fills is None else tuple(_csv(fills)),
                              fc_subsets=fc_subsets, monotonicity_groups=monotonicity_groups, sanity_n=sanity_n,
                              sanity_stages=sanity_stages, road_n=road_n, refine_steps=refine_steps,
                              start_clip=start_clip, fit_steps=fit_steps, rise_masks=rise_masks,
                              extremal_steps=extremal_steps, batch_size=batch_size, device=device, seed=seed))
    evaluate_job(data, out, cfg, classifier=classifier, explainer=explainer, models=models, data_dir=data_dir,
                 resume=resume, overwrite=overwrite, console=console, labels=table)


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _csv(text))
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {text!r}") from None


_BENCH_DATA_HELP = ("Data set: an .npz file, a class-per-folder tree or a short name (repeat the option for "
                    "several), or with --labels the folder of the table's files; its bundles are "
                    "--classifier/--explainer, else <models>/<stem>/.")
_BENCH_DATASETS_HELP = "Data sets, comma-separated, as --data takes them (default: breast,pneumonia,blood,path)."


@bench_app.command("per-image")
@handle_errors
def bench_per_image_cmd(
    data: list[str] | None = typer.Option(None, help=_BENCH_DATA_HELP),
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder of the one --data."),
    models: Path = typer.Option(Path("models"), help="Folder with <dataset>/classifier per data set (not read "
                                "with --classifier)."),
    datasets: str | None = typer.Option(None, help=_BENCH_DATASETS_HELP),
    n: int = typer.Option(32, min=1, help="Test images per data set."),
    steps: int | None = typer.Option(None, min=1, help="Steps of the per-image fit (default: 300)."),
    batch_size: int = typer.Option(16, min=1, help="Images fitted together."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of the result files."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = THREADS,
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
) -> None:
    """The paper's per-image fit on test images of each data set: p_kept, p_removed, area, seconds."""
    from medcam_fast.cli.benchsets import bench_sets
    from medcam_fast.cli.reports import per_image_table
    from medcam_fast.evaluation.bench import bench_per_image

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    sets = bench_sets(data, None if datasets is None else _csv(datasets), models=models, classifier=classifier,
                      data_dir=data_dir, labels=table)
    results = bench_per_image(sets, n=n, steps=steps, batch_size=batch_size, out_dir=out,
                              progress=lambda line: console.print("  " + escape(line)))
    console.print(per_image_table(results))


@bench_app.command("quality")
@handle_errors
def bench_quality_cmd(
    data: list[str] | None = typer.Option(None, help=_BENCH_DATA_HELP),
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder of the one --data."),
    explainer: Path | None = typer.Option(None, help="Explainer bundle folder of the one --data; the --explainers "
                                          "folders beside it are measured too."),
    models: Path = typer.Option(Path("models"), help="Folder with <dataset>/classifier, explainer, amortized, unet "
                                "(not read with --classifier)."),
    datasets: str | None = typer.Option(None, help=_BENCH_DATASETS_HELP),
    n: int = typer.Option(32, min=1, help="Test images per data set."),
    ks: str = typer.Option("0,1,2,5,10,20,50", help="Refinement steps K to measure, comma-separated."),
    fit_steps: str = typer.Option("10,50,100,300", help="Per-image fit steps to measure, comma-separated (the last "
                                  "is the reference)."),
    modes: str = typer.Option("logits,weights", help="Refinement modes to measure, comma-separated: logits, "
                              "weights (U-Net explainers only)."),
    weights_ks: str | None = typer.Option(None, help="K to measure in the (slow) weights mode, comma-separated "
                                          "(default: the --ks values)."),
    explainers: str = typer.Option(",".join(_QUALITY_FOLDERS), help="Explainer folders measured when present "
                                   "beside the explainer: explainer (the meta-trained one), amortized (meta-train "
                                   "--comparison), unet (0.1), comma-separated."),
    batch_size: int = typer.Option(16, min=1, help="Images explained together."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of the result files."),
    data_dir: Path | None = DATA_DIR,
    threads: int | None = THREADS,
    labels: Path | None = LABELS,
    label_column: str | None = LABEL_COLUMN,
    file_column: str | None = FILE_COLUMN,
    group_column: str | None = GROUP_COLUMN,
) -> None:
    """Composite loss, p_kept and area against seconds per image: meta-trained, amortized, per-image fit."""
    from medcam_fast.cli.benchsets import bench_sets
    from medcam_fast.cli.reports import quality_table
    from medcam_fast.evaluation.bench import bench_quality

    table = label_table(labels, label_column, file_column, group_column)
    _threads(threads)
    unknown = [m for m in _csv(modes) if m not in ("logits", "weights")]
    if unknown:
        raise typer.BadParameter(f"unknown mode {unknown[0]!r}: choose from logits, weights")
    sets = bench_sets(data, None if datasets is None else _csv(datasets), models=models, classifier=classifier,
                      explainer=explainer, folders=tuple(_csv(explainers)), need_explainer=True, data_dir=data_dir,
                      labels=table)
    results = bench_quality(sets, n=n, ks=_ints(ks, "--ks"), fit_steps=_ints(fit_steps, "--fit-steps"),
                            modes=tuple(_csv(modes)),
                            weights_ks=None if weights_ks is None else _ints(weights_ks, "--weights-ks"),
                            batch_size=batch_size, out_dir=out, progress=lambda line: console.print("  " + escape(line)))
    console.print(quality_table(results))


@bench_app.command("speed")
@handle_errors
def bench_speed_cmd(
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of the result files."),
    repeats: int = typer.Option(7, min=1, help="Repeats per measurement (medians are reported)."),
) -> None:
    """Milliseconds per image: ONNX/torch first guess, + K steps, per-image fit, Grad-CAM; ratios to Grad-CAM."""
    from medcam_fast.cli.reports import speed_table
    from medcam_fast.evaluation.bench import bench_speed

    results = bench_speed(out_dir=out, repeats=repeats, progress=lambda line: console.print("  " + escape(line)))
    console.print(speed_table(results))


from medcam_fast.cli.scale_commands import bench_serve_cmd, serve_cmd  # noqa: E402 — Ray is imported on use

app.command("serve")(handle_errors(serve_cmd))
bench_app.command("serve")(handle_errors(bench_serve_cmd))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception:  # noqa: BLE001 — a bug: show the traceback and the documented exit code
        import traceback

        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
