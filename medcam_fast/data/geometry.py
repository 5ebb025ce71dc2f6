"""How the model's pixel grid relates to the input's, and how masks go back to the input's grid.

:class:`~medcam_fast.data.preprocess.Preprocess` stretches every image to the model's size with Pillow's
bilinear filter (no crop, no pad: the aspect ratio is not kept). :class:`Geometry` records that for one image
and inverts it: a binary mask goes back by nearest neighbour (it stays binary: every input pixel takes the
value of the model pixel its centre falls in), a soft mask or an image by bilinear interpolation (Pillow, mode
``F``). :class:`OutputGrid` names which grid ``explain`` writes its masks on. numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["OutputGrid", "DEFAULT_OUTPUT_GRID", "Geometry"]


class OutputGrid(str, Enum):
    """Which pixel grid output masks are written on: the ``INPUT`` image's own (a 512×512 CT gets 512×512
    masks) or the ``MODEL``'s input (the classifier's size, as before 0.3)."""

    MODEL = "model"
    INPUT = "input"

    def __str__(self) -> str:
        return str(self.value)


#: The grid ``explain`` writes masks on unless ``--mask-grid`` says otherwise.
DEFAULT_OUTPUT_GRID = OutputGrid.INPUT


def _resize_plane(plane: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """One float32 HW plane resized to ``size`` (H, W) with Pillow mode ``F``."""
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((size[1], size[0]), resample), dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """The mapping between an input image's grid and the model's.

    Args:
        input_size: the decoded input's (H, W).
        model_size: the classifier's input (H, W).
        resize: how the input was brought to the model's size (``"bilinear stretch"``: no crop, no pad).
    """

    input_size: tuple[int, int]
    model_size: tuple[int, int]
    resize: str = "bilinear stretch"

    @property
    def identity(self) -> bool:
        """True when the grids are the same (nothing to undo)."""
        return tuple(self.input_size) == tuple(self.model_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``input_size`` and ``model_size`` as [H, W], the resize, ``crop`` and ``pad`` (None: not used),
        and the scale factors model→input per axis."""
        (hi, wi), (hm, wm) = self.input_size, self.model_size
        return {"input_size": [int(hi), int(wi)], "model_size": [int(hm), int(wm)], "resize": self.resize,
                "crop": None, "pad": None, "scale_to_input": [hi / hm, wi / wm]}

    def binary_to_input(self, binary: np.ndarray) -> np.ndarray:
        """A binary mask ``[h, w]`` on the model grid → bool ``[H, W]`` on the input grid (nearest neighbour)."""
        if self.identity:
            return np.asarray(binary, dtype=bool)
        img = Image.fromarray(np.asarray(binary, dtype=np.uint8) * 255)
        out = img.resize((self.input_size[1], self.input_size[0]), Image.Resampling.NEAREST)
        return np.asarray(out) > 127

    def soft_to_input(self, soft: np.ndarray) -> np.ndarray:
        """A soft mask ``[h, w]`` (or any float plane) → float32 ``[H, W]`` (bilinear), clipped to its range."""
        soft = np.asarray(soft, dtype=np.float32)
        if self.identity:
            return soft
        out = _resize_plane(soft, self.input_size, Image.Resampling.BILINEAR)
        return np.clip(out, float(soft.min()), float(soft.max())) if soft.size else out

    def image_to_input(self, image: np.ndarray) -> np.ndarray:
        """An image ``[h, w]`` or ``[h, w, C]`` in [0, 1] → float32 on the input grid (bilinear, per channel)."""
        image = np.asarray(image, dtype=np.float32)
        if self.identity:
            return image
        if image.ndim == 2:
            return self.soft_to_input(image)
        return np.stack([self.soft_to_input(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def input_views(pixels: np.ndarray, preprocess: Any, soft: np.ndarray, binary: np.ndarray, kept: np.ndarray,
                ) -> tuple[Geometry, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An explanation of one image brought back to the image's own grid.

    Args:
        pixels: the decoded input (HW or HWC; uint8, uint16 or float on [0, 1]) the model saw after
            ``preprocess``.
        preprocess: the classifier's :class:`~medcam_fast.data.preprocess.Preprocess`.
        soft: the soft mask on the model grid ``[h, w]``.
        binary: the binary mask on the model grid ``[h, w]``.
        kept: the kept view on the model grid ``[h, w, C]`` in [0, 1].

    Returns:
        ``(geometry, image01, soft, binary, kept)`` on the input grid: the image in the model's channels
        (not resized: its full resolution), the soft mask (bilinear), the binary mask (nearest) and the kept view
        (the image itself inside the evidence, the model's baseline bilinearly upsampled outside it).
    """
    from .preprocess import Preprocess

    size = (int(pixels.shape[0]), int(pixels.shape[1]))
    geometry = Geometry(size, tuple(int(s) for s in preprocess.size))
    image01 = Preprocess.identity(size, preprocess.channels).unit(pixels, batched=False)[0].transpose(1, 2, 0)
    soft_in = geometry.soft_to_input(soft)
    binary_in = geometry.binary_to_input(binary)
    kept_in = np.where(binary_in[..., None], image01, geometry.image_to_input(kept))
    return geometry, image01, soft_in, binary_in, kept_in.astype(np.float32)
