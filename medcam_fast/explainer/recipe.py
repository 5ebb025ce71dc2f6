"""The shipped explainer recipe as one call: amortized training, then logits-inner-loop MAML on top of it,
within one time budget — and, on request, the equal-budget amortized explainer ``bench quality`` compares
against.

Each phase is one :func:`~.meta.meta_train` run with its own checkpoint folder under ``work_dir``:

1. ``amortized`` — the outer loss at zero steps only (``inner_steps = 0``, Dabkowski & Gal 2017) for
   ``amortized_share × minutes``, at :class:`~.meta.MetaConfig`'s outer learning rate;
2. ``maml`` — the caller's :class:`~.meta.MetaConfig` (by default the logits inner loop, K = 10, first
   order, step 1.0) at the outer learning rate ``maml_outer_lr``, started from phase 1's network (``init``),
   for the rest of the budget;
3. ``comparison`` (optional) — amortized training alone for the *whole* budget: a separate run with phase 1's
   settings and seed (so its first ``amortized_share × minutes`` repeat phase 1 step for step), the
   comparison at equal training time.

This is exactly what ``make explainers`` ran as two commands before (5 + 5 minutes, ``--outer-steps 100000``
so that time decides, ``--outer-lr 1e-3`` for the MAML phase, ``--init`` the amortized bundle). Time is
meta-training's own clock — the seconds spent in outer steps, as ``time_budget`` counts them — so loading
the data and the classifier's reference pass are not charged to the budget. ``phase_steps`` caps each
phase's outer steps as well (tests, quick looks); the comparison is then capped at the phases' steps together.

A phase whose folder holds ``explainer.json`` is finished; with ``resume`` it is loaded instead of rerun
(refused if it was trained with other settings), and a phase with a checkpoint continues from it (:func:`~.meta.meta_train`'s exact resume), so a killed
recipe resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._config import Config
from ..classifiers.frozen import ClassifierBundle
from ..errors import UsageError
from .bundle import ExplainerBundle, load_explainer
from .meta import MetaConfig, meta_train

__all__ = ["RecipeConfig", "RecipeResult", "RecipeCallback", "PHASES", "AMORTIZED", "MAML", "COMPARISON",
           "PHASE_OUTER_STEPS", "train_recipe", "phase_folders"]

AMORTIZED, MAML, COMPARISON = "amortized", "maml", "comparison"
#: The phases in the order they run (the comparison only on request).
PHASES: tuple[str, ...] = (AMORTIZED, MAML, COMPARISON)

#: The outer steps a phase may take when only its time budget is to stop it (``make explainers`` passed
#: ``--outer-steps 100000``: more than any budget here reaches).
PHASE_OUTER_STEPS = 100_000

#: ``callback(phase, step, log)`` after each outer step of a phase; ``log["seconds"]`` is the phase's
#: training time so far (see :func:`~.meta.meta_train`).
RecipeCallback = Callable[[str, int, dict[str, float]], None]


@dataclass(frozen=True)
class RecipeConfig(Config):
    """Settings of :func:`train_recipe` (the :class:`~.meta.MetaConfig` of the phases is passed beside it).

    Args:
        minutes: the whole training budget of the explainer, in minutes of meta-training time.
        amortized_share: the fraction of ``minutes`` given to the amortized phase (0: MAML only, 1: amortized
            only); the MAML phase gets the rest.
        maml_outer_lr: the outer (Adam) learning rate of the MAML phase (the amortized phase keeps
            :class:`~.meta.MetaConfig`'s ``outer_lr``).
        phase_steps: at most this many outer steps per phase (None: the time budget alone decides).
    """

    minutes: float = 10.0
    amortized_share: float = 0.5
    maml_outer_lr: float = 1e-3
    phase_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise UsageError(f"the recipe's time budget must be positive, got {self.minutes!r} minutes")
        if not 0.0 <= self.amortized_share <= 1.0:
            raise UsageError(f"the amortized share must lie in [0, 1], got {self.amortized_share!r}")
        if not self.maml_outer_lr > 0:
            raise UsageError(f"the MAML phase's outer learning rate must be positive, got {self.maml_outer_lr!r}")
        if self.phase_steps is not None and self.phase_steps < 1:
            raise UsageError(f"phase_steps must be at least 1, got {self.phase_steps!r}")

    def phases(self, comparison: bool = False) -> list[str]:
        """The phases that run: those with a share of the budget, then the comparison when asked for."""
        out = [p for p, share in ((AMORTIZED, self.amortized_share), (MAML, 1.0 - self.amortized_share))
               if share > 0]
        return out + [COMPARISON] if comparison else out

    def seconds(self, phase: str) -> float:
        """The training-time budget of ``phase`` in seconds (the comparison's is the whole budget)."""
        share = {AMORTIZED: self.amortized_share, MAML: 1.0 - self.amortized_share, COMPARISON: 1.0}[phase]
        return share * self.minutes * 60.0

    def meta_config(self, phase: str, meta: MetaConfig) -> MetaConfig:
        """The :class:`~.meta.MetaConfig` of ``phase`` derived from the caller's ``meta``: zero inner steps for
        the amortized phase and the comparison, ``maml_outer_lr`` for the MAML phase; the step cap is
        ``phase_steps`` (the comparison: the steps of the phases together), else :data:`PHASE_OUTER_STEPS`."""
        cap = PHASE_OUTER_STEPS if self.phase_steps is None else self.phase_steps
        if phase == MAML:
            return meta.with_(outer_steps=cap, outer_lr=self.maml_outer_lr)
        if phase == COMPARISON and self.phase_steps is not None:
            cap = self.phase_steps * len(self.phases())
        return meta.with_(inner_steps=0, meta_sgd=False, outer_steps=cap)


@dataclass
class RecipeResult:
    """What :func:`train_recipe` made: the explainer (the last phase's network), the comparison when asked for,
    and per phase its folder, steps, seconds and whether it was loaded as finished by an earlier run."""

    explainer: ExplainerBundle
    comparison: ExplainerBundle | None
    phases: dict[str, dict[str, object]]


def phase_folders(work_dir: str | Path) -> dict[str, Path]:
    """Where each phase keeps its checkpoint and bundle: ``work_dir/<phase>``."""
    return {p: Path(work_dir) / p for p in PHASES}


def train_recipe(
    classifier: ClassifierBundle,
    images: np.ndarray,
    meta: MetaConfig,
    recipe: RecipeConfig,
    work_dir: str | Path,
    *,
    comparison: bool = False,
    resume: bool = False,
    init: ExplainerBundle | None = None,
    callback: RecipeCallback | None = None,
    workers: int = 1,
) -> RecipeResult:
    """Run the recipe's phases (module docstring) for ``classifier`` on raw training ``images``.

    Args:
        classifier: the frozen classifier bundle to explain.
        images: raw training images, as its preprocessing takes them.
        meta: the settings of the MAML phase (and of the network, sampling and loss of every phase).
        recipe: the budget and its split.
        work_dir: the phases' folders (``work_dir/amortized``, ``/maml``, ``/comparison``), each with its
            checkpoint and bundle.
        comparison: also train the equal-budget amortized comparison.
        resume: load finished phases and continue an interrupted one from its checkpoint; without it every
            phase starts afresh (a phase folder's old checkpoint is replaced).
        init: start the first phase (and the comparison) from this explainer's network instead of a fresh one.
        callback: progress, called after every outer step.
        workers: processes each phase trains on (:mod:`~medcam_fast.explainer.distributed`).

    Returns:
        The explainer, the comparison (or None) and per-phase facts. The explainer's ``training`` records the
        recipe (``training["recipe"]``).
    """
    folders = phase_folders(work_dir)
    say = callback or (lambda _phase, _step, _log: None)
    facts: dict[str, dict[str, object]] = {}
    made: dict[str, ExplainerBundle] = {}
    start = init
    for phase in recipe.phases(comparison):
        cfg = recipe.meta_config(phase, meta)
        folder = folders[phase]
        if resume and (folder / "explainer.json").is_file():
            bundle = load_explainer(folder)
            if MetaConfig.from_dict(bundle.training.get("config", {})).resolved() != cfg.resolved():
                raise UsageError(f"the finished {phase} phase was trained with other settings; resume with the "
                                 "same options or start afresh", folder)
            loaded = True
        else:
            if not resume:
                for name in ("checkpoint.json", "checkpoint.safetensors", "explainer.json", "weights.safetensors"):
                    (folder / name).unlink(missing_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            bundle = meta_train(
                classifier, images, cfg, out_dir=folder, resume=resume and (folder / "checkpoint.json").is_file(),
                callback=lambda step, log, phase=phase: say(phase, step, log), time_budget=recipe.seconds(phase),
                init=init if phase == COMPARISON else start, workers=workers)
            loaded = False
        made[phase] = bundle
        facts[phase] = {"folder": str(folder), "steps": bundle.training.get("steps_done"),
                        "seconds": bundle.training.get("seconds"), "budget_seconds": recipe.seconds(phase),
                        "method": bundle.training.get("method"), "loaded": loaded}
        if phase != COMPARISON:
            start = bundle
    explainer = made[MAML] if MAML in made else made[AMORTIZED]
    explainer.training = {**explainer.training, "recipe": {**recipe.to_dict(), "phases": {
        p: {k: v for k, v in f.items() if k in ("steps", "seconds", "budget_seconds", "method")}
        for p, f in facts.items() if p != COMPARISON}}}
    return RecipeResult(explainer, made.get(COMPARISON), facts)
