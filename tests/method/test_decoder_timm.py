"""The classifier-aware decoder over timm's CNN and ViT families, through one code path (issue 12).

Med-CAM explains ResNet-18, MobileNetV2, ConvNeXt-S and ViT-B/16 at 224 px. Here, with timm's own classes:
``resnet18``, ``mobilenetv2_100``, ``convnext_atto`` (ConvNeXt-S is the paper's; atto, the smallest ConvNeXt,
is built by the same ``ConvNeXt`` class and shares its code path) and ``vit_tiny_patch16_224`` (ViT-B/16 is the
paper's; tiny is the same ``VisionTransformer`` with fewer channels and shares its code path). Each is created
with ``pretrained=False`` (nothing is downloaded) at 224 px, 3 channels, 4 classes, bundled by the project's
timm source (:func:`~medcam_fast.classifiers.sources.load_timm`, from a local safetensors file), and given an
explainer by one step of meta-training on a few random images. Checked for each: the taps and the tap the
head reads, the first guess's shapes (every class on the 28×28 grid → 224×224 masks), ``MedCAM`` with a
refinement step, and the ONNX decoder graph (``export_combined`` verifies its own parity with torch; the
runtime's every-class masks, the target's row and the coarse grid are checked against torch here too).

Needs timm (the peers' environment installs ``.[baselines,dev,timm]``); skipped where it is missing.
About a minute and a half on one CPU thread, mostly the four ONNX exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medcam_fast.classifiers.frozen import ClassifierBundle
from medcam_fast.classifiers.sources import load_timm
from medcam_fast.data.preprocess import Preprocess
from medcam_fast.explain import MedCAM
from medcam_fast.explainer.bundle import ExplainerBundle
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.export.onnx_export import export_combined
from medcam_fast.export.runtime import OnnxExplainer
from medcam_fast.method.decoder import DecoderConfig
from medcam_fast.method.first_guess import all_classes, first_guess
from medcam_fast.method.masking import to_image_grid

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.peers

SIZE, K, B = 224, 4, 2
GRID = (28, 28)  # coarse_grid((224, 224)): an eighth of the side
PRE = Preprocess(size=(SIZE, SIZE), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TINY = MetaConfig(inner_steps=1, outer_steps=1, meta_batch=2, width=8)

#: timm name → (the layers the decoder reads, the tap the head reads). The activation-matching layers are
#: frozen.default_layers' last two feature maps (CNNs) or token sequences (ViT). The CAM tap is the last one
#: whose width is the head's input: ResNet's ``fc`` reads pooled ``layer4``, MobileNetV2's ``classifier``
#: pooled ``bn2``, ConvNeXt's ``head.fc`` pooled (then LayerNorm-ed) ``norm_pre``, ViT's ``head`` the cls token
#: of ``norm``.
EXPECTED: dict[str, tuple[list[str], str]] = {
    "resnet18": (["layer4.1.conv2", "layer4"], "layer4"),
    "mobilenetv2_100": (["conv_head", "bn2"], "bn2"),
    "convnext_atto": (["stages.3.blocks.1.shortcut", "norm_pre"], "norm_pre"),
    "vit_tiny_patch16_224": (["blocks", "norm"], "norm"),
}

@dataclass
class Case:
    name: str
    classifier: ClassifierBundle
    explainer: ExplainerBundle
    images: np.ndarray  # raw uint8 [N, H, W, 3]
    onnx: Path


@pytest.fixture(scope="module", params=list(EXPECTED), ids=list(EXPECTED))
def case(request, tmp_path_factory) -> Case:
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=K, in_chans=3)
    weights = folder / "weights.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    classifier = load_timm(name, K, weights, PRE)
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    explainer = meta_train(classifier, images, TINY)
    path = export_combined(explainer, classifier.model, folder / "explainer.onnx")  # verifies parity itself
    return Case(name, classifier, explainer, images, path)


def _check_taps(case: Case) -> None:
    cfg = case.explainer.net_config
    assert isinstance(cfg, DecoderConfig)
    taps, cam = EXPECTED[case.name]
    assert cfg.tap_names == taps and cfg.cam_tap == cam
    vit = case.name.startswith("vit")
    assert all((t.tokens == (14, 14)) if vit else (t.tokens is None) for t in cfg.taps)
    head = case.classifier.frozen(cfg.tap_names).head()
    assert head is not None and head[0].shape[0] == K
    assert next(t for t in cfg.taps if t.name == cam).channels == head[0].shape[1]


@pytest.mark.parametrize("case", [n for n in EXPECTED if not n.startswith("vit")], indirect=True)
def test_decoder_reads_the_cnn_stage_outputs_and_the_head_reads_the_last(case):
    _check_taps(case)


@pytest.mark.parametrize("case", ["vit_tiny_patch16_224"], indirect=True)
def test_decoder_reads_the_vit_patch_tokens_and_the_head_reads_the_final_norm(case):
    _check_taps(case)


def test_first_guess_gives_every_class_on_the_coarse_grid_and_masks_at_224(case):
    cfg = case.explainer.net_config
    assert isinstance(cfg, DecoderConfig) and cfg.grid == GRID and cfg.image_size == (SIZE, SIZE)
    clf = case.classifier.frozen(cfg.tap_names)
    x = torch.from_numpy(PRE(case.images[:B]))
    objective = case.explainer.objective(clf, x, torch.tensor([1, 3]))
    with torch.no_grad():
        every = all_classes(case.explainer.net, objective)
        own = first_guess(case.explainer.net, objective)
    assert every.shape == (B, K, *GRID) and torch.isfinite(every).all()
    torch.testing.assert_close(own[:, 0], every[[0, 1], [1, 3]])
    masks = to_image_grid(own, (SIZE, SIZE))
    assert masks.shape == (B, 1, SIZE, SIZE)


def test_medcam_refines_the_decoders_first_guess(case):
    res = MedCAM(case.classifier, case.explainer, refine_steps=1)(case.images[:B])
    assert res.binary.shape == res.soft.shape == (B, SIZE, SIZE) and res.steps == 1
    assert np.isfinite(res.loss).all() and ((res.area >= 0) & (res.area <= 1)).all()
    assert (res.target == res.predicted).all()


def test_onnx_decoder_graph_gives_every_class_and_agrees_with_torch(case):
    runtime = OnnxExplainer(case.onnx, threads=1)
    assert runtime.decoder and runtime.num_classes == K
    out = runtime(case.images[:B])
    assert out.class_logits.shape == (B, K, SIZE, SIZE) and out.grid.shape == (B, K, *GRID)
    np.testing.assert_array_equal(out.class_logits[np.arange(B), out.targets], out.logits)
    # torch on the same images: the classifier's decision, every class's coarse logits
    cfg = case.explainer.net_config
    clf = case.classifier.frozen(cfg.tap_names)
    x = torch.from_numpy(PRE(case.images[:B]))
    with torch.no_grad():
        objective = case.explainer.objective(clf, x)
        every = all_classes(case.explainer.net, objective)
        probs = torch.softmax(objective.reference.logits, dim=-1)
    np.testing.assert_array_equal(out.targets, objective.target.numpy())
    np.testing.assert_allclose(out.probs_original, probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.grid, every.numpy(), atol=1e-3, rtol=1e-3)
    # MedCAM from the ONNX file starts where the torch decoder does
    zero = [MedCAM(case.classifier, e, refine_steps=0)(case.images[:B]) for e in (case.explainer, runtime)]
    np.testing.assert_allclose(zero[1].logits, zero[0].logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_array_equal(zero[1].target, zero[0].target)
