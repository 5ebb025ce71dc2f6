"""The paper's per-image fit: a fresh U-Net trained from scratch on one image to minimize the composite loss.

For each image ``x`` with target ``c`` a U-Net ``f_θ`` starts from the same seeded initialization ``θ₀`` and
takes ``N`` Adam steps on ``L(σ(f_θ(x, c)/τ))`` (:func:`medcam_fast.method.losses.composite_loss`). Several images
are fitted at once: each has its own U-Net copy, run one after the other (on a CPU this is ~6× faster than
``torch.func.vmap`` over stacked weights, which lowers to grouped convolutions), while the frozen classifier
sees the whole batch in one call. The images never interact, so an image's mask does not depend on which
other images share its batch, up to the random perturbation draws of the robustness term.

Where the mask lives (:class:`~medcam_fast.types.MaskGrid`): ``COARSE`` (the default) averages the U-Net's
output over the cells of :func:`~.masking.coarse_grid` and upsamples it bilinearly — the parameterization of
the classifier-aware explainer, so fit and fast path are compared on the same kind of mask; ``PIXEL`` is the
paper's fit, one logit per pixel.

For the last ``1 − hard_after`` of the steps the mask is straight-through binary, so the optimized mask is
the one that is evaluated (binary masks are what medcam-fast reports).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import Config
from ..types import BaselineKind, Classifier, MaskGrid, choice
from .inner import HARD_AFTER
from .losses import TERMS, LossWeights, Reference
from .masking import check_sigma, coarse_grid, smooth_logits
from .objective import Objective
from .result import MaskResult
from .unet import UNet, UNetConfig

__all__ = ["FitConfig", "fit_masks", "fit_objective", "UNetEnsemble"]


@dataclass(frozen=True)
class FitConfig(Config):
    """Settings of the per-image fit.

    Args:
        steps: Adam steps per image (the paper's fit: 300).
        lr: Adam learning rate for the U-Net weights.
        width: U-Net width of its first stage.
        depth: U-Net down-sampling stages.
        tau: mask temperature τ in ``m = σ(u/τ)``.
        hard_after: fraction of the steps after which the straight-through binary mask is optimized.
        baseline: what replaces removed pixels (:func:`~medcam_fast.method.masking.make_baseline`).
        weights: composite-loss weights.
        seed: seeds the U-Net initialization and the perturbation draws.
        grid: ``coarse`` (cell-averaged, upsampled: regions) or ``pixel`` (the paper's parameterization).
        smooth: ``σ`` in cells of the grid: the mask logits are ``G_σ ∗ u``
            (:func:`~medcam_fast.method.masking.smooth_logits`), so the fit, like refinement with the same
            ``smooth``, can only shape the mask by blobs; 0: not smoothed.
    """

    steps: int = 300
    lr: float = 1e-2
    width: int = 8
    depth: int = 3
    tau: float = 1.0
    hard_after: float = HARD_AFTER
    baseline: BaselineKind = BaselineKind.BLUR
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    grid: MaskGrid = MaskGrid.COARSE
    smooth: float = 0.0

    def __post_init__(self) -> None:
        check_sigma(self.smooth)
        object.__setattr__(self, "baseline", choice(BaselineKind, self.baseline, "baseline"))
        object.__setattr__(self, "grid", choice(MaskGrid, self.grid, "mask grid"))


class UNetEnsemble(nn.Module):
    """``B`` independent U-Nets, one per image: ``f(x[B], c[B]) = cat_i f_θi(x_i, c_i)``.

    Args:
        unet: the initialization ``θ₀`` every member starts from (copied, not shared).
        n: number of members (images).
    """

    def __init__(self, unet: UNet, n: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(unet) for _ in range(n))

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return torch.cat([f(x[i : i + 1], target[i : i + 1]) for i, f in enumerate(self.members)])


def fit_masks(
    classifier: Classifier,
    x: Tensor,
    targets: Tensor | int | None = None,
    config: FitConfig = FitConfig(),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    record_trace: bool = False,
    callback: Callable[[int], None] | None = None,
    reference: Reference | None = None,
) -> MaskResult:
    """Fit one fresh U-Net per image (the paper's method) and return its masks.

    Args:
        classifier: images → ``(logits, activations)``, e.g. a
            :class:`~medcam_fast.classifiers.frozen.FrozenClassifier`.
        x: normalized images ``[B,C,H,W]``.
        targets: class to explain per image (``[B]`` or one int); default: the predicted class.
        config: the fit settings.
        normalization: ``(mean, std)`` of the preprocessing, needed for the ``"zero"`` baseline.
        record_trace: keep every term's value at every step in ``MaskResult.trace``.
        callback: called with the step index after each step (progress bars).
        reference: the classifier's ``(logits, activations)`` on ``x`` when the caller already has them.
    """
    objective = Objective.build(classifier, x, targets, baseline=config.baseline, weights=config.weights,
                                tau=config.tau, normalization=normalization, reference=reference)
    return fit_objective(objective, config, record_trace, callback)


def fit_objective(
    objective: Objective,
    config: FitConfig = FitConfig(),
    record_trace: bool = False,
    callback: Callable[[int], None] | None = None,
) -> MaskResult:
    """:func:`fit_masks` on a problem already fixed: the objective's weights, baseline and τ are used; from
    ``config`` only the optimization (steps, lr, width, depth, hard_after, seed).

    Args:
        objective: the batch's problem.
        config: the fit settings.
        record_trace: keep every term's value at every step in ``MaskResult.trace``.
        callback: called with the step index after each step.
    """
    start = time.perf_counter()
    x, target = objective.x, objective.target
    torch.manual_seed(config.seed)
    unet = UNet(UNetConfig(x.shape[1], objective.reference.logits.shape[1], config.width, config.depth)).to(x.device)
    ensemble = UNetEnsemble(unet, x.shape[0])
    cells = coarse_grid(x.shape[-2:])

    def forward(x: Tensor, target: Tensor) -> Tensor:
        u = ensemble(x, target)
        return smooth_logits(F.adaptive_avg_pool2d(u, cells) if config.grid is MaskGrid.COARSE else u, config.smooth)

    opt = torch.optim.Adam(ensemble.parameters(), lr=config.lr)
    gen = objective.generators(config.seed)  # per image: a fit does not depend on its batch neighbours
    hard_from = int(config.hard_after * config.steps)
    trace: dict[str, list[Tensor]] = {k: [] for k in (*TERMS, "total")}
    for step in range(config.steps):
        total, terms = objective.loss_of_logits(forward(x, target), hard=step >= hard_from, generator=gen)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        if record_trace:
            for k, v in terms.items():
                trace[k].append(v.detach())
            trace["total"].append(total.detach())
        if callback is not None:
            callback(step)
    with torch.no_grad():
        u = forward(x, target)
    return objective.result(u, config.steps, time.perf_counter() - start,
                            trace={k: torch.stack(v) for k, v in trace.items() if v})
