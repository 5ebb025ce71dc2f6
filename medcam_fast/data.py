"""Images in, model-ready arrays out: preprocessing, data-set loaders and procedural data with known evidence.

Everything here uses only numpy, Pillow and the standard library (no torch), so an onnxruntime-only
runtime can reuse it.

Public API:

- :class:`Preprocess`: dtype, channel and size conversion plus normalization, to float32 NCHW.
- :class:`ImageSet`: labelled uint8 images (and, for procedural data, ground-truth evidence masks).
- :func:`load_npz`: a MedMNIST ``.npz`` file (official split layout, or a flat set with a seeded split).
- :data:`DATASETS` / :func:`resolve_data`: short data-set names to files in the shared data folder.
- :func:`load_image`, :data:`IMAGE_SUFFIXES`, :func:`list_images`, :func:`load_folder`: image files.
- :func:`make_lesions`: a procedural two-class set whose label depends on one lesion alone.

Every failure a user can cause raises :class:`~medcam_fast.errors.DataError` naming the file concerned.
"""

from __future__ import annotations

import glob
import math
import os
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, UsageError, one_line

__all__ = [
    "Preprocess",
    "ImageSet",
    "load_npz",
    "DATASETS",
    "resolve_data",
    "load_image",
    "IMAGE_SUFFIXES",
    "list_images",
    "load_folder",
    "make_lesions",
    "LESION_CLASSES",
    "stratified_split",
]

PathLike = str | os.PathLike[str]
#: What :class:`Preprocess` accepts: one image or a batch array, a PIL image, or a list of single images.
ImageInput = np.ndarray | Image.Image | Sequence[np.ndarray | Image.Image]

#: ITU-R BT.601 luma weights (R, G, B), as Pillow's ``convert("L")`` uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Split fractions of a flat (split-less) ``.npz`` set: train, val, test.
_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
_SPLITS = ("train", "val", "test")

#: Class names of the known MedMNIST files, keyed on the file-name prefix.
_CLASS_TABLE: dict[str, list[str]] = {
    "breastmnist": ["malignant", "normal or benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                   "platelet"],
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
}

#: Short data-set names and the files they stand for (in the shared data folder).
DATASETS: dict[str, str] = {
    "breast": "breastmnist_64.npz",
    "pneumonia": "pneumoniamnist_28.npz",
    "blood": "bloodmnist_pbc800_64.npz",
    "path": "pathmnist_subset1000_28.npz",
}

#: File suffixes (lower case) that :func:`list_images` treats as images.
IMAGE_SUFFIXES: frozenset[str] = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib", ".gif", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".qoi",
})

#: Class names of :func:`make_lesions` (label 0, label 1).
LESION_CLASSES: tuple[str, str] = ("benign", "lesion")

_DEFAULT_MAX_PIXELS = 50_000_000
_PIL_LIMIT_LOCK = threading.Lock()




# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Image sets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """A labelled set of images.

    Args:
        images: uint8 pixels, NHW (grey) or NHWC (C = 3).
        labels: int64 class indices, shape (N,).
        classes: class names; ``labels`` index into it.
        name: a short name of the set (e.g. ``"breastmnist_64"``).
        masks: bool NHW ground-truth evidence (procedural data only), or None.
        evidence_class: the class whose evidence ``masks`` mark, or None when every image's mask is the
            evidence for its own label. Localization metrics use only the images of this class that the
            classifier also predicts as this class: for the others the mask marks no known evidence (in
            :func:`make_lesions`, a benign image's mask is the smooth blob, but the evidence for "benign" is
            the absence of a lesion anywhere).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    masks: np.ndarray | None = field(default=None)
    evidence_class: int | None = field(default=None)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.labels):
            raise DataError(f"image set {self.name!r} has {len(self.images)} images but {len(self.labels)} labels")
        if self.masks is not None and self.masks.shape[:3] != self.images.shape[:3]:
            raise DataError(f"image set {self.name!r}: masks shape {self.masks.shape} does not match images")

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def channels(self) -> int:
        """Channel count: 1 for NHW images, else the last axis."""
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    @property
    def size(self) -> tuple[int, int]:
        """Image size (H, W)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: Any) -> ImageSet:
        """A new set with the images at ``indices`` (integer indices, a slice, or a boolean mask).

        Args:
            indices: which images to keep, in that order.
        """
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.dtype != np.bool_:
                indices = indices.astype(np.int64).reshape(-1)
        masks = None if self.masks is None else self.masks[indices]
        return ImageSet(images=self.images[indices], labels=self.labels[indices], classes=list(self.classes),
                        name=self.name, masks=masks, evidence_class=self.evidence_class)


# ----------------------------------------------------------------------------------------------------------
# MedMNIST .npz files
# ----------------------------------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickles), turning any failure into a DataError."""
    if not path.exists():
        raise DataError("file not found", path)
    if path.is_dir():
        raise DataError("is a folder, expected a .npz file", path)
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes), expected a .npz file", path)
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError("a single .npy array, expected a .npz archive", path)
        if not magic.startswith(b"PK"):
            raise DataError("not a .npz file (not a zip archive)", path)
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a bare .npy array
            raise DataError("a single .npy array, expected a .npz archive", path)
        with loaded as npz:  # arrays are read lazily: corrupt members fail here
            return {k: np.asarray(npz[k]) for k in npz.files}
    except DataError:
        raise
    except Exception as e:  # text, truncated, pickled, bad zip or zlib data: all user data problems
        raise DataError(f"not a valid .npz file: {one_line(e)}", path) from None


def _npz_images(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Validate and convert one image array of an ``.npz`` file to uint8 NHW / NHWC."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
        raise DataError(f"'{key}' has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)", path)
    if images.dtype == np.uint8:
        out = images
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise DataError(f"'{key}' contains NaN or infinite values", path)
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' float values lie in [{lo:.4g}, {hi:.4g}], expected [0, 1] or [0, 255]", path)
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.round(images.astype(np.float64) * scale).astype(np.uint8)
    elif images.dtype == np.uint16:
        out = np.round(images.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        lo, hi = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' integer values lie in [{lo}, {hi}], expected [0, 255]", path)
        out = images.astype(np.uint8)
    else:
        raise DataError(f"'{key}' has unsupported type {images.dtype}", path)
    if out.ndim == 4 and out.shape[-1] == 4:
        rgb, alpha = out[..., :3].astype(np.uint16), out[..., 3:].astype(np.uint16)
        out = ((rgb * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _npz_labels(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Validate and flatten one label array of an ``.npz`` file to int64 (N,)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"'{key}' has shape {labels.shape}: only single-label classification (N,) or (N, 1) "
                        "is supported", path)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.all(labels == np.round(labels)):
            raise DataError(f"'{key}' holds non-integer values", path)
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"'{key}' has unsupported type {labels.dtype}, expected integers", path)
    return labels.astype(np.int64)


def _class_names(arrays: dict[str, np.ndarray], name: str, n_needed: int, path: Path) -> list[str]:
    """Class names from the ``classes`` key, else the table of known files, else ``class_<k>``."""
    if "classes" in arrays:
        raw = arrays["classes"].reshape(-1)
        if raw.dtype.kind == "S":
            classes = [b.decode("utf-8", "replace") for b in raw.tolist()]
        elif raw.dtype.kind == "U":
            classes = [str(s) for s in raw.tolist()]
        else:
            raise DataError(f"'classes' must be an array of strings, got type {raw.dtype}", path)
        return classes
    lower = name.lower()
    for prefix, classes in _CLASS_TABLE.items():
        if lower.startswith(prefix):
            return list(classes)
    return [f"class_{k}" for k in range(n_needed)]


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """A seeded stratified 70/10/20 train/val/test split of indices (each split sorted).

    Each class is permuted with its own generator ``default_rng([seed, class])``; the class's test part has
    ``round(0.2 n)`` images, its val part ``round(0.1 n)``, its train part the rest.
    """
    parts: dict[str, list[np.ndarray]] = {s: [] for s in _SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng([int(seed), int(c)]).permutation(idx)
        n = len(perm)
        n_test = int(round(_SPLIT_FRACTIONS[2] * n))
        n_val = min(int(round(_SPLIT_FRACTIONS[1] * n)), n - n_test)
        n_train = n - n_val - n_test
        parts["train"].append(perm[:n_train])
        parts["val"].append(perm[n_train:n_train + n_val])
        parts["test"].append(perm[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}


def load_npz(path: PathLike, split: str = "test", seed: int = 0) -> ImageSet:
    """Load a MedMNIST-style ``.npz`` file.

    Two layouts are read: the official one (``train_images``, ``train_labels``, ``val_*``, ``test_*``, labels
    (N,) or (N, 1)) and a flat one (``images``, ``labels``, optional ``classes``), which gets a seeded,
    stratified 70 % / 10 % / 20 % train / val / test split (disjoint, covering every image).

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every image; official splits concatenated in
            train, val, test order).
        seed: seed (>= 0) of the flat layout's split (ignored for the official layout).

    Returns:
        an :class:`ImageSet` named after the file (e.g. ``"breastmnist_64"``), classes from the ``classes``
        key, else from the known MedMNIST files' names, else ``class_0`` … ``class_{K-1}``.

    Raises:
        DataError: missing or invalid file, neither layout, an unknown or absent split, NaN/Inf pixels,
            mismatched lengths, or labels outside [0, number of classes).
        UsageError: a negative seed.
    """
    path = Path(path)
    if split not in (*_SPLITS, "all"):
        raise DataError(f"unknown split {split!r}: choose train, val, test or all", path)
    if seed < 0:
        raise UsageError(f"the split seed must be >= 0, got {seed}")
    arrays = _read_npz(path)
    name = path.name[:-4] if path.name.lower().endswith(".npz") else path.name
    official = [s for s in _SPLITS if f"{s}_images" in arrays and f"{s}_labels" in arrays]
    if official:
        parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in official:
            imgs = _npz_images(arrays[f"{s}_images"], path, f"{s}_images")
            labs = _npz_labels(arrays[f"{s}_labels"], path, f"{s}_labels")
            if len(imgs) != len(labs):
                raise DataError(f"'{s}_images' has {len(imgs)} images but '{s}_labels' {len(labs)} labels", path)
            parts[s] = (imgs, labs)
        all_labels = np.concatenate([labs for _, labs in parts.values()])
    elif "images" in arrays and "labels" in arrays:
        imgs = _npz_images(arrays["images"], path, "images")
        labs = _npz_labels(arrays["labels"], path, "labels")
        if len(imgs) != len(labs):
            raise DataError(f"'images' has {len(imgs)} images but 'labels' {len(labs)} labels", path)
        all_labels = labs
    else:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"not a MedMNIST layout: expected train_images/train_labels/… or images/labels, "
                        f"found keys: {found}", path)

    n_needed = int(all_labels.max()) + 1 if all_labels.size else 0
    classes = _class_names(arrays, name, n_needed, path)
    if all_labels.size and (int(all_labels.min()) < 0 or n_needed > len(classes)):
        raise DataError(f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes, found "
                        f"[{int(all_labels.min())}, {n_needed - 1}]", path)

    if official:
        if split == "all":
            imgs = np.concatenate([parts[s][0] for s in official])
            labs = np.concatenate([parts[s][1] for s in official])
        elif split in parts:
            imgs, labs = parts[split]
        else:
            raise DataError(f"no '{split}' split in this file (it has: {', '.join(official)})", path)
    elif split != "all":
        idx = stratified_split(labs, seed)[split]
        imgs, labs = imgs[idx], labs[idx]
    return ImageSet(images=imgs, labels=labs, classes=classes, name=name)


def _repo_root() -> Path:
    """The source tree's root: the parent of this package's folder."""
    return Path(__file__).resolve().parent.parent


def _search_dirs(data_dir: PathLike | None) -> list[Path]:
    """Where short data-set names are looked up: ``data_dir``, else ``$MEDCAM_DATA_DIR``, else the defaults."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("MEDCAM_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    dirs = [Path.cwd() / ".." / "shared" / "data", _repo_root().parent / "shared" / "data"]
    out: list[Path] = []
    for d in dirs:
        if all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def resolve_data(name_or_path: str, data_dir: str | None = None) -> Path:
    """Find a data file from a path or a short name. Nothing is downloaded.

    Args:
        name_or_path: an existing file or folder (returned as is), a short name from :data:`DATASETS`
            (``breast``, ``pneumonia``, ``blood``, ``path``), or a bare file name (``"breastmnist_64.npz"``).
        data_dir: the folder to look short names up in; default ``$MEDCAM_DATA_DIR`` when set, else
            ``../shared/data`` relative to the current folder and relative to the source tree's root.

    Raises:
        DataError: not an existing path and not found in the searched folders.
    """
    given = Path(name_or_path).expanduser()
    if given.exists():
        return given
    key = str(name_or_path).strip().lower()
    if key in DATASETS:
        file_name = DATASETS[key]
    elif given.name == str(name_or_path) and given.name:  # a bare file name: search for it too
        file_name = given.name
    else:
        raise DataError("no such file or folder", name_or_path)
    candidates = [file_name] if file_name.endswith(".npz") or given.suffix else [file_name, file_name + ".npz"]
    dirs = _search_dirs(data_dir)
    for d in dirs:
        for cand in candidates:
            p = d / cand
            if p.exists():
                return p
    searched = ", ".join(str(d) for d in dirs)
    names = ", ".join(DATASETS)
    raise DataError(f"not an existing path, and {file_name} is not in {searched} (short names: {names}; "
                    f"pass a data folder or set MEDCAM_DATA_DIR)", name_or_path)


# ----------------------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------------------


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


def _open_image(path: Path, max_pixels: int) -> Image.Image:
    """``Image.open`` with Pillow's own bomb check raised to ``max_pixels`` when that is the larger."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        try:
            if old is not None and max_pixels > old:
                Image.MAX_IMAGE_PIXELS = max_pixels
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def load_image(path: PathLike, *, max_pixels: int = _DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file (PNG, JPEG, TIFF, BMP or anything Pillow opens; the first frame of a stack).

    EXIF orientation is applied. The result is uint8 or uint16 HW (grey) or uint8 HWC RGB (3 channels);
    transparency is composited on black.

    Modes: 1 and L give uint8 grey; P gives RGB, or grey when every used palette entry is grey; RGBA, LA and
    PA are composited on black; CMYK, YCbCr and the rest become RGB; I;16* gives uint16; I (32-bit) keeps
    values already in [0, 65535], otherwise is scaled linearly from its [min, max] to [0, 65535]; F (float)
    is clipped at 0 and, when its maximum exceeds 1, divided by that maximum, then scaled to uint16.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (width × height), checked from the header
            before any pixel is decoded.

    Raises:
        DataError: missing file, folder, empty file, not an image, too many pixels, truncated or corrupt data.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    if path.is_dir():
        raise DataError("is a folder, expected an image file", path)
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes), not an image", path)
        img = _open_image(path, max_pixels)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"image has more pixels than the limit of {max_pixels} (max_pixels), refused "
                        "before decoding", path) from None
    except UnidentifiedImageError:
        raise DataError("not an image file (Pillow cannot identify its format)", path) from None
    except PermissionError:
        raise DataError("permission denied", path) from None
    except Exception as e:
        raise DataError(f"cannot open image: {one_line(e)}", path) from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise DataError(f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
                            "(max_pixels), refused before decoding", path)
        if w == 0 or h == 0:
            raise DataError(f"image has no pixels ({w}x{h})", path)
        try:
            img.load()
        except Exception as e:
            raise DataError(f"truncated or corrupt image: {one_line(e)}", path) from None
        try:
            img = ImageOps.exif_transpose(img)  # a no-op without an EXIF orientation tag
        except Exception:  # a malformed EXIF block is not worth refusing the pixels for
            pass
        try:
            return np.ascontiguousarray(_pil_to_array(img))
        except DataError as e:
            raise DataError(e.cause, path) from None
        except Exception as e:
            raise DataError(f"cannot convert image mode {img.mode!r}: {one_line(e)}", path) from None


def _is_image_file(p: Path) -> bool:
    """A visible file with an image suffix."""
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def list_images(path: PathLike) -> list[Path]:
    """The image files a path stands for.

    Args:
        path: a file (returned alone, whatever its suffix), a folder (its image files, recursively, hidden
            files skipped, sorted), or a glob pattern such as ``"scans/**/*.png"`` (sorted matching image files).

    Raises:
        DataError: nothing found (``no images found in ...``).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if _is_image_file(f))
    elif glob.has_magic(str(path)):
        found = sorted(Path(m) for m in glob.glob(os.path.expanduser(str(path)), recursive=True)
                       if _is_image_file(Path(m)))
    else:
        raise DataError("no such file or folder", path)
    if not found:
        raise DataError(f"no images found in {path} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})", path)
    return found


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """uint16 pixels scaled to uint8 (divide by 257, round); uint8 unchanged."""
    if x.dtype == np.uint8:
        return x
    return np.round(x.astype(np.float64) / 257.0).astype(np.uint8)


def _fit_image(x: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """A uint8 HW/HWC image converted to ``channels`` (1 or 3) and resized (Pillow bilinear) to ``size``."""
    if x.ndim == 3 and channels == 1:
        x = np.round(x.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
    elif x.ndim == 2 and channels == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[:2] != size:
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((size[1], size[0]),
                                                                       Image.Resampling.BILINEAR))
    return x


def load_folder(path: PathLike) -> ImageSet:
    """Load a labelled image folder: one subfolder per class (sorted subfolder names are the classes).

    Images are read with :func:`load_image` (16-bit scaled to 8-bit), converted to the majority channel
    count (grey or RGB; a tie keeps RGB) and resized (Pillow bilinear) to the first image's size.

    Args:
        path: the folder holding the class subfolders.

    Raises:
        DataError: not a folder, no class subfolders, a subfolder without images, or an unreadable image.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError("no such folder", root)
    if not root.is_dir():
        raise DataError("not a folder: expected one subfolder of images per class", root)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise DataError("no class subfolders: expected one subfolder of images per class", root)
    raw: list[np.ndarray] = []
    labels: list[int] = []
    for k, d in enumerate(subdirs):
        files = sorted(f for f in d.rglob("*") if _is_image_file(f))
        if not files:
            raise DataError(f"no images found in class folder {d.name!r}", d)
        for f in files:
            raw.append(_to_uint8(load_image(f)))
            labels.append(k)
    votes = Counter(1 if x.ndim == 2 else 3 for x in raw)
    channels = 3 if votes[3] >= votes[1] else 1
    size = (int(raw[0].shape[0]), int(raw[0].shape[1]))
    images = np.stack([_fit_image(x, size, channels) for x in raw])
    return ImageSet(images=images, labels=np.asarray(labels, dtype=np.int64), classes=[d.name for d in subdirs],
                    name=root.resolve().name)


# ----------------------------------------------------------------------------------------------------------
# Procedural lesions with ground-truth evidence
# ----------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma`` pixels (periodic, via FFT), normalized to unit std."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy * fy + fx * fx))
    out = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
    return (out - out.mean()) / (out.std() + 1e-12)


def _weighted_standardize(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``x`` shifted and scaled to zero mean and unit std under ``weight`` (weight > 0 somewhere)."""
    w = weight / weight.sum()
    mean = float((x * w).sum())
    std = math.sqrt(max(float(((x - mean) ** 2 * w).sum()), 1e-12))
    return (x - mean) / std


def _lesion_image(seed: int, index: int, size: int, positive_fraction: float,
                  erase_candidate: bool) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Render one procedural image (float grey on about [0, 1]) from (seed, index) alone.

    Every random number is drawn in the same order whatever the label and ``erase_candidate``, so the label
    flips nothing but the candidate, and erasing changes nothing but the candidate's pixels.

    Returns:
        (grey image float64 HW, label, candidate mask bool HW, RGB tint (3,)).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    s = size
    label = int(rng.random() < positive_fraction)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    scale = s / 32.0

    # Tissue-like background: a level, a low-frequency gradient, smoothed noise at two scales, mild noise.
    level = rng.uniform(0.38, 0.58)
    g_angle, g_amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.16)
    ramp = ((xx - s / 2) * math.cos(g_angle) + (yy - s / 2) * math.sin(g_angle)) / s
    coarse = _smooth_noise(rng, (s, s), sigma=rng.uniform(3.0, 5.0) * scale)
    fine = _smooth_noise(rng, (s, s), sigma=rng.uniform(1.2, 2.0) * scale)
    img = level + g_amp * ramp + rng.uniform(0.03, 0.06) * coarse + rng.uniform(0.015, 0.03) * fine
    sensor = rng.standard_normal((s, s)) * 0.008

    # The candidate's site, area, contrast and internal-variation strength (class independent).
    area = rng.uniform(0.03, 0.10) * s * s
    r_eq = math.sqrt(area / math.pi)
    margin = r_eq * 1.7 + 1.0  # keeps spikes inside; margin <= 0.31 s + 1 < s / 2
    cy, cx = rng.uniform(margin, s - margin, size=2)
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.14, 0.26)
    variation = rng.uniform(0.07, 0.11)

    # Two to four benign distractors: smooth soft-edged ellipses (four always drawn, some unused).
    n_distract = int(rng.integers(2, 5))
    d_params = []
    for _ in range(4):
        d_area = rng.uniform(0.02, 0.07) * s * s
        aspect = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, math.pi)
        dy, dx = rng.uniform(0.08 * s, 0.92 * s, size=2)
        d_contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.26)
        d_params.append((d_area, aspect, angle, dy, dx, d_contrast))
    for d_area, aspect, angle, dy, dx, d_contrast in d_params[:n_distract]:
        a = math.sqrt(d_area / (math.pi * aspect))
        b = a * aspect
        u = (xx - dx) * math.cos(angle) + (yy - dy) * math.sin(angle)
        v = -(xx - dx) * math.sin(angle) + (yy - dy) * math.cos(angle)
        rho2 = (u / a) ** 2 + (v / b) ** 2
        img = img + d_contrast * np.exp(-1.6 * rho2 ** 1.6)

    # Shape parameters of both candidate kinds (always drawn).
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    n_spikes = int(rng.integers(6, 10))
    spike_angles = rng.uniform(0, 2 * math.pi) + np.arange(n_spikes) * 2 * math.pi / n_spikes \
        + rng.uniform(-0.25, 0.25, size=n_spikes)
    spike_heights = rng.uniform(0.45, 0.85, size=n_spikes)
    lobe_amp, lobe_phase = rng.uniform(0.05, 0.15, size=2), rng.uniform(0, 2 * math.pi, size=2)
    speckle = rng.standard_normal((s, s))
    stripe_angle, stripe_period = rng.uniform(0, math.pi), rng.uniform(2.6, 3.6) * max(1.0, scale * 0.75)
    stripe_phase = rng.uniform(0, 2 * math.pi)
    round_aspect, round_angle = rng.uniform(0.8, 1.0), rng.uniform(0, math.pi)
    smooth_dir = rng.uniform(0, 2 * math.pi)

    if label == 1:  # spiculated outline: a base radius with lobes and narrow spikes, scaled to the area
        def profile(t: np.ndarray) -> np.ndarray:
            """Radius relative to the base radius at angles ``t``."""
            delta = (t[..., None] - spike_angles + math.pi) % (2 * math.pi) - math.pi
            spikes = (spike_heights * np.exp(-(delta / 0.17) ** 2)).sum(-1)
            lobes = lobe_amp[0] * np.cos(2 * t + lobe_phase[0]) + lobe_amp[1] * np.cos(3 * t + lobe_phase[1])
            return 1.0 + lobes + spikes

        grid = np.linspace(0, 2 * math.pi, 360, endpoint=False)
        base = math.sqrt(area / (0.5 * float(np.mean(profile(grid) ** 2)) * 2 * math.pi))
        radius = base * profile(theta)
    else:  # smooth round (slightly elliptical) blob of the same area
        a = math.sqrt(area / (math.pi * round_aspect))
        b = a * round_aspect
        phi = theta - round_angle
        radius = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)
    mask = alpha > 0

    if label == 1:  # distinct internal texture: speckle and stripes
        stripes = np.sin(2 * math.pi * ((xx - cx) * math.cos(stripe_angle) + (yy - cy) * math.sin(stripe_angle))
                         / stripe_period + stripe_phase)
        texture = 0.8 * speckle + 1.0 * stripes
    else:  # smooth internal variation: a dome plus a gentle tilt
        rel = dist / max(r_eq, 1e-6)
        texture = -(rel ** 2) + 0.5 * rel * np.cos(theta - smooth_dir)
    texture = _weighted_standardize(texture, alpha)
    if not erase_candidate:
        img = img + alpha * (contrast + variation * texture)
    img = img + sensor
    tint = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.55, 0.8), rng.uniform(0.75, 0.95)])
    return img, label, mask, tint


def make_lesions(n: int, size: int = 64, seed: int = 0, channels: int = 1, positive_fraction: float = 0.5,
                 erase_candidate: bool = False) -> ImageSet:
    """A procedural two-class set (``benign`` / ``lesion``) whose label depends on one candidate site alone.

    Every image has a tissue-like background (smoothed noise at two scales plus a random low-frequency
    gradient), two to four smooth soft-edged benign blobs at random places with random size and contrast, and
    exactly one crisp-edged *candidate*: in a positive image a lesion with a spiculated outline and a
    speckled, striped interior; in a negative image a smooth round blob with a smooth interior. Both kinds
    draw area, contrast and internal variance from the same distributions (the interior variation is
    standardized to the same weighted mean and std), so brightness, contrast, object count and size carry
    no information about the label. ``masks[i]`` is the candidate's region (the true evidence in positives).

    Image ``i`` depends only on ``(seed, i)`` (its generator is ``np.random.default_rng([seed, i])``), so a
    larger ``n`` extends a smaller one, and every random number is drawn whatever the label, so the
    label changes the candidate's pixels only.

    Args:
        n: number of images.
        size: image side in pixels (square), at least 16.
        seed: the generator seed (>= 0).
        channels: 1 for grey, 3 for an RGB rendering (a random per-image tint of the same grey image).
        positive_fraction: probability that an image is positive (label 1, ``lesion``).
        erase_candidate: render the same images without their candidate (the candidate region shows the
            background and blobs underneath); everything else, labels and masks included, is identical.

    Returns:
        an :class:`ImageSet` with uint8 images, labels, classes ``["benign", "lesion"]``, bool masks and
        ``evidence_class = 1``.

    Raises:
        UsageError: ``n < 0``, ``seed < 0``, ``size < 16``, ``channels`` not 1 or 3, or ``positive_fraction`` outside [0, 1].
    """
    if n < 0 or seed < 0:
        raise UsageError(f"make_lesions needs n >= 0 and seed >= 0, got n={n}, seed={seed}")
    if size < 16:
        raise UsageError(f"make_lesions needs size >= 16, got {size}")
    if channels not in (1, 3):
        raise UsageError(f"make_lesions channels must be 1 or 3, got {channels}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise UsageError(f"make_lesions positive_fraction must lie in [0, 1], got {positive_fraction}")
    shape = (n, size, size) if channels == 1 else (n, size, size, 3)
    images = np.empty(shape, dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        grey, label, mask, tint = _lesion_image(seed, i, size, positive_fraction, erase_candidate)
        pixels = grey if channels == 1 else grey[..., None] * tint
        images[i] = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
        masks[i] = mask
        labels[i] = label
    suffix = "_erased" if erase_candidate else ""
    return ImageSet(images=images, labels=labels, classes=list(LESION_CLASSES),
                    name=f"lesions_{size}{suffix}", masks=masks, evidence_class=1)
