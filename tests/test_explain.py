"""The MedCAM API: explainer folders with ONNX, the torch path, modes, pairing checks, typed results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam_fast import MedCAM, ModelError, UsageError
from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import save_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train


@pytest.fixture(scope="module")
def explainer_dir(lesion_bundle, tmp_path_factory):
    from medcam_fast.export.onnx_export import export_explainer

    ex = meta_train(lesion_bundle, make_lesions(16, size=32, seed=9).images,
                    MetaConfig(inner_steps=1, outer_steps=3, meta_batch=4, width=4, depth=2))
    folder = tmp_path_factory.mktemp("explainer")
    save_explainer(ex, folder)
    export_explainer(ex, folder / "explainer.onnx")
    return folder


@pytest.fixture(scope="module")
def images():
    return make_lesions(3, size=32, seed=21).images


def test_onnx_first_guess_matches_torch(lesion_bundle, explainer_dir, images):
    with MedCAM(lesion_bundle, explainer=explainer_dir, refine_steps=0) as explain:
        via_onnx = explain(images)
    assert explain.onnx is not None and via_onnx.extra["explainer_provider"] == "CPUExecutionProvider"
    with MedCAM(lesion_bundle, explainer=explainer_dir, refine_steps=0, use_onnx=False) as explain:
        via_torch = explain(images)
    assert np.abs(via_onnx.soft - via_torch.soft).max() < 1e-4
    near = np.abs(via_torch.soft - 0.5) < 1e-4
    assert ((via_onnx.binary == via_torch.binary) | near).all()


@pytest.mark.parametrize("mode", ["logits", "weights", "full"])
def test_every_mode_returns_a_typed_explanation(lesion_bundle, explainer_dir, images, mode):
    with MedCAM(lesion_bundle, explainer=explainer_dir, mode=mode, refine_steps=3) as explain:
        r = explain(images)
    assert r.mode == mode and r.steps == 3 and len(r) == 3
    assert r.binary.dtype == np.bool_ and r.binary.shape == (3, 32, 32)
    assert np.allclose(r.area, r.binary.reshape(3, -1).mean(1))
    assert r.kept.shape == (3, 32, 32, 1) and r.images.shape == (3, 32, 32, 1)
    rec = r.record(0)
    assert rec["target_name"] in ("benign", "lesion") and 0 <= rec["p_kept"] <= 1


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
