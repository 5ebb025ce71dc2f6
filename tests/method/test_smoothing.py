"""Smoothed refinement and fit: every change to a mask is a Gaussian blob of σ cells (``smooth``)."""

from __future__ import annotations

import math

import pytest
import torch

from medcam_fast.method.fit import FitConfig, fit_masks
from medcam_fast.method.inner import START_CLIP, adapt_logits
from medcam_fast.method.masking import smooth_logits
from medcam_fast.method.refine import RefineConfig, refine


def _roughness(u: torch.Tensor) -> float:
    """Mean |discrete Laplacian| over mean |u| (interior cells): 0 for a plane, large for lone cells."""
    c = u[..., 1:-1, 1:-1]
    lap = 4 * c - u[..., :-2, 1:-1] - u[..., 2:, 1:-1] - u[..., 1:-1, :-2] - u[..., 1:-1, 2:]
    return float(lap.abs().mean() / c.abs().mean().clamp_min(1e-12))


@pytest.fixture
def problem(lesion_problem):
    return lesion_problem


def test_a_single_cell_spreads_into_a_normalized_gaussian_of_sigma_cells():
    u = torch.zeros(1, 1, 9, 9)
    u[..., 4, 4] = 1.0
    out = smooth_logits(u, 1.0)[0, 0]
    g = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / 2)
    g = g / g.sum()
    assert torch.allclose(out[2:7, 2:7], g[:, None] * g[None, :], atol=1e-7)
    assert out[4, 5] / out[4, 4] == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6) and float(out[0].abs().max()) == 0.0


def test_a_constant_map_is_unchanged_and_sigma_zero_is_the_identity():
    c = torch.full((2, 3, 5, 5), -1.5)
    assert torch.allclose(smooth_logits(c, 0.7), c)
    u = torch.randn(1, 1, 6, 6)
    assert smooth_logits(u, 0.0) is u
    with pytest.raises(ValueError, match="σ must be ≥ 0"):
        smooth_logits(u, -1.0)
    for config in (RefineConfig, FitConfig):
        with pytest.raises(ValueError, match="σ must be ≥ 0"):
            config(smooth=-0.5)


def test_smoothed_refinement_changes_the_logits_by_blobs_not_cells(problem):
    u0 = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2
    start = u0.clamp(-START_CLIP, START_CLIP)
    cellwise = adapt_logits(problem, u0, 3, 1.0, generator=problem.generators(0)) - start
    blobs = adapt_logits(problem, u0, 3, 1.0, generator=problem.generators(0), smooth=1.0) - start
    assert cellwise.abs().mean() > 0.5 and blobs.abs().mean() > 0.05  # both moved
    assert _roughness(blobs) < 0.5 * _roughness(cellwise)


def test_smoothing_off_is_the_unsmoothed_loop_exactly(problem):
    u0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = adapt_logits(problem, u0, 3, 1.0, generator=problem.generators(0))
    b = adapt_logits(problem, u0, 3, 1.0, generator=problem.generators(0), smooth=0.0)
    assert torch.equal(a, b)


def test_a_smoothed_fit_shapes_smoother_logits(lesion_bundle, problem):
    pre = lesion_bundle.preprocess
    runs = [fit_masks(lesion_bundle.frozen(), problem.x[:2], None, FitConfig(steps=15, smooth=s),
                      normalization=(pre.mean, pre.std)) for s in (0.0, 1.0)]
    assert _roughness(runs[1].logits) < _roughness(runs[0].logits)


def test_weights_refinement_has_no_smoothing(problem):
    with pytest.raises(ValueError, match="weights refinement has none"):
        refine(problem, RefineConfig(steps=1, mode="weights", smooth=1.0), first_guess=torch.zeros(4, 1, 8, 8))
