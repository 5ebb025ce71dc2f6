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

from medcam_fast.cli.console import console, err_console, escape, print_error
from medcam_fast.errors import EXIT_CODES, MedCamError
from medcam_fast.types import Architecture, InnerMode, RefineMode

_EXIT_HELP = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."

app = typer.Typer(
    name="medcam-fast",
    help="Evidence masks for frozen medical-image classifiers (Med-CAM, made fast).\n\n" + _EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: measure, compare peers in the same run, print ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

F = TypeVar("F", bound=Callable[..., Any])


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
    data: str = typer.Option(..., help="Data set: a .npz path, a class-per-folder directory, or "
                             "breast|pneumonia|blood|path|brain."),
    out: Path = typer.Option(..., help="Output folder of the classifier bundle."),
    arch: str | None = typer.Option(None, help="Architecture: resnet18 or vit (default: resnet18)."),
    epochs: int | None = typer.Option(None, min=1, help="Training epochs (default: 30)."),
    width: int | None = typer.Option(None, help="Architecture width (default: per architecture)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per step (default: 64)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default: 0.002)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    data_dir: Path | None = typer.Option(None, envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle in OUT."),
) -> None:
    """Train a built-in classifier and write a classifier bundle (safetensors + JSON)."""
    from medcam_fast.classifiers.training import TrainConfig
    from medcam_fast.cli.jobs import train_classifier_bundle

    _threads(threads)
    cfg = TrainConfig(**_given(arch=arch, epochs=epochs, width=width, batch_size=batch_size, lr=lr, seed=seed))
    bundle, path = train_classifier_bundle(data, out, cfg, data_dir=data_dir, overwrite=overwrite, console=console)
    m = bundle.metrics
    console.print(
        f"wrote {path}: {bundle.arch}, val accuracy {m.get('val_accuracy', float('nan')):.3f}, "
        f"test accuracy {m.get('test_accuracy', float('nan')):.3f}"
    )


@app.command("import-classifier")
@handle_errors
def import_classifier_cmd(
    out: Path = typer.Option(..., help="Output folder of the classifier bundle."),
    classes: str = typer.Option(..., help="Class names, comma-separated, in logit order."),
    size: int = typer.Option(..., min=8, help="Input side in pixels (square)."),
    channels: int = typer.Option(..., min=1, max=3, help="Input channels (1 or 3)."),
    mean: str = typer.Option(..., help="Normalization mean per channel on [0,1], comma-separated."),
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
    inputs: list[str] = typer.Argument(..., help="Image files, folders, glob patterns or MedMNIST .npz files."),
    classifier: Path | None = typer.Option(None, help="Classifier bundle folder (default: the embedded demo)."),
    explainer: Path | None = typer.Option(None, help="Explainer bundle folder or .onnx file (default: the demo's, "
                                          "with the demo classifier; none with another classifier: per-image fit)."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Refine the first guess (--no-refine: 0 steps)."),
    mode: RefineMode | None = typer.Option(None, help="How masks are made (default: logits with an explainer, "
                                           "full without)."),
    steps: int | None = typer.Option(None, min=0, help="Refinement steps per image (default: 10; full mode 300)."),
    allow_mismatch: bool = typer.Option(False, help="Use an explainer trained for another classifier."),
    allow_import: bool = typer.Option(False, help="Let a bundle made by import-classifier --import run its factory."),
    allow_unsealed: bool = typer.Option(False, help="Accept bundles without a content hash (made by 0.1.0; "
                                        "`medcam-fast seal` adds one)."),
    out: Path = typer.Option(Path("medcam-out"), help="Output folder."),
    target: int | None = typer.Option(None, min=0, help="Class to explain (default: the predicted class)."),
    batch_size: int = typer.Option(16, min=1, help="Images explained together."),
    device: str = typer.Option("cpu", help="torch device: cpu or cuda (onnxruntime picks CUDA itself when it can)."),
    fmt: str = typer.Option("png,npy,json", "--format", help="Outputs: any of png, npy, json (comma-separated)."),
    split: str = typer.Option("test", help="Split of .npz inputs: train, val, test or all."),
    index: str | None = typer.Option(None, help="Indices of .npz images, e.g. 0-9,15 (default: all)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    resume: bool = typer.Option(False, help="Skip images whose outputs are complete."),
    fail_fast: bool = typer.Option(False, help="Stop at the first input that cannot be read."),
    max_pixels: int = typer.Option(50_000_000, min=1, help="Refuse image files with more pixels (checked before decoding)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch and onnxruntime (default: 1 for "
                                       "images up to 96 px, else the cores not busy with other work)."),
) -> None:
    """Explain images: binary mask, soft mask, overlay and JSON per image; summary.csv/json per run."""
    from medcam_fast.cli.jobs import explain_inputs

    _warn_unsealed(allow_unsealed)
    if not refine and steps:
        raise typer.BadParameter("--no-refine and --steps exclude each other")
    code = explain_inputs(
        inputs, classifier=classifier, explainer=explainer, mode=mode, allow_mismatch=allow_mismatch,
        allow_import=allow_import, allow_unsealed=allow_unsealed, device=device, out=out,
        steps=0 if not refine else steps, target=target, batch_size=batch_size,
        formats=fmt, split=split, index=index, overwrite=overwrite, resume=resume, fail_fast=fail_fast,
        max_pixels=max_pixels, threads=threads,
        console=console, err_console=err_console,
    )
    raise typer.Exit(code)


@app.command("meta-train")
@handle_errors
def meta_train_cmd(
    classifier: Path = typer.Option(..., help="Classifier bundle folder the explainer is for."),
    data: str = typer.Option(..., help="Training images: a .npz path, a class-per-folder directory, or a short name."),
    out: Path = typer.Option(..., help="Output folder: checkpoints and the explainer bundle."),
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
    outer_steps: int | None = typer.Option(None, min=1, help="Meta-updates (default: 400)."),
    meta_batch: int | None = typer.Option(None, min=1, help="Images per meta-update (default: 8)."),
    inner_lr: float | None = typer.Option(None, help="Inner step size (default: 0.1 weights, 1.0 logits)."),
    outer_lr: float | None = typer.Option(None, help="Outer (Adam) learning rate (default: 0.002)."),
    width: int | None = typer.Option(None, min=2, help="Network width (default: 32 decoder, 16 U-Net)."),
    checkpoint_every: int | None = typer.Option(None, min=1, help="Outer steps between checkpoints (default: 25)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    minutes: float | None = typer.Option(None, min=0.1, help="Finish after this much training time."),
    init: Path | None = typer.Option(None, help="Start from this explainer bundle (e.g. an amortized one)."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in OUT."),
    overwrite: bool = typer.Option(False, help="Start afresh even if OUT holds a checkpoint or bundle."),
    data_dir: Path | None = typer.Option(None, envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
) -> None:
    """Meta-train a shared explainer for a classifier (MAML on the composite loss)."""
    from medcam_fast.cli.jobs import meta_train_bundle
    from medcam_fast.explainer.meta import MetaConfig

    _threads(threads)
    cfg = MetaConfig(**_given(architecture=architecture, inner_steps=inner_steps, inner_mode=inner_mode, first_order=first_order,
                              meta_sgd=meta_sgd, outer_steps=outer_steps, meta_batch=meta_batch, inner_lr=inner_lr,
                              outer_lr=outer_lr, width=width, seed=seed, checkpoint_every=checkpoint_every))
    meta_train_bundle(classifier, data, out, cfg, resume=resume, overwrite=overwrite, data_dir=data_dir,
                      console=console, time_budget=None if minutes is None else minutes * 60, init=init)


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
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
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
                                   "name, an .npz file or a class-per-folder tree (repeat the option for several)."),
    models: Path = typer.Option(Path("models"), help="Folder with <dataset>/classifier and <dataset>/explainer."),
    methods: str | None = typer.Option(None, help="Comma-separated subset of the methods (default: all)."),
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
    data_dir: Path | None = typer.Option(None, envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
) -> None:
    """Faithfulness under several fills, controls, localization, sanity and speed of medcam-fast against Grad-CAM,
    RISE, … on the same images."""
    from medcam_fast.cli.jobs import evaluate_job
    from medcam_fast.evaluation.harness import EvalConfig

    _threads(threads)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
    cfg = EvalConfig(**_given(methods=chosen, n=n, fills=None if fills is None else tuple(_csv(fills)),
                              fc_subsets=fc_subsets, monotonicity_groups=monotonicity_groups, sanity_n=sanity_n,
                              sanity_stages=sanity_stages, road_n=road_n, refine_steps=refine_steps,
                              start_clip=start_clip, fit_steps=fit_steps, rise_masks=rise_masks,
                              extremal_steps=extremal_steps, batch_size=batch_size, device=device, seed=seed))
    evaluate_job(data, out, cfg, classifier=classifier, explainer=explainer, models=models, data_dir=data_dir,
                 resume=resume, overwrite=overwrite, console=console)


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _bench_sets(models: Path, datasets: list[str], data_dir: Path | None) -> dict[str, Any]:
    """Test images of each data set whose classifier bundle ``models/<d>/classifier`` loads (checked first:
    a missing bundle fails before any data is read)."""
    from medcam_fast.classifiers.bundle import load_classifier
    from medcam_fast.cli.jobs import load_splits

    for d in datasets:
        load_classifier(models / d / "classifier")
    return {d: load_splits(d, data_dir)["test"] for d in datasets}


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _csv(text))
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {text!r}") from None


@bench_app.command("per-image")
@handle_errors
def bench_per_image_cmd(
    models: Path = typer.Option(Path("models"), help="Folder with one classifier bundle per data set."),
    datasets: str = typer.Option("breast,pneumonia,blood,path", help="Data sets (comma-separated)."),
    n: int = typer.Option(32, min=1, help="Test images per data set."),
    steps: int | None = typer.Option(None, min=1, help="Steps of the per-image fit (default: 300)."),
    batch_size: int = typer.Option(16, min=1, help="Images fitted together."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of the result files."),
    data_dir: Path | None = typer.Option(None, envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
) -> None:
    """The paper's per-image fit on the shared data sets: p_kept, p_removed, area, seconds."""
    from medcam_fast.cli.reports import per_image_table
    from medcam_fast.evaluation.bench import bench_per_image

    _threads(threads)
    sets = _bench_sets(models, _csv(datasets), data_dir)
    results = bench_per_image(models, sets, n=n, steps=steps, batch_size=batch_size, out_dir=out,
                              progress=lambda line: console.print("  " + escape(line)))
    console.print(per_image_table(results))


@bench_app.command("quality")
@handle_errors
def bench_quality_cmd(
    models: Path = typer.Option(Path("models"), help="Folder with <dataset>/classifier, explainer, amortized bundles."),
    datasets: str = typer.Option("breast,pneumonia,blood,path", help="Data sets (comma-separated)."),
    n: int = typer.Option(32, min=1, help="Test images per data set."),
    ks: str = typer.Option("0,1,2,5,10,20,50", help="Refinement steps K to measure."),
    fit_steps: str = typer.Option("10,50,100,300", help="Per-image fit steps to measure (the last is the reference)."),
    modes: str = typer.Option("logits,weights", help="Refinement modes to measure."),
    weights_ks: str | None = typer.Option(None, help="K for the (slow) weights mode (default: --ks)."),
    explainers: str = typer.Option("explainer,unet", help="Explainer folders under <models>/<dataset>."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder of the result files."),
    data_dir: Path | None = typer.Option(None, envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
) -> None:
    """Composite loss, p_kept and area against seconds per image: meta-trained, amortized, per-image fit."""
    from medcam_fast.cli.reports import quality_table
    from medcam_fast.evaluation.bench import bench_quality

    _threads(threads)
    sets = _bench_sets(models, _csv(datasets), data_dir)
    results = bench_quality(models, sets, n=n, ks=_ints(ks, "--ks"), fit_steps=_ints(fit_steps, "--fit-steps"),
                            modes=tuple(_csv(modes)),
                            weights_ks=None if weights_ks is None else _ints(weights_ks, "--weights-ks"),
                            folders=tuple(_csv(explainers)), out_dir=out,
                            progress=lambda line: console.print("  " + escape(line)))
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
