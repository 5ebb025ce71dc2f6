"""How the model's pixel grid relates to the input's, and how masks go back to the input's grid.

:class:`~medcam_fast.data.preprocess.Preprocess` stretches every image to the model's size with Pillow's
bilinear filter (no crop, no pad: the aspect ratio is not kept). :class:`Geometry` records that for one image
and inverts it: a binary mask goes back by nearest neighbour (it stays binary: every input pixel takes the
value of the model pixel its centre falls in), a soft mask or an image by bilinear interpolation (Pillow, mode
``F``). :class:`OutputGrid` names which grid ``explain`` writes its masks on. :func:`geometries` records the
geometry of every image of a raw input (as :class:`~medcam_fast.data.preprocess.Preprocess` reads it) and
:class:`InputMasks` holds one image's masks brought back to its own grid: the one code path of the CLI's
writers, ``MedCAM``'s :class:`~medcam_fast.explain.Explanation` and the torch-free runtime's ``RuntimeMasks``.
numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError
from ..types import _Choice

__all__ = ["OutputGrid", "DEFAULT_OUTPUT_GRID", "Geometry", "InputMasks", "geometries", "masks_at_input",
           "input_views"]


class OutputGrid(_Choice):
    """Which pixel grid output masks are written on: the ``INPUT`` image's own (a 512×512 CT gets 512×512
    masks) or the ``MODEL``'s input (the classifier's size, as before 0.3)."""

    MODEL = "model"
    INPUT = "input"


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        """The inverse of :meth:`to_dict` (the derived ``scale_to_input`` is not read back).

        Raises:
            DataError: a record without ``input_size`` / ``model_size`` as two positive integers, or one that
                used a crop or a pad (no preprocessing of this version does).
        """
        try:
            hi, wi = (int(v) for v in d["input_size"])
            hm, wm = (int(v) for v in d["model_size"])
            resize = str(d.get("resize", "bilinear stretch"))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"invalid geometry record {d!r}: {e}") from None
        if min(hi, wi, hm, wm) < 1:
            raise DataError(f"invalid geometry record {d!r}: sizes must be positive")
        if d.get("crop") is not None or d.get("pad") is not None:
            raise DataError(f"geometry record {d!r} uses a crop or pad, which this version cannot undo")
        return cls((hi, wi), (hm, wm), resize)

    def masks_to_input(self, binary: np.ndarray, soft: np.ndarray) -> InputMasks:
        """One image's binary (nearest) and soft (bilinear) masks ``[h, w]`` on the model grid → the input's."""
        return InputMasks(self.binary_to_input(binary), self.soft_to_input(soft), self)

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


@dataclass(frozen=True, eq=False)
class InputMasks:
    """One image's masks on its own pixel grid.

    Args:
        binary: the binary evidence mask, bool ``[H, W]`` (nearest neighbour from the model grid).
        soft: the soft mask, float32 ``[H, W]`` (bilinear, clipped to the model-grid mask's range).
        geometry: the mapping used (``geometry.input_size == (H, W)``).
    """

    binary: np.ndarray
    soft: np.ndarray
    geometry: Geometry


def masks_at_input(geometry: tuple[Geometry, ...] | None, i: int, binary: np.ndarray, soft: np.ndarray,
                   unknown: str) -> InputMasks:
    """Image ``i``'s masks (model grid, ``[B,h,w]``) on its own pixel grid: what ``Explanation.at_input`` and
    ``RuntimeMasks.at_input`` return.

    Args:
        geometry: one record per image, or None when the images were given preprocessed.
        i: the image (negative counts from the end).
        binary: the binary masks of the batch.
        soft: the soft masks of the batch.
        unknown: why there is no record, said when ``geometry`` is None.

    Raises:
        UsageError: no geometry, or ``i`` out of range.
    """
    if geometry is None:
        raise UsageError(f"{unknown}: their own pixel grid is unknown (pass the raw images to get masks on it)")
    if not -len(geometry) <= i < len(geometry):
        raise UsageError(f"image index {i} out of range for {len(geometry)} images")
    return geometry[i].masks_to_input(binary[i], soft[i])


def geometries(images: Any, model_size: tuple[int, int], batched: bool | None = None) -> tuple[Geometry, ...]:
    """The geometry of every image of a raw input, in the order
    :class:`~medcam_fast.data.preprocess.Preprocess` reads them (one per image of a batch array, one per list
    entry: sizes may differ).

    Args:
        images: anything ``Preprocess`` accepts (PIL image, HW / HWC / NHW / NHWC array, or a list of them).
        model_size: the classifier's input (H, W).
        batched: how to read a 3-D array, as for ``Preprocess.__call__``.

    Raises:
        DataError: a shape ``Preprocess`` refuses.
    """
    from .preprocess import _input_batches

    model = (int(model_size[0]), int(model_size[1]))
    return tuple(Geometry((int(b.shape[1]), int(b.shape[2])), model)
                 for b in _input_batches(images, batched=batched) for _ in range(b.shape[0]))


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
    back = geometry.masks_to_input(binary, soft)
    soft_in, binary_in = back.soft, back.binary
    kept_in = np.where(binary_in[..., None], image01, geometry.image_to_input(kept))
    return geometry, image01, soft_in, binary_in, kept_in.astype(np.float32)
