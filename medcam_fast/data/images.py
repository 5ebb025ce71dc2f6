"""Image files and labelled image sets: one file, a folder or glob of files, a folder of class subfolders.

:class:`ImageSet` holds labelled uint8 images (NHW or NHWC) and, for procedural data, bool evidence masks
and the class they are evidence for. :func:`load_image` reads one file — anything Pillow opens, first
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
from .preprocess import _LUMA, PathLike, _pil_to_array

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "load_image", "probe_image", "list_images", "load_folder"]


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
        return ("a DICOM file: medcam-fast does not read DICOM yet; export the image to PNG or TIFF (e.g. with "
                "pydicom or dcm2niix) with the window you read it at")
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or path.name.lower().endswith((".nii", ".nii.gz")):
        return ("a NIfTI volume: medcam-fast does not read NIfTI yet; save the slices to explain as PNG or TIFF "
                "(e.g. with nibabel)")
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
