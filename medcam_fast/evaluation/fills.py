"""What replaces the pixels a faithfulness metric removes: the *fills*, named in every column of the report.

A removed pixel has to become something, and the choice decides much of the score: a classifier may still
see the class in a blurred image, or read a mask's outline off a black hole. ``evaluate`` therefore scores
every map under several fills and names the fill in each column:

* ``ZERO`` — black: ``(0 − mean)/std`` per channel after normalization (RISE's deletion substrate);
* ``MEAN`` — the data set's mean colour: 0 after normalization (captum's default baseline);
* ``BLUR`` — the image blurred by a Gaussian of σ = max(H, W)/10 (RISE's insertion substrate, and the
  baseline medcam-fast's explainers are trained against);
* ``NOISY_LINEAR`` — ROAD's noisy linear imputation (Rong et al., ICML 2022): each removed pixel the
  weighted mean of its 8 neighbours, solved jointly, plus N(0, 0.01²) noise, so a mask's shape carries no
  signal of its own (grad-cam's implementation, :class:`~medcam_fast.evaluation.road.NoisyLinearImputation`).

The first three are images (:func:`substrate` builds them with
:func:`medcam_fast.method.masking.make_baseline`, the function medcam-fast itself uses); the last is an
imputer that depends on which pixels are removed. A method *trained or tuned against* a fill is scored on
its home ground there; the report's headline uses the fills no method was trained against, plus ROAD.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from torch import Tensor

from ..method.masking import make_baseline
from ..types import BaselineKind, choice
from .metrics import Substrate

__all__ = ["Fill", "ALL_FILLS", "fill_of_baseline", "substrate"]


class Fill(str, Enum):
    """A fill for removed pixels (``str(member)`` is its value, so JSON keeps plain strings)."""

    ZERO = "zero"
    MEAN = "mean"
    BLUR = "blur"
    NOISY_LINEAR = "noisy-linear"

    def __str__(self) -> str:
        return str(self.value)

    @property
    def is_image(self) -> bool:
        """True for the fills that are one image per input (zero, mean, blur), False for the imputation."""
        return self is not Fill.NOISY_LINEAR


#: Every fill, in the report's column order.
ALL_FILLS: tuple[Fill, ...] = (Fill.ZERO, Fill.MEAN, Fill.BLUR, Fill.NOISY_LINEAR)


def fill_of_baseline(kind: BaselineKind | str) -> Fill:
    """The fill that is the same image as medcam-fast's baseline ``kind`` (mean, zero or blur)."""
    return Fill(str(choice(BaselineKind, kind, "baseline")))


def substrate(fill: Fill | str, x: Tensor, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> Substrate:
    """What replaces removed pixels of ``x`` under ``fill``: an image shaped like ``x`` for zero, mean and blur
    (exactly medcam-fast's baseline of that name), an imputer for noisy linear imputation.

    Args:
        fill: the fill (or its value).
        x: normalized images ``[B,C,H,W]``.
        mean: per-channel mean of the normalization (pixel scale [0,1]).
        std: per-channel standard deviation of the normalization.
        seed: seeds the imputation noise.

    Raises:
        PeerUnavailable: noisy linear imputation without grad-cam.
        UsageError: an unknown fill.
    """
    f = choice(Fill, fill, "fill")
    if f is Fill.NOISY_LINEAR:
        from .road import NoisyLinearImputation

        return NoisyLinearImputation(seed=seed)
    return make_baseline(x, BaselineKind(f.value), mean, std)
