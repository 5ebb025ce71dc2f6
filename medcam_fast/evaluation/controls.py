"""Controls: what a score means when the map knows nothing.

Every table of ``evaluate`` carries rows that no method should lose to:

* :func:`random_map` — a seeded uniform random map, scored by every metric like a method (it ignores the
  image and the classifier, so its sanity-check correlation is 1 by construction and is not reported);
* the fill alone — the target's probability when *nothing* of the image is kept (computed by the harness);
* :func:`random_blob` — for a binary mask, a compact blob of exactly the mask's area at a random place: the
  evidence of a region that has the mask's size but not its position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import top_count_mask

__all__ = ["random_map", "random_blob"]


def random_map(batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    """Independent ``U[0, 1)`` values per pixel ``[B,H,W]`` float32 (CPU), from a generator seeded with ``seed``.

    Ties have probability 0, so it ranks the pixels in a uniformly random order; image ``i``'s map depends only
    on ``seed``, ``i`` and the size.
    """
    if min(batch, height, width) < 1:
        raise ValueError(f"a random map needs a positive size, got {(batch, height, width)}")
    return torch.rand(batch, height, width, generator=torch.Generator().manual_seed(seed))


def random_blob(areas: Tensor, height: int, width: int, seed: int = 0) -> Tensor:
    """A compact random blob of exactly ``areas[i]`` pixels per image ``[B,H,W]`` bool (CPU).

    The centre ``c_i`` is a pixel drawn uniformly (generator seeded with ``seed``); the blob is the ``areas[i]``
    pixels nearest to it in Euclidean distance (ties by row-major index): a disc, cut by the image border when
    it reaches it, always one 8-connected piece.

    Args:
        areas: pixel counts ``[B]``, each in ``[0, H·W]``.
        height: ``H``.
        width: ``W``.
        seed: seeds the centres.
    """
    counts = torch.as_tensor(areas).flatten().long().cpu()
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randint(0, height * width, (counts.numel(),), generator=gen)
    cy, cx = (centre // width).double(), (centre % width).double()
    yy = torch.arange(height, dtype=torch.float64)[None, :, None]
    xx = torch.arange(width, dtype=torch.float64)[None, None, :]
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    return top_count_mask(-d2, counts)
