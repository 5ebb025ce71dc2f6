"""Tests of medcam_fast.classifier: architectures, activation capture, bundles, user models, training."""

from __future__ import annotations

import json
import pathlib
import pickle
import sys
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from medcam_fast._io import seal, sha256_file
from medcam_fast.classifiers.architectures import build_classifier
from medcam_fast.classifiers.bundle import load_classifier, save_classifier
from medcam_fast.classifiers.frozen import (
    ClassifierBundle,
    ClassifierOutput,
    FrozenClassifier,
    default_layers,
)
from medcam_fast.classifiers.sources import classifier_from_module, load_exported, load_import_path, load_timm
from medcam_fast.classifiers.training import TrainConfig, train_classifier
from medcam_fast.classifiers.weights import state_sha256
from medcam_fast.data.lesions import make_lesions
from medcam_fast.data.preprocess import Preprocess
from medcam_fast.errors import ModelError, UsageError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared machine two threads are many times slower than one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(arch: str, size: int = 32, classes: int = 3, channels: int = 1) -> nn.Module:
    """A small, seeded built-in model."""
    torch.manual_seed(0)
    return build_classifier(arch, channels, classes, size, width=4 if arch == "resnet18" else 32)


def _user_cnn() -> nn.Sequential:
    """A user CNN: 4-D maps at 0..4 (16×16 then 8×8), a 1×1 pool, then the head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _preprocess(size: int = 32, channels: int = 1) -> Preprocess:
    return Preprocess(size=(size, size), channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)


def _all_hooks_gone(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Evil:
    """Unpickling this creates ``path`` (stands for arbitrary code execution)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_logits_and_activation_shapes(arch: str, size: int) -> None:
    fc = FrozenClassifier(_tiny(arch, size))
    out = fc(torch.randn(2, 1, size, size))
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (2, 3)
    if arch == "resnet18":
        assert fc.layers == ["layer3", "layer4"]
        stem = 1 if size <= 32 else 2  # stride-2 stem from 33 to 96 px
        s3, s4 = -(-size // (4 * stem)), -(-size // (8 * stem))
        assert out.activations["layer3"].shape == (2, 16, s3, s3)
        assert out.activations["layer4"].shape == (2, 32, s4, s4)
    else:
        assert fc.layers == ["blocks.2", "blocks.3"]
        patch = 4 if size <= 32 else 8
        tokens = 1 + (-(-size // patch)) ** 2
        for name in fc.layers:
            assert out.activations[name].shape == (2, tokens, 32)
    assert torch.allclose(fc.logits(torch.zeros(1, 1, size, size)), fc(torch.zeros(1, 1, size, size)).logits)
    assert torch.allclose(fc.probs(torch.zeros(3, 1, size, size)).sum(1), torch.ones(3))


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_other_input_sizes_and_large_stem(arch: str) -> None:
    for built in (32, 128, 224):
        fc = FrozenClassifier(_tiny(arch, built, classes=2, channels=3))
        for h, w in ((28, 28), (36, 60), (224, 224)):
            assert fc(torch.randn(1, 3, h, w)).logits.shape == (1, 2)
    with pytest.raises(UsageError):
        build_classifier("alexnet", 1, 2, 32)
    with pytest.raises(UsageError):
        build_classifier("vit", 1, 2, 32, width=30)


# ---------------------------------------------------------------------------------------------- layers


def test_default_layers_builtin_and_user_models() -> None:
    assert default_layers(_tiny("resnet18")) == ["layer3", "layer4"]
    assert default_layers(_tiny("vit")) == ["blocks.2", "blocks.3"]
    x = torch.randn(1, 1, 16, 16)
    assert default_layers(_user_cnn(), x) == ["3", "4"]
    # a container and its last child return the same tensor: the container counts, not the child
    nested = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(4, 2),
        )
    )
    assert default_layers(nested, x) == ["features.2", "features"]

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(16, 8)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.mix(self.embed(x.flatten(1, 2)))  # [B, C*H, 8]: a token sequence
            return self.head(t.mean(1))

    assert default_layers(Tokens(), x) == ["embed", "mix"]
    with pytest.raises(ModelError):
        default_layers(nn.Sequential(nn.Flatten(), nn.Linear(256, 2)), x)
    with pytest.raises(UsageError):
        default_layers(_user_cnn())
    fc = FrozenClassifier(_user_cnn())  # defaults found on the first call
    with pytest.raises(UsageError):
        _ = fc.layers
    assert set(fc(x).activations) == {"3", "4"}
    assert fc.layers == ["3", "4"] and fc.num_classes == 2


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(UsageError, match="layer3"):
        FrozenClassifier(_tiny("resnet18"), ["layer9"])
    fc = FrozenClassifier(_tiny("resnet18"), ["layer1.0.conv1", "stem"])
    acts = fc(torch.randn(1, 1, 32, 32)).activations
    assert list(acts) == ["layer1.0.conv1", "stem"]
    assert FrozenClassifier(_tiny("resnet18"), []).forward(torch.randn(1, 1, 32, 32)).activations == {}


# ---------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_activations_differentiable_and_no_hooks_left(arch: str) -> None:
    model = _tiny(arch)
    fc = FrozenClassifier(model)
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    out = fc(x)
    for name in fc.layers:
        (g,) = torch.autograd.grad(out.activations[name].sum(), x, retain_graph=True)
        assert g.abs().sum() > 0
    assert _all_hooks_gone(model)
    with pytest.raises(RuntimeError):
        fc(torch.randn(2, 5, 32, 32))  # wrong channel count: the model raises mid-forward
    assert _all_hooks_gone(model)


def test_channels_last_input_backward() -> None:
    # torch 2.13 CPU corrupts the heap in the backward of a 1×1 stride-2 conv with few input channels and a
    # channels-last input; the built-in ResNet copies its input to the standard layout first.
    model = FrozenClassifier(_tiny("resnet18", 28, channels=1))
    x = torch.randn(4, 28, 28, 1).permute(0, 3, 1, 2).requires_grad_(True)  # channels-last strides
    (g,) = torch.autograd.grad(model(x).activations["layer4"].sum(), x)
    x_std = x.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    (g_std,) = torch.autograd.grad(model(x_std).activations["layer4"].sum(), x_std)
    assert torch.allclose(g, g_std, atol=1e-6)


def test_frozen_parameters_and_eval_mode() -> None:
    model = _tiny("resnet18")
    model.train()
    fc = FrozenClassifier(model)
    assert all(not p.requires_grad for p in model.parameters())
    assert not any(m.training for m in fc.modules())
    fc.train()
    assert not any(m.training for m in fc.modules())
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(fc(x).logits, fc(x).logits)  # eval BatchNorm: no running-stat updates
    assert fc.num_classes == 3


def test_works_inside_torch_func_grad() -> None:
    fc = FrozenClassifier(_tiny("resnet18"))
    x0 = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = fc(x0).activations
    x1 = x0 + 0.1 * torch.randn_like(x0)

    def matching(x: torch.Tensor) -> torch.Tensor:
        acts = fc(x).activations
        return sum(((acts[k] - ref[k]) ** 2).sum() for k in ref)

    g = torch.func.grad(matching)(x1)
    x = x1.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(matching(x), x)
    assert g.abs().sum() > 0
    assert torch.allclose(g, expected, atol=1e-5, rtol=1e-4)
    assert _all_hooks_gone(fc.model)


# ---------------------------------------------------------------------------------------------- bundles


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_save_load_round_trip(tmp_path: Path, arch: str) -> None:
    bundle = classifier_from_module(_tiny(arch), _preprocess(), ["a", "b", "c"])
    bundle.metrics = {"val_accuracy": np.float32(0.5)}
    assert bundle.source == "builtin"
    out = save_classifier(bundle, tmp_path / "clf")
    weights = out / "weights.safetensors"
    assert bundle.sha256 == sha256_file(weights) == state_sha256(bundle.model)
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["sha256"] == bundle.sha256 and meta["format_version"] == 1 and meta["arch"] == arch
    assert meta["config"]["num_classes"] == 3 and meta["metrics"]["val_accuracy"] == 0.5
    for path in (out, out / "classifier.json"):
        loaded = load_classifier(path)
        assert loaded.sha256 == bundle.sha256 and loaded.classes == ["a", "b", "c"]
        assert loaded.preprocess == bundle.preprocess and loaded.config == bundle.config
        x = torch.randn(3, 1, 32, 32)
        assert torch.equal(FrozenClassifier(loaded.model).logits(x), FrozenClassifier(bundle.model).logits(x))
    assert list(loaded.frozen()(x).activations) == default_layers(bundle.model)


def test_tampered_and_broken_bundles(tmp_path: Path) -> None:
    out = save_classifier(classifier_from_module(_tiny("resnet18"), _preprocess(), ["a", "b", "c"]), tmp_path)
    weights, meta_path = out / "weights.safetensors", out / "classifier.json"
    good_weights, good_meta = weights.read_bytes(), meta_path.read_text()

    data = bytearray(good_weights)
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256") as e:
        load_classifier(out)
    assert e.value.path == str(weights) and "\n" not in str(e.value)
    weights.write_bytes(good_weights)

    meta = json.loads(good_meta)
    meta["config"]["width"] = 8  # same (valid) weights, different architecture: shape mismatch
    meta_path.write_text(json.dumps(seal(meta)))  # resealed: the deeper check
    with pytest.raises(ModelError, match="shape") as e:
        load_classifier(out)
    assert e.value.path == str(weights)

    meta_path.write_text("{not json")
    with pytest.raises(ModelError, match="JSON") as e:
        load_classifier(out)
    assert e.value.path == str(meta_path)
    meta = json.loads(good_meta)
    del meta["sha256"]
    meta_path.write_text(json.dumps(seal(meta)))  # resealed: the deeper check
    with pytest.raises(ModelError, match="sha256"):
        load_classifier(out)
    meta = json.loads(good_meta)
    meta["weights"] = "../elsewhere.safetensors"
    meta_path.write_text(json.dumps(seal(meta)))  # resealed: the deeper check
    with pytest.raises(ModelError, match="invalid file name"):
        load_classifier(out)
    meta_path.write_text(good_meta)
    weights.unlink()
    with pytest.raises(ModelError, match="not found"):
        load_classifier(out)
    with pytest.raises(ModelError, match="classifier.json"):
        load_classifier(tmp_path / "nowhere")


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    payload = pickle.dumps(_Evil(tmp_path / "control"))
    pickle.loads(payload)  # the payload is live: unpickling it does run code
    assert (tmp_path / "control").exists()

    out = save_classifier(classifier_from_module(_tiny("resnet18"), _preprocess(), ["a", "b", "c"]), tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    (out / "weights.safetensors").write_bytes(payload)
    with pytest.raises(ModelError, match="sha256"):  # the recorded hash no longer matches
        load_classifier(out)
    meta = json.loads((out / "classifier.json").read_text())
    meta["sha256"] = sha256_file(out / "weights.safetensors")  # an attacker also rewrote the hash
    (out / "classifier.json").write_text(json.dumps(seal(meta)))  # and resealed it
    with pytest.raises(ModelError, match="safetensors"):
        load_classifier(out)
    with pytest.raises(ModelError, match="safetensors"):
        load_import_path("torch.nn:Identity", out / "weights.safetensors", _preprocess(), ["a", "b"])
    assert not marker.exists()


def test_wrapped_user_module_bundle(tmp_path: Path) -> None:
    bundle = classifier_from_module(_user_cnn(), _preprocess(16), ["no", "yes"])
    assert bundle.source == "import" and bundle.config["factory"] is None
    assert len(bundle.frozen()(torch.randn(1, 1, 16, 16)).activations) == 2
    out = save_classifier(bundle, tmp_path)
    with pytest.raises(ModelError, match="load_import_path"):
        load_classifier(out)
    with pytest.raises(ModelError, match="2 logits but 3 classes"):
        classifier_from_module(_user_cnn(), _preprocess(16), ["a", "b", "c"])
    with pytest.raises(UsageError):
        classifier_from_module(_user_cnn(), _preprocess(16), [])


# ---------------------------------------------------------------------------------------------- user models


_FACTORY_SOURCE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )


def wider():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
"""


def test_load_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"medcam_user_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        import importlib

        original = importlib.import_module(name).make()
        for p in original.parameters():
            nn.init.normal_(p)  # weights differ from the factory's own initialization
        original.eval()
        weights = tmp_path / "w.safetensors"
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in original.state_dict().items()}, str(weights)
        )

        bundle = load_import_path(f"{name}:make", weights, _preprocess(16), ["no", "yes"])
        x = torch.randn(3, 1, 16, 16)
        with torch.no_grad():
            assert torch.equal(bundle.model(x), original(x))
        assert bundle.source == "import" and bundle.sha256 == sha256_file(weights)

        with pytest.raises(ModelError, match="missing") as e:
            load_import_path(f"{name}:wider", weights, _preprocess(16), ["no", "yes"])
        assert e.value.path == str(weights)
        with pytest.raises(UsageError):
            load_import_path("no_colon_here", weights, _preprocess(16), ["no", "yes"])
        with pytest.raises(ModelError, match="cannot import"):
            load_import_path(f"{name}_absent:make", weights, _preprocess(16), ["no", "yes"])
        with pytest.raises(ModelError, match="not a torch.nn.Module"):
            load_import_path("builtins:dict", weights, _preprocess(16), ["no", "yes"])

        out = save_classifier(bundle, tmp_path / "bundle")
        with pytest.raises(ModelError, match="allow_import"):
            load_classifier(out)
        again = load_classifier(out, allow_import=True)
        with torch.no_grad():
            assert torch.equal(again.model(x), original(x))
    finally:
        sys.modules.pop(name, None)


def _export_tiny(path: Path) -> nn.Module:
    model = _user_cnn().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return model


def test_exported_program_round_trip(tmp_path: Path) -> None:
    model = _export_tiny(tmp_path / "m.pt2")
    bundle = load_exported(tmp_path / "m.pt2", _preprocess(16), ["no", "yes"])
    assert bundle.source == "export"
    x = torch.randn(3, 1, 16, 16)
    fc = bundle.frozen()
    with torch.no_grad():
        assert torch.allclose(fc.logits(x), model(x), atol=1e-6)
    xg = x.clone().requires_grad_(True)
    out = fc(xg)
    assert set(out.activations) == {"3", "4"}
    (g,) = torch.autograd.grad(out.activations["4"].sum(), xg)
    assert g.abs().sum() > 0

    out_dir = save_classifier(bundle, tmp_path / "bundle")
    assert (out_dir / "program.pt2").is_file()
    again = load_classifier(out_dir)
    with torch.no_grad():
        assert torch.allclose(again.model(x), model(x), atol=1e-6)

    with pytest.raises(ModelError, match="not found"):
        load_exported(tmp_path / "absent.pt2", _preprocess(16), ["no", "yes"])
    (tmp_path / "junk.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="junk.pt2"):
        load_exported(tmp_path / "junk.pt2", _preprocess(16), ["no", "yes"])


def test_exported_program_with_pickle_payload_is_refused(tmp_path: Path) -> None:
    _export_tiny(tmp_path / "ok.pt2")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    replaced = 0
    with zipfile.ZipFile(tmp_path / "ok.pt2") as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "sample_inputs" in info.filename:  # torch.export.load unpickles this part
                data, replaced = pickle.dumps(_Evil(marker)), replaced + 1
            zout.writestr(info, data)
    assert replaced
    with pytest.raises(ModelError, match="pickled"):
        load_exported(evil, _preprocess(16), ["no", "yes"])
    assert not marker.exists()


def test_timm_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ModelError, match=r"timm is not installed: pip install 'medcam-fast\[timm\]'"):
        load_timm("resnet18", 2, tmp_path / "w.safetensors", _preprocess())


# ---------------------------------------------------------------------------------------------- training


def test_train_classifier_on_lesions(tmp_path: Path) -> None:
    train = make_lesions(600, size=32, seed=0)
    val = make_lesions(200, size=32, seed=1)
    test = make_lesions(200, size=32, seed=2)
    rng_before = torch.random.get_rng_state()
    seen: list[tuple[int, int, float]] = []
    bundle = train_classifier(
        train, val, test, TrainConfig(arch="resnet18", epochs=5, batch_size=32, lr=3e-3, width=8, seed=0),
        callback=lambda epoch, epochs, log: seen.append((epoch, epochs, log["val_accuracy"])),
    )
    assert [(e, n) for e, n, _ in seen] == [(e, 5) for e in range(1, 6)]  # progress by callback, every epoch
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    m = bundle.metrics
    print(f"lesions 32px resnet18 w8 5 epochs: {m}")
    assert m["val_accuracy"] > 0.8 and m["test_accuracy"] > 0.75
    assert m["val_accuracy"] == max(acc for _, _, acc in seen)  # the best validation epoch is kept
    assert m["epochs"] == 5 and m["n_train"] == 600 and m["seconds"] > 0 and 1 <= m["best_epoch"] <= 5
    assert bundle.source == "builtin" and bundle.classes == train.classes
    assert bundle.preprocess.size == (32, 32) and bundle.preprocess.channels == 1
    assert bundle.sha256 == state_sha256(bundle.model)
    out = save_classifier(bundle, tmp_path)
    loaded = load_classifier(out)
    x = torch.from_numpy(loaded.preprocess(test.images[:8]))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), bundle.model(x))


def test_train_classifier_deterministic_and_imbalanced() -> None:
    train = make_lesions(48, size=28, seed=3, positive_fraction=0.2)
    val = make_lesions(16, size=28, seed=4)
    cfg = TrainConfig(arch="resnet18", epochs=1, batch_size=16, width=4, seed=1)
    a = train_classifier(train, val, None, cfg)
    b = train_classifier(train, val, None, cfg)
    c = train_classifier(train, val, None, cfg.with_(seed=2))
    assert a.sha256 == b.sha256 != c.sha256
    assert a.metrics["test_accuracy"] is None
    vit = train_classifier(train, val, None, cfg.with_(arch="vit", width=16))
    assert isinstance(vit, ClassifierBundle) and vit.config["arch"] == "vit"
    with pytest.raises(UsageError):
        TrainConfig(arch="lenet")
    with pytest.raises(UsageError):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("edit", ["classes", "mean", "unsealed"])
def test_an_edited_or_unsealed_classifier_json_is_refused(tmp_path, edit):
    """The weights' sha256 alone let a changed class list or normalization run silently with wrong labels or
    inputs; the JSON's own seal catches it, and an unsealed (0.1.0) file loads only when allowed."""
    out = save_classifier(classifier_from_module(_tiny("resnet18"), _preprocess(), ["a", "b", "c"]), tmp_path)
    path = out / "classifier.json"
    meta = json.loads(path.read_text())
    if edit == "classes":
        meta["classes"] = ["c", "b", "a"]
    elif edit == "mean":
        meta["preprocess"]["mean"] = [0.9]
    else:
        del meta["content_sha256"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="content hash") as e:
        load_classifier(out)
    assert e.value.path == str(path)
    if edit == "unsealed":
        assert load_classifier(out, allow_unsealed=True).sealed is False
    else:
        with pytest.raises(ModelError, match="content hash"):
            load_classifier(out, allow_unsealed=True)  # a broken seal is never accepted
