"""Training an explainer's learned refinement steps (:mod:`medcam_fast.method.learned`) on its own training images.

The explainer's first-guess network and the classifier stay frozen; only ``φ`` (the step network) is trained.
Each update draws a batch of images and targets (the predicted class; another one with probability
``other_class_prob``, 0 by default), takes the ``K_φ`` learned steps from the batch's first guesses and
minimizes the loss along the way:

    J(φ) = Σ_{k=1}^{K_φ} w_k · mean_i L_i(σ(U(u_k)/τ)),   w_k = intermediate (k < K_φ),  w_{K_φ} = 1

the last step's loss on the straight-through binary mask (the mask refinement reports is binary). With
``independence`` λ > 0 the same steps are also taken through a randomized copy of the classifier (its first
guess, its gradients; a fresh draw every ``RANDOM_CLASSIFIER_EVERY`` updates, as meta-training's term) and

    J(φ) += λ · mean_i r_i²(u_{K_φ}, ũ_{K_φ})

(:func:`~.meta.independence_loss`): steps that land where the classifier does not matter — an image prior —
pay for it. Gradients ``g_k`` enter the steps as inputs (first order,
:func:`~medcam_fast.method.learned.gradient_of_logits`), so one update costs ``K_φ + 1`` classifier forward
and backward passes (twice that with the independence term). Training stops after ``updates`` updates or
``minutes`` of wall time, whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._config import Config
from ..classifiers.frozen import ClassifierBundle, FrozenClassifier
from ..errors import UsageError
from ..method.decoder import DecoderConfig
from ..method.first_guess import ExplainerNet, first_guess
from ..method.learned import StepNet, StepNetConfig, gradient_of_logits, learned_trajectory
from ..method.losses import Reference
from ..method.masking import RandomSource
from ..types import Correlation, choice
from .bundle import ExplainerBundle
from .meta import RANDOM_CLASSIFIER_EVERY, independence_loss, random_classifier

__all__ = ["StepTrainConfig", "train_steps", "draw_seed"]


@dataclass(frozen=True)
class StepTrainConfig(Config):
    """Settings of :func:`train_steps`.

    Args:
        net: the step network's shape (``K_φ`` and width).
        minutes: wall-time budget.
        updates: most updates (None: the budget alone decides).
        batch: images per update.
        lr: Adam learning rate of ``φ``.
        intermediate: weight ``w_k`` of the loss after each learned step but the last.
        other_class_prob: probability of a target other than the predicted class. 0: the steps learn the
            problem ``explain`` poses by default. Meta-training's 0.2 cost most of what the steps buy: breast's
            refined loss ÷ the fit's at K = 3 / 10 on its 64 sampled validation images was 1.098 / 1.052 with
            it, 1.060 / 1.011 without (8 minutes each; Adam steps alone: 1.110 / 1.069) — other classes' losses
            are larger and dominate the mean. Other classes are refined with the same steps (their gradient
            still drives them).
        seed: seeds ``φ``'s initialization, the batches, the targets and the robustness draws.
        independence: λ of the independence term (0: off).
        independence_measure: its correlation (meta-training's ``spearman`` by default).
    """

    net: StepNetConfig = StepNetConfig()
    minutes: float = 8.0
    updates: int | None = None
    batch: int = 16
    lr: float = 1e-3
    intermediate: float = 0.25
    other_class_prob: float = 0.0
    seed: int = 0
    independence: float = 0.0
    independence_measure: Correlation = Correlation.SPEARMAN

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            object.__setattr__(self, "net", StepNetConfig.from_dict(self.net))
        object.__setattr__(self, "independence_measure",
                           choice(Correlation, self.independence_measure, "independence measure"))
        if self.independence < 0:
            raise ValueError(f"independence must be ≥ 0, got {self.independence!r}")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes!r}")
        if self.updates is not None and self.updates < 1:
            raise ValueError(f"updates must be ≥ 1, got {self.updates!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {self.batch!r}")


def _through(step_net: StepNet, random_clf: FrozenClassifier, explainer: ExplainerBundle, net: ExplainerNet,
             x: torch.Tensor, target: torch.Tensor, gen: RandomSource) -> torch.Tensor:
    """``ũ_{K_φ}``: the learned steps taken through the randomized classifier, from the first guess it gives
    (differentiable in φ; its gradients are inputs, as in training)."""
    with torch.no_grad():
        ref = Reference(*random_clf(x))
    obj = explainer.objective(random_clf, x, target, reference=ref)
    with torch.no_grad():
        u0 = first_guess(net, obj).clamp(-step_net.config.clip, step_net.config.clip)
    return learned_trajectory(obj, u0, step_net, step_net.config.steps, gen)


def draw_seed(seed: int, update: int) -> int:
    """The seed of update ``update``'s robustness draws (with each image's pixels,
    :meth:`~medcam_fast.method.objective.Objective.generators`): ``SeedSequence([seed, update])``'s first word."""
    return int(np.random.SeedSequence([seed, update]).generate_state(1)[0])


def train_steps(
    explainer: ExplainerBundle,
    classifier: ClassifierBundle,
    images: np.ndarray,
    config: StepTrainConfig = StepTrainConfig(),
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[StepNet, dict[str, Any]]:
    """Train learned steps for ``explainer`` (the module docstring's ``J(φ)``).

    Args:
        explainer: the explainer whose first guesses the steps start from (not changed).
        classifier: the classifier it explains.
        images: training images (raw, as the classifier's preprocessing takes them), ``[N,H,W(,C)]``.
        config: the training settings.
        callback: called after each update with its index and logged values (``loss`` per step, ``seconds``).

    Returns:
        The trained step network (eval mode) and the facts of its training (for the bundle).

    Raises:
        UsageError: an explainer trained for another classifier, or no images.
    """
    if explainer.classifier_sha256 != classifier.sha256:
        raise UsageError("the explainer was trained for another classifier: train its steps with that one")
    if len(images) == 0:
        raise UsageError("no training images")
    cfg = config
    pre = classifier.preprocess
    taps = explainer.net_config.tap_names if isinstance(explainer.net_config, DecoderConfig) else None
    clf = classifier.frozen(taps)
    net = explainer.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    step_net = StepNet(cfg.net)
    opt = torch.optim.Adam(step_net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    k_phi, n_classes = cfg.net.steps, len(classifier.classes)
    hard_from = int(cfg.net.hard_after * k_phi)
    weights = [cfg.intermediate] * (k_phi - 1) + [1.0]
    start, update, log = time.perf_counter(), 0, {}
    random_clf: FrozenClassifier | None = None
    while (cfg.updates is None or update < cfg.updates) and time.perf_counter() - start < 60 * cfg.minutes:
        idx = rng.choice(len(images), size=min(cfg.batch, len(images)), replace=False)
        x = torch.from_numpy(pre(images[idx]))
        with torch.no_grad():
            ref = Reference(*clf(x))
        target = ref.logits.argmax(1)
        other = torch.from_numpy(rng.random(len(idx)) < cfg.other_class_prob)
        if n_classes > 1:
            shift = torch.from_numpy(rng.integers(1, n_classes, size=len(idx)))
            target = torch.where(other, (target + shift) % n_classes, target)
        obj = explainer.objective(clf, x, target, reference=ref)
        gen = obj.generators(draw_seed(cfg.seed, update))
        with torch.no_grad():
            u0 = first_guess(net, obj).clamp(-cfg.net.clip, cfg.net.clip)
        u, g, losses = u0, gradient_of_logits(obj, u0, hard_from <= 0, gen), []
        for k in range(k_phi):
            u = step_net(u, g, u0, k)
            total, _ = obj.loss_of_logits(u, hard=k + 1 >= hard_from or k + 1 == k_phi, generator=gen)
            losses.append(total.mean())
            if k + 1 < k_phi:
                (g,) = torch.autograd.grad(total.sum(), u, retain_graph=True)
                g = g.detach()
        objective = sum(w * loss for w, loss in zip(weights, losses, strict=True))
        ind = None
        if cfg.independence > 0:
            if random_clf is None or update % RANDOM_CLASSIFIER_EVERY == 0:
                random_clf = random_classifier(clf, update, cfg.seed)
            ind = independence_loss(u, _through(step_net, random_clf, explainer, net, x, target,
                                                obj.generators(draw_seed(cfg.seed, update))),
                                    cfg.independence_measure).mean()
            objective = objective + cfg.independence * ind
        opt.zero_grad(set_to_none=True)
        objective.backward()  # type: ignore[union-attr]
        opt.step()
        update += 1
        log = {**{f"loss{k + 1}": float(v.detach()) for k, v in enumerate(losses)}, "a": float(step_net.a.detach()),
               "seconds": time.perf_counter() - start, **({} if ind is None else {"independence": float(ind.detach())})}
        if callback is not None:
            callback(update, log)
    facts = {"config": cfg.to_dict(), "updates": update, "seconds": time.perf_counter() - start,
             "n_images": int(len(images)), "final": log}
    return step_net.eval(), facts
