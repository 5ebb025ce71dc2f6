"""The paper's per-image fit: a fresh U-Net trained from scratch on one image to minimize the composite loss.

For each image ``x`` with target ``c`` a U-Net ``f_θ`` starts from the same seeded initialization ``θ₀`` and
takes ``N`` Adam steps on ``L(σ(f_θ(x, c)/τ))`` (:func:`medcam_fast.method.losses.composite_loss`). Several images
are fitted at once: each has its own U-Net copy, run one after the other (on a CPU this is ~6× faster than
``torch.func.vmap`` over stacked weights, which lowers to grouped convolutions), while the frozen classifier
sees the whole batch in one call. The images never interact, so an image's mask does not depend on which
other images share its batch, up to the random perturbation draws of the robustness term.

For the last ``1 − hard_after`` of the steps the mask is straight-through binary, so the optimized mask is
the one that is evaluated (binary masks are what medcam-fast reports).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from .losses import TERMS, Classifier, LossWeights, Reference, composite_loss
from .masking import BaselineKind, make_baseline, mask_from_logits
from .result import MaskResult, Verification
from .unet import UNet, UNetConfig

__all__ = ["FitConfig", "fit_masks", "evaluate_masks", "resolve_targets", "UNetEnsemble"]


@dataclass(frozen=True)
class FitConfig:
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
    """

    steps: int = 300
    lr: float = 1e-2
    width: int = 8
    depth: int = 3
    tau: float = 1.0
    hard_after: float = 0.7
    baseline: BaselineKind = "blur"
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (weights nested)."""
        d = asdict(self)
        d["weights"] = self.weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        w = LossWeights.from_dict(d.pop("weights", {}))
        return cls(**d, weights=w)

    def with_(self, **changes: Any) -> FitConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


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


def resolve_targets(reference_logits: Tensor, targets: Tensor | int | None) -> Tensor:
    """Target class per image: the predicted class when ``targets`` is None, else ``targets`` broadcast."""
    b, k = reference_logits.shape
    if targets is None:
        return reference_logits.argmax(1)
    t = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"got {t.numel()} targets for {b} images")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"target class out of range: the classifier has {k} classes (0..{k - 1})")
    return t.clone()


@torch.no_grad()
def evaluate_masks(
    classifier: Classifier,
    x: Tensor,
    mask_logits: Tensor,
    target: Tensor,
    reference: Reference,
    baseline: Tensor,
    weights: LossWeights,
    tau: float,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """Composite loss of the binary masks (perturbations drawn from ``seed``) and the soft/binary masks.

    Returns ``(loss[B], terms, soft[B,1,H,W], binary[B,1,H,W])``.
    """
    soft = mask_from_logits(mask_logits, tau)
    binary = (soft > 0.5).to(x.dtype)
    g = torch.Generator().manual_seed(seed)
    loss, terms = composite_loss(classifier, x, binary, target, reference, baseline, weights, g)
    return loss, terms, soft, binary


def fit_masks(
    classifier: Classifier,
    x: Tensor,
    targets: Tensor | int | None = None,
    config: FitConfig = FitConfig(),
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    record_trace: bool = False,
    callback: Callable[[int], None] | None = None,
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
    """
    start = time.perf_counter()
    x = x.detach()
    with torch.no_grad():
        ref_logits, ref_acts = classifier(x)
    reference = Reference(ref_logits, ref_acts)
    target = resolve_targets(ref_logits, targets)
    mean, std = normalization if normalization is not None else (None, None)
    baseline = make_baseline(x, config.baseline, mean, std)

    torch.manual_seed(config.seed)
    unet = UNet(UNetConfig(x.shape[1], ref_logits.shape[1], config.width, config.depth)).to(x.device)
    forward = UNetEnsemble(unet, x.shape[0])
    opt = torch.optim.Adam(forward.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    hard_from = int(config.hard_after * config.steps)
    trace: dict[str, list[Tensor]] = {k: [] for k in (*TERMS, "total")}
    for step in range(config.steps):
        u = forward(x, target)
        m = mask_from_logits(u, config.tau, hard=step >= hard_from)
        total, terms = composite_loss(classifier, x, m, target, reference, baseline, config.weights, gen)
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
    loss, terms, soft, binary = evaluate_masks(
        classifier, x, u, target, reference, baseline, config.weights, config.tau
    )
    ver = Verification.from_terms(ref_logits, target, terms)
    return MaskResult(
        soft=soft[:, 0],
        binary=binary[:, 0].bool(),
        logits=u[:, 0],
        verification=ver,
        terms=terms,
        loss=loss,
        steps=config.steps,
        seconds=time.perf_counter() - start,
        trace={k: torch.stack(v) for k, v in trace.items() if v},
    )
