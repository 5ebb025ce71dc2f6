"""Explainer bundles: settings without a U-Net, and a seal over every file (JSON, weights, ONNX)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from medcam_fast import MedCAM, ModelError
from medcam_fast.cli.main import app
from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import ExplainerSettings, load_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.export.onnx_export import export_combined
from medcam_fast.export.runtime import OnnxExplainer


@pytest.fixture
def bundle_dir(tiny_explainer_dir):
    return tiny_explainer_dir


@pytest.fixture
def copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "e")


def test_the_onnx_file_alone_gives_the_same_settings_as_the_bundle(bundle_dir):
    bundle = load_explainer(bundle_dir)
    from_onnx = ExplainerSettings.from_facts(OnnxExplainer(bundle_dir / "explainer.onnx").facts, "x.onnx")
    assert from_onnx == bundle.settings and bundle.onnx_sha256 is not None


@pytest.mark.parametrize("edit", ["classes", "baseline", "empty-sha256", "unsealed"])
def test_an_edited_or_unsealed_explainer_json_is_refused(copy, edit):
    path = copy / "explainer.json"
    meta = json.loads(path.read_text())
    if edit == "classes":
        meta["classes"] = meta["classes"][::-1]
    elif edit == "baseline":
        meta["baseline"] = "zero"
    elif edit == "empty-sha256":
        meta["sha256"] = ""
    else:
        del meta["content_sha256"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError) as e:
        load_explainer(copy)
    assert "content hash" in e.value.cause and e.value.path == str(path)
    if edit == "unsealed":
        assert load_explainer(copy, allow_unsealed=True).sealed is False


def test_a_replaced_onnx_file_is_refused(copy, lesion_bundle, tmp_path):
    other = meta_train(lesion_bundle, make_lesions(8, size=32, seed=10).images,
                       MetaConfig(inner_steps=0, outer_steps=1, meta_batch=4, width=4, depth=2, seed=1))
    export_combined(other, lesion_bundle.model, tmp_path / "other.onnx")
    shutil.copyfile(tmp_path / "other.onnx", copy / "explainer.onnx")
    with pytest.raises(ModelError, match="changed after it was exported"):
        load_explainer(copy)


def test_seal_adds_the_hash_a_0_1_0_bundle_lacks_and_nothing_else(copy, lesion_bundle):
    path = copy / "explainer.json"
    meta = json.loads(path.read_text())
    for key in ("content_sha256", "onnx_sha256"):
        del meta[key]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="content hash"):
        MedCAM(lesion_bundle, copy)
    r = CliRunner().invoke(app, ["seal", str(copy)])
    assert r.exit_code == 0 and "1 sealed" in r.output, r.output
    sealed = json.loads(path.read_text())
    assert {k: v for k, v in sealed.items() if k not in ("content_sha256", "onnx_sha256")} == meta
    MedCAM(lesion_bundle, copy)  # loads, ONNX included
    r = CliRunner().invoke(app, ["seal", str(copy)])
    assert r.exit_code == 0 and "0 sealed, 1 already sealed" in r.output


def test_allowing_unsealed_bundles_is_said_on_the_console_and_in_every_record(copy, lesion_bundle_dir, tmp_path):
    from PIL import Image

    path = copy / "explainer.json"
    meta = json.loads(path.read_text())
    del meta["content_sha256"]
    path.write_text(json.dumps(meta))
    img = tmp_path / "a.png"
    Image.fromarray(make_lesions(1, size=32, seed=3).images[0]).save(img)
    r = CliRunner().invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--explainer",
                                 str(copy), "--allow-unsealed", "--steps", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "warning: bundles without a content hash are accepted" in r.output
    rec = json.loads((tmp_path / "o" / "a.json").read_text())
    assert any("content hash" in w for w in rec["warnings"])
