"""ONNX export and the torch-free onnxruntime runtime: checker, metadata, parity with torch on real images,
dynamic sizes, a runtime process where torch cannot be imported, error handling, the combined graph."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from medcam_fast.classifiers.weights import state_sha256
from medcam_fast.data.images import ImageSet
from medcam_fast.data.medmnist import load_npz, resolve_data
from medcam_fast.data.preprocess import Preprocess
from medcam_fast.errors import DataError, ModelError, UsageError
from medcam_fast.explainer.bundle import ExplainerBundle, save_explainer
from medcam_fast.export.onnx_export import export_combined, export_explainer
from medcam_fast.export.runtime import OnnxExplainer, RuntimeMasks
from medcam_fast.method.inner import InnerLoop
from medcam_fast.method.losses import LossWeights
from medcam_fast.method.masking import keep, make_baseline, remove
from medcam_fast.method.unet import UNet, UNetConfig
from medcam_fast.types import BaselineKind, InnerMode

torch.set_num_threads(1)

TOL = 1e-4
NUM_CLASSES = 3


def _unet(channels: int, seed: int) -> UNet:
    """A small U-Net with noisy FiLM and output weights, so masks vary over the image and with the class."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(in_channels=channels, num_classes=NUM_CLASSES, width=8, depth=3))
    nn.init.normal_(net.film.weight, std=1.0)
    nn.init.normal_(net.out.weight, std=0.5)
    nn.init.normal_(net.out.bias, std=0.1)
    return net.eval()


def _untrained(unet: UNet, preprocess: Preprocess, sha: str, tau: float = 1.0) -> ExplainerBundle:
    """An explainer bundle around a random U-Net (the facts a meta-training run would record)."""
    return ExplainerBundle(
        net=unet, net_config=unet.config, preprocess=preprocess, classes=[f"class_{k}" for k in range(NUM_CLASSES)],
        classifier_sha256=sha, tau=tau, threshold=0.5, baseline=BaselineKind.BLUR, weights=LossWeights(),
        inner=InnerLoop(steps=0, lr=0.1, first_order=False, mode=InnerMode.WEIGHTS), training={"method": "test"},
    )


def _bundle(channels: int, size: tuple[int, int], seed: int, tmp: Path, sha: str = "c" * 64) -> ExplainerBundle:
    """A saved bundle with realistic (MedMNIST-like) normalization."""
    mean, std = ((0.33,), (0.21,)) if channels == 1 else ((0.74, 0.53, 0.71), (0.12, 0.18, 0.13))
    bundle = _untrained(_unet(channels, seed), Preprocess(size=size, channels=channels, mean=mean, std=std), sha,
                        tau=0.7)
    save_explainer(bundle, tmp)
    return bundle


def _real(name: str, n: int = 8) -> ImageSet:
    """The first ``n`` test images of a shared data set (skips the test when the data is not there)."""
    try:
        path = resolve_data(name)
    except DataError:
        pytest.skip(f"shared data set {name!r} not found")
    return load_npz(path, split="test").subset(np.arange(n))


def _torch_soft(bundle: ExplainerBundle, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Reference mask probabilities ``σ(u/τ)`` ``[B, H, W]`` from torch (``UNet.forward`` pads itself)."""
    with torch.no_grad():
        u = bundle.net(torch.from_numpy(x), torch.from_numpy(t))
        return torch.sigmoid(u / bundle.tau)[:, 0].numpy()


def _assert_masks_match(got: RuntimeMasks, ref_soft: np.ndarray, threshold: float) -> None:
    """Mask probabilities within TOL; binary masks identical except at pixels within TOL of the threshold."""
    assert got.soft.shape == ref_soft.shape
    assert float(np.abs(got.soft - ref_soft).max()) <= TOL
    differ = got.binary != (ref_soft > threshold)
    assert not np.any(differ & (np.abs(ref_soft - threshold) > TOL))


@pytest.fixture(scope="module")
def grey(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExplainerBundle, Path]:
    """Grey 64 px explainer (breastmnist-like), exported once."""
    tmp = tmp_path_factory.mktemp("grey")
    bundle = _bundle(1, (64, 64), seed=0, tmp=tmp / "bundle")
    return bundle, export_explainer(bundle, tmp / "explainer.onnx")


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExplainerBundle, Path]:
    """RGB 28 px explainer (pathmnist-like; 28 is not a multiple of 8), exported once."""
    tmp = tmp_path_factory.mktemp("rgb")
    bundle = _bundle(3, (28, 28), seed=1, tmp=tmp / "bundle")
    return bundle, export_explainer(bundle, tmp / "explainer.onnx")


# ----------------------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------------------


def test_checker_passes_and_graph_has_the_documented_signature(grey):
    _, path = grey
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["image", "target"]
    assert [o.name for o in model.graph.output] == ["mask_logits"]
    image, target = (i.type.tensor_type for i in model.graph.input)
    assert image.elem_type == onnx.TensorProto.FLOAT and target.elem_type == onnx.TensorProto.INT64
    dims = image.shape.dim
    assert dims[1].dim_value == 1
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # batch, H, W dynamic
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_metadata_round_trips(grey):
    bundle, path = grey
    ex = OnnxExplainer(path)
    facts = dict(ex.facts)
    assert facts.pop("graph") == "core"
    assert facts.pop("medcam_fast_version")
    assert facts == json.loads(json.dumps(bundle.facts()))
    assert ex.preprocess == bundle.preprocess
    assert ex.classes == bundle.classes
    assert (ex.threshold, ex.tau, ex.multiple) == (bundle.threshold, bundle.tau, 8)
    assert ex.classifier_sha256 == bundle.classifier_sha256
    assert ex.facts["sha256"] == bundle.sha256 != ""
    flat = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert flat["input_channels"] == "1" and json.loads(flat["input_size"]) == [64, 64]
    assert json.loads(flat["mean"]) == list(bundle.preprocess.mean)
    assert json.loads(flat["std"]) == list(bundle.preprocess.std)
    assert json.loads(flat["classes"]) == bundle.classes
    assert float(flat["threshold"]) == 0.5 and float(flat["tau"]) == 0.7 and flat["size_multiple"] == "8"
    assert flat["classifier_sha256"] == bundle.classifier_sha256


# ----------------------------------------------------------------------------------------------------------
# Parity with torch
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("which", ["grey", "rgb"])
def test_parity_with_torch_on_real_images(which, batch, request):
    bundle, path = request.getfixturevalue(which)
    data = _real("breast" if which == "grey" else "path", 8).subset(np.arange(batch))
    targets = data.labels % NUM_CLASSES
    ex = OnnxExplainer(path)
    got = ex(data.images, targets)  # raw uint8 images: the runtime preprocesses (and pads 28 → 32)
    x = bundle.preprocess(data.images)
    ref = _torch_soft(bundle, x, targets)
    _assert_masks_match(got, ref, bundle.threshold)
    assert got.logits.shape == got.binary.shape == (batch, *bundle.preprocess.size)
    assert got.binary.dtype == np.bool_ and np.array_equal(got.targets, targets)
    assert 0.0 < got.binary.mean() < 1.0  # the masks are not constant
    # the normalized-array path gives the same
    again = ex(x, targets, preprocessed=True)
    np.testing.assert_array_equal(again.logits, got.logits)


def test_dynamic_batch_and_sizes(grey):
    bundle, path = grey
    ex = OnnxExplainer(path)
    rng = np.random.default_rng(3)
    for shape in [(3, 1, 32, 32), (2, 1, 64, 48), (1, 1, 30, 50)]:  # the last one needs the runtime's padding
        x = rng.standard_normal(shape).astype(np.float32)
        t = rng.integers(0, NUM_CLASSES, shape[0])
        logits = ex.logits(x, t)
        assert logits.shape == (shape[0], 1, *shape[2:])
        soft = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64) / bundle.tau))
        assert np.abs(soft - _torch_soft(bundle, x, t)).max() <= TOL


def test_runtime_runs_where_torch_cannot_be_imported(rgb, tmp_path):
    bundle, path = rgb
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    targets = np.array([0, 1, 2, 1, 0], dtype=np.int64)
    soft = _torch_soft(bundle, bundle.preprocess(images), targets)
    np.savez(tmp_path / "case.npz", images=images, targets=targets, soft=soft)
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import medcam_fast.export
        from medcam_fast.export.runtime import OnnxExplainer

        case = np.load({str(tmp_path / "case.npz")!r})
        ex = OnnxExplainer({str(path)!r})
        masks = ex(case["images"], case["targets"])
        diff = float(np.abs(masks.soft - case["soft"]).max())
        assert diff <= {TOL}, diff
        near = np.abs(case["soft"] - ex.threshold) <= {TOL}
        assert np.array_equal(masks.binary | near, (case["soft"] > ex.threshold) | near)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok", diff)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")


def test_importing_the_export_package_does_not_import_torch():
    code = "import sys, medcam_fast.export; assert 'torch' not in sys.modules; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# ----------------------------------------------------------------------------------------------------------
# Errors and providers
# ----------------------------------------------------------------------------------------------------------


def test_a_text_file_is_not_an_onnx_model(tmp_path):
    fake = tmp_path / "explainer.onnx"
    fake.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="not an ONNX model") as info:
        OnnxExplainer(fake)
    assert info.value.path == str(fake)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="file not found"):
        OnnxExplainer(tmp_path / "missing.onnx")


def test_onnx_model_without_metadata_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    path = tmp_path / "plain.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match="no medcam-fast metadata: not exported by medcam-fast export"):
        OnnxExplainer(path)


def test_provider_and_usage_errors(grey):
    _, path = grey
    ex = OnnxExplainer(path, threads=1)
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"
    assert ex.provider == expected
    assert OnnxExplainer(path, providers=["CPUExecutionProvider"]).provider == "CPUExecutionProvider"
    with pytest.raises(UsageError, match="not available"):
        OnnxExplainer(path, providers=["NoSuchExecutionProvider"])
    images = np.zeros((2, 64, 64), np.uint8)
    with pytest.raises(UsageError, match="targets are required"):
        ex(images)
    with pytest.raises(UsageError, match="targets must lie"):
        ex(images, [0, NUM_CLASSES])
    with pytest.raises(UsageError, match="channel"):
        ex.logits(np.zeros((1, 3, 64, 64), np.float32), [0])
    assert ex(images, 2).targets.tolist() == [2, 2]  # one int for every image
    with pytest.raises(UsageError, match="opset"):
        export_explainer(grey[0], path.parent / "old.onnx", opset=13)


# ----------------------------------------------------------------------------------------------------------
# The combined "explain and verify" graph
# ----------------------------------------------------------------------------------------------------------


class _TinyCNN(nn.Module):
    """A small classifier: normalized RGB images → NUM_CLASSES logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_combined_graph_matches_torch(tmp_path):
    torch.manual_seed(5)
    cnn = _TinyCNN().eval()
    for p in cnn.parameters():
        nn.init.normal_(p, std=0.5)
    bundle = _bundle(3, (28, 28), seed=1, tmp=tmp_path / "bundle", sha=state_sha256(cnn))
    path = export_combined(bundle, cnn, tmp_path / "combined.onnx")
    ex = OnnxExplainer(path)
    assert ex.combined and OnnxExplainer(path).facts["graph"] == "combined"
    try:
        images = _real("path", 8).images
    except pytest.skip.Exception:
        images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
    got = ex(images)  # targets=None: the classifier's decision
    x = torch.from_numpy(bundle.preprocess(images))
    with torch.no_grad():
        p0 = torch.softmax(cnn(x), dim=-1)
        t = p0.argmax(-1)
        soft = torch.sigmoid(bundle.net(x, t) / bundle.tau)
        m = (soft > bundle.threshold).float()
        b = make_baseline(x, bundle.baseline, bundle.preprocess.mean, bundle.preprocess.std)
        pick = lambda p: p.gather(1, t[:, None])[:, 0].numpy()  # noqa: E731
        p_kept = pick(torch.softmax(cnn(keep(x, m, b)), dim=-1))
        p_removed = pick(torch.softmax(cnn(remove(x, m, b)), dim=-1))
    assert np.array_equal(got.targets, t.numpy())
    _assert_masks_match(got, soft[:, 0].numpy(), bundle.threshold)
    assert np.abs(got.probs_original - p0.numpy()).max() <= TOL
    assert np.abs(got.p_original - pick(p0)).max() <= TOL
    assert np.abs(got.p_kept - p_kept).max() <= TOL and np.abs(got.p_removed - p_removed).max() <= TOL
    assert np.allclose(got.area, m.flatten(1).mean(1).numpy())
    assert not np.allclose(got.p_kept, got.p_original, atol=1e-3)
    explicit = ex(images, np.full(8, 2))
    assert explicit.targets.tolist() == [2] * 8
    assert np.array_equal(explicit.probs_original, got.probs_original)


def test_a_combined_file_written_by_0_1_0_still_loads(tmp_path):
    """0.1.0's combined graph output the kept view's softmax as ``probs_masked`` [B, K] and no removed view."""
    from medcam_fast.export import onnx_export as ox

    class Legacy(ox._Combined):
        def forward(self, image, target):
            u, probs_original, *_ = super().forward(image, target)
            t = torch.where(target < 0, probs_original.argmax(-1), target)
            m = (torch.sigmoid(u / self.tau) > self.threshold).to(image.dtype)
            b = make_baseline(image, self.baseline, self.mean, self.std)
            return u, probs_original, torch.softmax(self.classifier(keep(image, m, b)), dim=-1), t

    torch.manual_seed(6)
    cnn = _TinyCNN().eval()
    bundle = _bundle(3, (28, 28), seed=1, tmp=tmp_path / "bundle", sha=state_sha256(cnn))
    pre = bundle.preprocess
    legacy = Legacy(bundle.net, cnn, bundle.tau, bundle.threshold, bundle.baseline, pre.mean, pre.std).eval()
    example = (torch.zeros(2, 3, 28, 28), torch.tensor([-1, 0]))
    batch = torch.export.Dim("batch", min=1)
    proto = ox._torch_to_onnx(legacy, example, ["mask_logits", "probs_original", "probs_masked", "t"],
                              {"image": {0: batch}, "target": {0: batch}}, 18, "legacy", tmp_path / "old.onnx")
    ox._finish(proto, ox.onnx_metadata(bundle, "combined"), doc="0.1.0", inputs_doc={}, outputs_doc={})
    path = ox._write(proto, tmp_path / "old.onnx", None)
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    got = OnnxExplainer(path)(images)
    x = torch.from_numpy(pre(images))
    with torch.no_grad():
        u, p0, p1, t = legacy(x, torch.full((4,), -1))
    assert got.p_removed is None and np.array_equal(got.targets, t.numpy())
    assert np.abs(got.p_original - p0.gather(1, t[:, None])[:, 0].numpy()).max() <= TOL
    assert np.abs(got.p_kept - p1.gather(1, t[:, None])[:, 0].numpy()).max() <= TOL
    assert np.allclose(got.area, got.binary.reshape(4, -1).mean(1))


def test_combined_export_refuses_a_wrong_or_unexportable_classifier(tmp_path):
    bundle = _bundle(3, (16, 16), seed=2, tmp=tmp_path / "bundle", sha="d" * 64)
    with pytest.raises(ModelError, match="not the ones the explainer was trained against"):
        export_combined(bundle, _TinyCNN(), tmp_path / "c.onnx")

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.head(x.mean(dim=(2, 3)))
            return z if z.sum() > 0 else -z  # control flow on values: not exportable

    out = tmp_path / "bad.onnx"
    with pytest.raises(ModelError, match="cannot export") as info:
        export_combined(bundle, DataDependent(), out, check_sha256=False)
    assert "\n" not in info.value.cause and "\x1b" not in info.value.cause
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_downsampled_unet_for_large_images_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = UNet(UNetConfig(in_channels=1, num_classes=NUM_CLASSES, width=4, depth=3, downsample=4))
    nn.init.normal_(net.film.weight, std=1.0)
    nn.init.normal_(net.out.weight, std=0.5)
    bundle = _untrained(net.eval(), Preprocess((224, 224), 1, (0.4,), (0.2,)), "d" * 64)
    save_explainer(bundle, tmp_path)
    ex = OnnxExplainer(export_explainer(bundle, tmp_path / "big.onnx"))
    assert ex.multiple == 32
    for h, w in ((224, 224), (200, 150)):  # the second is padded to 224 x 160 and cropped back
        x = np.random.default_rng(h).normal(size=(2, 1, h, w)).astype(np.float32)
        t = np.array([0, 2], dtype=np.int64)
        got = ex(x, t, preprocessed=True)
        _assert_masks_match(got, _torch_soft(bundle, x, t), bundle.threshold)


def test_a_combined_graph_reads_target_minus_one_per_image_as_the_decision() -> None:
    """One batch may mix given targets and decisions (the service batches requests of both kinds)."""
    from medcam_fast import DEMO_DIR, make_lesions
    from medcam_fast.export.runtime import OnnxExplainer

    graph = OnnxExplainer(DEMO_DIR / "explainer" / "explainer.onnx", threads=1)
    images = make_lesions(4, size=64, seed=3).images
    decided = graph(images)
    other = 1 - decided.targets
    mixed = graph(images, targets=np.array([-1, int(other[1]), -1, int(other[3])]))
    assert mixed.targets.tolist() == [decided.targets[0], other[1], decided.targets[2], other[3]]
    alone = graph(images[1:2], targets=int(other[1]))
    assert np.allclose(mixed.logits[1], alone.logits[0], atol=1e-4)
    assert np.allclose(mixed.logits[0], decided.logits[0], atol=1e-4)
    with pytest.raises(UsageError, match=r"\[-1, 1\]"):
        graph(images, targets=np.array([-2, 0, 0, 0]))
