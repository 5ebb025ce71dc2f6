"""Medical pixel data: DICOM and NIfTI decoding, and the one window/level path every image format goes through.

A file is recognised by its content (:func:`sniff_kind`): the ``DICM`` magic at byte 128 makes a DICOM file
whatever its name (``IM000001`` works), the NIfTI magic or a ``.nii``/``.nii.gz`` name a NIfTI volume; anything
else is an ordinary image file (Pillow). :func:`medcam_fast.data.images.decode` turns one frame of any of them into model-ready pixels
and a JSON-safe record of what was applied (:func:`medcam_fast.data.images.decode` is the entry point for
every file; this module holds the DICOM and NIfTI readers and the window arithmetic):

* **DICOM** (pydicom): the Modality LUT (Rescale Slope/Intercept → Hounsfield units for CT, or the Modality
  LUT Sequence), then the VOI: ``--window`` if given, else the file's first Window Center/Width (with its VOI
  LUT Function), else its first VOI LUT Sequence item, else the data's range; MONOCHROME1 is inverted after
  windowing; a multi-frame object is split into frames (``frame``); colour images (RGB, YBR converted by
  pydicom, palette colour) keep their colours. Compressed transfer syntaxes decode with whatever handler is
  installed (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls, Pillow, gdcm); without one the error is one line
  naming the transfer syntax and the package that decodes it (:data:`DECODER_PACKAGES`).
* **NIfTI** (nibabel): 2-D images, and slices of 3-D volumes (the first volume of a 4-D series) along
  ``slice_axis`` in the volume's closest canonical orientation (RAS+, :func:`nibabel.as_closest_canonical`).
  A slice is shown with rows running from the high to the low end of its second in-plane axis and columns
  along its first (an axial slice: rows A→P, columns L→R, i.e. anterior at the top and the patient's right on
  the image's right, the neurological convention; a sagittal one: rows S→I, columns P→A). The record holds the original and canonical orientation codes, the canonical affine and the
  affine of the slice itself (:func:`nifti_slice_affine`).
* **16-bit and float PNG/TIFF** keep their range: ``--window`` if given; else 16-bit data over the bit depth
  it uses (a 12-bit CT stored in 16 bits is windowed over 0..4095, with a warning), 32-bit integers and floats
  outside [0, 1] over the data's range (with a warning: Hounsfield units are named as such).

Windowing follows DICOM PS3.3 C.11.2.1.2 (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``); its output lies on
[0, 1]. 8-bit images pass unchanged (uint8), so every earlier result on them stays bit-identical.

numpy and Pillow at import; pydicom and nibabel are imported when a DICOM or NIfTI file is read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UsageError, one_line
from ..types import _Choice
from .preprocess import PathLike

__all__ = [
    "SourceKind", "WindowPreset", "WINDOW_PRESETS", "Window", "parse_window", "apply_window", "Decoded",
    "sniff_kind", "medical_stem", "list_frames", "parse_slices", "decode_medical", "data_window",
    "nifti_slice_affine", "nifti_mask_volume",
    "DECODER_PACKAGES", "DEFAULT_SLICE_AXIS", "read_dicom_header",
]


class SourceKind(_Choice):
    """What an input file is: an ordinary ``IMAGE`` (Pillow), a ``DICOM`` object or a ``NIFTI`` volume."""

    IMAGE = "image"
    DICOM = "dicom"
    NIFTI = "nifti"


class WindowPreset(_Choice):
    """Named CT windows (Hounsfield units), as radiology references give them (e.g. Radiopaedia, "Windowing
    (CT)"): ``lung`` C −600 W 1500, ``mediastinum`` C 50 W 350, ``brain`` C 40 W 80, ``bone`` C 400 W 1800."""

    LUNG = "lung"
    MEDIASTINUM = "mediastinum"
    BRAIN = "brain"
    BONE = "bone"


#: Centre and width (HU) of each :class:`WindowPreset`.
WINDOW_PRESETS: dict[WindowPreset, tuple[float, float]] = {
    WindowPreset.LUNG: (-600.0, 1500.0),
    WindowPreset.MEDIASTINUM: (50.0, 350.0),
    WindowPreset.BRAIN: (40.0, 80.0),
    WindowPreset.BONE: (400.0, 1800.0),
}

#: The axis NIfTI volumes are sliced along when none is given: 2, the third canonical axis (axial in RAS+).
DEFAULT_SLICE_AXIS = 2

_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A window (VOI) on raw values: ``center`` and ``width`` in the data's units after the Modality LUT.

    Args:
        center: the window centre.
        width: the window width (> 0; ≥ 1 for ``LINEAR``, as DICOM requires).
        function: ``LINEAR`` (DICOM's default formula), ``LINEAR_EXACT`` (``(x − (c − w/2)) / w``) or ``SIGMOID``.
        source: where it came from (``"--window"``, ``"preset lung"``, ``"file (first of 2)"``, ``"data range"``…).
    """

    center: float
    width: float
    function: str = "LINEAR_EXACT"
    source: str = "--window"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)) or self.width <= 0:
            raise UsageError(f"a window needs a finite centre and a width > 0, got C {self.center} W {self.width}")
        if self.function not in _VOI_FUNCTIONS:
            raise UsageError(f"unknown VOI LUT function {self.function!r}: choose {', '.join(_VOI_FUNCTIONS)}")
        if self.function == "LINEAR" and self.width < 1:
            object.__setattr__(self, "function", "LINEAR_EXACT")

    @classmethod
    def from_range(cls, low: float, high: float, source: str) -> Window:
        """The window mapping ``low`` to 0 and ``high`` to 1 (``LINEAR_EXACT``); a constant image gets width 1."""
        width = float(high - low) if high > low else 1.0
        return cls(center=float(low) + width / 2, width=width, function="LINEAR_EXACT", source=source)

    def to_dict(self) -> dict[str, Any]:
        """The window as JSON: centre, width, function, source, and the values mapped to 0 and 1."""
        lo = self.center - self.width / 2
        return {"center": self.center, "width": self.width, "function": self.function, "source": self.source,
                "low": lo, "high": lo + self.width}


def parse_window(spec: str | None) -> Window | None:
    """A user's ``--window``: ``"C,W"`` (numbers, e.g. ``"-600,1500"``) or a preset name (:class:`WindowPreset`).

    Raises:
        UsageError: anything else (one line listing the presets).
    """
    if spec is None:
        return None
    text = spec.strip().lower()
    try:
        preset = WindowPreset(text)
    except ValueError:
        preset = None
    if preset is not None:
        c, w = WINDOW_PRESETS[preset]
        return Window(c, w, "LINEAR_EXACT", f"preset {preset.value}")
    m = re.fullmatch(r"\s*([-+]?[0-9.eE+-]+)\s*,\s*([-+]?[0-9.eE+-]+)\s*", spec)
    try:
        if m is None:
            raise ValueError
        c, w = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise UsageError(f"bad --window {spec!r}: give CENTER,WIDTH (e.g. -600,1500) or a preset: "
                         f"{', '.join(p.value for p in WindowPreset)}") from None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        raise UsageError(f"bad --window {spec!r}: the width must be > 0 and both numbers finite")
    return Window(c, w, "LINEAR_EXACT", "--window")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Map raw values to [0, 1] through ``window`` (DICOM PS3.3 C.11.2.1.2.1, output range 0..1).

    * ``LINEAR``: ``((x − (c − ½)) / (w − 1) + ½)`` clipped to [0, 1];
    * ``LINEAR_EXACT``: ``(x − (c − w/2)) / w`` clipped to [0, 1];
    * ``SIGMOID``: ``1 / (1 + exp(−4 (x − c) / w))``.

    Args:
        values: raw values (any real dtype, any shape).
        window: the window.

    Returns:
        float32 array of the same shape, on [0, 1].
    """
    x = np.asarray(values, dtype=np.float64)
    c, w = window.center, window.width
    if window.function == "LINEAR":
        y = (x - (c - 0.5)) / (w - 1.0) + 0.5
    elif window.function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700)))
    else:
        y = (x - (c - w / 2.0)) / w
    return np.clip(y, 0.0, 1.0).astype(np.float32)


@dataclass
class Decoded:
    """One decoded frame and what was done to it.

    Args:
        pixels: uint8 HW/HWC (an 8-bit image, as read) or float32 HW/HWC on [0, 1] (windowed).
        kind: the kind of file it came from.
        record: JSON-safe facts: the window and LUTs applied, the frame or slice, orientation, transfer syntax.
        warnings: one-line warnings for the console (the same text is in ``record["warnings"]``).
        dicom: the DICOM header (no pixel data) of a DICOM source, for writing a DICOM SEG; else None.
        nifti_affine: the 4×4 affine of a NIfTI source's slice (voxel → RAS mm), else None.
        nifti_shape: the shape of that slice as a NIfTI volume (the slice axis kept with length 1), else None.
    """

    pixels: np.ndarray
    kind: SourceKind
    record: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dicom: Any = None
    nifti_affine: np.ndarray | None = None
    nifti_shape: tuple[int, ...] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The decoded image's (H, W): the input grid outputs are mapped back to."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


# ---------------------------------------------------------------------------------------------- sniffing


def sniff_kind(path: PathLike) -> SourceKind:
    """What ``path`` holds, judged by content: the DICOM magic ``DICM`` at byte 128; the NIfTI-1/2 magic
    (``n+1``/``ni1`` at byte 344, ``n+2`` at byte 4) or a ``.nii``/``.nii.gz`` name; else an image file. A file
    that cannot be read is an image file here (its reader gives the error)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(540)
    except OSError:
        return SourceKind.IMAGE
    if head[128:132] == b"DICM":
        return SourceKind.DICOM
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return SourceKind.NIFTI
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return SourceKind.NIFTI
    if p.suffix.lower() in (".dcm", ".dicom"):
        return SourceKind.DICOM  # a DICOM file without the preamble (pydicom reads it with force)
    return SourceKind.IMAGE


def medical_stem(path: PathLike) -> str:
    """A file's stem without ``.nii.gz`` / ``.nii`` / ``.dcm``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return Path(path).stem


# ---------------------------------------------------------------------------------------------- DICOM


#: Which package decodes each compressed transfer syntax (UID → pip package), named when none is installed.
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or Pillow)",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or Pillow)",   # JPEG Extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",               # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",               # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg-libjpeg)",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg-libjpeg)",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",              # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",              # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",             # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",             # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",             # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (pydicom's own decoder also reads it)",  # RLE Lossless
}


def _dcmread(path: Path, *, pixels: bool) -> Any:
    """``pydicom.dcmread`` with every failure as a one-line DataError that says it is a DICOM file."""
    import pydicom

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception as e:
        raise DataError(f"a DICOM file that pydicom cannot read: {one_line(e)}", path) from None


def read_dicom_header(path: PathLike) -> Any:
    """The DICOM header of ``path`` (no pixel data), checked to hold an image (Rows, Columns, Pixel Data).

    Raises:
        DataError: unreadable, or not an image (a structured report, an RT plan…).
    """
    p = Path(path)
    ds = _dcmread(p, pixels=False)
    if "Rows" not in ds or "Columns" not in ds:
        kind = getattr(ds, "SOPClassUID", None)
        what = getattr(kind, "name", None) or str(kind or "no SOP class")
        raise DataError(f"a DICOM file without an image (no Rows/Columns; {what})", p)
    return ds


def _frames_of(ds: Any) -> int:
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def _decode_failure(path: Path, ds: Any, e: BaseException) -> DataError:
    """One line naming the transfer syntax and, for a missing handler, the package that decodes it."""
    ts = _transfer_syntax(ds)
    name = f"{getattr(ts, 'name', ts)} ({ts})" if ts is not None else "an unknown transfer syntax"
    package = DECODER_PACKAGES.get(str(ts)) if ts is not None else None
    text = one_line(e)
    low = text.lower()
    missing = "raised by all available plugins" not in low and any(
        k in low for k in ("missing dependencies", "no pixel data decoders", "not supported", "no decoders"))
    if missing:
        hint = f"pip install {package}" if package else "no installed pydicom handler decodes it"
        return DataError(f"a DICOM file whose transfer syntax {name} cannot be decoded here: {hint}", path)
    return DataError(f"a DICOM file whose pixel data ({name}) cannot be decoded: {text}", path)


def _first(value: Any) -> float:
    """The first of a multi-valued DICOM number, or the number itself."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _dicom_voi(ds: Any, hu: np.ndarray, window: Window | None, record: dict[str, Any]) -> np.ndarray:
    """The VOI stage on modality values ``hu``: ``window`` > the file's first window > its first VOI LUT >
    the data's range. Fills ``record["window"]`` (and ``"voi_lut"``)."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            count = len(ds.WindowCenter) if ds["WindowCenter"].VM > 1 else 1
            function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
            window = Window(_first(ds.WindowCenter), _first(ds.WindowWidth),
                            function if function in _VOI_FUNCTIONS else "LINEAR",
                            f"file (the first of {count})" if count > 1 else "file")
            explanations = getattr(ds, "WindowCenterWidthExplanation", None)
            if explanations:
                record["window_explanation"] = str(_first_text(explanations))
        except (UsageError, TypeError, ValueError):
            window = None  # a malformed or zero-width window in the file: fall through
    if window is None and "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels import apply_voi

        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2])
        out = apply_voi(hu, ds, index=0).astype(np.float64) / float(2 ** lut_bits - 1)
        record["window"] = {"source": "file VOI LUT Sequence (the first item)",
                            "explanation": str(getattr(item, "LUTExplanation", "") or "")}
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    if window is None:
        window = Window.from_range(float(hu.min()), float(hu.max()), "data range (the file has no window)")
    record["window"] = window.to_dict()
    return apply_window(hu, window)


def _without_pixels(ds: Any) -> Any:
    """A shallow copy of ``ds`` without its pixel data (what a DICOM SEG needs of its source)."""
    import copy

    header = copy.copy(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    return header


def _first_text(value: Any) -> str:
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value


def _decode_dicom(path: Path, frame: int, window: Window | None) -> Decoded:
    """One frame of a DICOM image: Modality LUT, VOI, MONOCHROME1 inversion; colour kept."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    ds = _dcmread(path, pixels=True)
    if "Rows" not in ds or "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError("a DICOM file without pixel data (not an image)", path)
    frames = _frames_of(ds)
    if not 0 <= frame < frames:
        raise DataError(f"frame {frame} is outside 0..{frames - 1}", path)
    try:
        arr = pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as e:
        raise _decode_failure(path, ds, e) from None
    ts = _transfer_syntax(ds)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    record: dict[str, Any] = {
        "format": "dicom", "transfer_syntax": None if ts is None else f"{getattr(ts, 'name', ts)} ({ts})",
        "photometric_interpretation": photometric, "frame": frame, "frames": frames,
        "modality": str(getattr(ds, "Modality", "") or ""),
        "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "") or ""),
    }
    header = _without_pixels(ds)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        bits = 16 if rgb.max() > 255 else 8
        record["window"] = {"source": "palette colour LUT", "bits": bits}
        return Decoded((rgb / (2 ** bits - 1)).clip(0, 1).astype(np.float32), SourceKind.DICOM, record,
                       dicom=header)
    if arr.ndim == 3:  # colour (RGB; YBR already converted to RGB by pydicom)
        record["window"] = {"source": "colour image: none"}
        if arr.dtype == np.uint8:
            return Decoded(np.ascontiguousarray(arr), SourceKind.DICOM, record, dicom=header)
        bits = int(getattr(ds, "BitsStored", 16) or 16)
        return Decoded((arr.astype(np.float64) / (2 ** bits - 1)).clip(0, 1).astype(np.float32), SourceKind.DICOM,
                       record, dicom=header)
    hu = apply_modality_lut(arr, ds).astype(np.float64)
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    record["modality_lut"] = (
        {"rescale_slope": float(slope if slope is not None else 1), "rescale_intercept": float(intercept or 0),
         "rescale_type": str(getattr(ds, "RescaleType", "") or ("HU" if record["modality"] == "CT" else ""))}
        if slope is not None or intercept is not None else
        {"source": "Modality LUT Sequence"} if "ModalityLUTSequence" in ds else {"source": "none (identity)"})
    record["value_range"] = [float(hu.min()), float(hu.max())]
    y = _dicom_voi(ds, hu, window, record)
    record["inverted"] = photometric == "MONOCHROME1"
    if record["inverted"]:
        y = (1.0 - y).astype(np.float32)
    return Decoded(np.ascontiguousarray(y), SourceKind.DICOM, record, dicom=header)


# ---------------------------------------------------------------------------------------------- NIfTI


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's own logger and warnings: it logs header problems (``data code 0 not supported; not
    attempting fix``) on stderr before raising, and the one-line :class:`DataError` already says it."""
    from nibabel import imageglobals

    logger = imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _nifti(path: Path) -> Any:
    import nibabel as nib

    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
    except Exception as e:
        raise DataError(f"a NIfTI volume that nibabel cannot read: {one_line(e)}", path) from None
    if len(img.shape) < 2 or len(img.shape) > 4 or min(img.shape) < 1:
        raise DataError(f"a NIfTI volume of shape {tuple(img.shape)}: expected 2-D, 3-D or 4-D", path)
    return img


def parse_slices(spec: str | None, n: int, where: PathLike) -> list[int]:
    """Slice indices from ``--slices``: ``all`` (or None), ``a-b`` (inclusive), or one index ``k``.

    Raises:
        UsageError: a malformed spec, or indices outside ``0..n-1`` (naming the file).
    """
    if spec is None or spec.strip().lower() == "all":
        return list(range(n))
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
    if not m:
        raise UsageError(f"bad --slices {spec!r}: use all, a-b or k")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if a > b or b >= n:
        raise UsageError(f"--slices {spec} is outside 0..{n - 1}", where)
    return list(range(a, b + 1))


def _canonical_shape(img: Any) -> tuple[int, ...]:
    """The shape of ``img`` in its closest canonical orientation (no voxel is read)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(img.affine)
    shape = list(img.shape[:3]) + [1] * (3 - len(img.shape[:3]))
    out = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        out[int(axis)] = shape[i]
    return tuple(out)


def _is_planar(shape: tuple[int, ...]) -> bool:
    """A 2-D NIfTI image: at most two of its first three axes longer than 1."""
    return sum(1 for s in shape[:3] if s > 1) <= 2


def list_frames(path: PathLike, kind: SourceKind, *, slice_axis: int = DEFAULT_SLICE_AXIS,
                slices: str | None = None) -> list[int]:
    """The frames (DICOM) or slices (NIfTI) of a file that :func:`decode` can read; ``[0]`` for a plain image
    or a single-frame object. Reads the header only.

    Raises:
        DataError: unreadable header. UsageError: bad ``slice_axis`` or ``slices``.
    """
    p = Path(path)
    if kind is SourceKind.DICOM:
        return list(range(_frames_of(read_dicom_header(p))))
    if kind is SourceKind.NIFTI:
        if slice_axis not in (0, 1, 2):
            raise UsageError(f"--slice-axis must be 0, 1 or 2 (canonical RAS+ axes), got {slice_axis}")
        img = _nifti(p)
        shape = _canonical_shape(img)
        if _is_planar(shape):
            return [0]
        return parse_slices(slices, shape[slice_axis], p)
    return [0]


def nifti_slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The affine of slice ``index`` along ``axis`` as a volume of thickness 1: voxel ``(i, j, 0)`` of the
    slice (with ``axis`` holding 0) maps to the same point as voxel ``index`` along ``axis`` of the volume."""
    shift = np.eye(4)
    shift[axis, 3] = index
    return np.asarray(affine, dtype=np.float64) @ shift


_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def _plane_axes(axis: int) -> tuple[int, int]:
    p, q = [a for a in (0, 1, 2) if a != axis]
    return p, q


def _decode_nifti(path: Path, index: int, slice_axis: int, window: Window | None) -> Decoded:
    import nibabel as nib

    img = _nifti(path)
    original = "".join(nib.aff2axcodes(img.affine))
    volume_note = None
    if len(img.shape) == 4:
        volume_note = f"the first of {img.shape[3]} volumes"
        img = img.slicer[..., 0]
    canonical = nib.as_closest_canonical(img if len(img.shape) == 3 else
                                         nib.Nifti1Image(np.asarray(img.dataobj).reshape(*img.shape, 1),
                                                         img.affine, img.header))
    codes = "".join(nib.aff2axcodes(canonical.affine))
    shape = canonical.shape
    planar = _is_planar(shape)
    if planar:
        slice_axis = next((a for a in (2, 1, 0) if shape[a] == 1), 2)
        index = 0
    if not 0 <= index < shape[slice_axis]:
        raise DataError(f"slice {index} is outside 0..{shape[slice_axis] - 1} along axis {slice_axis}", path)
    sl: list[Any] = [slice(None)] * 3
    sl[slice_axis] = slice(index, index + 1)
    try:
        plane = np.asarray(canonical.dataobj[tuple(sl)], dtype=np.float64)
    except Exception as e:
        raise DataError(f"a NIfTI volume whose voxels cannot be read: {one_line(e)}", path) from None
    plane = np.squeeze(plane, axis=slice_axis)
    if not np.isfinite(plane).all():
        plane = np.nan_to_num(plane, nan=0.0, posinf=0.0, neginf=0.0)
    p, q = _plane_axes(slice_axis)
    image = np.flipud(plane.T)  # rows: axis q from high to low; columns: axis p from low to high
    record: dict[str, Any] = {
        "format": "nifti", "shape": [int(s) for s in img.shape], "orientation": original,
        "canonical_orientation": codes, "slice_axis": slice_axis, "slice": index,
        "affine": np.asarray(canonical.affine).round(6).tolist(),
        "display": {"rows": f"{codes[q]}→{_OPPOSITE[codes[q]]} (axis {q}, high to low)",
                    "cols": f"{_OPPOSITE[codes[p]]}→{codes[p]} (axis {p}, low to high)"},
    }
    if volume_note:
        record["volume"] = volume_note
    record["value_range"] = [float(plane.min()), float(plane.max())]
    if window is None:  # the whole volume's range, so every slice of it shares one window
        try:
            data = np.asarray(canonical.dataobj, dtype=np.float64)
            data = data[np.isfinite(data)]
            lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
        except Exception:
            lo, hi = record["value_range"]
        window = Window.from_range(lo, hi, "data range (the volume's)")
    record["window"] = window.to_dict()
    pixels = apply_window(image, window)
    slice_shape = list(shape)
    slice_shape[slice_axis] = 1
    return Decoded(np.ascontiguousarray(pixels), SourceKind.NIFTI, record,
                   nifti_affine=nifti_slice_affine(canonical.affine, slice_axis, index),
                   nifti_shape=tuple(int(s) for s in slice_shape))


def nifti_mask_volume(mask_hw: np.ndarray, shape: tuple[int, ...], slice_axis: int) -> np.ndarray:
    """A 2-D mask in display orientation (as :func:`decode` shows the slice) back in the slice's voxel order,
    shaped ``shape`` (the slice as a volume, ``slice_axis`` of length 1)."""
    plane = np.flipud(np.asarray(mask_hw)).T
    return np.expand_dims(plane, axis=slice_axis).reshape(shape)


# ---------------------------------------------------------------------------------------------- windows of images


def data_window(mode: str, lo: float, hi: float) -> tuple[Window, str | None]:
    """The window of a 16-bit, 32-bit or float image without ``--window``, and a warning where the range
    suggests the stored scale is not the intended one."""
    if mode == "F" and lo >= -1e-3 and hi <= 1 + 1e-3:
        return Window.from_range(0.0, 1.0, "float image on [0, 1]"), None
    if lo >= 0 and hi <= 65535 and mode != "F":
        bits = max(8, int(math.ceil(math.log2(hi + 1)))) if hi > 0 else 8
        if bits >= 16 or hi == 0:
            return Window.from_range(0.0, 65535.0, "16-bit range"), None
        top = float(2 ** bits - 1)
        return (Window.from_range(0.0, top, f"{bits}-bit range (the data's maximum {hi:g})"),
                f"a 16-bit image that uses {bits} bits at most (max {hi:g}): windowed over 0..{top:g}, not "
                f"0..65535; pass --window CENTER,WIDTH or a preset to choose")
    hu = lo < -100 and lo >= -2048 and hi <= 32767
    what = ("values that look like Hounsfield units" if hu else
            f"{'float' if mode == 'F' else '32-bit'} values outside {'[0, 1]' if mode == 'F' else '0..65535'}")
    return (Window.from_range(lo, hi, "data range"),
            f"{what} ({lo:g}..{hi:g}): windowed over the data's range; pass --window CENTER,WIDTH or a preset "
            f"({', '.join(p.value for p in WindowPreset)})")


def decode_medical(path: Path, kind: SourceKind, *, frame: int = 0, window: Window | None = None,
                   slice_axis: int = DEFAULT_SLICE_AXIS, max_pixels: int = 50_000_000) -> Decoded:
    """One frame of a DICOM object or one slice of a NIfTI volume (``kind``); see
    :func:`medcam_fast.data.images.decode`, which also reads every other image file."""
    if kind is SourceKind.DICOM:
        ds = read_dicom_header(path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > max_pixels or rows * cols == 0:
            raise DataError(f"DICOM frame of {cols}x{rows} pixels: outside 1..{max_pixels} (max_pixels)", path)
        return _decode_dicom(path, frame, window)
    return _decode_nifti(path, frame, slice_axis, window)
