"""`medcam-fast explain` on DICOM, NIfTI and odd-sized PNG inputs: outputs on the input's own grid, a DICOM SEG
that references its source, NIfTI masks with the source's affine, the window recorded. Explained with the
embedded demo bundle (64 px lesions), refinement off: seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DATA_DIR, needs_data
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medcam_fast.cli.main import app

runner = CliRunner()
FAST = ["--steps", "0", "--threads", "1"]


def dcm(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return str(path)


def explain(*args: str) -> None:
    r = runner.invoke(app, ["explain", *args, *FAST])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("shape", [(5000, 8), (512, 384)])
def test_png_masks_and_overlays_have_the_inputs_size(tmp_path, shape):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "odd.png")
    explain(str(tmp_path / "odd.png"), "--out", str(tmp_path / "o"))
    out = tmp_path / "o"
    for name in ("odd_mask.png", "odd_soft.png"):
        assert Image.open(out / name).size == (shape[1], shape[0])
    assert Image.open(out / "odd_overlay.png").size[1] == shape[0]  # native resolution: no enlargement needed
    assert np.load(out / "odd_soft.npy").shape == shape
    rec = json.loads((out / "odd.json").read_text())
    assert rec["geometry"]["input_size"] == list(shape) and rec["geometry"]["model_size"] == [64, 64]
    assert rec["mask_grid"] == "input"
    mask = np.asarray(Image.open(out / "odd_mask.png")) > 0
    assert abs(mask.mean() - rec["area"]) < 0.05  # the same evidence, at the input's resolution


def test_mask_grid_model_keeps_the_classifiers_size(tmp_path):
    Image.fromarray(np.zeros((512, 384), np.uint8)).save(tmp_path / "odd.png")
    explain(str(tmp_path / "odd.png"), "--out", str(tmp_path / "o"), "--mask-grid", "model")
    assert Image.open(tmp_path / "o" / "odd_mask.png").size == (64, 64)
    assert json.loads((tmp_path / "o" / "odd.json").read_text())["geometry"]["input_size"] == [512, 384]


def _check_seg(seg_path: Path, source_path: str | Path, mask_png: Path) -> None:
    """The SEG read back by highdicom: the source's grid, SOP Instance and Frame of Reference; the PNG's mask."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    seg = hd.seg.segread(seg_path)
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    assert seg.get_segment_description(1).segment_label.startswith("evidence for ")
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, ..., 0]
    np.testing.assert_array_equal(pixels > 0, np.asarray(Image.open(mask_png)) > 0)


def test_a_dicom_input_gets_a_seg_that_references_its_source(tmp_path):
    explain(dcm("CT_small.dcm"), "--out", str(tmp_path / "o"), "--window", "lung")
    out = tmp_path / "o"
    _check_seg(out / "CT_small_seg.dcm", dcm("CT_small.dcm"), out / "CT_small_mask.png")
    seg = hd.seg.segread(out / "CT_small_seg.dcm")
    rec = json.loads((out / "CT_small.json").read_text())
    algorithm = seg.get_segment_description(1).algorithm_identification[0]
    assert rec["classifier_sha256"] in str(algorithm.AlgorithmParameters)
    assert rec["input"]["window"]["source"] == "preset lung" and rec["input"]["window"]["center"] == -600
    assert rec["files"]["seg"] == "CT_small_seg.dcm"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["CT_small_seg.dcm"]  # listed with its hash: --resume and --overwrite know it


def test_an_extensionless_dicom_folder_is_explained(tmp_path):
    (tmp_path / "scans").mkdir()
    shutil.copy(dcm("MR_small.dcm"), tmp_path / "scans" / "IM000001")
    explain(str(tmp_path / "scans"), "--out", str(tmp_path / "o"))
    _check_seg(tmp_path / "o" / "IM000001_seg.dcm", dcm("MR_small.dcm"), tmp_path / "o" / "IM000001_mask.png")


def test_a_multiframe_dicom_gives_one_explanation_per_frame(tmp_path):
    explain(dcm("SC_rgb_rle_2frame.dcm"), "--out", str(tmp_path / "o"), "--format", "png,json")
    recs = [json.loads((tmp_path / "o" / f"SC_rgb_rle_2frame_f000{k}.json").read_text()) for k in (0, 1)]
    assert [r["input"]["frame"] for r in recs] == [0, 1]
    assert Image.open(tmp_path / "o" / "SC_rgb_rle_2frame_f0001_mask.png").size == (100, 100)


def test_a_nifti_input_gets_masks_with_the_affine_of_its_slice(tmp_path):
    path = Path(NIBABEL_DATA) / "anatomical.nii"
    explain(str(path), "--out", str(tmp_path / "o"), "--slices", "12")
    out = tmp_path / "o"
    canonical = nib.as_closest_canonical(nib.load(path))
    mask = nib.load(out / "anatomical_z012_mask.nii.gz")
    soft = nib.load(out / "anatomical_z012_soft.nii.gz")
    expected = canonical.slicer[:, :, 12:13].affine
    np.testing.assert_allclose(mask.affine, expected, atol=1e-5)
    np.testing.assert_allclose(soft.affine, expected, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8 and soft.get_data_dtype() == np.float32
    assert mask.shape == (canonical.shape[0], canonical.shape[1], 1)
    png = np.asarray(Image.open(out / "anatomical_z012_mask.png")) > 0
    np.testing.assert_array_equal(np.flipud(np.asarray(mask.dataobj)[..., 0].T) > 0, png)
    rec = json.loads((out / "anatomical_z012.json").read_text())
    assert rec["input"]["slice"] == 12 and rec["input"]["canonical_orientation"] == "RAS"


def test_a_bad_window_is_a_usage_error_before_anything_is_written(tmp_path):
    r = runner.invoke(app, ["explain", dcm("CT_small.dcm"), "--out", str(tmp_path / "o"), "--window", "liver",
                            *FAST])
    assert r.exit_code == 2 and "lung" in r.output and not (tmp_path / "o").exists()


@needs_data()
@pytest.mark.slow
def test_the_100_ct_slices_get_100_segs_on_their_sources_geometry(tmp_path):
    folder = DATA_DIR / "ct_contrast_dicom"
    explain(str(folder), "--out", str(tmp_path / "o"), "--format", "png,json,seg", "--batch-size", "25")
    sources = sorted(folder.glob("*.dcm"))
    assert len(sources) == 100
    for src in sources:
        _check_seg(tmp_path / "o" / f"{src.stem}_seg.dcm", src, tmp_path / "o" / f"{src.stem}_mask.png")
    assert Image.open(tmp_path / "o" / f"{sources[0].stem}_overlay.png").size == (512 * 2 + 2, 512)


@needs_data()
def test_train_classifier_reads_a_dicom_folder_with_a_label_table_split_by_patient(tmp_path):
    folder = DATA_DIR / "ct_contrast_dicom"
    r = runner.invoke(app, ["train-classifier", "--data", str(folder), "--labels", str(folder / "overview.csv"),
                            "--label-column", "Contrast", "--file-column", "dicom_name", "--group-column",
                            "PatientID", "--image-size", "32", "--epochs", "1", "--threads", "1",
                            "--out", str(tmp_path / "clf")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    split = meta["metrics"]["split"]
    assert split["grouped"] and split["group_column"] == "PatientID"
    assert split["train_images"] + split["val_images"] + split["test_images"] == 100
    assert split["train_groups"] + split["val_groups"] + split["test_groups"] == 54  # no patient counted twice
    assert meta["classes"] == ["False", "True"] and meta["preprocess"]["size"] == [32, 32]


def test_label_columns_without_a_label_table_are_refused(tmp_path):
    r = runner.invoke(app, ["train-classifier", "--data", "lesions", "--label-column", "x", "--out",
                            str(tmp_path / "clf")])
    assert r.exit_code == 2 and "--labels" in r.output


def test_a_source_highdicom_cannot_segment_gets_its_other_outputs_and_says_why(tmp_path):
    r = runner.invoke(app, ["explain", dcm("rtdose_1frame.dcm"), "--out", str(tmp_path / "o"), *FAST])
    assert r.exit_code == 0 and "no DICOM SEG written" in r.output, r.output
    rec = json.loads((tmp_path / "o" / "rtdose_1frame.json").read_text())
    assert rec["seg_error"].startswith("no DICOM SEG written") and "seg" not in rec["files"]
    assert not (tmp_path / "o" / "rtdose_1frame_seg.dcm").exists()
    assert Image.open(tmp_path / "o" / "rtdose_1frame_mask.png").size == (10, 10)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["images"][0]["seg_error"] == rec["seg_error"]
