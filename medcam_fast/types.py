"""The project's small vocabulary: enums for every closed set of choices, and the classifier protocol.

Bottom layer: no project imports, no torch at import time (the torch-free runtime may import it). Each enum
is a ``str`` subclass, so ``BaselineKind.BLUR == "blur"`` and JSON files keep plain strings; :func:`choice`
turns a user's string into a member with a one-line error that lists the choices.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol, TypeVar

from .errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["BaselineKind", "RefineMode", "InnerMode", "MaskGrid", "Architecture", "Engine", "Correlation", "Classifier",
           "choice"]


class _Choice(str, Enum):
    """A closed set of string choices (``str(member)`` is its value)."""

    def __str__(self) -> str:
        return str(self.value)


class BaselineKind(_Choice):
    """What replaces removed pixels (the baseline ``b`` of ``x̃ = m⊙x + (1−m)⊙b``).

    * ``MEAN`` — the data set's mean colour, i.e. 0 after normalization;
    * ``ZERO`` — black, ``(0 − mean)/std`` per channel;
    * ``BLUR`` — the image blurred by a Gaussian (σ = max(H, W)/10).
    """

    MEAN = "mean"
    ZERO = "zero"
    BLUR = "blur"


class RefineMode(_Choice):
    """How masks are obtained from an explainer (see :mod:`medcam_fast.method.refine`).

    * ``LOGITS`` — Adam steps on the mask logits from the first guess;
    * ``WEIGHTS`` — SGD steps on the U-Net weights (the MAML inner loop);
    * ``FULL`` — the paper's per-image fit from a fresh U-Net (no explainer needed).
    """

    LOGITS = "logits"
    WEIGHTS = "weights"
    FULL = "full"


class Engine(_Choice):
    """Where ``explain`` computes: ``LOCAL`` — this process; ``RAY`` — a pool of Ray actors (``[scale]`` extra),
    on a local instance or a cluster, with the same outputs, manifest and resume."""

    LOCAL = "local"
    RAY = "ray"


class InnerMode(_Choice):
    """What the meta-training inner loop adapts: the U-Net ``WEIGHTS`` (MAML) or the mask ``LOGITS``."""

    WEIGHTS = "weights"
    LOGITS = "logits"


class LRSchedule(_Choice):
    """How meta-training's outer learning rate moves over a run (:mod:`medcam_fast.explainer.meta`).

    * ``CONSTANT`` — ``η₀`` throughout: the first explainers' schedule (a training record without the field);
    * ``COSINE`` — cosine annealing to zero over the run, ``η(p) = η₀ · ½ (1 + cos π p)`` with ``p`` the share
      of the run done (Loshchilov & Hutter, SGDR, 2017, without restarts): the last iterate, the one shipped,
      is not a point of a noisy walk at the full step.
    """

    CONSTANT = "constant"
    COSINE = "cosine"


class Correlation(_Choice):
    """How the decoder's independence term correlates two first guesses (:mod:`medcam_fast.explainer.meta`).

    * ``SPEARMAN`` — Pearson of soft ranks: what the randomization sanity check reports (Spearman ρ), so a
      map that shares only its ordering with the randomized classifier's is penalized too;
    * ``PEARSON`` — Pearson of the soft-clipped logits: the first decoders' term (a training record without the field);
      dominated by the largest logits, it left brain MRI's first guess at ρ ≈ 0.35 while it read 0.03.
    """

    SPEARMAN = "spearman"
    PEARSON = "pearson"


class MaskGrid(_Choice):
    """Where mask logits live (see :func:`medcam_fast.method.masking.coarse_grid`).

    * ``COARSE`` — a grid of about 1/8 of the input side (at least 4 cells), bilinearly upsampled to the
      image: masks are regions, never speckle (real-time saliency and Extremal Perturbations do the same);
    * ``PIXEL`` — one logit per pixel: the paper's parameterization.
    """

    COARSE = "coarse"
    PIXEL = "pixel"


class Architecture(_Choice):
    """What network makes the first guess.

    * ``DECODER`` — a light decoder over the explained classifier's own features, every class at once
      (:mod:`medcam_fast.method.decoder`): the default;
    * ``UNET`` — the classifier-blind U-Net that re-reads the image (:mod:`medcam_fast.method.unet`).
    """

    DECODER = "decoder"
    UNET = "unet"


class Classifier(Protocol):
    """Anything that maps normalized images ``[B,C,H,W]`` to ``(logits [B,K], activations by layer)``,
    e.g. :class:`~medcam_fast.classifiers.frozen.FrozenClassifier`."""

    def __call__(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]: ...


E = TypeVar("E", bound=_Choice)


def choice(kind: type[E], value: E | str, what: str | None = None) -> E:
    """``value`` as a member of ``kind``.

    Args:
        kind: the enum.
        value: a member or its string value.
        what: the name used in the error (default: the enum's name).

    Raises:
        UsageError: ``value`` is not one of the choices (one line listing them).
    """
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(m.value for m in kind)
        raise UsageError(f"unknown {what or kind.__name__} {value!r}: choose {names}") from None
