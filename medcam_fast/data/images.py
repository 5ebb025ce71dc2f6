"""Image files and labelled image sets: one file, a folder or glob of files, a folder of class subfolders.

:class:`ImageSet` holds labelled uint8 images (NHW or NHWC) and, for procedural data, bool evidence masks
and the class they are evidence for. :func:`decode` reads one frame of any input file — an image, a DICOM object or a
NIfTI slice (:mod:`.medical`) — through the one window/level path, with a record of what was applied. :func:`load_image` reads one file — anything Pillow opens, first
frame, EXIF orientation applied, transparency composited on black — and refuses more than ``max_pixels``
from the header, before any pixel is decoded; :func:`list_images` expands a file, folder or glob into
image files (:data:`IMAGE_SUFFIXES`); :func:`load_folder` reads one subfolder per class. Every failure a user
can cause raises :class:`~medcam_fast.errors.DataError` naming the file. numpy and Pillow only.
"""

from __future__ import annotations

import glob
import os
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, one_line
from .medical import (
    DEFAULT_SLICE_AXIS,
    Decoded,
    SourceKind,
    Window,
    apply_window,
    data_window,
    decode_medical,
    list_frames,
    sniff_kind,
)
from .preprocess import _LUMA, PathLike, _pil_to_array

__all__ = ["IMAGE_SUFFIXES", "MEDICAL_SUFFIXES", "ImageSet", "decode", "load_image", "probe_image", "list_images", "load_folder"]


#: File suffixes (lower case) that :func:`list_images` treats as images.
IMAGE_SUFFIXES: frozenset[str] = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib", ".gif", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".qoi",
})


_DEFAULT_MAX_PIXELS = 50_000_000


_PIL_LIMIT_LOCK = threading.Lock()


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


def _unsupported_format(path: Path) -> str:
    """Why Pillow could not open ``path``, naming the format when its magic bytes say which (DICOM, NIfTI)."""
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError:
        head = b""
    if head[128:132] == b"DICM":
        return ("a DICOM file: load_image reads Pillow formats only; decode() reads DICOM (as explain and "
                "train-classifier do)")
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or path.name.lower().endswith((".nii", ".nii.gz")):
        return ("a NIfTI volume: load_image reads Pillow formats only; decode() reads NIfTI slices (as explain "
                "and train-classifier do)")
    return "not an image file (Pillow cannot identify its format)"


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """The image's header, opened and checked (exists, not empty, an image, within ``max_pixels``, not
    0 pixels); no pixel is decoded. Raises DataError naming ``path``."""
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
        raise DataError(_unsupported_format(path), path) from None
    except PermissionError:
        raise DataError("permission denied", path) from None
    except Exception as e:
        raise DataError(f"cannot open image: {one_line(e)}", path) from None
    w, h = img.size
    problem = (f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (max_pixels), refused "
               "before decoding" if w * h > max_pixels else
               f"image has no pixels ({w}x{h})" if w == 0 or h == 0 else None)
    if problem:
        img.close()
        raise DataError(problem, path)
    return img


def probe_image(path: PathLike, *, max_pixels: int = _DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone — every check of :func:`load_image` that
    needs no pixel: a folder of large images is validated without holding any of them.

    Raises:
        DataError: missing file, folder, empty file, not an image, too many pixels.
    """
    with _open_checked(Path(path), max_pixels) as img:
        return img.size


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
    with _open_checked(path, max_pixels) as img:
        return np.ascontiguousarray(_pixels(_loaded(img, path), path))


def _loaded(img: Image.Image, path: Path) -> Image.Image:
    """``img``'s pixels decoded (a truncated or corrupt file is a :class:`DataError` naming ``path``) and its
    EXIF orientation applied (a no-op without the tag; a malformed EXIF block is not worth refusing the
    pixels for)."""
    try:
        img.load()
    except Exception as e:
        raise DataError(f"truncated or corrupt image: {one_line(e)}", path) from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    """:func:`~.preprocess._pil_to_array` of ``img``, its errors naming ``path``."""
    try:
        return _pil_to_array(img)
    except DataError as e:
        raise DataError(e.cause, path) from None
    except Exception as e:
        raise DataError(f"cannot convert image mode {img.mode!r}: {one_line(e)}", path) from None


#: Medical file names :func:`list_images` also takes (DICOM and NIfTI; extension-less DICOM is found by content).
MEDICAL_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".nii", ".nii.gz")


def _has_dicom_magic(p: Path) -> bool:
    """The DICOM magic ``DICM`` at byte 128 (how an extension-less DICOM file such as ``IM000001`` is found)."""
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _decode_image(path: Path, window: Window | None, max_pixels: int) -> Decoded:
    """A Pillow image: 8-bit as read (uint8, unchanged); 16-bit, 32-bit and float windowed."""
    with _open_checked(path, max_pixels) as opened:
        img = _loaded(opened, path)
        mode = img.mode
        record: dict[str, Any] = {"format": (img.format or path.suffix.lstrip(".")).lower(), "mode": mode}
        if not (mode.startswith("I") or mode == "F"):
            record["window"] = None
            return Decoded(np.ascontiguousarray(_pixels(img, path)), SourceKind.IMAGE, record)
        try:
            raw = np.asarray(img)
            if raw.dtype.kind not in "iuf":
                raw = np.asarray(img.convert("I" if mode.startswith("I") else "F"))
        except Exception as e:
            raise DataError(f"cannot convert image mode {mode!r}: {one_line(e)}", path) from None
    raw = raw.astype(np.float64)
    if raw.size and not np.isfinite(raw).all():
        raise DataError("float image contains NaN or infinite values", path)
    lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
    record["value_range"] = [lo, hi]
    warnings: list[str] = []
    if window is None:
        window, warning = data_window(mode, lo, hi)
        if warning:
            warnings.append(warning)
    record["window"] = window.to_dict()
    if warnings:
        record["warnings"] = list(warnings)
    return Decoded(np.ascontiguousarray(apply_window(raw, window)), SourceKind.IMAGE, record, warnings)


def decode(path: PathLike, *, kind: SourceKind | None = None, frame: int = 0, window: Window | None = None,
           slice_axis: int = DEFAULT_SLICE_AXIS, max_pixels: int = 50_000_000) -> Decoded:
    """Decode one frame of an image, DICOM or NIfTI file through the one window/level path.

    Args:
        path: the file.
        kind: what it is (default: :func:`sniff_kind`).
        frame: the frame of a multi-frame DICOM object, or the slice of a NIfTI volume along ``slice_axis``.
        window: the user's window (``--window``), applied to raw values after the Modality LUT; None for the
            file's own (DICOM) or the data's range.
        slice_axis: the canonical axis NIfTI volumes are sliced along (0, 1 or 2).
        max_pixels: refuse frames with more pixels (rows × columns).

    Raises:
        DataError: unreadable, not an image, a transfer syntax without an installed decoder (one line naming
            it and the package), too many pixels.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", p)
    kind = sniff_kind(p) if kind is None else kind
    if kind is SourceKind.IMAGE:
        return _decode_image(p, window, max_pixels)
    return decode_medical(p, kind, frame=frame, window=window, slice_axis=slice_axis, max_pixels=max_pixels)


def _is_image_file(p: Path) -> bool:
    """A visible file with an image or medical suffix, or a DICOM file by content whatever its name."""
    if not p.is_file() or p.name.startswith("."):
        return False
    name = p.name.lower()
    if p.suffix.lower() in IMAGE_SUFFIXES or name.endswith(MEDICAL_SUFFIXES):
        return True
    return not name.endswith((".csv", ".json", ".txt", ".md", ".npz", ".npy", ".py")) and _has_dicom_magic(p)


def list_images(path: PathLike) -> list[Path]:
    """The image files a path stands for.

    Args:
        path: a file (returned alone, whatever its suffix), a folder (its image files, recursively, hidden
            files skipped, sorted), or a glob pattern such as ``"scans/**/*.png"`` (sorted matching image files).

    Raises:
        DataError: nothing found (``no images found in ...``), or a path that is not a regular file or folder.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.exists() and not p.is_dir():  # a FIFO, a device, a socket: reading could block or never end
        raise DataError("not a regular file (a pipe, device or socket), expected an image file", path)
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if _is_image_file(f))
    elif glob.has_magic(str(path)):
        found = sorted(Path(m) for m in glob.glob(os.path.expanduser(str(path)), recursive=True)
                       if _is_image_file(Path(m)))
    else:
        raise DataError("no such file or folder", path)
    if not found:
        raise DataError(f"no images found in {path} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"{', '.join(MEDICAL_SUFFIXES)}, or DICOM files by content)", path)
    return found


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """uint16 pixels scaled to uint8 (divide by 257, round); float pixels on [0, 1] times 255, rounded;
    uint8 unchanged."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
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


def _load_any(path: Path) -> np.ndarray:
    """A file's pixels as ``medcam-fast explain`` reads it without ``--window``: :func:`decode` (8-bit images as
    read; 16-bit, 32-bit and float images through the data's window; a DICOM/NIfTI file's middle frame or
    slice through its own window), uint8 or float on [0, 1]."""
    kind = sniff_kind(path)
    frames = [0] if kind is SourceKind.IMAGE else list_frames(path, kind)
    return decode(path, kind=kind, frame=frames[len(frames) // 2]).pixels


def load_folder(path: PathLike) -> ImageSet:
    """Load a labelled image folder: one subfolder per class (sorted subfolder names are the classes).

    Images are read as ``medcam-fast explain`` reads them (:func:`decode`: a 12-bit scan stored in a 16-bit PNG
    is windowed over 0..4095, as at inference, not divided by 257), stored as 8-bit, converted to the majority
    channel count (grey or RGB; a tie keeps RGB) and resized (Pillow bilinear) to the first image's size.

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
            raw.append(_to_uint8(_load_any(f)))
            labels.append(k)
    votes = Counter(1 if x.ndim == 2 else 3 for x in raw)
    channels = 3 if votes[3] >= votes[1] else 1
    size = (int(raw[0].shape[0]), int(raw[0].shape[1]))
    images = np.stack([_fit_image(x, size, channels) for x in raw])
    return ImageSet(images=images, labels=np.asarray(labels, dtype=np.int64), classes=[d.name for d in subdirs],
                    name=root.resolve().name)
