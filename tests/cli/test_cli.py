"""The command line: outputs written, errors as one line with the documented exit code, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medcam_fast.cli.main import app
from medcam_fast.data.lesions import make_lesions
from medcam_fast.errors import EXIT_CODES

runner = CliRunner()


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    ds = make_lesions(3, size=32, seed=11)
    for i, img in enumerate(ds.images):
        Image.fromarray(img).save(d / f"img{i}.png")
    return d


def _explain(args: list[str]):
    return runner.invoke(app, ["explain", *args])


def test_help_documents_every_exit_code():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for code in EXIT_CODES:
        assert str(code) in r.output


def test_explain_writes_every_output(lesion_bundle_dir, image_dir, tmp_path):
    out = tmp_path / "out"
    r = _explain([str(image_dir), "--classifier", str(lesion_bundle_dir), "--steps", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for i in range(3):
        for suffix in ("_mask.png", "_soft.png", "_overlay.png", "_soft.npy", ".json"):
            assert (out / f"img{i}{suffix}").is_file(), suffix
        rec = json.loads((out / f"img{i}.json").read_text())
        assert {"p_original", "p_kept", "p_removed", "area", "classifier_sha256", "medcam_fast_version"} <= set(rec)
        mask = np.asarray(Image.open(out / f"img{i}_mask.png"))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        assert abs((mask > 0).mean() - rec["area"]) < 1e-6
        soft = np.load(out / f"img{i}_soft.npy", allow_pickle=False)
        assert soft.dtype == np.float32 and ((mask > 0) == (soft > 0.5)).all()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 3
    assert (out / "summary.csv").read_text().count("\n") == 4


def test_smoothing_is_applied_and_recorded_only_when_asked(lesion_bundle_dir, image_dir, tmp_path):
    args = [str(image_dir / "img0.png"), "--classifier", str(lesion_bundle_dir), "--steps", "4"]
    assert _explain([*args, "--out", str(tmp_path / "plain")]).exit_code == 0
    r = _explain([*args, "--smooth", "1.5", "--out", str(tmp_path / "smooth")])
    assert r.exit_code == 0, r.output
    plain, smooth = (json.loads((tmp_path / d / "img0.json").read_text()) for d in ("plain", "smooth"))
    assert "smooth" not in plain and smooth["smooth"] == 1.5
    a, b = (np.load(tmp_path / d / "img0_soft.npy") for d in ("plain", "smooth"))
    assert not np.array_equal(a, b)
    r = _explain([*args, "--smooth", "-1", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "bad").exists()


def test_existing_outputs_are_kept_unless_asked(lesion_bundle_dir, image_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(image_dir), "--classifier", str(lesion_bundle_dir), "--steps", "2", "--out", str(out)]
    assert _explain(args).exit_code == 0
    before = (out / "img0.json").read_bytes()
    r = _explain(args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "img0.json").read_bytes() == before
    r = _explain([*args, "--resume"])
    assert r.exit_code == 0 and "3 skipped" in r.output
    assert _explain([*args, "--overwrite"]).exit_code == 0


def test_bad_inputs_fail_cleanly(lesion_bundle_dir, image_dir, tmp_path):
    r = _explain([str(tmp_path / "missing.png"), "--classifier", str(lesion_bundle_dir)])
    assert r.exit_code == 3 and "missing.png" in r.output and "Traceback" not in r.output
    (image_dir / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    r = _explain([str(image_dir), "--classifier", str(lesion_bundle_dir), "--steps", "2", "--out", str(out)])
    assert r.exit_code == 5 and "broken.png" in r.output
    assert (out / "img0.json").exists() and not (out / "broken.json").exists()
    r = _explain([str(image_dir), "--classifier", str(tmp_path), "--steps", "2", "--out", str(out)])
    assert r.exit_code == 4 and "Traceback" not in r.output
    r = _explain([str(image_dir / "img0.png"), "--classifier", str(lesion_bundle_dir), "--target", "7",
                  "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "out of range" in r.output


def test_npz_input_with_index(lesion_bundle_dir, tmp_path):
    ds = make_lesions(6, size=32, seed=3)
    npz = tmp_path / "set.npz"
    np.savez(npz, images=ds.images, labels=ds.labels)
    out = tmp_path / "out"
    r = _explain([str(npz), "--split", "all", "--index", "1-2", "--classifier", str(lesion_bundle_dir),
                  "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.json") if p.name not in ("summary.json", "manifest.json")) == [
        "set_all_00001.json", "set_all_00002.json"]


def test_import_does_not_pull_in_typer_or_onnxruntime():
    code = "import sys, medcam_fast; medcam_fast.MedCAM; print('typer' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_import_classifier_from_a_factory_then_explain(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    pkg = tmp_path / "usermodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from usermodels.nets import make  # type: ignore[import-not-found]

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in make().state_dict().items()}, str(tmp_path / "w.safetensors"))
    bundle_dir = tmp_path / "bundle"
    r = runner.invoke(app, ["import-classifier", "--import", "usermodels.nets:make", "--weights",
                            str(tmp_path / "w.safetensors"), "--classes", "benign,lesion", "--size", "32",
                            "--channels", "1", "--mean", "0.5", "--std", "0.25", "--out", str(bundle_dir)])
    assert r.exit_code == 0, r.output
    img = tmp_path / "one.png"
    Image.fromarray(make_lesions(1, size=32, seed=0).images[0]).save(img)
    args = [str(img), "--classifier", str(bundle_dir), "--steps", "2", "--out", str(tmp_path / "o")]
    r = _explain(args)
    assert r.exit_code == 4 and "allow" in r.output.lower()  # the factory is not imported unasked
    r = _explain([*args, "--allow-import"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "one_mask.png").exists()


def _command(name: str):
    import typer.main

    group = typer.main.get_command(app)
    return group.commands[name]


@pytest.mark.parametrize(("command", "config"), [
    ("meta-train", "medcam_fast.explainer.meta:MetaConfig"),
    ("train-classifier", "medcam_fast.classifiers.training:TrainConfig"),
])
def test_options_that_name_a_config_field_defer_to_the_config(command, config):
    """Every default has one owner: an option that sets a configuration field defaults to None (not given)."""
    import dataclasses
    import importlib

    module, cls = config.split(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    params = {p.name: p for p in _command(command).params}
    shared = fields & set(params)
    assert len(shared) >= 6, shared
    assert {name: params[name].default for name in shared if params[name].default is not None} == {}


def test_cli_and_api_train_the_same_explainer_for_the_same_settings(lesion_bundle_dir, tmp_path):
    """`meta-train --inner-mode logits` and `MetaConfig(inner_mode="logits")` resolve to one configuration
    (they once differed: 0.3 from the CLI against 0.1 from Python)."""
    from medcam_fast.explainer.meta import MetaConfig
    from medcam_fast.method.inner import InnerLoop

    r = runner.invoke(app, ["meta-train", "--classifier", str(lesion_bundle_dir), "--data", "lesions", "--out",
                            str(tmp_path / "e"), "--one-phase", "--inner-mode", "logits", "--first-order", "--inner-steps", "1",
                            "--outer-steps", "1", "--meta-batch", "2", "--width", "4", "--threads", "1",
                            "--independence-measure", "pearson"])
    assert r.exit_code == 0, r.output
    facts = json.loads((tmp_path / "e" / "explainer.json").read_text())
    api = MetaConfig(inner_mode="logits", first_order=True, inner_steps=1, outer_steps=1, meta_batch=2, width=4,
                     independence_measure="pearson")
    assert MetaConfig.from_dict(facts["training"]["config"]) == api
    assert InnerLoop.from_dict(facts["inner"]).lr == api.step_size == 1.0
