"""Output files of an explanation: binary mask PNG, soft mask (16-bit PNG or .npy), overlay PNG, JSON; for a
DICOM source a DICOM SEG and for a NIfTI source NIfTI masks (:mod:`.medical_writers`).

Every file is written atomically (temporary file, then ``os.replace``), so an interrupted run never leaves a
half-written output. Nothing here imports torch: arrays come in as numpy.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write, atomic_write_bytes, atomic_write_json

__all__ = [
    "FORMATS", "png_bytes", "outline", "overlay", "write_explanation", "write_summary", "output_paths",
    "spreadsheet_safe",
]

#: Output kinds ``--format`` accepts (``seg``: a DICOM SEG for DICOM inputs; ``nii``: NIfTI masks for NIfTI inputs).
FORMATS = ("png", "npy", "json", "seg", "nii")

_RED = np.array([255, 40, 40], dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG-encoded bytes of a uint8/uint16 grey or RGB array."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask ``[H,W]``: in the mask with a 4-neighbour outside it."""
    m = mask.astype(bool)
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _to_rgb8(image01: np.ndarray) -> np.ndarray:
    img = np.clip(image01, 0, 1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (img * 255 + 0.5).astype(np.uint8)


def overlay(image01: np.ndarray, mask: np.ndarray, masked01: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Side-by-side RGB picture: the image with the evidence outlined in red | the masked image.

    Args:
        image01: the image in [0,1], ``[H,W]`` or ``[H,W,C]``.
        mask: binary evidence mask ``[H,W]``.
        masked01: the kept view (evidence alone) in [0,1], same shape as ``image01``.
        min_side: small images are enlarged (nearest neighbour, integer factor) to at least this height.
    """
    scale = max(1, -(-min_side // image01.shape[0]))
    big = lambda a: np.kron(a, np.ones((scale, scale, 1), dtype=a.dtype))  # noqa: E731
    left = big(_to_rgb8(image01))
    edge = outline(np.kron(mask.astype(np.uint8), np.ones((scale, scale), dtype=np.uint8)))
    left[edge] = _RED
    right = big(_to_rgb8(masked01))
    gap = np.full((left.shape[0], max(2, scale), 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def output_paths(out_dir: Path, stem: str, formats: Sequence[str], source: str | None = None) -> dict[str, Path]:
    """Files an explanation of image ``stem`` writes under ``out_dir`` for the given formats; ``source``
    (``"dicom"`` or ``"nifti"``) adds the DICOM SEG or the NIfTI masks when ``formats`` holds ``seg`` / ``nii``."""
    from .medical_writers import NIFTI_MASK_SUFFIX, NIFTI_SOFT_SUFFIX, SEG_SUFFIX

    paths: dict[str, Path] = {}
    if "seg" in formats and source == "dicom":
        paths["seg"] = out_dir / f"{stem}{SEG_SUFFIX}"
    if "nii" in formats and source == "nifti":
        paths["nii_mask"] = out_dir / f"{stem}{NIFTI_MASK_SUFFIX}"
        paths["nii_soft"] = out_dir / f"{stem}{NIFTI_SOFT_SUFFIX}"
    if "png" in formats:
        paths["mask"] = out_dir / f"{stem}_mask.png"
        paths["soft"] = out_dir / f"{stem}_soft.png"
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    if "npy" in formats:
        paths["soft_npy"] = out_dir / f"{stem}_soft.npy"
    if "json" in formats:
        paths["json"] = out_dir / f"{stem}.json"
    return paths


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_explanation(
    out_dir: Path,
    stem: str,
    image01: np.ndarray,
    soft: np.ndarray,
    binary: np.ndarray,
    masked01: np.ndarray,
    record: Mapping[str, Any],
    formats: Sequence[str] = FORMATS,
    *,
    paths: Mapping[str, Path] | None = None,
    source: Any = None,
    source_masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write every output of one explained image; the JSON, written last, marks the set complete.

    Args:
        out_dir: output folder.
        stem: file-name stem of the image.
        image01: the (preprocessed) image in [0,1] ``[H,W]`` or ``[H,W,C]``.
        soft: soft mask ``[H,W]`` in [0,1].
        binary: binary mask ``[H,W]``.
        masked01: the kept view in [0,1].
        record: JSON-safe facts about the explanation (probabilities, area, models, timings …).
        formats: any of :data:`FORMATS`.
        paths: the files to write (default :func:`output_paths` without medical outputs).
        source: the decoded DICOM/NIfTI source (:class:`~medcam_fast.data.medical.Decoded`) for ``seg``/``nii``.
        source_masks: ``(binary, soft)`` on the source's grid, for the SEG and NIfTI masks.

    A DICOM SEG that highdicom cannot build for its source (a multi-frame object without a Frame of
    Reference, say) is left out, and the JSON (and ``record`` itself, when it is a dict) says why
    (``seg_error``); the other outputs are written.

    Raises:
        OSError: a file cannot be written.
    """
    paths = dict(output_paths(out_dir, stem, formats) if paths is None else paths)
    if ("seg" in paths or "nii_mask" in paths) and (source is None or source_masks is None):
        raise ValueError("a DICOM SEG or NIfTI mask needs the decoded source and the masks on its grid")
    if "seg" in paths:
        from ..errors import one_line
        from .medical_writers import write_dicom_seg

        try:
            write_dicom_seg(paths["seg"], source.dicom, source_masks[0], str(record.get("target_name")), record,
                            frame=int(source.record.get("frame", 0)))
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # a source highdicom cannot reference
            del paths["seg"]
            if isinstance(record, dict):  # the caller's record (and so the run's summary) says it too
                record["seg_error"] = f"no DICOM SEG written: {one_line(e)}"
            else:
                record = {**record, "seg_error": f"no DICOM SEG written: {one_line(e)}"}
    if "nii_mask" in paths:
        from .medical_writers import write_nifti_masks

        write_nifti_masks(paths["nii_mask"], paths["nii_soft"], source_masks[0], source_masks[1],
                          source.nifti_affine, source.nifti_shape, int(source.record["slice_axis"]))
    if "mask" in paths:
        atomic_write_bytes(paths["mask"], png_bytes(binary.astype(np.uint8) * 255))
        soft16 = (np.clip(soft, 0, 1) * 65535 + 0.5).astype(np.uint16)
        atomic_write_bytes(paths["soft"], png_bytes(soft16))
        atomic_write_bytes(paths["overlay"], png_bytes(overlay(image01, binary, masked01)))
    if "soft_npy" in paths:
        atomic_write_bytes(paths["soft_npy"], _npy_bytes(soft.astype(np.float32)))
    if "json" in paths:
        files = {k: p.name for k, p in paths.items() if k != "json"}
        atomic_write_json(paths["json"], {**record, "files": files})
    return paths


#: A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP, "CSV
#: injection"); a file named ``=HYPERLINK(…).png`` must not become one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings starting like a formula get a leading ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_summary(out_dir: Path, rows: Iterable[Mapping[str, Any]], extra: Mapping[str, Any]) -> None:
    """``summary.csv`` (one row per image, cells made :func:`spreadsheet_safe`) and ``summary.json`` (rows plus
    ``extra`` facts, values as they are)."""
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: spreadsheet_safe(json.dumps(v) if isinstance(v, (list, dict)) else v)
                            for k, v in r.items()})

    atomic_write(out_dir / "summary.csv", write_csv)
    atomic_write_json(out_dir / "summary.json", {**extra, "images": rows})
