"""Learned steps in a bundle: saved beside the weights, checked by their sha256, trained by ``train-steps``,
taken by ``explain`` unless ``--adam-steps``, and said in every record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medcam_fast import MedCAM, ModelError
from medcam_fast._assets import DEMO_DIR
from medcam_fast.cli.main import app
from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import ExplainerBundle, load_explainer, save_explainer
from medcam_fast.method.learned import StepNet, StepNetConfig

runner = CliRunner()


@pytest.fixture
def bundle_dir(tiny_explainer_dir):
    return tiny_explainer_dir


@pytest.fixture
def with_steps(bundle_dir, tmp_path):
    folder = shutil.copytree(bundle_dir, tmp_path / "e")
    bundle = load_explainer(folder)
    torch.manual_seed(0)
    bundle.steps = StepNet(StepNetConfig(steps=2, channels=4))
    with torch.no_grad():
        bundle.steps.f[-1].weight.normal_(0, 0.1)
    bundle.steps_training = {"updates": 7}
    save_explainer(bundle, folder)
    return folder, bundle.steps


def test_learned_steps_round_trip_beside_the_weights_and_the_onnx_seal(with_steps):
    folder, net = with_steps
    meta = json.loads((folder / "explainer.json").read_text())
    assert meta["learned_steps"]["net"] == {"steps": 2, "channels": 4, "hard_after": 0.7, "clip": 3.0}
    assert meta["learned_steps"]["training"] == {"updates": 7} and meta["onnx_sha256"]
    loaded = load_explainer(folder)  # the ONNX file it already had is still covered by the seal
    assert loaded.steps is not None and loaded.steps.config == net.config
    for (n, a), (m, b) in zip(loaded.steps.state_dict().items(), net.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b)
    save_explainer(ExplainerBundle.of(loaded.net, loaded.settings), folder)  # an explainer without steps: none left
    assert not (folder / "steps.safetensors").exists()
    assert "learned_steps" not in json.loads((folder / "explainer.json").read_text())


def test_replaced_or_missing_learned_steps_are_refused_with_one_line(with_steps, tmp_path):
    folder, _ = with_steps
    other = shutil.copytree(folder, tmp_path / "other")
    torch.manual_seed(1)
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in StepNet(StepNetConfig(steps=2, channels=4)).state_dict().items()},
              str(other / "steps.safetensors"))
    with pytest.raises(ModelError, match="learned steps do not match the sha256"):
        load_explainer(other)
    (other / "steps.safetensors").unlink()
    with pytest.raises(ModelError, match="steps.safetensors is missing"):
        load_explainer(other)


def test_records_say_how_many_learned_steps_were_taken(with_steps, lesion_bundle):
    folder, _ = with_steps
    x = make_lesions(3, size=32, seed=4).images
    with MedCAM(lesion_bundle, folder, refine_steps=5) as explain:
        five = explain(x)
    assert five.record(0)["learned_steps"] == 2
    assert MedCAM(lesion_bundle, folder, refine_steps=1)(x).record(0)["learned_steps"] == 1
    for off in (MedCAM(lesion_bundle, folder, refine_steps=5, learned_steps=False),
                MedCAM(lesion_bundle, folder, refine_steps=5, smooth=1.0), MedCAM(lesion_bundle, folder, refine_steps=0)):
        assert "learned_steps" not in off(x).record(0)
    adam = MedCAM(lesion_bundle, folder, refine_steps=5, learned_steps=False)(x)
    assert not np.array_equal(adam.logits, five.logits)


def _images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i, img in enumerate(make_lesions(2, size=64, seed=11).images):
        Image.fromarray(img).save(d / f"img{i}.png")
    return d


def test_train_steps_adds_steps_that_explain_takes_and_never_replaces_a_bundle_unasked(tmp_path):
    demo = DEMO_DIR / "explainer"
    mine = shutil.copytree(demo, tmp_path / "mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    args = ["train-steps", "--explainer", str(mine), "--classifier", str(DEMO_DIR / "classifier"), "--data", "lesions",
            "--updates", "2", "--steps", "2", "--threads", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--overwrite" in r.output and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "new")])
    assert r.exit_code == 0, r.output
    new = load_explainer(tmp_path / "new")
    assert new.steps is not None and new.steps.config.steps == 2 and new.steps_training["updates"] == 2
    assert new.sha256 == load_explainer(demo).sha256  # the first guess is the same network
    assert not (tmp_path / "new" / "explainer.onnx").exists()
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert load_explainer(mine).steps is not None  # in place: its ONNX file kept and still sealed
    images = _images(tmp_path)
    common = [str(images / "img0.png"), "--classifier", str(DEMO_DIR / "classifier"), "--explainer", str(mine),
              "--steps", "3"]
    assert runner.invoke(app, ["explain", *common, "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, ["explain", *common, "--adam-steps", "--out", str(tmp_path / "b")]).exit_code == 0
    a, b = (json.loads((tmp_path / d / "img0.json").read_text()) for d in ("a", "b"))
    assert a["learned_steps"] == 2 and "learned_steps" not in b
