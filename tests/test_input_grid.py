"""Masks on each input's own pixel grid from the Python API and the torch-free runtime (issue 15).

The lesion classifier takes 32×32 images; a 512×384 and a 5000×8 image are stretched to it, explained, and
their masks brought back by :class:`~medcam_fast.data.geometry.Geometry` (nearest for binary, bilinear for
soft) — the code the CLI's ``--mask-grid input`` uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medcam_fast import MedCAM, UsageError
from medcam_fast.data.geometry import Geometry, geometries, input_views
from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import save_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.export.runtime import OnnxExplainer

SIZES = [(512, 384), (5000, 8)]


@pytest.fixture(scope="module")
def unet_dir(lesion_bundle, tmp_path_factory):
    """A U-Net explainer with its core graph exported (the API takes its first guess from that file)."""
    from medcam_fast.export.onnx_export import export_explainer

    ex = meta_train(lesion_bundle, make_lesions(16, size=32, seed=9).images,
                    MetaConfig(architecture="unet", inner_mode="weights", first_order=False, inner_steps=1,
                               outer_steps=3, meta_batch=4, width=4, depth=2))
    folder = tmp_path_factory.mktemp("unet-input-grid")
    save_explainer(ex, folder)
    export_explainer(ex, folder / "explainer.onnx")
    return folder


@pytest.fixture(scope="module")
def raw_images() -> list[np.ndarray]:
    """Two lesion images enlarged to 512×384 and stretched to 5000×8 (uint8, HW)."""
    base = make_lesions(2, size=32, seed=21).images
    out = []
    for img, (h, w) in zip(base, SIZES, strict=True):
        plane = np.asarray(img).reshape(32, 32)
        plane = (plane * 255).round().astype(np.uint8) if plane.dtype != np.uint8 else plane
        out.append(np.asarray(Image.fromarray(plane).resize((w, h), Image.Resampling.BILINEAR)))
    return out


@pytest.fixture(scope="module")
def first_guess(lesion_bundle, unet_dir, raw_images):
    with MedCAM(lesion_bundle, explainer=unet_dir, refine_steps=0, threads=1) as explain:
        return explain(raw_images)


def _centres(n_model: int, n_input: int) -> np.ndarray:
    """The input pixel whose centre lies nearest each model pixel's centre (downsampling by nearest)."""
    return np.floor((np.arange(n_model) + 0.5) * n_input / n_model).astype(int)


def test_api_masks_of_a_512x384_and_a_5000x8_input_have_their_sizes_and_downsample_to_the_model_mask(
        first_guess):
    r = first_guess
    assert r.binary.shape == (2, 32, 32)
    assert not r.binary.all() and r.binary.any()  # a mask with both values: the check below can fail
    for i, size in enumerate(SIZES):
        back = r.at_input(i)
        assert back.binary.shape == size and back.binary.dtype == np.bool_
        assert back.soft.shape == size and back.soft.dtype == np.float32
        assert back.geometry == Geometry(size, (32, 32))
        rows = _centres(32, size[0])
        if size == (512, 384):  # both axes enlarged: the model pixels' centres give the model mask back
            cols = _centres(32, size[1])
            assert np.array_equal(back.binary[np.ix_(rows, cols)], r.binary[i])
            # bilinear, sampled 0.03–0.04 model pixels off each centre: within that fraction of a unit step
            assert np.abs(back.soft[np.ix_(rows, cols)] - r.soft[i]).max() <= 0.05
        else:  # 8 columns from 32: input column j is model column 4j+1 or 4j+2 (its centre is their edge)
            down = back.binary[rows]
            for j in range(8):
                assert any(np.array_equal(down[:, j], r.binary[i][:, c]) for c in (4 * j + 1, 4 * j + 2)), j


def test_runtime_gives_the_same_input_grid_binary_mask_as_the_api_first_guess(unet_dir, raw_images, first_guess):
    runtime = OnnxExplainer(unet_dir / "explainer.onnx", threads=1)
    masks = runtime(raw_images, targets=first_guess.target)
    assert masks.geometry == first_guess.geometry
    for i, size in enumerate(SIZES):
        got, want = masks.at_input(i), first_guess.at_input(i)
        assert got.binary.shape == size
        assert np.array_equal(got.binary, want.binary)
        assert np.abs(got.soft - want.soft).max() < 1e-4


def test_the_api_uses_the_cli_mapping_code(lesion_bundle, first_guess, raw_images):
    for i in range(2):
        geometry, _, soft, binary, _ = input_views(raw_images[i], lesion_bundle.preprocess, first_guess.soft[i],
                                                   first_guess.binary[i], first_guess.kept[i])
        back = first_guess.at_input(i)
        assert geometry == back.geometry
        assert np.array_equal(binary, back.binary) and np.array_equal(soft, back.soft)


def test_the_geometry_record_round_trips_through_json(first_guess):
    for i, size in enumerate(SIZES):
        rec = json.loads(json.dumps(first_guess.record(i)))["geometry"]
        assert rec["input_size"] == list(size) and rec["model_size"] == [32, 32]
        assert Geometry.from_dict(rec) == first_guess.geometry[i]
    g = Geometry((5000, 8), (32, 32))
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_geometries_follow_how_preprocess_reads_the_input():
    assert geometries(np.zeros((3, 40, 20), np.uint8), (32, 32)) == (Geometry((40, 20), (32, 32)),) * 3
    assert geometries(np.zeros((40, 20, 3), np.uint8), (32, 32)) == (Geometry((40, 20), (32, 32)),)
    assert geometries([np.zeros((7, 9)), np.zeros((5, 6, 1))], (4, 4)) == (Geometry((7, 9), (4, 4)),
                                                                          Geometry((5, 6), (4, 4)))


def test_a_normalized_tensor_has_no_input_grid(lesion_bundle, unet_dir, raw_images):
    import torch

    with MedCAM(lesion_bundle, explainer=unet_dir, refine_steps=0, threads=1) as explain:
        r = explain(torch.from_numpy(lesion_bundle.preprocess(raw_images)))
    assert r.geometry is None and "geometry" not in r.record(0)
    with pytest.raises(UsageError, match="own pixel grid is unknown"):
        r.at_input(0)


def test_a_geometry_record_with_a_crop_is_refused():
    from medcam_fast.errors import DataError

    rec = Geometry((10, 10), (4, 4)).to_dict() | {"crop": [0, 0, 5, 5]}
    with pytest.raises(DataError, match="crop or pad"):
        Geometry.from_dict(rec)
