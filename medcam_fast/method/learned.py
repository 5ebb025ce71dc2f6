"""Learned refinement steps: a small network that turns the classifier's gradient into refinement's first steps.

Adam's first steps from a first guess are nearly ``lr·sign(g)`` on every cell at once; three of them left the
refined loss 11–17 % above the 300-step fit's on breast, blood and path, whatever the step size, step rule,
seed, schedule or ensemble of first guesses (README, "What this says"). A step that has *learned* how this
explainer's first guesses err reads the gradient with its neighbourhood instead (iterative amortized
inference: Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent"; Marino et
al. 2018, "Iterative amortized inference"). On the mask logits ``u`` (the explainer's grid, coarse for a
decoder), for the first ``K_φ`` steps:

    g_k = ∇_u Σ_i L_i(σ(U(u_k)/τ))                       (binary straight-through from step ⌊hard_after·K_φ⌋ on)
    ĝ_k = g_k / rms_i(g_k)                               (per image: the step does not depend on the loss's scale)
    u_{k+1} = u_k − a·ĝ_k + f_φ([u_k/c, ĝ_k, u_0/c, k/K_φ])

with ``u_0 = clip(first guess, ±c)`` (``c`` = :data:`~.inner.START_CLIP`), ``f_φ`` four 3×3 convolutions
(GELU between) whose last layer starts at zero — an untrained step is normalized gradient descent with step
``a`` — and the gradient treated as an input (first order: no second derivative of the classifier is ever
taken). Steps after the ``K_φ``-th are the logits loop's Adam steps (:func:`~.inner.adapt_logits`) from
``u_{K_φ}``. Each learned step costs one classifier forward and backward pass, as an Adam step does, plus
``f_φ`` on the grid (a few thousand multiply-adds per cell).

The network is trained per explainer on its training images with the first guess frozen
(:func:`medcam_fast.explainer.steps.train_steps`) and shipped in the bundle (``steps.safetensors``). Measured
(32 sampled test images, loss ÷ the fit's at K = 3 / 10, Adam → learned): breast 1.136 / 0.989 → 1.032 /
0.917, blood 1.182 / 1.077 → 1.065 / 0.972, path 1.120 / 1.058 → 1.072 / 1.018, brain 1.033 / 0.906 →
0.977 / 0.846, pneumonia (with the independence term) 1.338 / 1.214 → 1.190 / 1.090
(``benchmarks/results/explainer_quality_<set>.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._config import Config
from ..types import InnerMode
from .inner import HARD_AFTER, START_CLIP, STEP_SIZES, adapt_logits
from .masking import RandomSource
from .objective import Objective

__all__ = ["StepNetConfig", "StepNet", "gradient_of_logits", "learned_trajectory", "learned_adapt"]

_INPUTS = 4


@dataclass(frozen=True)
class StepNetConfig(Config):
    """Shape of a learned step network.

    Args:
        steps: ``K_φ``, the steps it was trained to take (refinement takes at most these learned steps, then
            Adam steps).
        channels: width of its hidden convolutions.
        hard_after: fraction of its steps after which the gradient is taken on the straight-through binary
            mask (as the logits loop's :data:`~.inner.HARD_AFTER`).
        clip: ``c``: the first guess is clipped to ``±c``, and logits are scaled by ``1/c`` on input.
    """

    steps: int = 3
    channels: int = 32
    hard_after: float = HARD_AFTER
    clip: float = START_CLIP

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"learned steps must be an integer ≥ 1, got {self.steps!r}")
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"channels must be an integer ≥ 1, got {self.channels!r}")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip!r}")


class StepNet(nn.Module):
    """``u_{k+1} = u_k − a·ĝ_k + f_φ([u_k/c, ĝ_k, u_0/c, k/K_φ])`` (module docstring).

    Args:
        config: its shape.
    """

    def __init__(self, config: StepNetConfig = StepNetConfig()) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.a = nn.Parameter(torch.tensor(1.0))
        self.f = nn.Sequential(nn.Conv2d(_INPUTS, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1),
                               nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, 1, 3, padding=1))
        nn.init.zeros_(self.f[-1].weight)
        nn.init.zeros_(self.f[-1].bias)

    def forward(self, u: Tensor, g: Tensor, u0: Tensor, k: int) -> Tensor:
        """One step: logits ``u_k``, their gradient ``g_k``, the clipped first guess ``u_0`` (all ``[B,1,h,w]``)
        and the step's index ``k`` → ``u_{k+1}``."""
        c = self.config.clip
        gh = g / (g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)
        inputs = torch.cat([u / c, gh, u0 / c, torch.full_like(u, k / self.config.steps)], dim=1)
        return u - self.a * gh + self.f(inputs)


def gradient_of_logits(objective: Objective, u: Tensor, hard: bool, generator: RandomSource = None) -> Tensor:
    """``∇_u Σ_i L_i(σ(U(u)/τ))`` (straight-through binary mask with ``hard``), detached: a learned step's
    input, never differentiated again."""
    leaf = u.detach().requires_grad_(True)
    with torch.enable_grad():
        total, _ = objective.loss_of_logits(leaf, hard=hard, generator=generator)
        (g,) = torch.autograd.grad(total.sum(), leaf)
    return g


def learned_trajectory(objective: Objective, start: Tensor, net: StepNet, steps: int,
                       generator: RandomSource = None) -> Tensor:
    """``u_steps`` after ``steps`` ≤ ``K_φ`` learned steps from ``u_0 = start`` (the clipped first guess), the
    gradient taken on the binary mask from step ``⌊hard_after·steps⌋`` on. Differentiable in ``φ`` outside
    ``torch.no_grad()`` (the gradients are inputs: first order) — what training takes through a randomized
    classifier; :func:`learned_adapt` runs it without a graph."""
    hard_from = int(net.config.hard_after * steps)
    u = start
    for k in range(steps):
        u = net(u, gradient_of_logits(objective, u, k >= hard_from, generator), start, k)
    return u


def learned_adapt(
    objective: Objective,
    u0: Tensor,
    steps: int,
    net: StepNet,
    lr: float = STEP_SIZES[InnerMode.LOGITS],
    hard_after: float = HARD_AFTER,
    generator: RandomSource = None,
) -> Tensor:
    """``K`` refinement steps on the mask logits: the first ``min(K, K_φ)`` learned, the rest Adam.

    Returns ``uᴷ`` (detached); ``steps = 0`` returns ``u0`` itself, unclipped (as
    :func:`~.inner.adapt_logits`).

    Args:
        objective: the batch's problem.
        u0: first-guess logits ``[B,1,h,w]``.
        steps: K.
        net: the learned step network.
        lr: step size of the Adam steps after the learned ones.
        hard_after: the Adam steps' hard phase (the learned steps use their own, ``net.config.hard_after``).
        generator: random source of the robustness perturbations.
    """
    if steps <= 0:
        return u0.detach().clone()
    cfg = net.config
    learned = min(steps, cfg.steps)
    with torch.no_grad():
        u = learned_trajectory(objective, u0.detach().clamp(-cfg.clip, cfg.clip), net, learned, generator)
    if steps > learned:
        u = adapt_logits(objective, u, steps - learned, lr, hard_after, generator, clip=None)
    return u.detach()
