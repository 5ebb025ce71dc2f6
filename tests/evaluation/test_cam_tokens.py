"""Grad-CAM on a transformer's token stream: timm's ViT-Ti/16 (``pretrained=False``; nothing is downloaded).

``grad-cam`` reads ``[B, K, h, w]`` maps; a ViT's layers give tokens ``[B, 1+N, D]``, which it refused
("Invalid grads shape"). :func:`~medcam_fast.evaluation.baselines.cam.cam_layer` now hands it the patch tokens on
their grid, and by default reads the tokens entering the last block's attention (its ``norm1``): after that
attention no patch token reaches the class token the head reads, so the last layers' maps are 0 everywhere.
"""

from __future__ import annotations

import pytest
import torch

from medcam_fast.classifiers.frozen import FrozenClassifier
from medcam_fast.evaluation.baselines.cam import cam_layer, grad_cam

pytestmark = pytest.mark.peers
timm = pytest.importorskip("timm")
pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def vit() -> tuple[FrozenClassifier, torch.Tensor, torch.Tensor]:
    """ViT-Ti/16 at 224 px, 4 classes, random weights; two random images and their predicted classes."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4)
    x = torch.randn(2, 3, 224, 224)
    clf = FrozenClassifier(model, example_input=x)
    with torch.no_grad():
        return clf, x, clf.logits(x).argmax(1)


def test_grad_cam_on_a_vit_gives_an_image_sized_map_that_is_not_constant(vit):
    clf, x, t = vit
    maps = grad_cam(clf, x, t)
    assert maps.shape == (2, 224, 224)
    assert torch.isfinite(maps).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6
    assert (maps.flatten(1).std(1) > 0.01).all(), "a constant map"


def test_the_token_stream_is_read_as_patch_tokens_on_the_14x14_grid_without_the_class_token(vit):
    clf, x, _ = vit
    name, _, to_map = cam_layer(clf, x)
    assert clf.layers[-1] == "norm" and name == "blocks.11.norm1"
    assert to_map is not None
    tokens = torch.arange(2 * 197 * 192, dtype=torch.float32).reshape(2, 197, 192)
    grid = to_map(tokens)
    assert grid.shape == (2, 192, 14, 14)
    assert torch.equal(grid[1, :, 0, 0], tokens[1, 1])  # token 0 is the class token
    assert torch.equal(grid[1, :, 0, 13], tokens[1, 14]) and torch.equal(grid[1, :, 1, 0], tokens[1, 15])  # rows
    assert torch.equal(grid[0, :, 13, 13], tokens[0, 196])


def test_the_final_norms_patch_tokens_get_no_gradient_so_its_map_is_zero(vit):
    """Why the default is the last block's norm1: the head reads the class token only."""
    clf, x, t = vit
    maps = grad_cam(clf, x, t, layer="norm")
    assert maps.shape == (2, 224, 224) and float(maps.abs().max()) == 0.0
