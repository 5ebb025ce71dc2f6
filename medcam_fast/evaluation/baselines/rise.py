"""RISE (Petsiuk, Das & Saenko, BMVC 2018, "RISE: Randomized input sampling for explanation of black-box
models"): saliency as the classifier's confidence averaged over random masks.

``N`` coarse binary grids are upsampled to smooth masks ``M_i`` at random sub-cell offsets; each image is
shown to the classifier with only ``M_i`` kept, and ``S = 1/(N·p) Σ_i p_c(M_i⊙x + (1−M_i)⊙b)·M_i``, a
Monte-Carlo estimate of ``E[p_c | pixel kept]``. Written here (no package offers a batched, seeded,
device-agnostic version) and checked against a model that only sees one quadrant.

Differs from the reference on purpose: inputs are normalized, so a removed pixel takes the baseline ``b``
(the data set's mean colour by default, the explainer's baseline in ``evaluate``) instead of the paper's
black in pixel space; the masks are drawn on the CPU from one seeded generator and shared by every image,
so a map does not depend on the batch it was computed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...classifiers.frozen import FrozenClassifier
from ...errors import UsageError
from ...method.masking import keep
from .._peers import _baseline_or_zeros, _check_batch, _positive_int

__all__ = ["rise"]


def _rise_draws(
    n_masks: int, cells: int, p: float, cell_size: tuple[int, int], seed: int
) -> tuple[Tensor, Tensor]:
    """The random numbers of RISE's masks, drawn on the CPU from one seeded generator.

    Args:
        n_masks: number of masks ``N``.
        cells: grid side ``s``.
        p: keep probability of a grid cell.
        cell_size: ``(C_H, C_W) = (⌈H/s⌉, ⌈W/s⌉)``, the upsampled size of one cell.
        seed: the generator seed.

    Returns:
        ``grids`` ``[N,1,s,s]`` float (1 = kept cell, i.i.d. Bernoulli(p)) and ``shifts`` ``[N,2]`` long
        (row and column offsets, uniform in ``[0,C_H) × [0,C_W)``).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    grids = (torch.rand(n_masks, 1, cells, cells, generator=g) < p).float()
    dy = torch.randint(0, cell_size[0], (n_masks,), generator=g)
    dx = torch.randint(0, cell_size[1], (n_masks,), generator=g)
    return grids, torch.stack([dy, dx], dim=1)


def _rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int], like: Tensor) -> Tensor:
    """RISE's smooth masks from their draws: upsample, then crop a shifted ``H×W`` window.

    Each ``s×s`` binary grid is upsampled bilinearly to ``((s+1)·C_H, (s+1)·C_W)`` and the window
    ``[dy, dy+H) × [dx, dx+W)`` is kept, so mask edges fall anywhere, not only on cell borders.

    Args:
        grids: ``[n,1,s,s]`` binary grids (CPU).
        shifts: ``[n,2]`` crop offsets (CPU).
        size: ``(H, W)``.
        like: a tensor whose device and dtype the masks take.

    Returns:
        masks ``[n,H,W]`` with values in [0,1].
    """
    h, w = size
    s = grids.shape[-1]
    big = ((s + 1) * math.ceil(h / s), (s + 1) * math.ceil(w / s))
    up = F.interpolate(grids.to(device=like.device, dtype=like.dtype), size=big, mode="bilinear",
                       align_corners=False)[:, 0]
    shifts = shifts.to(like.device)
    rows = shifts[:, 0, None] + torch.arange(h, device=like.device)  # [n,H]
    cols = shifts[:, 1, None] + torch.arange(w, device=like.device)  # [n,W]
    index = torch.arange(len(up), device=like.device)[:, None, None]
    return up[index, rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def rise(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    n_masks: int = 4000,
    cells: int = 8,
    p: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
    baseline: Tensor | None = None,
) -> Tensor:
    """RISE saliency (Petsiuk et al., BMVC 2018): the target probability averaged over random masks.

    ``N`` binary grids ``G_i ∈ {0,1}^{s×s}`` with ``P(G_i[u,v]=1) = p`` are upsampled bilinearly to
    ``(s+1)·⌈H/s⌉ × (s+1)·⌈W/s⌉`` and cropped at a uniformly random offset in ``[0,⌈H/s⌉) × [0,⌈W/s⌉)`` to
    smooth masks ``M_i ∈ [0,1]^{H×W}``. With ``f_c`` the softmax probability of class ``c``,

        ``S = 1/(N·p) · Σ_i f_c(M_i⊙x + (1−M_i)⊙b) · M_i``,

    a Monte-Carlo estimate of ``E[f_c(x̃) | pixel kept]`` (the paper's ``1/(E[M]·N) Σ_i f(I⊙M_i)·M_i``).

    The paper multiplies pixels by the mask, i.e. removed pixels become black in *pixel* space. Our inputs
    are normalized, so a masked pixel takes the value of the baseline ``b`` instead: ``b = 0`` (the default)
    is the data set's mean colour; pass ``make_baseline(x, "zero", mean, std)`` for the paper's black.

    The masks depend only on ``(n_masks, cells, p, H, W, seed)`` (drawn on the CPU with a seeded
    ``torch.Generator``, then moved to ``x.device``) and are shared by every image of the batch, as in the
    paper; an image's map does not depend on the batch it is in or on ``batch_size`` (up to float rounding).

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes to explain ``[B]``.
        n_masks: number of masks ``N``.
        cells: grid side ``s`` (the paper uses 7 for 224 px).
        p: probability that a grid cell is kept, in (0, 1].
        batch_size: masked images per forward pass (the batch is split into ``⌊batch_size/B⌋`` masks × ``B``
            images, at least one mask).
        seed: seeds the masks.
        baseline: the image ``b`` that replaces removed pixels, broadcastable to ``x``; None = zeros.

    Returns:
        ``S`` ``[B,H,W]`` on ``x.device``, ≥ 0 (≈ ``f_c`` where it does not matter whether a pixel is kept).

    Raises:
        UsageError: invalid arguments.
    """
    _check_batch(x, target)
    for name, value in (("n_masks", n_masks), ("cells", cells), ("batch_size", batch_size)):
        _positive_int(name, value)
    if not 0 < p <= 1:
        raise UsageError(f"p must lie in (0, 1], got {p!r}")
    bsz, ch, h, w = x.shape
    b = _baseline_or_zeros(x, baseline)
    grids, shifts = _rise_draws(n_masks, cells, p, (math.ceil(h / cells), math.ceil(w / cells)), seed)
    t = target.to(x.device).view(bsz, 1, 1)
    saliency = x.new_zeros(bsz, h, w)
    chunk = max(1, batch_size // bsz)
    for start in range(0, n_masks, chunk):
        m = _rise_masks(grids[start : start + chunk], shifts[start : start + chunk], (h, w), x)  # [n,H,W]
        n = len(m)
        kept = keep(x[:, None], m[None, :, None], b[:, None]).reshape(bsz * n, ch, h, w)
        probs = torch.softmax(classifier.logits(kept), dim=-1).reshape(bsz, n, -1)
        p_c = probs.gather(2, t.expand(bsz, n, 1))[..., 0].to(x.dtype)  # [B,n]
        saliency += torch.einsum("bn,nhw->bhw", p_c, m)
    return saliency / (n_masks * p)
