"""DICOM and NIfTI decoding and the one window/level path (medcam_fast.data.medical), and the geometry that maps
masks back to the input's grid (medcam_fast.data.geometry), on pydicom's and nibabel's bundled real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DATA_DIR, needs_data
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medcam_fast.data.geometry import Geometry, input_views
from medcam_fast.data.images import decode, list_images
from medcam_fast.data.medical import (
    SourceKind,
    Window,
    apply_window,
    list_frames,
    nifti_mask_volume,
    nifti_slice_affine,
    parse_window,
    sniff_kind,
)
from medcam_fast.data.preprocess import Preprocess
from medcam_fast.errors import DataError, UsageError


def dcm(name: str) -> str:
    """A file of pydicom's bundled test data (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return str(path)


def hu_of(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_ct_small_is_read_in_hounsfield_units():
    hu = hu_of(dcm("CT_small.dcm"))
    out = decode(dcm("CT_small.dcm"), window=Window(0.0, 2000.0))
    assert out.kind is SourceKind.DICOM and out.record["modality_lut"]["rescale_intercept"] == -1024
    assert out.record["value_range"] == [hu.min(), hu.max()]
    np.testing.assert_allclose(out.pixels, np.clip((hu + 1000) / 2000, 0, 1), atol=1e-6)


def test_a_ct_without_window_tags_is_windowed_over_its_hounsfield_range():
    hu = hu_of(dcm("CT_small.dcm"))
    out = decode(dcm("CT_small.dcm"))
    assert out.record["window"]["source"].startswith("data range")
    assert out.pixels.min() == 0.0 and out.pixels.max() == 1.0
    np.testing.assert_allclose(out.pixels, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


@needs_data()
def test_the_first_of_the_files_windows_is_applied_with_dicoms_linear_formula():
    path = DATA_DIR / "ct_contrast_dicom" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    ds = pydicom.dcmread(path)
    assert [float(c) for c in ds.WindowCenter] == [10, -550] and [float(w) for w in ds.WindowWidth] == [400, 1800]
    out = decode(path)
    assert out.record["window"]["center"] == 10 and out.record["window"]["width"] == 400
    assert out.record["window"]["source"] == "file (the first of 2)" and out.size == (512, 512)
    hu = hu_of(str(path))
    expected = np.clip((hu - 9.5) / 399 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, c = 10, w = 400
    np.testing.assert_allclose(out.pixels, expected, atol=1e-6)


def test_presets_are_the_radiology_windows_and_anything_else_is_refused():
    assert (parse_window("lung").center, parse_window("lung").width) == (-600, 1500)
    assert (parse_window("Mediastinum").center, parse_window("mediastinum").width) == (50, 350)
    assert (parse_window("brain").center, parse_window("bone").center) == (40, 400)
    assert parse_window("-600,1500") == Window(-600, 1500, "LINEAR_EXACT", "--window")
    for bad in ("liver", "1,0", "1", "a,b", "1,-5"):
        with pytest.raises(UsageError, match="window"):
            parse_window(bad)


def test_linear_exact_maps_the_window_edges_to_0_and_1():
    w = Window(50, 350)
    np.testing.assert_allclose(apply_window(np.array([-125.0, 50.0, 225.0, -1000.0]), w), [0, 0.5, 1, 0])


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    ds = pydicom.dcmread(dcm("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    normal, inverted = decode(dcm("MR_small.dcm")), decode(tmp_path / "m1.dcm")
    assert inverted.record["inverted"] and not normal.record["inverted"]
    np.testing.assert_allclose(inverted.pixels, 1 - normal.pixels, atol=1e-6)


@pytest.mark.parametrize("variant", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                                     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
                                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"])
def test_every_bundled_mr_small_variant_decodes_to_the_same_pixels(variant):
    reference = decode(dcm("MR_small.dcm"))
    out = decode(dcm(variant))
    assert out.record["transfer_syntax"] != reference.record["transfer_syntax"] or variant == "MR_small_padded.dcm"
    np.testing.assert_array_equal(out.pixels, reference.pixels)


def test_a_missing_decoder_is_one_line_naming_the_transfer_syntax_and_the_package(monkeypatch):
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder

    monkeypatch.setattr(JPEG2000LosslessDecoder, "_available", {})  # as if no JPEG 2000 handler were installed
    with pytest.raises(DataError) as e:
        decode(dcm("MR_small_jp2klossless.dcm"))
    text = str(e.value)
    assert "\n" not in text and "JPEG 2000" in text and "pip install pylibjpeg-openjpeg" in text


def test_corrupt_compressed_data_is_not_blamed_on_a_missing_package():
    with pytest.raises(DataError) as e:
        decode(dcm("JPEG2000-embedded-sequence-delimiter.dcm"))
    assert "pip install" not in str(e.value) and "JPEG 2000" in str(e.value)


def test_a_dicom_object_without_an_image_is_refused_by_name():
    with pytest.raises(DataError, match="without an image.*RT Plan"):
        list_frames(dcm("rtplan.dcm"), SourceKind.DICOM)


def test_a_multiframe_object_is_split_into_its_frames():
    path = dcm("SC_rgb_rle_2frame.dcm")
    assert list_frames(path, SourceKind.DICOM) == [0, 1]
    frames = pydicom.dcmread(path).pixel_array
    for k in (0, 1):
        out = decode(path, frame=k)
        assert out.record["frame"] == k and out.record["frames"] == 2
        np.testing.assert_array_equal(out.pixels, frames[k])
    assert not np.array_equal(frames[0], frames[1])


def test_an_extensionless_dicom_file_is_found_and_read_by_content(tmp_path):
    shutil.copy(dcm("CT_small.dcm"), tmp_path / "IM000001")
    (tmp_path / "notes.txt").write_text("not an image")
    assert sniff_kind(tmp_path / "IM000001") is SourceKind.DICOM
    assert list_images(tmp_path) == [tmp_path / "IM000001"]
    np.testing.assert_array_equal(decode(tmp_path / "IM000001").pixels, decode(dcm("CT_small.dcm")).pixels)


def test_a_12_bit_scan_in_a_16_bit_png_is_windowed_over_its_12_bits_with_a_warning(tmp_path):
    values = np.arange(0, 4000, 10, dtype=np.uint16).reshape(20, 20)
    Image.fromarray(values).save(tmp_path / "ct.png")
    out = decode(tmp_path / "ct.png")
    np.testing.assert_allclose(out.pixels, values / 4095.0, atol=1e-6)
    assert len(out.warnings) == 1 and "12 bits" in out.warnings[0] and out.record["window"]["high"] == 4095


def test_a_full_range_16_bit_png_is_scaled_by_65535_as_before(tmp_path):
    values = np.array([[0, 13107, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "full.png")
    out = decode(tmp_path / "full.png")
    np.testing.assert_allclose(out.pixels, values / 65535.0, atol=1e-6)
    assert out.warnings == []


def test_a_float_tiff_in_hounsfield_units_keeps_its_negatives(tmp_path):
    hu = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20)
    Image.fromarray(hu, mode="F").save(tmp_path / "hu.tif")
    auto = decode(tmp_path / "hu.tif")
    np.testing.assert_allclose(auto.pixels, (hu + 1000) / 2000, atol=1e-6)  # was: negatives clipped to 0
    assert "Hounsfield" in auto.warnings[0]
    chosen = decode(tmp_path / "hu.tif", window=parse_window("mediastinum"))
    np.testing.assert_allclose(chosen.pixels, np.clip((hu + 125) / 350, 0, 1), atol=1e-6)
    assert chosen.warnings == [] and chosen.record["window"]["source"] == "preset mediastinum"


def test_an_8_bit_png_passes_unchanged(tmp_path):
    grey = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = decode(tmp_path / "g.png")
    assert out.pixels.dtype == np.uint8 and out.record["window"] is None
    np.testing.assert_array_equal(out.pixels, grey)


def test_a_nifti_slice_is_the_canonical_volumes_slice_shown_anterior_up():
    path = Path(NIBABEL_DATA) / "anatomical.nii"
    canonical = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(canonical.dataobj, dtype=np.float64)
    assert list_frames(path, SourceKind.NIFTI) == list(range(volume.shape[2]))
    out = decode(path, frame=12)
    assert out.record["orientation"] == "LAS" and out.record["canonical_orientation"] == "RAS"
    assert out.record["display"]["rows"].startswith("A→P") and out.record["display"]["cols"].startswith("L→R")
    expected = (np.flipud(volume[:, :, 12].T) - volume.min()) / (volume.max() - volume.min())
    np.testing.assert_allclose(out.pixels, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.record["affine"]), canonical.affine, atol=1e-5)
    assert out.nifti_shape == (volume.shape[0], volume.shape[1], 1)


def test_a_mask_in_display_orientation_goes_back_to_the_slices_voxels():
    rng = np.random.default_rng(0)
    plane = rng.random((33, 41))  # (axis 0, axis 1) of an axial slice
    shown = np.flipud(plane.T)
    np.testing.assert_array_equal(nifti_mask_volume(shown, (33, 41, 1), 2)[..., 0], plane)


def test_a_slice_affine_maps_its_voxels_to_the_volumes_world_points():
    affine = nib.as_closest_canonical(nib.load(Path(NIBABEL_DATA) / "anatomical.nii")).affine
    for axis in (0, 1, 2):
        sliced = nifti_slice_affine(affine, axis, 7)
        voxel = np.array([3.0, 5.0, 2.0, 1.0])
        inside = voxel.copy()
        inside[axis] = 0
        outside = voxel.copy()
        outside[axis] = 7
        np.testing.assert_allclose(sliced @ inside, affine @ outside)


def test_a_4d_series_is_read_as_its_first_volume():
    path = Path(NIBABEL_DATA) / "example4d.nii.gz"
    out = decode(path, frame=3)
    assert out.record["volume"] == "the first of 2 volumes" and out.record["slice"] == 3
    canonical = nib.as_closest_canonical(nib.load(path).slicer[..., 0])
    plane = np.asarray(canonical.dataobj, dtype=np.float64)[:, :, 3]
    assert out.size == (plane.shape[1], plane.shape[0])


def test_slices_outside_the_volume_are_a_usage_error():
    with pytest.raises(UsageError, match="outside"):
        list_frames(Path(NIBABEL_DATA) / "anatomical.nii", SourceKind.NIFTI, slices="20-99")


def test_a_binary_mask_goes_back_to_a_5000_by_8_input_binary_and_at_its_size():
    g = Geometry((5000, 8), (64, 64))
    binary = np.zeros((64, 64), bool)
    binary[:32] = True  # the top half of the model grid
    back = g.binary_to_input(binary)
    assert back.shape == (5000, 8) and back.dtype == np.bool_
    assert back[:2490].all() and not back[2510:].any()
    soft = g.soft_to_input(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    assert soft.shape == (5000, 8) and 0 <= soft.min() and soft.max() <= 1
    assert g.to_dict()["scale_to_input"] == [5000 / 64, 8 / 64]


def test_input_views_keep_the_image_inside_the_evidence_at_full_resolution():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (384, 512), dtype=np.uint8)
    pre = Preprocess((64, 64), 1, (0.5,), (0.25,))
    binary = np.zeros((64, 64), bool)
    binary[10:20, 30:40] = True
    kept = np.zeros((64, 64, 1), np.float32)
    geometry, image01, soft, back, kept_in = input_views(pixels, pre, binary.astype(np.float32), binary, kept)
    assert geometry.input_size == (384, 512) and image01.shape == (384, 512, 1) and back.shape == (384, 512)
    np.testing.assert_allclose(image01[..., 0], pixels / 255.0, atol=1e-6)
    np.testing.assert_array_equal(kept_in[back], image01[back])
    assert np.all(kept_in[~back] == 0)


def test_a_grouped_split_never_puts_one_group_in_two_splits():
    from medcam_fast.data.labelled import grouped_split

    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 300).astype(str)
    labels = rng.integers(0, 2, 300)
    parts = grouped_split(labels, groups, seed=5)
    owners = {}
    for split, idx in parts.items():
        for g in set(groups[idx].tolist()):
            assert owners.setdefault(g, split) == split
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(300))
    assert abs(len(parts["test"]) - 60) <= max(np.bincount(np.unique(groups, return_inverse=True)[1]))


@needs_data()
def test_the_ct_contrast_folder_reads_50_50_labels_and_54_patients_from_the_dicom_headers():
    from medcam_fast.data.labelled import LabelTable, grouped_split, load_labelled

    folder = DATA_DIR / "ct_contrast_dicom"
    table = LabelTable(folder / "overview.csv", "Contrast", "dicom_name", "PatientID")  # PatientID: not a column
    images, groups = load_labelled(folder, table, size=32)
    assert images.images.shape == (100, 32, 32) and images.classes == ["False", "True"]
    assert np.bincount(images.labels).tolist() == [50, 50] and len(set(groups.tolist())) == 54
    parts = grouped_split(images.labels, groups)
    assert not set(groups[parts["train"]]) & set(groups[parts["test"]])
    assert not set(groups[parts["val"]]) & (set(groups[parts["train"]]) | set(groups[parts["test"]]))
