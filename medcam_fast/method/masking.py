"""How a mask is applied to an image: mask from logits, baselines, the kept and removed views, perturbations.

Notation (used in every docstring of the package): ``x`` a normalized image ``[B,C,H,W]``, ``m ∈ [0,1]``
a mask ``[B,1,H,W]`` (1 = evidence kept), ``b`` the baseline that replaces removed pixels.

* kept view (the "masked image"):   ``x̃ = m⊙x + (1−m)⊙b``
* removed view (the "complement"):  ``x̄ = (1−m)⊙x + m⊙b``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..types import BaselineKind, choice

__all__ = [
    "THRESHOLD",
    "RandomSource",
    "GRID_CELL",
    "coarse_grid",
    "to_image_grid",
    "smooth_logits",
    "check_sigma",
    "mask_from_logits",
    "make_baseline",
    "keep",
    "remove",
    "perturb",
]
#: Where robustness draws come from: one generator for a batch, or one per image (batch-size independent).
RandomSource = torch.Generator | Sequence[torch.Generator] | None

#: Binary evidence is ``m > THRESHOLD`` (``u > 0`` for τ > 0), for every method and every output.
THRESHOLD = 0.5


#: Side of one coarse-grid cell in pixels for inputs of 64 px and more (4 below: a 28 px image gets 7 × 7).
GRID_CELL = 8
#: The fewest cells per axis of a coarse grid.
_MIN_CELLS = 4


def coarse_grid(size: Sequence[int]) -> tuple[int, int]:
    """The coarse mask grid ``(g_h, g_w)`` for an ``H×W`` input: ``g = max(4, ⌈side / s⌉)`` with cell side
    ``s = 8`` when the shorter side has 64 px or more, else 4 (64 → 8, 128 → 16, 224 → 28, 28 → 7), capped at
    one cell per pixel.

    Args:
        size: ``(H, W)`` of the classifier's input.
    """
    h, w = int(size[0]), int(size[1])
    cell = GRID_CELL if min(h, w) >= 64 else GRID_CELL // 2
    return (min(h, max(_MIN_CELLS, -(-h // cell))), min(w, max(_MIN_CELLS, -(-w // cell))))


def to_image_grid(u: Tensor, size: Sequence[int]) -> Tensor:
    """Mask logits on the image's pixel grid: ``u`` itself when it is already ``H×W``, else ``u`` upsampled
    bilinearly (``align_corners=False``, the cell centres at the pixel positions they cover). A coarse ``u``
    therefore varies smoothly between cell centres: its binary mask is a union of blobs, not speckle.

    Args:
        u: mask logits ``[B,C,h,w]``.
        size: ``(H, W)`` of the image.
    """
    h, w = int(size[0]), int(size[1])
    if tuple(u.shape[-2:]) == (h, w):
        return u
    return F.interpolate(u, size=(h, w), mode="bilinear", align_corners=False)


def check_sigma(sigma: float) -> float:
    """``sigma`` itself when it is a valid smoothing σ (≥ 0, not NaN), else ValueError: the one check behind
    :func:`smooth_logits` and the configurations that carry a σ (``RefineConfig``, ``FitConfig``)."""
    if not sigma >= 0:
        raise ValueError(f"the smoothing σ must be ≥ 0, got {sigma!r}")
    return sigma


def smooth_logits(u: Tensor, sigma: float) -> Tensor:
    """``G_σ ∗ u``: each logit map blurred by a normalized Gaussian of ``σ`` grid cells, truncated at
    ``⌈2σ⌉`` cells, with the border replicated (so a constant map is unchanged). ``σ = 0`` returns ``u``.

    Refinement and the per-image fit apply it to what they optimize (``smooth``): every change they make to a
    mask is then a blob of about ``2σ`` cells, not a cell on its own — the smooth parameterization of
    Fong et al. (2019) in the form of a Gaussian rather than their smooth max-convolution.

    Args:
        u: logits ``[B,C,h,w]`` (usually on the coarse grid).
        sigma: σ in cells (≥ 0).
    """
    if check_sigma(sigma) == 0:
        return u
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=u.dtype, device=u.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = u.shape[1]
    padded = F.pad(u, (r, r, r, r), mode="replicate")
    out = F.conv2d(padded, g.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return F.conv2d(out, g.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)


def mask_from_logits(logits: Tensor, tau: float = 1.0, hard: bool = False) -> Tensor:
    """``m = σ(u/τ)``; with ``hard`` the straight-through mask ``1[m>0.5] + m − sg(m)``.

    Args:
        logits: mask logits ``u`` ``[B,1,H,W]``.
        tau: temperature τ > 0; smaller values push ``m`` toward 0/1.
        hard: forward the binary mask while back-propagating through the soft one.
    """
    m = torch.sigmoid(logits / tau)
    if hard:
        m = (m > THRESHOLD).to(m.dtype) + m - m.detach()
    return m


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad = (radius, radius, radius, radius)
    y = F.pad(x, pad, mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(
    x: Tensor,
    kind: BaselineKind | str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    sigma: float | None = None,
) -> Tensor:
    """The image ``b`` that replaces removed pixels, same shape as ``x``.

    Args:
        x: normalized images ``[B,C,H,W]``.
        kind: a :class:`~medcam_fast.types.BaselineKind` (or its value): ``MEAN`` — the data set's mean
            colour, i.e. 0 after normalization; ``ZERO`` — black, ``(0 − mean)/std`` per channel (needs
            ``mean`` and ``std``); ``BLUR`` — ``x`` blurred by a Gaussian of standard deviation ``sigma``.
        mean: per-channel mean of the normalization (pixel scale [0,1]), for ``"zero"``.
        std: per-channel standard deviation of the normalization, for ``"zero"``.
        sigma: blur width in pixels for ``"blur"``; default ``max(H,W)/10``.
    """
    kind = choice(BaselineKind, kind, "baseline")
    if kind is BaselineKind.MEAN:
        return torch.zeros_like(x)
    if kind is BaselineKind.ZERO:
        if mean is None or std is None:
            raise ValueError("baseline 'zero' needs the normalization mean and std")
        mu = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        sd = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0 - mu) / sd).expand_as(x).contiguous()
    s = sigma if sigma is not None else max(x.shape[-2:]) / 10
    return _gaussian_blur(x, s)


def keep(x: Tensor, m: Tensor, b: Tensor) -> Tensor:
    """Kept view ``x̃ = m⊙x + (1−m)⊙b``."""
    return m * x + (1 - m) * b


def remove(x: Tensor, m: Tensor, b: Tensor) -> Tensor:
    """Removed view ``x̄ = (1−m)⊙x + m⊙b``."""
    return (1 - m) * x + m * b


def perturb(
    x: Tensor,
    noise: float = 0.1,
    shift: int = 2,
    flip: bool = True,
    generator: RandomSource = None,
) -> Tensor:
    """One random draw of a small perturbation ``T(x)``, independent per image.

    ``T(x) = flip?(roll(x, δ)) + σ·ε`` with ``δ`` uniform in ``[−shift, shift]²`` pixels, a horizontal flip
    with probability ½ when ``flip``, and ``ε ~ N(0, 1)``. Differentiable in ``x``.

    Args:
        x: images ``[B,C,H,W]``.
        noise: σ of the additive Gaussian noise (normalized units).
        shift: largest circular shift in pixels.
        flip: allow horizontal flips.
        generator: the random source: one generator for the batch, or one per image — then each image's draw
            depends on its own generator alone, not on which images share its batch.
    """
    b = x.shape[0]
    per_image: list[Tensor] = []
    if isinstance(generator, Sequence):
        if len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for {b} images")
        shifts, flips = [], []
        for g in generator:  # each image: its shift, its flip, its noise, from its own generator
            shifts.append(torch.randint(-shift, shift + 1, (2,), generator=g).tolist())
            flips.append(bool(torch.rand(1, generator=g) < 0.5) if flip else False)
            if noise > 0:
                per_image.append(torch.randn(x.shape[1:], generator=g))
    else:
        shifts = torch.randint(-shift, shift + 1, (b, 2), generator=generator, device="cpu").tolist()
        flips = (torch.rand(b, generator=generator, device="cpu") < 0.5).tolist() if flip else [False] * b
    out = []
    for i in range(b):
        xi = torch.roll(x[i], shifts=(shifts[i][0], shifts[i][1]), dims=(-2, -1))
        if flips[i]:
            xi = xi.flip(-1)
        out.append(xi)
    y = torch.stack(out)
    if noise > 0:
        if per_image:
            eps = torch.stack(per_image)
        else:
            eps = torch.randn(y.shape, generator=generator, device="cpu")
        y = y + noise * eps.to(y.device, y.dtype)
    return y
