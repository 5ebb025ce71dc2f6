"""Which data sets ``medcam-fast bench per-image`` and ``bench quality`` measure, and with which bundles.

A data set is a short name (``breast``) or a path (an ``.npz`` file, a class-per-folder tree), as for every
other command. Its bundles are named explicitly (``--classifier``, ``--explainer``: one data set), or found
by convention under ``--models``: ``<models>/<name>/classifier`` and ``explainer``, where a path's name is its
stem (``own.npz`` → ``models/own/``). A folder of files named by a label table (``--labels``) is one data set,
measured on the test split of the classifier's own patient-grouped split. ``bench quality`` also measures the explainers of ``--explainers``
(folder names: ``amortized``, ``unet``) that lie beside the explainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..classifiers.bundle import load_classifier
from ..classifiers.frozen import ClassifierBundle
from ..data.labelled import LabelTable
from ..errors import ModelError, UsageError
from ..evaluation.bench import QUALITY_FOLDERS, BenchSet
from ..explainer.bundle import load_explainer
from .jobs import classifier_splits, dataset_name

__all__ = ["bench_sets", "DEFAULT_DATASETS"]

#: The shared sets measured when no data set is named.
DEFAULT_DATASETS: tuple[str, ...] = ("breast", "pneumonia", "blood", "path")


def bench_sets(
    data: Sequence[str] | None,
    datasets: Sequence[str] | None,
    *,
    models: Path,
    classifier: Path | None = None,
    explainer: Path | None = None,
    folders: Sequence[str] = QUALITY_FOLDERS,
    need_explainer: bool = False,
    data_dir: Path | None = None,
    labels: LabelTable | None = None,
) -> dict[str, BenchSet]:
    """The :class:`~medcam_fast.evaluation.bench.BenchSet` of each data set, their bundles loaded (checked)
    before any data is read.

    Args:
        data: ``--data`` values (paths or short names), or None.
        datasets: ``--datasets`` values, or None (neither: :data:`DEFAULT_DATASETS`).
        models: the folder of the ``<name>/classifier`` convention.
        classifier: the classifier bundle of the one data set (instead of the convention).
        explainer: its explainer bundle (``bench quality``).
        folders: explainer folders measured beside the explainer when present.
        need_explainer: ``bench quality``: an explainer is required.
        data_dir: where short names are looked up.
        labels: the label table of the one ``--data`` folder: its test split is the one the classifier was
            trained beside (:func:`~.jobs.classifier_splits`).

    Raises:
        UsageError: both ``--data`` and ``--datasets``, or ``--classifier`` / ``--explainer`` with several
            data sets.
        ModelError: a bundle that is missing or does not load (its path named).
    """
    if data and datasets:
        raise UsageError("--data and --datasets name the same thing: give one of them")
    specs = list(data or datasets or DEFAULT_DATASETS)
    if labels is not None and len(specs) != 1:
        raise UsageError("--labels names the files of one data set: give one --data")
    if (classifier is not None or explainer is not None) and len(specs) != 1:
        raise UsageError("--classifier and --explainer are the bundles of one data set: give one --data")
    if explainer is not None and classifier is None:
        raise UsageError("--explainer needs the --classifier it explains")
    chosen: dict[str, tuple[str, Path, Path | None, ClassifierBundle]] = {}
    for spec in specs:
        name = dataset_name(spec)
        if name in chosen:
            raise UsageError(f"two data sets are named {name!r}: give each its own file name", spec)
        if classifier is not None:
            clf, ex = classifier, explainer
        else:
            clf, ex = models / name / "classifier", models / name / "explainer"
            if not (clf / "classifier.json").is_file():
                raise ModelError(f"no classifier bundle for data set {spec!r}: pass --classifier (and "
                                 f"--explainer), or put them in {models / name}/", clf)
        bundle = load_classifier(clf)
        if need_explainer:
            if ex is None:
                raise UsageError("bench quality measures an explainer: pass --explainer with --classifier")
            load_explainer(ex)
        chosen[name] = (spec, clf, ex if need_explainer else None, bundle)
    return {name: BenchSet.beside(classifier_splits(spec, data_dir, bundle, labels)["test"], clf, ex, folders)
            for name, (spec, clf, ex, bundle) in chosen.items()}
