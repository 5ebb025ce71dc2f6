"""Medical outputs of an explanation: a DICOM Segmentation object for a DICOM input, NIfTI masks for a NIfTI one.

* :func:`write_dicom_seg` (highdicom): a BINARY Segmentation with one segment, ``evidence for <class>``,
  on the source image's pixel grid, referencing its SOP Instance in its Frame of Reference (study, patient
  and geometry copied from the source by highdicom). The classifier's and explainer's sha256 and the
  medcam-fast version are in the segment's Algorithm Identification (version and parameters); the series
  description names the class, the content description the first 16 hex digits of both hashes. Segmented
  property category and type are coded in a private scheme (``99MCF``: DICOM reserves ``99…`` for local
  schemes), since no standard code means "evidence for a classifier's decision".
* :func:`write_nifti_masks` (nibabel): ``NAME_mask.nii.gz`` (uint8 0/1) and ``NAME_soft.nii.gz`` (float32) with
  the affine of the explained slice (the source's canonical affine shifted to the slice), sform and qform set.

Both are written atomically. Neither imports torch.
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write, atomic_write_bytes
from ..data.medical import nifti_mask_volume

__all__ = ["SEG_SUFFIX", "NIFTI_MASK_SUFFIX", "NIFTI_SOFT_SUFFIX", "write_dicom_seg", "write_nifti_masks"]

#: File name endings of the medical outputs (after the image's stem).
SEG_SUFFIX = "_seg.dcm"
NIFTI_MASK_SUFFIX = "_mask.nii.gz"
NIFTI_SOFT_SUFFIX = "_soft.nii.gz"

_SCHEME = "99MCF"


def _lo(text: str) -> str:
    """A DICOM Long String (LO): at most 64 characters, no backslash."""
    return text.replace("\\", "/")[:64]


def write_dicom_seg(path: Path, source: Any, binary: np.ndarray, class_name: str, facts: Mapping[str, Any],
                    frame: int = 0) -> Path:
    """Write a DICOM SEG of ``binary`` (the source's Rows × Columns) for frame ``frame`` of the ``source`` image
    (a multi-frame source gets a segmentation of all its frames, empty but for ``frame``).

    Args:
        path: the ``.dcm`` file to write.
        source: the source image's header (a pydicom Dataset; pixel data not needed).
        binary: bool ``[Rows, Columns]``: the evidence on the source's pixel grid.
        class_name: the explained class (the segment is "evidence for <class_name>").
        facts: the explanation's record (``classifier_sha256``, ``explainer_sha256``, ``medcam_fast_version``).
        frame: the explained frame of a multi-frame source.

    Raises:
        ValueError: a mask whose shape is not the source's, or a source highdicom cannot reference (the caller
            turns it into a one-line data error).
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    rows, cols = int(source.Rows), int(source.Columns)
    if binary.shape != (rows, cols):
        raise ValueError(f"mask {binary.shape} is not on the source's grid ({rows}, {cols})")
    frames = max(1, int(getattr(source, "NumberOfFrames", 1) or 1))
    stack = np.zeros((frames, rows, cols), dtype=np.uint8)
    stack[frame] = np.asarray(binary, dtype=np.uint8)
    version = str(facts.get("medcam_fast_version", "unknown"))
    clf = str(facts.get("classifier_sha256") or "")
    expl = str(facts.get("explainer_sha256") or "")
    params = {"classifier_sha256": clf or "none", "explainer_sha256": expl or "none (per-image fit)",
              "target_class": class_name}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medcam-fast", family=Code("MCF_EXPLAIN", _SCHEME, "Classifier evidence explanation"),
        version=_lo(version), parameters=params)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=_lo(f"evidence for {class_name}"),
        segmented_property_category=Code("MCF_EXPLANATION", _SCHEME, "Explanation"),
        segmented_property_type=Code("MCF_EVIDENCE", _SCHEME, _lo(f"Evidence for {class_name}")),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's advice on the source's person-name format
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=stack,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
            series_instance_uid=hd.UID(), series_number=int(getattr(source, "SeriesNumber", 0) or 0) + 9000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medcam-fast",
            manufacturer_model_name="medcam-fast", software_versions=_lo(version), device_serial_number="none",
            series_description=_lo(f"medcam-fast evidence for {class_name}"),
            content_description=_lo(f"classifier {clf[:16] or 'none'} explainer {expl[:16] or 'none'}"),
            content_label="MEDCAM_EVIDENCE", omit_empty_frames=False)
        return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(volume, affine)
    img.set_sform(affine, code=1)  # scanner coordinates, as the canonical source's
    img.set_qform(affine, code=1)
    buf = io.BytesIO()
    buf.write(img.to_bytes())
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def write_nifti_masks(mask_path: Path, soft_path: Path, binary: np.ndarray, soft: np.ndarray, affine: np.ndarray,
                      shape: tuple[int, ...], slice_axis: int) -> tuple[Path, Path]:
    """Write the binary (uint8 0/1) and soft (float32) masks of one explained NIfTI slice as NIfTI volumes.

    Args:
        mask_path: the binary mask's ``.nii.gz``.
        soft_path: the soft mask's ``.nii.gz``.
        binary: bool ``[H, W]`` in the displayed orientation (on the input grid).
        soft: float ``[H, W]`` likewise.
        affine: the slice's affine (:attr:`~medcam_fast.data.medical.Decoded.nifti_affine`).
        shape: the slice as a volume (:attr:`~medcam_fast.data.medical.Decoded.nifti_shape`).
        slice_axis: the axis of length 1 in ``shape``.
    """
    vol_b = nifti_mask_volume(np.asarray(binary, dtype=np.uint8), shape, slice_axis)
    vol_s = nifti_mask_volume(np.asarray(soft, dtype=np.float32), shape, slice_axis)
    atomic_write_bytes(mask_path, _nifti_bytes(vol_b, affine))
    atomic_write_bytes(soft_path, _nifti_bytes(vol_s, affine))
    return mask_path, soft_path
