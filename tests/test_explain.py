"""The MedCAM API: explainer folders with ONNX, the torch path, modes, pairing checks, typed results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam_fast import MedCAM, ModelError, UsageError
from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import save_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.method.refine import RefineConfig


@pytest.fixture(scope="module")
def explainer_dir(lesion_bundle, tmp_path_factory):
    """The default explainer: a decoder over the classifier's features, exported with its classifier."""
    from medcam_fast.export.onnx_export import export_combined

    ex = meta_train(lesion_bundle, make_lesions(16, size=32, seed=9).images,
                    MetaConfig(inner_steps=1, outer_steps=3, meta_batch=4, width=4))
    folder = tmp_path_factory.mktemp("explainer")
    save_explainer(ex, folder)
    export_combined(ex, lesion_bundle.model, folder / "explainer.onnx")
    return folder


@pytest.fixture(scope="module")
def unet_dir(lesion_bundle, tmp_path_factory):
    """The classifier-blind U-Net explainer, its core graph exported."""
    from medcam_fast.export.onnx_export import export_explainer

    ex = meta_train(lesion_bundle, make_lesions(16, size=32, seed=9).images,
                    MetaConfig(architecture="unet", inner_mode="weights", first_order=False, inner_steps=1,
                               outer_steps=3, meta_batch=4, width=4, depth=2))
    folder = tmp_path_factory.mktemp("unet")
    save_explainer(ex, folder)
    export_explainer(ex, folder / "explainer.onnx")
    return folder


@pytest.fixture(scope="module")
def images():
    return make_lesions(3, size=32, seed=21).images


@pytest.mark.parametrize("which", ["explainer_dir", "unet_dir"])
def test_onnx_first_guess_matches_torch(lesion_bundle, request, which, images):
    folder = request.getfixturevalue(which)
    # a U-Net bundle's folder takes its first guess from its ONNX file; a decoder's only when it is named
    onnx = folder / "explainer.onnx" if which == "explainer_dir" else folder
    with MedCAM(lesion_bundle, explainer=onnx, refine_steps=0) as explain:
        via_onnx = explain(images)
    assert explain.onnx is not None and via_onnx.extra["explainer_provider"] == "CPUExecutionProvider"
    with MedCAM(lesion_bundle, explainer=folder, refine_steps=0, use_onnx=False) as explain:
        via_torch = explain(images)
    assert explain.onnx is None
    assert np.abs(via_onnx.soft - via_torch.soft).max() < 1e-4
    near = np.abs(via_torch.soft - 0.5) < 1e-4
    assert ((via_onnx.binary == via_torch.binary) | near).all()


@pytest.mark.parametrize(("mode", "which"), [("logits", "explainer_dir"), ("logits", "unet_dir"),
                                             ("weights", "unet_dir"), ("full", "explainer_dir")])
def test_every_mode_returns_a_typed_explanation(lesion_bundle, request, which, images, mode):
    with MedCAM(lesion_bundle, explainer=request.getfixturevalue(which), mode=mode, refine_steps=3) as explain:
        r = explain(images)
    assert r.mode == mode and r.steps == 3 and len(r) == 3
    assert r.binary.dtype == np.bool_ and r.binary.shape == (3, 32, 32)
    assert np.allclose(r.area, r.binary.reshape(3, -1).mean(1))
    assert r.kept.shape == (3, 32, 32, 1) and r.images.shape == (3, 32, 32, 1)
    rec = r.record(0)
    assert rec["target_name"] in ("benign", "lesion") and 0 <= rec["p_kept"] <= 1
    assert r.refined.shape == (3,) and rec["refined"] is bool(r.refined[0])
    if mode != "logits":  # only the logits loop keeps a better first guess
        assert r.refined.all()


def test_an_image_whose_first_guess_beats_its_refinement_is_reported_as_its_first_guess(lesion_bundle,
                                                                                     explainer_dir):
    images = make_lesions(8, size=32, seed=21).images
    big = RefineConfig(steps=1, lr=3.0, start_clip=None)  # a step this large spoils 2 first guesses of 8
    with MedCAM(lesion_bundle, explainer=explainer_dir, use_onnx=False, refine_config=big) as explain:
        first = explain(images, refine_steps=0)
        refined = explain(images)
    raw = MedCAM(lesion_bundle, explainer=explainer_dir, use_onnx=False, refine_config=big.with_(keep_best=False))(images)
    assert not first.refined.any() and 0 < refined.refined.sum() < len(images)
    assert np.array_equal(refined.loss, np.minimum(first.loss, raw.loss))
    for i in range(len(images)):
        same = raw if refined.refined[i] else first
        assert np.array_equal(refined.binary[i], same.binary[i]) and refined.p_kept[i] == same.p_kept[i]
        assert refined.record(i)["refined"] == bool(raw.loss[i] <= first.loss[i]) and refined.record(i)["steps"] == 1


def test_torch_tensors_and_numpy_give_the_same_answer(lesion_bundle, explainer_dir, images):
    with MedCAM(lesion_bundle, explainer=explainer_dir, refine_steps=0, use_onnx=False) as explain:
        a = explain(images)
        b = explain(torch.from_numpy(lesion_bundle.preprocess(images)))
    assert np.array_equal(a.binary, b.binary)


def test_a_mismatched_pair_is_refused_unless_allowed(lesion_bundle, explainer_dir, images):
    from medcam_fast.classifiers.frozen import ClassifierBundle

    other = ClassifierBundle(**{**lesion_bundle.__dict__, "sha256": "f" * 64})
    with pytest.raises(ModelError, match="trained for classifier"):
        MedCAM(other, explainer=explainer_dir)
    with MedCAM(other, explainer=explainer_dir, allow_mismatch=True, refine_steps=0) as explain:
        r = explain(images)
    assert "trained for classifier" in r.record(0)["warnings"][0]


def test_bad_arguments(lesion_bundle, explainer_dir, images):
    with pytest.raises(UsageError):
        MedCAM(lesion_bundle, mode="logits")
    with pytest.raises(UsageError):
        MedCAM(lesion_bundle, explainer=explainer_dir / "explainer.onnx", mode="weights")
    with pytest.raises(UsageError, match="U-Net"):
        MedCAM(lesion_bundle, explainer=explainer_dir, mode="weights")
    with pytest.raises(UsageError, match="layers"):
        MedCAM(lesion_bundle, explainer=explainer_dir, layers=["layer1"])
    with MedCAM(lesion_bundle, explainer=explainer_dir) as explain, pytest.raises(UsageError, match="out of range"):
        explain(images, targets=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(lesion_bundle):
    with pytest.raises(UsageError, match="cuda"):
        MedCAM(lesion_bundle, device="cuda")


@pytest.mark.parametrize("use_onnx", [True, False])
def test_same_inputs_give_the_same_masks_and_probabilities(lesion_bundle, explainer_dir, images, use_onnx):
    runs = []
    for _ in range(2):
        with MedCAM(lesion_bundle, explainer=explainer_dir, refine_steps=3, use_onnx=use_onnx) as explain:
            runs.append(explain(images))
    a, b = runs
    assert np.array_equal(a.binary, b.binary)
    for f in ("soft", "p_original", "p_kept", "p_removed"):
        assert np.abs(getattr(a, f) - getattr(b, f)).max() <= 1e-6


def test_an_onnx_session_the_caller_configured_is_used_as_it_is(lesion_bundle, explainer_dir, images):
    from medcam_fast.export.runtime import OnnxExplainer

    session = OnnxExplainer(explainer_dir / "explainer.onnx", threads=1)
    with MedCAM(lesion_bundle, session, refine_steps=0) as explain:
        got = explain(images)
    assert explain.onnx is session and explain.explainer is None
    with MedCAM(lesion_bundle, explainer_dir / "explainer.onnx", refine_steps=0) as explain:
        assert np.array_equal(explain(images).logits, got.logits)
    with pytest.raises(UsageError, match="OnnxExplainer"):
        MedCAM(lesion_bundle, 42)


def test_a_unet_explainer_of_0_1_still_explains_beside_the_decoder():
    """The U-Net bundles of 0.1 (format medcam-fast-explainer/1, kept in models/<set>/unet) load and explain
    with the refinement they were trained for."""
    from pathlib import Path

    from medcam_fast._assets import DEMO_DIR
    from medcam_fast.types import Architecture

    folder = Path(__file__).resolve().parents[1] / "models" / "lesions" / "unet"
    with MedCAM(DEMO_DIR / "classifier", folder, refine_steps=2) as explain:
        r = explain(make_lesions(2, size=64, seed=3).images)
    assert explain.settings is not None and explain.settings.architecture is Architecture.UNET
    assert explain.onnx is not None  # a U-Net bundle's first guess comes from its own ONNX core graph
    assert r.binary.shape == (2, 64, 64) and np.all((0 <= r.p_kept) & (r.p_kept <= 1))


@pytest.mark.parametrize(("explainer", "mode", "steps"), [
    ("decoder", "logits", 0), ("decoder", "logits", 4), ("unet", "logits", 2), ("unet", "weights", 2),
    (None, "full", 2)])
def test_an_image_gets_bit_identical_results_alone_or_in_any_batch(explainer, mode, steps):
    """Batched float32 kernels round differently at different batch sizes (oneDNN's batch-1 convolutions, for
    one), and refinement's first Adam steps turned that rounding into flipped pixels (10 of 49,152 between
    batch sizes 1 and 12 on the demo). MedCAM computes in chunks of a fixed size, the last padded: every
    array is bit-identical whether an image is explained alone or among others — first guess, refinement in
    every mode, and the per-image fit."""
    from pathlib import Path

    from medcam_fast._assets import DEMO_DIR

    folder = {"decoder": DEMO_DIR / "explainer", None: None,
              "unet": Path(__file__).resolve().parents[1] / "models" / "lesions" / "unet"}[explainer]
    images = make_lesions(6, size=64, seed=4).images
    with MedCAM(DEMO_DIR / "classifier", folder, mode=mode, refine_steps=steps) as explain:
        runs = {b: [explain(images[s : s + b]) for s in range(0, len(images), b)] for b in (1, 4, 6)}
    for b in (4, 6):
        for f in ("soft", "binary", "logits", "kept", "predicted", "target", "p_original", "p_kept", "p_removed",
                  "area", "loss"):
            alone, batched = (np.concatenate([getattr(r, f) for r in runs[k]]) for k in (1, b))
            assert np.array_equal(alone, batched), (b, f)
    assert runs[6][0].binary.shape == (6, 64, 64)
