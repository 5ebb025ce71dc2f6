"""The classifier-aware decoder: known shapes, known grids, class maps that are the head's, and a first guess
that follows the classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcam_fast.classifiers.architectures import build_classifier
from medcam_fast.classifiers.frozen import FrozenClassifier
from medcam_fast.method.decoder import (
    DecoderConfig,
    FeatureDecoder,
    describe_taps,
    select_class,
    standardize,
    token_grid,
)
from medcam_fast.method.masking import coarse_grid, to_image_grid


@pytest.mark.parametrize(("size", "grid"), [((64, 64), (8, 8)), ((28, 28), (7, 7)), ((128, 128), (16, 16)),
                                            ((224, 224), (28, 28)), ((64, 32), (16, 8)), ((8, 8), (4, 4))])
def test_coarse_grid_is_an_eighth_of_the_side_with_at_least_four_cells(size, grid):
    assert coarse_grid(size) == grid


def test_upsampled_coarse_logits_of_one_hot_cell_form_one_blob_centred_on_it():
    u = torch.full((1, 1, 8, 8), -4.0)
    u[0, 0, 3, 5] = 4.0
    m = to_image_grid(u, (64, 64))[0, 0] > 0
    ys, xs = np.nonzero(m.numpy())
    assert m.sum() > 0
    assert abs(ys.mean() - (3 * 8 + 3.5)) < 1 and abs(xs.mean() - (5 * 8 + 3.5)) < 1
    assert ys.max() - ys.min() < 16 and xs.max() - xs.min() < 16  # one cell's neighbourhood, not a streak


def test_pixel_logits_pass_through_the_image_grid_unchanged():
    u = torch.randn(2, 1, 64, 64)
    assert to_image_grid(u, (64, 64)) is u


@pytest.mark.parametrize(("tokens", "size", "grid"), [(197, (224, 224), (14, 14)), (65, (64, 64), (8, 8)),
                                                      (201, (224, 224), (14, 14)), (33, (64, 32), (8, 4))])
def test_token_grid_drops_the_leading_tokens_and_keeps_the_aspect(tokens, size, grid):
    assert token_grid(tokens, size) == grid


def test_token_grid_refuses_a_sequence_that_is_no_patch_grid():
    assert token_grid(120, (64, 64)) is None  # 104…120 tokens after ≤ 16 prefix tokens: no square


def test_class_maps_are_the_head_applied_at_every_position_standardized():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 8, 8)
    cfg = DecoderConfig(1, 3, (64, 64), ({"name": "f", "channels": 5},), "f", width=8)
    dec = FeatureDecoder(cfg)
    w, b = torch.randn(3, 5), torch.randn(3)
    maps = dec.class_maps({"f": feats}, (w, b))
    expected = standardize(torch.einsum("bdhw,kd->bkhw", feats, w) + b[None, :, None, None])
    torch.testing.assert_close(maps, expected)
    assert torch.allclose(maps.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-5)


def test_decoder_gives_every_class_on_the_grid_and_the_target_picks_its_channel():
    clf = FrozenClassifier(build_classifier("resnet18", 1, 3, 64), num_classes=3)
    x = torch.randn(2, 1, 64, 64)
    logits, acts = clf(x)
    taps = describe_taps(acts, (64, 64))
    cfg = DecoderConfig(1, 3, (64, 64), taps, "layer4", width=8)
    u = FeatureDecoder(cfg)(x, acts, clf.head())
    assert u.shape == (2, 3, 8, 8)
    t = torch.tensor([2, 0])
    torch.testing.assert_close(select_class(u, t)[:, 0], torch.stack([u[0, 2], u[1, 0]]))


def test_decoder_reads_vit_tokens_through_the_same_code_path():
    clf = FrozenClassifier(build_classifier("vit", 1, 2, 64), num_classes=2)
    x = torch.randn(2, 1, 64, 64)
    _, acts = clf(x)
    taps = describe_taps(acts, (64, 64))
    assert all(t.tokens is not None for t in taps)
    head = clf.head()
    assert head is not None
    cfg = DecoderConfig(1, 2, (64, 64), taps, taps[-1].name if taps[-1].channels == head[0].shape[1] else None, width=8)
    assert FeatureDecoder(cfg)(x, acts, head).shape == (2, 2, 8, 8)


def test_head_is_the_last_linear_layer_with_one_output_per_class_and_is_read_live():
    model = build_classifier("resnet18", 1, 2, 64)
    clf = FrozenClassifier(model, num_classes=2)
    head = clf.head()
    assert head is not None and head[0] is model.head.weight
    nn.init.normal_(model.head.weight)
    assert torch.equal(clf.head()[0], model.head.weight)


def test_first_guess_changes_when_the_classifier_is_randomized():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 1, 2, 64)
    clf = FrozenClassifier(model, num_classes=2)
    x = torch.randn(1, 1, 64, 64)
    _, acts = clf(x)
    cfg = DecoderConfig(1, 2, (64, 64), describe_taps(acts, (64, 64)), "layer4", width=8, image_branch=False)
    dec = FeatureDecoder(cfg).eval()
    before = dec(x, acts, clf.head())
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    _, acts2 = clf(x)
    after = dec(x, acts2, clf.head())
    assert not torch.allclose(before, after, atol=1e-3)


def test_decoder_config_survives_its_json_round_trip():
    cfg = DecoderConfig(3, 4, (224, 224), ({"name": "blocks.11", "channels": 768, "tokens": [14, 14]},),
                        "blocks.11", width=16)
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
