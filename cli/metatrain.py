"""``medcam-fast meta-train``'s recipe job: amortized, then MAML, within one budget, optionally with the
equal-budget amortized comparison (:mod:`medcam_fast.explainer.recipe`), and ``medcam-fast train-steps``'s job
(the learned refinement steps, :mod:`medcam_fast.explainer.steps`), shown with :class:`~.progress.StepProgress`.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..classifiers.bundle import load_classifier
from ..data.labelled import LabelTable
from ..errors import UsageError
from ..explainer.bundle import ExplainerBundle, load_explainer, save_explainer
from ..explainer.meta import MetaConfig
from ..explainer.recipe import COMPARISON, RecipeConfig, RecipeResult, phase_folders, train_recipe
from ..explainer.steps import StepTrainConfig, train_steps
from .console import escape
from .jobs import _training_images, classifier_splits
from .progress import StepProgress

__all__ = ["meta_train_recipe", "default_work", "default_comparison_out", "train_steps_job"]


def default_work(out: Path) -> Path:
    """The phases' folder beside the explainer: ``<OUT>-phases``."""
    return out.parent / f"{out.name}-phases"


def default_comparison_out(out: Path) -> Path:
    """The comparison beside the explainer, where ``bench quality`` looks: ``<OUT's folder>/amortized``."""
    return out.parent / "amortized"


def _folder_for_bundle(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError("output path exists and is not a folder", path)


def meta_train_recipe(
    classifier: str | Path,
    data: str | Path,
    out: str | Path,
    meta: MetaConfig,
    recipe: RecipeConfig,
    *,
    work: str | Path | None = None,
    comparison: bool = False,
    comparison_out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    init: str | Path | None = None,
    console: Console | None = None,
    workers: int = 1,
    labels: LabelTable | None = None,
) -> RecipeResult:
    """Train an explainer with the shipped recipe (:mod:`medcam_fast.explainer.recipe`) on the training split
    of ``data`` and save it to ``out`` (and the comparison to ``comparison_out``); the phases' checkpoints stay in
    ``work``. Refuses to replace a bundle or checkpoint unless ``resume`` or ``overwrite``.

    Args:
        classifier: the classifier bundle folder.
        data: a short name, an ``.npz`` file or a class-per-folder tree.
        out: the explainer bundle's folder.
        meta: the MAML phase's settings (and the network's, every phase's).
        recipe: the budget and its split.
        work: the phases' folder (default :func:`default_work`).
        comparison: also train the equal-budget amortized comparison.
        comparison_out: its folder (default :func:`default_comparison_out`).
        resume: continue an interrupted recipe (finished phases are loaded).
        overwrite: start afresh.
        data_dir: where short data-set names are looked up.
        init: an explainer bundle to start the first phase from.
        console: where progress and the result go.
        workers: processes per phase (:mod:`medcam_fast.explainer.distributed`).
        labels: a label table of the folder ``data``: the classifier's own grouped split (its training split
            is trained on; :func:`~.jobs.classifier_splits`).
    """
    console = console or Console()
    out = Path(out)
    work = Path(work) if work is not None else default_work(out)
    base_out = Path(comparison_out) if comparison_out is not None else default_comparison_out(out)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if not comparison and comparison_out is not None:
        raise UsageError("--comparison-out names where --comparison goes: pass --comparison too")
    targets = [out, base_out] if comparison else [out]
    if len({t.resolve() for t in targets}) != len(targets) or any(
            t.resolve() in {f.resolve() for f in phase_folders(work).values()} for t in targets):
        raise UsageError("the explainer, the comparison and the phases' folders must differ", out)
    for t in targets:
        _folder_for_bundle(t)
    if not resume and not overwrite:
        busy = [t for t in targets if (t / "explainer.json").exists() or (t / "explainer.onnx").exists()]
        busy += [f for f in phase_folders(work).values()
                 if (f / "checkpoint.json").exists() or (f / "explainer.json").exists()]
        if busy:
            raise UsageError("holds an explainer or checkpoint; pass --resume to continue or --overwrite", busy[0])
    bundle = load_classifier(classifier)
    start = load_explainer(init) if init is not None else None
    sets = classifier_splits(data, data_dir, bundle, labels)
    _training_images(sets, data, ("train",))
    phases = recipe.phases(comparison)
    progress: dict[str, StepProgress] = {}

    def show(phase: str, step: int, log: dict[str, float]) -> None:
        if phase not in progress:
            for done in progress.values():
                done.__exit__(None, None, None)
            n = phases.index(phase) + 1
            progress.clear()
            progress[phase] = StepProgress(console, f"meta-train {phase} ({n}/{len(phases)})",
                                           budget_seconds=recipe.seconds(phase)).__enter__()
        progress[phase].update(step, log)

    try:
        result = train_recipe(bundle, sets["train"].images, meta, recipe, work, comparison=comparison, resume=resume,
                              init=start, callback=show, workers=workers)
    except BaseException as e:
        for p in progress.values():
            p.__exit__(type(e), e, e.__traceback__)
        raise
    for p in progress.values():
        p.__exit__(None, None, None)
    written = [(out, result.explainer)] + ([(base_out, result.comparison)] if result.comparison is not None else [])
    for folder, made in written:
        _save_fresh(made, folder)
    for phase, f in result.phases.items():
        state = "finished earlier, loaded" if f["loaded"] else f"{f['steps']} steps, {float(f['seconds'] or 0):.0f} s"
        console.print(escape(f"  {phase}: {f['method']}, {state} (budget {float(f['budget_seconds']):.0f} s), "
                             f"in {f['folder']}"), soft_wrap=True, highlight=False)
    console.print(escape(f"wrote {out}: {result.explainer.training.get('method')}"
                         + (f"; comparison {base_out}" if COMPARISON in result.phases else "")), soft_wrap=True,
                  highlight=False)
    return result


def _save_fresh(bundle: ExplainerBundle, folder: Path) -> None:
    """Save ``bundle`` to ``folder``, first removing an ``explainer.onnx`` there: it was exported from an earlier
    explainer and would otherwise be recorded (sealed) as this one's."""
    (folder / "explainer.onnx").unlink(missing_ok=True)
    save_explainer(bundle, folder)


def train_steps_job(
    explainer: str | Path,
    classifier: str | Path,
    data: str | Path,
    config: StepTrainConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    console: Console | None = None,
    labels: LabelTable | None = None,
) -> Path:
    """Train learned refinement steps for an explainer (:func:`~medcam_fast.explainer.steps.train_steps`) on the
    classifier's training split of ``data`` and save the explainer with them to ``out`` (default: its own
    folder). Refuses to replace a bundle unless ``overwrite``. Returns the bundle's folder.

    Args:
        explainer: the explainer bundle folder.
        classifier: the classifier bundle folder it explains.
        data: a short name, an ``.npz`` file or a class-per-folder tree.
        config: the training settings.
        out: where the bundle with steps goes (its first-guess network unchanged; an ``explainer.onnx`` already
            there is kept and recorded).
        overwrite: replace the bundle at ``out``.
        data_dir: where short data-set names are looked up.
        console: where progress and the result go.
        labels: a label table of the folder ``data`` (:func:`~.jobs.classifier_splits`).
    """
    console = console or Console()
    source = Path(explainer)
    target = Path(out) if out is not None else source
    _folder_for_bundle(target)
    if (target / "explainer.json").exists() and not overwrite:
        raise UsageError("holds an explainer; pass --overwrite to add the learned steps to it", target)
    bundle = load_explainer(source)
    clf = load_classifier(classifier)
    sets = classifier_splits(data, data_dir, clf, labels)
    _training_images(sets, data, ("train",))
    with StepProgress(console, "train-steps", budget_seconds=60 * config.minutes) as progress:
        net, facts = train_steps(bundle, clf, sets["train"].images, config,
                                 callback=lambda i, log: progress.update(i, log))
    bundle.steps, bundle.steps_training = net, facts
    if target.resolve() != source.resolve():
        (target / "explainer.onnx").unlink(missing_ok=True)  # another explainer's graph
    save_explainer(bundle, target)
    console.print(escape(f"wrote {target}: {facts['updates']} updates in {facts['seconds']:.0f} s, "
                         f"{config.net.steps} learned steps"), soft_wrap=True, highlight=False)
    return target
