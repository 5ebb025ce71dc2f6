"""Each loss term on hand-made cases with known values, and gradients reaching the mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medcam_fast.method.losses import (
    LossWeights,
    Reference,
    activation_matching,
    area,
    binarization,
    composite_loss,
    cross_entropy,
    kl_divergence,
    necessity,
    robustness,
    total_variation,
)
from medcam_fast.method.masking import keep, make_baseline, mask_from_logits, perturb, remove


class _TinyNet(nn.Module):
    """A small CNN returning (logits, activations) like FrozenClassifier does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = torch.relu(self.conv(x))
        return self.head(a.mean((2, 3))), {"conv": a}


@pytest.fixture()
def setup():
    torch.manual_seed(1)
    net = _TinyNet()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits, acts = net(x)
    return net, x, Reference(logits, acts), logits.argmax(1)


def test_all_ones_mask_gives_zero_kl_and_activation_distance(setup):
    net, x, ref, target = setup
    m = torch.ones(2, 1, 8, 8)
    logits, acts = net(keep(x, m, torch.zeros_like(x)))
    assert torch.allclose(kl_divergence(ref.logits, logits), torch.zeros(2), atol=1e-6)
    assert torch.allclose(activation_matching(acts, ref.activations), torch.zeros(2), atol=1e-10)


def test_activation_distance_of_zero_activations_is_one():
    ref = {"a": torch.ones(1, 2, 3, 3)}
    assert activation_matching({"a": torch.zeros(1, 2, 3, 3)}, ref).item() == pytest.approx(1.0)


def test_kl_matches_hand_computation():
    zr, z = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p = torch.tensor([0.25, 0.75])
    expected = (p * (p.log() - torch.tensor([0.5, 0.5]).log())).sum()
    assert kl_divergence(zr, z).item() == pytest.approx(expected.item(), abs=1e-6)


def test_cross_entropy_and_necessity_hand_values():
    z = torch.tensor([[0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    t = torch.tensor([1])
    assert cross_entropy(z, t).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert necessity(z, t).item() == pytest.approx(-math.log(1 - 0.75), abs=1e-6)
    assert necessity(z, torch.tensor([0])).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_minimality_terms_hand_values():
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1
    assert area(half).item() == pytest.approx(0.5)
    assert binarization(half).item() == 0.0
    assert binarization(torch.full((1, 1, 4, 4), 0.5)).item() == pytest.approx(1.0)
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    checker = checker.float().view(1, 1, 4, 4)
    # 4 rows x 3 horizontal jumps of 1 + 4 columns x 3 vertical jumps of 1, over 16 pixels
    assert total_variation(checker).item() == pytest.approx(24 / 16)
    assert total_variation(half).item() == pytest.approx(4 / 16)
    assert total_variation(torch.ones(1, 1, 4, 4)).item() == 0.0


def test_robustness_without_perturbation_equals_cross_entropy(setup):
    net, x, ref, target = setup
    kept = keep(x, torch.ones(2, 1, 8, 8) * 0.7, torch.zeros_like(x))
    y = perturb(kept, noise=0.0, shift=0, flip=False)
    assert torch.equal(y, kept)
    logits, _ = net(torch.cat([y, y]))
    assert torch.allclose(robustness(logits, target, 2), cross_entropy(net(kept)[0], target), atol=1e-6)


def test_views_and_baselines():
    x = torch.randn(1, 3, 6, 6)
    b = make_baseline(x, "zero", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.1))
    assert torch.allclose(b[0, :, 0, 0], torch.tensor([-2.5, -2.0, -3.0]))
    assert torch.equal(make_baseline(x, "mean"), torch.zeros_like(x))
    const = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(make_baseline(const, "blur"), const, atol=1e-6)
    ones, zeros = torch.ones(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)
    assert torch.equal(keep(x, ones, b), x) and torch.equal(keep(x, zeros, b), b)
    assert torch.equal(remove(x, ones, b), b) and torch.equal(remove(x, zeros, b), x)
    with pytest.raises(ValueError):
        make_baseline(x, "zero")


def test_straight_through_mask_is_binary_forward_and_soft_backward():
    u = torch.tensor([[-1.0, 0.5, 2.0]], requires_grad=True)
    m = mask_from_logits(u, hard=True)
    assert m.tolist() == [[0.0, 1.0, 1.0]]
    m.sum().backward()
    s = torch.sigmoid(u.detach())
    assert torch.allclose(u.grad, s * (1 - s))


def test_composite_loss_gradients_reach_mask_and_weights_combine(setup):
    net, x, ref, target = setup
    u = torch.zeros(2, 1, 8, 8, requires_grad=True)
    m = mask_from_logits(u)
    w = LossWeights(draws=2)
    total, terms = composite_loss(net, x, m, target, ref, torch.zeros_like(x), w, torch.Generator().manual_seed(0))
    assert total.shape == (2,) and set(terms) == {"act", "kl", "ce", "area", "bin", "tv", "rob", "nec"}
    wd = w.to_dict()
    assert torch.allclose(total, sum(wd[k] * v for k, v in terms.items()))
    total.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_composite_loss_is_per_image(setup):
    net, x, ref, target = setup
    m = torch.rand(2, 1, 8, 8)
    w = LossWeights(rob=0.0)
    total, _ = composite_loss(net, x, m, target, ref, torch.zeros_like(x), w)
    one, _ = composite_loss(
        net, x[:1], m[:1], target[:1], Reference(ref.logits[:1], {k: v[:1] for k, v in ref.activations.items()}),
        torch.zeros_like(x[:1]), w,
    )
    assert torch.allclose(total[:1], one, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), scale=st.floats(0.0, 30.0), seed=st.integers(0, 2**16))
def test_every_term_is_finite_with_finite_gradients(h, w, scale, seed):
    torch.manual_seed(seed)
    net = _TinyNet()
    x = torch.randn(2, 1, h, w)
    with torch.no_grad():
        ref = Reference(*net(x))
    u = (scale * torch.randn(2, 1, h, w)).requires_grad_()
    m = mask_from_logits(u)
    assert ((m >= 0) & (m <= 1)).all()
    total, terms = composite_loss(net, x, m, ref.logits.argmax(1), ref, make_baseline(x, "mean"),
                                  LossWeights(shift=1), torch.Generator().manual_seed(seed))
    assert all(torch.isfinite(v).all() for v in terms.values())
    total.sum().backward()
    assert torch.isfinite(u.grad).all()
