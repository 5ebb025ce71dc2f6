"""How raw images become model input: pixel and channel conversion, resizing, normalization to float32 NCHW.

:class:`Preprocess` (size, channels, per-channel mean and std) turns one image, a batch array or a list of
images — uint8, uint16 or float on [0, 1]; grey, RGB or RGBA composited on black — into normalized float32
NCHW. It also measures the statistics of a set (:meth:`Preprocess.fit`), undoes the normalization, and
round-trips through JSON (:meth:`Preprocess.to_dict` / :meth:`Preprocess.from_dict`): that is how classifier
bundles, explainer bundles and ONNX metadata carry it. :data:`ImageInput` and :data:`PathLike` name the
accepted inputs. numpy and Pillow only — the torch-free ONNX runtime imports this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError, one_line

__all__ = ["PathLike", "ImageInput", "Preprocess"]


PathLike = str | os.PathLike[str]


#: What :class:`Preprocess` accepts: one image or a batch array, a PIL image, or a list of single images.
ImageInput = np.ndarray | Image.Image | Sequence[np.ndarray | Image.Image]


#: ITU-R BT.601 luma weights (R, G, B), as Pillow's ``convert("L")`` uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _unit_float(x: np.ndarray) -> np.ndarray:
    """Convert pixel values to float32 on [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, float as is.

    Args:
        x: an image array of any shape.

    Raises:
        DataError: another dtype, NaN/Inf, or floats clearly outside [0, 1].
    """
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.uint16:
        return x.astype(np.float32) / np.float32(65535.0)
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not np.isfinite(x).all():
            raise DataError("image contains NaN or infinite values")
        y = x.astype(np.float32)
        if y.size:
            lo, hi = float(y.min()), float(y.max())
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise DataError(f"float image values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                                "scale them or pass uint8/uint16 pixels")
        return np.clip(y, 0.0, 1.0)
    raise DataError(f"unsupported pixel type {x.dtype}: expected uint8, uint16 or float in [0, 1]")


def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert float NHWC pixels (C in 1, 3, 4) to ``channels`` (1 or 3) channels.

    Grey becomes RGB by repetition, RGB becomes grey by ITU-R 601 luma, RGBA is composited on black and
    its alpha dropped.

    Args:
        x: float32 array (N, H, W, C) on [0, 1].
        channels: the wanted channel count, 1 or 3.
    """
    c = x.shape[-1]
    if c == 4:
        x = x[..., :3] * x[..., 3:4]
        c = 3
    if c == channels:
        return x
    if channels == 3:  # c == 1
        return np.repeat(x, 3, axis=-1)
    return (x @ _LUMA)[..., None].astype(np.float32)  # c == 3, channels == 1


def _resize_float(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float32 NCHW planes to ``size`` (H, W) with Pillow bilinear in mode 'F' (one plane at a time).

    Args:
        x: float32 array (N, C, H, W).
        size: the target (H, W).
    """
    n, c, h, w = x.shape
    if (h, w) == tuple(size):
        return x
    out = np.empty((n, c, size[0], size[1]), dtype=np.float32)
    for i in range(n):
        for j in range(c):
            plane = Image.fromarray(np.ascontiguousarray(x[i, j], dtype=np.float32))
            out[i, j] = np.asarray(plane.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return out


def _as_nhwc(image: np.ndarray, batched: bool | None) -> np.ndarray:
    """View an array as NHWC (C in 1, 3, 4).

    Args:
        image: HW, HWC, NHW or NHWC.
        batched: True when a 3-D array is NHW, False when it is HWC, None to decide: a 3-D array whose last
            axis has 1, 3 or 4 entries is HWC, any other 3-D array NHW.

    Raises:
        DataError: any other shape, or an empty image.
    """
    if image.ndim == 2:
        x = image[None, :, :, None]
    elif image.ndim == 3:
        hwc = image.shape[-1] in (1, 3, 4) if batched is None else not batched
        x = image[None] if hwc else image[..., None]
    elif image.ndim == 4:
        x = image
    else:
        raise DataError(f"unsupported image array shape {image.shape}: expected HW, HWC, NHW or NHWC")
    if x.shape[-1] not in (1, 3, 4):
        raise DataError(f"unsupported image array shape {image.shape}: channels must be 1, 3 or 4 (last axis)")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"empty image (shape {image.shape})")
    return x


def _input_batches(images: ImageInput, batched: bool | None) -> list[np.ndarray]:
    """Split any input :class:`Preprocess` accepts into NHWC arrays (one per list entry, or one for an array).

    Args:
        images: a PIL image, an array (HW, HWC, NHW or NHWC), or a list/tuple of single images.
        batched: how to read a 3-D array, as for :func:`_as_nhwc`.
    """
    if isinstance(images, Image.Image):
        return [_as_nhwc(_pil_to_array(images), batched=False)]
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            arr = _pil_to_array(im) if isinstance(im, Image.Image) else np.asarray(im)
            if arr.ndim not in (2, 3):
                raise DataError(f"each image of a list must be HW or HWC, got shape {arr.shape}")
            out.append(_as_nhwc(arr, batched=False))
        return out
    return [_as_nhwc(np.asarray(images), batched=batched)]


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input: size, channels and per-channel normalization.

    Calling it converts pixels to float32 on [0, 1], converts channels, resizes (Pillow bilinear, only when
    the size differs) and normalizes ``(x - mean) / std``, returning float32 NCHW.

    Args:
        size: the model's input size (H, W).
        channels: the model's input channel count, 1 (grey) or 3 (RGB).
        mean: per-channel mean on the [0, 1] pixel scale, ``channels`` entries.
        std: per-channel standard deviation on the [0, 1] pixel scale, ``channels`` entries, all > 0.

    Raises:
        UsageError: inconsistent or invalid fields.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            size = tuple(int(s) for s in self.size)
            mean = tuple(float(m) for m in self.mean)
            std = tuple(float(s) for s in self.std)
            channels = int(self.channels)
        except (TypeError, ValueError) as e:
            raise UsageError(f"invalid Preprocess fields: {one_line(e)}") from None
        if len(size) != 2 or min(size) < 1:
            raise UsageError(f"Preprocess size must be two positive integers (H, W), got {self.size!r}")
        if channels not in (1, 3):
            raise UsageError(f"Preprocess channels must be 1 or 3, got {self.channels!r}")
        if len(mean) != channels or len(std) != channels:
            raise UsageError(f"Preprocess mean and std need {channels} entries each, got {len(mean)} and {len(std)}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise UsageError("Preprocess mean must be finite and std finite and > 0")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists and numbers) that :meth:`from_dict` turns back into an equal object."""
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Rebuild a :class:`Preprocess` from :meth:`to_dict` output (e.g. read back from JSON).

        Args:
            d: a mapping with keys ``size``, ``channels``, ``mean`` and ``std``.

        Raises:
            UsageError: a key is missing or a value is invalid.
        """
        try:
            return cls(size=tuple(d["size"]), channels=d["channels"], mean=tuple(d["mean"]), std=tuple(d["std"]))
        except (KeyError, TypeError) as e:
            raise UsageError(f"invalid Preprocess dict (needs size, channels, mean, std): {one_line(e)}") from None

    @classmethod
    def identity(cls, size: tuple[int, int], channels: int) -> Preprocess:
        """A :class:`Preprocess` that only converts and resizes (mean 0, std 1): output stays on [0, 1].

        Args:
            size: the output size (H, W).
            channels: the output channel count, 1 or 3.
        """
        return cls(size=size, channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as float32 arrays shaped (C, 1, 1)."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return mean, std

    def _unit_nchw(self, x: np.ndarray) -> np.ndarray:
        """NHWC pixels of any supported dtype -> float32 NCHW on [0, 1], converted and resized."""
        y = _convert_channels(_unit_float(x), self.channels)
        y = np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32)
        return _resize_float(y, self.size)

    def unit(self, images: ImageInput, *, batched: bool | None = None) -> np.ndarray:
        """Like calling the object, but without normalization: float32 NCHW on [0, 1].

        Args:
            images: as for :meth:`__call__`.
            batched: as for :meth:`__call__`.
        """
        parts = [self._unit_nchw(x) for x in _input_batches(images, batched=batched)]
        if not parts:
            return np.zeros((0, self.channels, *self.size), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def __call__(self, images: ImageInput, *, batched: bool | None = None) -> np.ndarray:
        """Turn one image or many into normalized float32 NCHW model input.

        Args:
            images: one image (a PIL image, or an array HW, or HWC with C in 1, 3, 4), a batch array
                (NHW or NHWC), or a list/tuple of single images (sizes may differ). A 3-D array whose last
                axis has 1, 3 or 4 entries is read as one HWC image, any other 3-D array as NHW. Pixels are
                uint8, uint16 or float on [0, 1]; RGBA is composited on black.
            batched: settles a 3-D array's meaning: True for NHW, False for HWC, None (default) to guess
                as described above.

        Returns:
            float32 array (N, channels, H, W) with (H, W) = ``size``.

        Raises:
            DataError: unsupported shape or dtype, NaN/Inf, or float values outside [0, 1].
        """
        x = self.unit(images, batched=batched)
        mean, std = self._arrays()
        return ((x - mean) / std).astype(np.float32, copy=False)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Undo the normalization: ``x * std + mean``, back on the [0, 1] pixel scale (not clipped).

        Args:
            x: normalized array, NCHW (or CHW) with ``channels`` channels.

        Raises:
            UsageError: the channel axis does not match.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (3, 4) or x.shape[-3] != self.channels:
            raise UsageError(f"denormalize expects NCHW with {self.channels} channels, got shape {x.shape}")
        mean, std = self._arrays()
        return (x * std + mean).astype(np.float32, copy=False)

    @classmethod
    def fit(cls, images: ImageInput, size: tuple[int, int] | None = None, channels: int | None = None) -> Preprocess:
        """Measure per-channel mean and std of an image set (after conversion and resizing).

        Args:
            images: a batch array NHW or NHWC (uint8, uint16 or float on [0, 1]), or a list of images.
            size: the target (H, W); default the (first) image's own size.
            channels: the target channel count, 1 or 3; default the images' own (RGBA counts as 3).

        Returns:
            a :class:`Preprocess` with the measured mean and std (a std below 1e-6 becomes 1).

        Raises:
            DataError: no images, or an unsupported shape or dtype.
        """
        batches = [b for b in _input_batches(images, batched=True) if len(b)]
        if not batches:
            raise DataError("cannot fit normalization statistics to an empty image set")
        first = batches[0]
        out_size = (int(first.shape[1]), int(first.shape[2])) if size is None else (int(size[0]), int(size[1]))
        out_channels = (1 if first.shape[-1] == 1 else 3) if channels is None else int(channels)
        ident = cls.identity(out_size, out_channels)
        total = np.zeros(out_channels, dtype=np.float64)
        total_sq = np.zeros(out_channels, dtype=np.float64)
        count = 0
        for b in batches:
            for start in range(0, len(b), 256):
                y = ident._unit_nchw(b[start:start + 256]).astype(np.float64)
                total += y.sum(axis=(0, 2, 3))
                total_sq += (y * y).sum(axis=(0, 2, 3))
                count += y.shape[0] * y.shape[2] * y.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return cls(size=out_size, channels=out_channels, mean=tuple(float(m) for m in mean),
                   std=tuple(float(v) for v in std))


def _composite_on_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiply uint8 colour (HW or HWC) by uint8 alpha (HW): compositing on black, rounded."""
    a = alpha.astype(np.uint32)
    if colour.ndim == 3:
        a = a[..., None]
    return ((colour.astype(np.uint32) * a + 127) // 255).astype(np.uint8)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8/uint16 HW (grey) or uint8 HWC RGB.

    Modes: 1 and L give uint8 grey; P gives RGB, or grey when every used palette entry is grey; RGBA, LA and
    PA are composited on black; CMYK, YCbCr and the rest become RGB; I;16* gives uint16; I (32-bit) keeps
    values already in [0, 65535], otherwise is scaled linearly from its [min, max] to [0, 65535]; F (float)
    is clipped at 0 and, when its maximum exceeds 1, divided by that maximum, then scaled to uint16.

    Raises:
        DataError: a float image with NaN/Inf (no path: the caller adds it).
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        rgb = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
        if has_alpha:
            rgb = _composite_on_black(rgb[..., :3], rgb[..., 3])
        grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
        return np.ascontiguousarray(rgb[..., 0]) if grey else rgb
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return _composite_on_black(rgba[..., :3], rgba[..., 3])
    if mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"), dtype=np.uint8)
        return _composite_on_black(la[..., 0], la[..., 1])
    if mode.startswith("I;16"):
        try:
            return np.asarray(img).astype(np.uint16)
        except Exception:  # unusual 16-bit variants numpy cannot view: go through 32-bit
            img = img.convert("I")
            mode = "I"
    if mode == "I":
        x = np.asarray(img).astype(np.int64)
        if x.size == 0:
            return x.astype(np.uint16)
        lo, hi = int(x.min()), int(x.max())
        if lo >= 0 and hi <= 65535:
            return x.astype(np.uint16)
        scaled = (x - lo) * (65535.0 / max(hi - lo, 1))
        return np.round(scaled).astype(np.uint16)
    if mode == "F":
        x = np.asarray(img, dtype=np.float32)
        if x.size and not np.isfinite(x).all():
            raise DataError("float image contains NaN or infinite values")
        x = np.clip(x, 0.0, None)
        hi = float(x.max()) if x.size else 0.0
        if hi > 1.0:
            x = x / hi
        return np.round(x * 65535.0).astype(np.uint16)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # CMYK, YCbCr, LAB, HSV, ...
