"""Bad input to `medcam-fast explain`: a one-line error naming the file, the documented exit code, no traceback,
and nothing half-written; odd but valid images are explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from medcam_fast.cli.main import app

runner = CliRunner()
RNG = np.random.default_rng(0)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(path)
    return path


def _make(kind: str, d: Path) -> Path:  # noqa: C901 — one branch per case is the clearest table
    grey = (RNG.random((40, 40)) * 255).astype(np.uint8)
    rgb = (RNG.random((40, 40, 3)) * 255).astype(np.uint8)
    if kind == "missing":
        return d / "missing.png"
    if kind == "empty-folder":
        (d / "empty").mkdir()
        return d / "empty"
    if kind == "zero-bytes":
        (d / "zero.png").write_bytes(b"")
        return d / "zero.png"
    if kind == "text-as-png":
        (d / "text.png").write_text("not an image")
        return d / "text.png"
    if kind in ("truncated-png", "truncated-jpeg"):
        ext = "png" if kind == "truncated-png" else "jpg"
        full = _png(d / f"full.{ext}", rgb)
        data = full.read_bytes()
        full.unlink()
        (d / f"trunc.{ext}").write_bytes(data[: len(data) // 2])
        return d / f"trunc.{ext}"
    if kind == "nan-npz":
        np.savez(d / "nan.npz", images=np.full((3, 8, 8), np.nan, np.float32), labels=np.zeros(3, int))
        return d / "nan.npz"
    if kind == "labels-out-of-range":
        np.savez(d / "labels.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, 7]),
                 classes=np.array(["a", "b"]))
        return d / "labels.npz"
    if kind == "16-bit":
        return _png(d / "i16.png", (RNG.random((40, 40)) * 65535).astype(np.uint16))
    if kind == "palette":
        return _png(d / "pal.png", rgb, "P")
    if kind == "cmyk":
        return _png(d / "cmyk.jpg", rgb, "CMYK")
    if kind == "rgba":
        return _png(d / "rgba.png", (RNG.random((40, 40, 4)) * 255).astype(np.uint8))
    if kind == "1-bit":
        return _png(d / "bit.png", grey, "1")
    if kind == "rgb-for-grey-classifier":
        return _png(d / "rgb.png", rgb)
    if kind == "tiny":
        return _png(d / "tiny.png", grey[:4, :4])
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "code"), [
    ("missing", 3), ("empty-folder", 3), ("zero-bytes", 3), ("text-as-png", 3), ("truncated-png", 3),
    ("truncated-jpeg", 3), ("nan-npz", 3), ("labels-out-of-range", 3),
    ("16-bit", 0), ("palette", 0), ("cmyk", 0), ("rgba", 0), ("1-bit", 0), ("rgb-for-grey-classifier", 0),
    ("tiny", 0),
])
def test_each_bad_input(kind, code, tmp_path, lesion_bundle_dir):
    src = _make(kind, tmp_path)
    out = tmp_path / "out"
    npz = ["--split", "all"] if src.suffix == ".npz" else []  # npz options with images alone are an error
    r = runner.invoke(app, ["explain", str(src), "--classifier", str(lesion_bundle_dir), "--steps", "1",
                            "--out", str(out), *npz])
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    if code:
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and src.name in lines[0], r.output
        assert not any(out.glob("*.json")) if out.exists() else True
    else:
        assert len([p for p in out.glob("*.json") if p.name not in ("summary.json", "manifest.json")]) == 1


def test_model_and_output_errors(tmp_path, lesion_bundle_dir):
    img = _make("palette", tmp_path)
    base = ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--steps", "1"]
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("nope")
    r = runner.invoke(app, [*base, "--explainer", str(not_onnx), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 4 and "x.onnx" in r.output and "not an ONNX model" in r.output
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), plain)
    r = runner.invoke(app, [*base, "--explainer", str(plain), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 4 and "no medcam-fast metadata" in r.output
    r = runner.invoke(app, [*base, "--out", str(img / "sub")])  # a file where a folder must go
    assert r.exit_code == 2 and "cannot write to the output folder" in r.output
    r = runner.invoke(app, [*base, "--target", "9", "--out", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "out of range" in r.output
    r = runner.invoke(app, [*base, "--format", "gif", "--out", str(tmp_path / "o4")])
    assert r.exit_code == 2 and "gif" in r.output


def test_fail_fast_stops_at_the_first_bad_file(tmp_path, lesion_bundle_dir):
    d = tmp_path / "mixed"
    d.mkdir()
    _make("palette", d)
    (d / "broken.png").write_text("not an image")
    r = runner.invoke(app, ["explain", str(d), "--classifier", str(lesion_bundle_dir), "--steps", "1",
                            "--out", str(tmp_path / "o"), "--fail-fast"])
    assert r.exit_code == 3 and "broken.png" in r.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.json"))


def test_oversized_images_are_refused_before_decoding(tmp_path, lesion_bundle_dir):
    img = _make("palette", tmp_path)  # 40 x 40 = 1600 pixels
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--steps", "1",
                            "--max-pixels", "1000", "--out", str(tmp_path / "o")])
    assert r.exit_code == 3 and "pal.png" in r.output and "1000" in r.output.replace(",", "").replace("_", "")


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["train-classifier", "--data", "{tmp}/nothing.npz", "--out", "{tmp}/c"], 3, "nothing.npz"),
    (["meta-train", "--classifier", "{tmp}", "--data", "lesions", "--out", "{tmp}/e"], 4, "classifier"),
    (["export", "--explainer", "{tmp}", "--out", "{tmp}/x.onnx"], 4, "explainer.json"),
    (["import-classifier", "--out", "{tmp}/c", "--classes", "a,b", "--size", "32", "--channels", "1",
      "--mean", "0.5", "--std", "0.2"], 2, "--import"),
    (["bench", "per-image", "--models", "{tmp}", "--datasets", "breast", "--out", "{tmp}/b"], 4, "classifier"),
])
def test_every_command_reports_bad_input_in_one_line(args, code, needle, tmp_path):
    r = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and needle in r.output


_BAD_OPTIONS = [
    ("--device", "meta", "meta"), ("--device", "mps", "mps"), ("--device", "xla", "xla"),
    ("--device", "cuda:9", "cuda"), ("--device", "gpu", "unknown device 'gpu': choose cpu or cuda[:N]"),
    ("--threads", "-1", "error: --threads: must be ≥ 1 (got -1)"), ("--threads", "0", "--threads: must be ≥ 1 (got 0)"),
    ("--target", "99999999999999999999", "--target"), ("--target", "-1", "error: --target: must be ≥ 0 (got -1)"),
    ("--target", "7", "--target"),
]


@pytest.mark.parametrize(("option", "value", "needle"), _BAD_OPTIONS, ids=[f"{o}={v}" for o, v, _ in _BAD_OPTIONS])
def test_a_bad_option_is_one_usage_line_before_any_work(option, value, needle, tmp_path, lesion_bundle_dir):
    """These crashed with a traceback (exit 1) or started the batch before failing."""
    img = _make("palette", tmp_path)
    out = tmp_path / "o"
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--steps", "0",
                            "--out", str(out), option, value])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and needle in r.output and r.exception is None or isinstance(
        r.exception, SystemExit)
    lines = [line for line in r.output.splitlines() if line.strip()]  # no usage block, no list of torch devices
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert "Expected one of" not in r.output, r.output
    assert not out.exists() or not any(out.iterdir())


def test_api_targets_that_are_not_class_indices_are_refused(lesion_bundle):
    from medcam_fast import MedCAM, UsageError, make_lesions

    images = make_lesions(2, size=32, seed=0).images
    with MedCAM(lesion_bundle) as explain:
        for bad in (2**70, [0.5, 1.0], ["a", "b"], [0, 2]):
            with pytest.raises(UsageError):
                explain(images, targets=bad, refine_steps=1)
    with pytest.raises(UsageError, match="threads"):
        MedCAM(lesion_bundle, threads=0)


def test_a_20000_pixel_square_image_is_refused_not_decoded(tmp_path, lesion_bundle_dir):
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # 49 kB on disk, 400 Mpx decoded
    r = runner.invoke(app, ["explain", str(huge), "--classifier", str(lesion_bundle_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code == 3 and "huge.png" in r.output and "refused before decoding" in r.output


def test_grey_image_for_an_rgb_classifier(tmp_path):
    import torch
    from torch import nn

    from medcam_fast.classifiers.bundle import save_classifier
    from medcam_fast.classifiers.sources import classifier_from_module
    from medcam_fast.data.preprocess import Preprocess

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    bundle = classifier_from_module(net, Preprocess((32, 32), 3, (0.5,) * 3, (0.2,) * 3), ["a", "b"])
    folder = save_classifier(bundle, tmp_path / "rgb")
    img = _png(tmp_path / "grey.png", (RNG.random((40, 40)) * 255).astype(np.uint8))
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(folder), "--allow-import", "--mode", "full",
                            "--steps", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code in (0, 4), r.output  # a module without a factory cannot be rebuilt from its bundle
    assert "Traceback" not in r.output


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_is_named_as_such_not_missing(kind, tmp_path, lesion_bundle_dir):
    import os

    if kind == "fifo":
        path = tmp_path / "scan.png"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    r = runner.invoke(app, ["explain", str(path), "--classifier", str(lesion_bundle_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code == 3 and "not a regular file" in r.output and str(path) in r.output


def test_npz_options_without_an_npz_input_are_refused(tmp_path, lesion_bundle_dir):
    img = _make("palette", tmp_path)
    for extra in (["--index", "0-3"], ["--split", "train"]):
        r = runner.invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--out",
                                str(tmp_path / "o"), *extra])
        assert r.exit_code == 2 and ".npz" in r.output


def test_a_mismatched_pair_is_said_on_the_console(tmp_path, lesion_bundle_dir):
    from medcam_fast._assets import DEMO_DIR

    img = _make("palette", tmp_path)
    # the 0.1 U-Net explainer re-reads the image, so it can be paired with another grey classifier
    unet = Path(__file__).resolve().parents[2] / "models" / "lesions" / "unet"
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--explainer",
                            str(unet), "--allow-mismatch", "--steps", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "warning: explainer was trained for classifier" in r.output
    # the decoder reads the classifier's layers: one of other widths is refused in one line, even when allowed
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(lesion_bundle_dir), "--explainer",
                            str(DEMO_DIR / "explainer"), "--allow-mismatch", "--steps", "0", "--out", str(tmp_path / "d")])
    assert r.exit_code == 4 and "reads layer 'layer3' with 64 channels" in r.output, r.output
    assert r.output.startswith(f"error: {DEMO_DIR / 'explainer'}: the explainer reads"), r.output  # which bundle
    assert "Traceback" not in r.output and not (tmp_path / "d").exists()


def _npz(path: Path, n: int, labels: list[int] | None = None) -> Path:
    labels = labels if labels is not None else [k % 2 for k in range(n)]
    np.savez(path, images=(RNG.random((n, 28, 28)) * 255).astype(np.uint8), labels=np.array(labels))
    return path


@pytest.mark.parametrize(("command", "kind", "needle"), [
    ("train-classifier", "empty", "no images"), ("train-classifier", "three", "split has no images"),
    ("train-classifier", "one-class", "one class"), ("meta-train", "empty", "no images"),
])
def test_a_data_set_too_small_to_train_on_is_a_data_error_naming_it(command, kind, needle, tmp_path,
                                                                    lesion_bundle_dir):
    """An empty set crashed meta-train with a traceback; 3 images gave a usage error (exit 2) without the
    file's name; one class trained without a word."""
    data = _npz(tmp_path / f"{kind}.npz", {"empty": 0, "three": 3, "one-class": 40}[kind],
                [0] * 40 if kind == "one-class" else None)
    args = ["--data", str(data), "--out", str(tmp_path / "o"), "--threads", "1"]
    if command == "meta-train":
        args += ["--classifier", str(lesion_bundle_dir), "--outer-steps", "1"]
    else:
        args += ["--epochs", "1"]
    r = runner.invoke(app, [command, *args])
    assert r.exit_code == 3, r.output
    assert needle in r.output and data.name in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("damage", ["tensors", "json"])
def test_resuming_from_a_damaged_checkpoint_is_one_model_error(damage, tmp_path, lesion_bundle_dir):
    out = tmp_path / "e"
    base = ["meta-train", "--classifier", str(lesion_bundle_dir), "--data", "lesions", "--out", str(out),
            "--one-phase", "--inner-steps", "0", "--width", "4", "--checkpoint-every", "1", "--threads", "1"]
    assert runner.invoke(app, [*base, "--outer-steps", "2"]).exit_code == 0
    (out / "explainer.json").unlink()
    victim = out / ("checkpoint.safetensors" if damage == "tensors" else "checkpoint.json")
    victim.write_bytes(victim.read_bytes()[:100])
    r = runner.invoke(app, [*base, "--outer-steps", "4", "--resume"])
    assert r.exit_code == 4 and "damaged checkpoint" in r.output and victim.name in r.output, r.output


@pytest.mark.parametrize("mode", ["logits", "weights"])
def test_an_explainer_of_another_shape_is_refused_even_when_mismatches_are_allowed(mode, tmp_path):
    """An RGB classifier with the grey demo explainer crashed inside a convolution (weights mode) or failed
    per image with a usage error."""
    from medcam_fast._assets import DEMO_DIR
    from medcam_fast.classifiers.architectures import build_classifier
    from medcam_fast.classifiers.bundle import save_classifier
    from medcam_fast.classifiers.sources import classifier_from_module
    from medcam_fast.data.preprocess import Preprocess

    rgb = save_classifier(classifier_from_module(build_classifier("resnet18", 3, 2, 64, width=4),
                                                 Preprocess((64, 64), 3, (0.5,) * 3, (0.2,) * 3), ["a", "b"]),
                          tmp_path / "rgb")
    img = _make("palette", tmp_path)
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(rgb), "--explainer", str(DEMO_DIR / "explainer"),
                            "--allow-mismatch", "--mode", mode, "--steps", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 4 and "1 channel(s)" in r.output and "3 channel(s)" in r.output, r.output
    assert r.output.startswith(f"error: {DEMO_DIR / 'explainer'}: the explainer takes"), r.output  # which bundle
    assert not (tmp_path / "o").exists()


def test_what_would_surprise_is_said_before_it_happens(tmp_path, lesion_bundle_dir):
    """A 12-bit scan in a 16-bit PNG was explained as a near-black image without a word; --steps 100000
    started without one (about 47 minutes per image here)."""
    ct = tmp_path / "ct.png"
    Image.fromarray((RNG.random((40, 40)) * 4000).astype(np.uint16)).save(ct)
    r = runner.invoke(app, ["explain", str(ct), "--classifier", str(lesion_bundle_dir), "--steps", "0",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "warning:" in r.output and "12 bits" in r.output and "ct.png" in r.output
    r = runner.invoke(app, ["explain", str(ct), "--classifier", str(lesion_bundle_dir), "--steps", "100000",
                            "--out", str(tmp_path / "o2"), "--max-pixels", "10"])  # stops before any step
    assert "warning: --steps 100000" in r.output


# ------------------------------------------------------------------ every command, bundles broken on purpose

def _broken(kind: str, tmp: Path, lesion_bundle_dir: Path) -> Path:  # noqa: C901 — one branch per case
    """A bundle folder damaged in one way (a copy of the session's classifier, or of the demo explainer)."""
    import shutil

    from medcam_fast._assets import DEMO_DIR

    if kind.startswith("clf-"):
        d = Path(shutil.copytree(lesion_bundle_dir, tmp / kind))
        meta = d / "classifier.json"
        if kind == "clf-no-json":
            meta.unlink()
        elif kind == "clf-garbage-json":
            meta.write_text("{not json")
        elif kind == "clf-json-list":
            meta.write_text("[]")
        elif kind == "clf-no-weights":
            (d / "weights.safetensors").unlink()
        elif kind == "clf-pickle-weights":
            import pickle

            (d / "weights.safetensors").write_bytes(pickle.dumps({"a": 1}))
        elif kind == "clf-empty-weights":
            (d / "weights.safetensors").write_bytes(b"")
        elif kind == "clf-a-file":
            return meta.with_name("weights.safetensors")
        return d
    d = Path(shutil.copytree(DEMO_DIR / "explainer", tmp / kind))
    meta = d / "explainer.json"
    if kind == "ex-no-json":
        meta.unlink()
    elif kind == "ex-garbage-json":
        meta.write_text("\x00\x01")
    elif kind == "ex-other-format":
        meta.write_text('{"format": "something-else/1"}')
    elif kind == "ex-no-weights":
        (d / "weights.safetensors").unlink()
    elif kind == "ex-truncated-weights":
        data = (d / "weights.safetensors").read_bytes()
        (d / "weights.safetensors").write_bytes(data[: len(data) // 3])
    elif kind == "ex-onnx-garbage":
        (d / "explainer.onnx").write_bytes(b"not onnx")
    elif kind == "ex-a-file":
        return d / "weights.safetensors"
    return d


_CASES = [
    ("explain", "clf-no-json", 4), ("explain", "clf-garbage-json", 4), ("explain", "clf-json-list", 4),
    ("explain", "clf-no-weights", 4), ("explain", "clf-pickle-weights", 4), ("explain", "clf-empty-weights", 4),
    ("explain", "clf-a-file", 4), ("explain", "ex-no-json", 4), ("explain", "ex-garbage-json", 4),
    ("explain", "ex-other-format", 4), ("explain", "ex-no-weights", 4), ("explain", "ex-truncated-weights", 4),
    ("explain", "ex-onnx-garbage", 4), ("meta-train", "clf-no-json", 4), ("meta-train", "clf-pickle-weights", 4),
    ("meta-train", "clf-garbage-json", 4), ("export", "ex-no-json", 4), ("export", "ex-truncated-weights", 4),
    ("export", "ex-other-format", 4), ("seal", "clf-pickle-weights", 4), ("seal", "ex-no-weights", 4),
    ("seal", "ex-onnx-garbage", 4), ("export-combined", "clf-no-weights", 4),
    ("import-classifier", "clf-pickle-weights", 4), ("explain", "ex-a-file", 4),
    *(("meta-train", k, 4) for k in ("clf-no-weights", "clf-json-list", "clf-empty-weights", "clf-a-file")),
    *(("export", k, 4) for k in ("ex-no-weights", "ex-garbage-json")),
    *(("seal", k, 4) for k in ("clf-no-json", "clf-garbage-json", "clf-json-list", "clf-empty-weights",
                                "ex-garbage-json", "ex-other-format", "ex-truncated-weights", "ex-no-json")),
    *(("export-combined", k, 4) for k in ("clf-pickle-weights", "clf-garbage-json", "clf-no-json",
                                          "clf-empty-weights")),
    *(("evaluate", k, 4) for k in ("clf-no-json", "clf-pickle-weights", "clf-no-weights", "ex-no-json",
                                   "ex-truncated-weights", "ex-other-format")),
]


#: The cause each case must name, where a vaguer message was printed before (a UnicodeDecodeError, the wrong
#: bundle kind, a BadZipFile); (command, kind), or kind alone for every command.
_CAUSES = {
    "clf-a-file": "weights.safetensors: is a file, expected a bundle folder (with classifier.json)",
    "ex-a-file": "weights.safetensors: is a file, expected a bundle folder (with explainer.json)",
    ("seal", "clf-no-json"): "no classifier.json or explainer.json here",
    ("import-classifier", "clf-pickle-weights"): "not a .pt2 exported program (torch.export)",
}


@pytest.mark.parametrize(("command", "kind", "code"), _CASES, ids=[f"{c}-{k}" for c, k, _ in _CASES])
def test_a_broken_bundle_is_one_line_naming_it_for_every_command(command, kind, code, tmp_path, lesion_bundle_dir):
    """Generated at test time: each damaged bundle, given to each command that reads it, is one error line with
    the documented exit code, the damaged path in it, no traceback, and nothing written."""
    from medcam_fast._assets import DEMO_DIR

    broken = _broken(kind, tmp_path, lesion_bundle_dir)
    img = _make("palette", tmp_path)
    out = tmp_path / "out"
    clf = broken if kind.startswith("clf-") else lesion_bundle_dir
    ex = broken if kind.startswith("ex-") else DEMO_DIR / "explainer"
    args = {
        "explain": ["explain", str(img), "--classifier", str(clf), "--explainer", str(ex), "--allow-mismatch",
                    "--out", str(out)],
        "meta-train": ["meta-train", "--classifier", str(clf), "--data", "lesions", "--out", str(out)],
        "export": ["export", "--explainer", str(ex), "--out", str(out / "x.onnx")],
        "export-combined": ["export", "--explainer", str(DEMO_DIR / "explainer"), "--combined", str(clf),
                            "--out", str(out / "x.onnx")],
        "seal": ["seal", str(broken)],
        "evaluate": ["evaluate", "--classifier", str(clf), "--explainer", str(ex), "--data", "lesions", "--n", "2",
                     "--methods", "first-guess", "--out", str(out)],
        "import-classifier": ["import-classifier", "--out", str(out), "--classes", "a,b", "--size", "32",
                              "--channels", "1", "--mean", "0.5", "--std", "0.2", "--program",
                              str(broken / "weights.safetensors")],
    }[command]
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output and str(tmp_path) in lines[0]
    cause = _CAUSES.get((command, kind), _CAUSES.get(kind))
    assert cause is None or cause in lines[0], r.output
    assert not out.exists()  # not even an empty folder


def test_a_dicom_or_nifti_file_is_named_as_such(tmp_path, lesion_bundle_dir, caplog):
    """A real DICOM or NIfTI file was 'not an image file (Pillow cannot identify its format)'; nibabel logged
    'data code 0 not supported; not attempting fix' on stderr before the error line."""
    dicom = tmp_path / "IM000001"
    dicom.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 200)
    nifti = tmp_path / "brain.nii"
    nifti.write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 340 + b"n+1\x00" + b"\x00" * 100)
    for path, needle in ((dicom, "a DICOM file"), (nifti, "a NIfTI volume")):
        r = runner.invoke(app, ["explain", str(path), "--classifier", str(lesion_bundle_dir), "--out",
                                str(tmp_path / "o")])
        assert r.exit_code == 3 and needle in r.output and path.name in r.output, r.output
    assert not [m for m in caplog.messages if "not supported" in m]  # nibabel's log line, before the error


def test_evaluate_on_a_set_without_test_images_is_a_data_error(tmp_path):
    from medcam_fast._assets import DEMO_DIR

    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 28, 28), np.uint8), labels=np.zeros(0, int))
    r = runner.invoke(app, ["evaluate", "--classifier", str(DEMO_DIR / "classifier"), "--explainer",
                            str(DEMO_DIR / "explainer"), "--data", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 3 and "no images" in r.output and "Traceback" not in r.output, r.output
    assert r.output.startswith(f"error: {empty}: "), r.output  # the file, not only the data set's name
    assert not (tmp_path / "o").exists()


def test_a_classifier_json_whose_channels_disagree_with_its_weights_is_refused_on_load(tmp_path, lesion_bundle_dir):
    """Unsealed (allowed) and edited to 3 channels, it crashed inside the first convolution of a batch."""
    import json
    import shutil

    d = Path(shutil.copytree(lesion_bundle_dir, tmp_path / "c3"))
    meta = json.loads((d / "classifier.json").read_text())
    del meta["content_sha256"]
    meta["preprocess"].update(channels=3, mean=[0.5] * 3, std=[0.2] * 3)
    (d / "classifier.json").write_text(json.dumps(meta))
    img = _make("palette", tmp_path)
    r = runner.invoke(app, ["explain", str(img), "--classifier", str(d), "--allow-unsealed", "--out",
                            str(tmp_path / "o")])
    assert r.exit_code == 4 and "classifier.json" in r.output and "Traceback" not in r.output
    assert "classifier.json: classifier.json says 3 channels, its weights take 1" in r.output, r.output
    assert not (tmp_path / "o").exists()
