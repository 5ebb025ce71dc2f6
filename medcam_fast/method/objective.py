"""One batch's Med-CAM problem: the composite loss as a function of the mask alone.

Everything but the mask is fixed once per batch — the frozen classifier, the normalized images ``x``, the
target classes ``c``, the classifier's reference output on ``x``, the baseline ``b``, the loss weights ``w``
and the mask temperature ``τ`` — so the per-image fit, the inner loops and refinement all take one
:class:`Objective` instead of the same eight arguments each::

    L(m) = composite_loss(classifier, x, m, c, reference, b, w)        (:func:`~.losses.composite_loss`)
    m    = σ(u/τ)                                                       (:func:`~.masking.mask_from_logits`)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..types import BaselineKind, Classifier
from .losses import LossWeights, Reference, composite_loss
from .masking import THRESHOLD, RandomSource, make_baseline, mask_from_logits, to_image_grid
from .result import MaskResult, Verification

__all__ = ["Objective", "resolve_targets"]


def resolve_targets(reference_logits: Tensor, targets: Tensor | Sequence[int] | int | None) -> Tensor:
    """Target class per image: the predicted class when ``targets`` is None, else ``targets`` broadcast.

    Raises:
        ValueError: a count that is neither 1 nor the batch size, or a class outside ``0..K−1``.
    """
    b, k = reference_logits.shape
    if targets is None:
        return reference_logits.argmax(1)
    t = torch.as_tensor(targets, dtype=torch.long, device=reference_logits.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"got {t.numel()} targets for {b} images")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"target class out of range: the classifier has {k} classes (0..{k - 1})")
    return t.clone()


@dataclass(frozen=True)
class Objective:
    """The composite loss of one batch, with everything but the mask fixed.

    Args:
        classifier: images → ``(logits, activations)``.
        x: normalized images ``[B,C,H,W]`` (detached).
        target: class explained per image ``[B]``.
        reference: the classifier's output on ``x``, computed once.
        baseline: ``b``, same shape as ``x``.
        weights: the term weights.
        tau: mask temperature τ in ``m = σ(u/τ)``.
    """

    classifier: Classifier
    x: Tensor
    target: Tensor
    reference: Reference
    baseline: Tensor
    weights: LossWeights
    tau: float

    @classmethod
    def build(
        cls,
        classifier: Classifier,
        x: Tensor,
        targets: Tensor | Sequence[int] | int | None,
        *,
        baseline: BaselineKind | str,
        weights: LossWeights,
        tau: float,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        reference: Reference | None = None,
    ) -> Objective:
        """Run the classifier on ``x`` once (unless ``reference`` is given) and fix the problem.

        Args:
            targets: class per image (or one int); None explains the predicted class.
            baseline: what replaces removed pixels.
            normalization: ``(mean, std)`` of the preprocessing, needed by the ``zero`` baseline.
            reference: the classifier's output on ``x`` when the caller already has it.
        """
        x = x.detach()
        if reference is None:
            with torch.no_grad():
                reference = Reference(*classifier(x))
        mean, std = normalization if normalization is not None else (None, None)
        return cls(
            classifier=classifier,
            x=x,
            target=resolve_targets(reference.logits, targets),
            reference=reference,
            baseline=make_baseline(x, baseline, mean, std),
            weights=weights,
            tau=tau,
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def generators(self, seed: int) -> list[torch.Generator]:
        """One random source per image, seeded by ``seed`` and the image's own pixels: its robustness draws
        are the same whatever batch it is explained in, and after a resume.

        ``seed_i = first 8 bytes of sha256(seed ‖ bytes of x_i)``.
        """
        out = []
        for xi in self.x.detach().cpu().contiguous():
            digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + xi.numpy().tobytes()).digest()
            out.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
        return out

    def loss(self, m: Tensor, generator: RandomSource = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(L(m) [B], terms)`` for masks ``m`` ``[B,1,H,W]`` in [0,1]."""
        return composite_loss(self.classifier, self.x, m, self.target, self.reference, self.baseline,
                              self.weights, generator)

    def loss_of_logits(self, u: Tensor, hard: bool = False,
                       generator: RandomSource = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``L(σ(U(u)/τ))``; with ``hard`` the straight-through binary mask. ``U`` upsamples coarse-grid logits
        to the image (:func:`~.masking.to_image_grid`; the identity for pixel logits), so the loss of a coarse
        parameterization is taken on the mask the user sees."""
        return self.loss(mask_from_logits(to_image_grid(u, self.x.shape[-2:]), self.tau, hard=hard), generator)

    @torch.no_grad()
    def result(self, u: Tensor, steps: int, seconds: float, seed: int = 0,
               trace: dict[str, Tensor] | None = None, fallback: Tensor | None = None) -> MaskResult:
        """The typed result for mask logits ``u`` ``[B,1,h,w]`` (pixel or coarse grid; reported upsampled to the
        image): loss terms and verdict of the **binary** mask ``m > THRESHOLD`` (perturbations drawn per image
        from ``seed``, :meth:`generators`), soft and binary masks.

        With ``fallback`` (logits of the same shape, e.g. refinement's first guess), each image keeps whichever
        of ``u`` and ``fallback`` has the lower binary loss ``L(m)``, both scored with the same draws; ties keep
        ``u``. The result's ``refined`` says which: True where ``u`` was kept and ``steps > 0``.
        """
        u, soft, binary, loss, terms = self._scored(u, seed)
        refined = torch.full((len(self),), steps > 0, dtype=torch.bool, device=self.x.device)
        if fallback is not None:
            fu, fsoft, fbinary, floss, fterms = self._scored(fallback, seed)
            better = floss < loss
            pick = lambda a, b: torch.where(better.view(-1, *([1] * (a.dim() - 1))), b, a)  # noqa: E731
            u, soft, binary, loss = pick(u, fu), pick(soft, fsoft), pick(binary, fbinary), pick(loss, floss)
            terms = {k: pick(v, fterms[k]) for k, v in terms.items()}
            refined = refined & ~better
        return MaskResult(
            soft=soft[:, 0],
            binary=binary[:, 0].bool(),
            logits=u[:, 0],
            verification=Verification.from_terms(self.reference.logits, self.target, terms),
            terms=terms,
            loss=loss,
            steps=steps,
            seconds=seconds,
            refined=refined,
            trace=trace or {},
        )

    def _scored(self, u: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``(u on the image grid, soft mask, binary mask, L(binary) [B], terms)``."""
        u = to_image_grid(u, self.x.shape[-2:])
        soft = mask_from_logits(u, self.tau)
        binary = (soft > THRESHOLD).to(self.x.dtype)
        loss, terms = self.loss(binary, self.generators(seed))
        return u, soft, binary, loss, terms
