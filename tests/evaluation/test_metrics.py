"""Saliency metrics on known-answer cases: hand-made models whose true evidence is known, and lesion masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from medcam_fast.data.lesions import make_lesions
from medcam_fast.evaluation.controls import random_blob, random_map
from medcam_fast.evaluation.metrics import (
    LATTICE_THRESHOLD,
    auc,
    binary_evidence,
    cascade_checkpoints,
    cascading_randomization,
    connected_pieces,
    deletion_insertion,
    faithfulness_correlation,
    holm,
    lattice_score,
    map_ssim,
    monotonicity,
    paired_difference,
    pointing_game,
    preservation_at_area,
    spearman,
    top_count_mask,
    top_fraction_mask,
    topk_iou,
)

SIZE = 16
SQUARE = (slice(5, 9), slice(6, 10))  # rows 5-8, columns 6-9: the only pixels the square model looks at


def square_logits(x: Tensor) -> Tensor:
    """Logits ``[s, −s]`` with ``s = 3·mean(x[:, 0] on SQUARE) − 3``: only the square carries evidence."""
    s = 3.0 * x[:, 0, SQUARE[0], SQUARE[1]].mean((1, 2)) - 3.0
    return torch.stack([s, -s], dim=1)


def mean_probe_logits(x: Tensor) -> Tensor:
    """Logits ``[log q, log(1−q)]`` with ``q = mean(x)`` ∈ [0,1], so ``p(class 0) = q`` exactly."""
    q = x.mean((1, 2, 3))
    return torch.stack([torch.log(q), torch.log1p(-q)], dim=1)


def square_region(batch: int) -> Tensor:
    region = torch.zeros(batch, SIZE, SIZE, dtype=torch.bool)
    region[:, SQUARE[0], SQUARE[1]] = True
    return region


def square_images(batch: int, seed: int) -> Tensor:
    """Noise images whose square is bright (≈2), so the square model is confident in class 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, SIZE, SIZE, generator=g)
    x[:, 0, SQUARE[0], SQUARE[1]] = 2.0 + 0.1 * torch.randn(batch, 4, 4, generator=g)
    return x


@pytest.fixture(scope="module")
def lesions():
    data = make_lesions(6, size=32, seed=3)
    return torch.from_numpy(data.masks)


# --------------------------------------------------------------------------------------------------- auc


def test_auc_of_constant_curve_is_the_constant_and_of_the_line_is_half():
    assert auc(torch.full((3, 9), 0.7)).tolist() == pytest.approx([0.7] * 3)
    assert float(auc(torch.linspace(0, 1, 33))) == pytest.approx(0.5)
    assert float(auc(torch.tensor([0.0, 1.0]))) == pytest.approx(0.5)
    assert float(auc(torch.tensor([0.0, 1.0, 0.0]))) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        auc(torch.tensor([1.0]))


# ------------------------------------------------------------------------------------ top_fraction_mask


@pytest.mark.parametrize("fraction,expected", [(0.0, 1), (0.1, 26), (0.3, 77), (0.5, 128), (1.0, 256)])
def test_top_fraction_mask_of_a_constant_map_takes_the_first_pixels_in_row_major_order(fraction, expected):
    mask = top_fraction_mask(torch.ones(2, SIZE, SIZE), fraction)
    assert mask.dtype == torch.bool and mask.shape == (2, SIZE, SIZE)
    assert mask.flatten(1).sum(1).tolist() == [expected, expected]
    assert torch.equal(mask.flatten(1), (torch.arange(SIZE * SIZE) < expected).expand(2, -1))


def test_top_fraction_mask_selects_the_highest_values_and_breaks_ties_by_index():
    saliency = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mask = top_fraction_mask(saliency, 0.2)
    k = round(0.2 * SIZE * SIZE)
    for s, m in zip(saliency.flatten(1), mask.flatten(1), strict=True):
        assert int(m.sum()) == k and s[m].min() >= s[~m].max()
    # two tied maxima and k = 1: the lower flat index wins
    tied = torch.zeros(1, 4, 4)
    tied[0, 3, 0] = tied[0, 1, 2] = 5.0
    assert top_fraction_mask(tied, 1 / 16).flatten().nonzero().tolist() == [[6]]
    with pytest.raises(ValueError):
        top_fraction_mask(saliency, 1.5)


# ----------------------------------------------------------------------------------- localization


def test_topk_iou_oracle_is_one_and_complement_is_zero(lesions):
    assert lesions.flatten(1).any(1).all() and lesions.float().mean() < 0.5
    oracle = lesions.float()
    assert topk_iou(oracle, lesions).tolist() == [1.0] * len(lesions)
    assert topk_iou(1.0 - oracle, lesions).tolist() == [0.0] * len(lesions)


def test_topk_iou_partial_overlap_and_empty_region():
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, 0, :2] = True  # pixels 0, 1
    saliency = torch.zeros(2, 4, 4)
    saliency[0, 0, 1] = saliency[0, 3, 3] = 1.0  # top-2 = {1, 15}: intersection 1, union 3
    iou = topk_iou(saliency, region)
    assert float(iou[0]) == pytest.approx(1 / 3) and math.isnan(float(iou[1]))


def test_pointing_game_oracle_hits_and_constant_map_scores_chance(lesions):
    assert pointing_game(lesions.float(), lesions).tolist() == [1.0] * len(lesions)
    assert pointing_game(-lesions.float(), lesions).tolist() == [0.0] * len(lesions)
    chance = pointing_game(torch.full(lesions.shape, 0.3), lesions)
    assert torch.allclose(chance, lesions.flatten(1).float().mean(1))


def test_pointing_game_ties_at_the_maximum_score_the_fraction_inside():
    region = square_region(1)
    saliency = torch.zeros(1, SIZE, SIZE)
    saliency[0, 6, 7] = saliency[0, 0, 0] = saliency[0, 15, 15] = saliency[0, 8, 9] = 2.0  # 2 of 4 inside
    assert pointing_game(saliency, region).tolist() == [0.5]


def test_pointing_game_tolerance_dilates_the_region_by_euclidean_distance():
    region = square_region(1)
    right = torch.zeros(1, SIZE, SIZE)
    right[0, 6, 12] = 1.0  # 3 px right of the square's last column (9)
    assert pointing_game(right, region).tolist() == [0.0]
    assert pointing_game(right, region, tolerance=2).tolist() == [0.0]
    assert pointing_game(right, region, tolerance=3).tolist() == [1.0]
    diagonal = torch.zeros(1, SIZE, SIZE)
    diagonal[0, 10, 11] = 1.0  # offset (2, 2) from the corner (8, 9): distance 2.83
    assert pointing_game(diagonal, region, tolerance=2).tolist() == [0.0]
    assert pointing_game(diagonal, region, tolerance=3).tolist() == [1.0]
    constant = pointing_game(torch.ones(1, SIZE, SIZE), region, tolerance=1)
    assert float(constant) == pytest.approx((16 + 4 * 4) / SIZE**2)  # the square grown by one on each side
    assert math.isnan(float(pointing_game(right, torch.zeros_like(region))))


# -------------------------------------------------------------------------------- faithfulness


def test_preservation_oracle_beats_the_lowest_ranked_pixels_and_full_area_keeps_the_image():
    x = square_images(4, seed=0)
    target = torch.zeros(4, dtype=torch.long)
    baseline = torch.zeros_like(x)
    oracle = square_region(4).float()
    fractions = (16 / SIZE**2, 0.1, 0.3, 1.0)
    best = preservation_at_area(square_logits, x, oracle, target, baseline, fractions)
    worst = preservation_at_area(square_logits, x, -oracle, target, baseline, fractions)
    p_x = torch.softmax(square_logits(x), 1)[:, 0]
    assert best.shape == (4, 4)
    assert (best[:, :3] > 0.99).all() and (worst[:, :3] < 0.01).all()
    assert torch.allclose(best[:, 3], p_x) and torch.allclose(worst[:, 3], p_x)
    chunked = preservation_at_area(square_logits, x, oracle, target, baseline, fractions, batch_size=3)
    assert torch.equal(chunked, best)


def test_preservation_keeps_exactly_the_rounded_pixel_count():
    x = torch.ones(2, 3, SIZE, SIZE)
    saliency = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    fractions = (0.0, 0.05, 0.2, 0.5)
    kept = preservation_at_area(mean_probe_logits, x, saliency, torch.zeros(2, dtype=torch.long),
                                torch.zeros(1, 1, 1, 1), fractions)
    expected = torch.tensor([1, 13, 51, 128]) / SIZE**2
    assert torch.allclose(kept, expected.expand(2, -1), atol=1e-6)


def test_deletion_and_insertion_curves_count_pixels_exactly():
    steps, n = 7, SIZE * SIZE
    x = torch.ones(3, 1, SIZE, SIZE)
    saliency = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(3, dtype=torch.long)
    d_auc, i_auc, d_curve, i_curve = deletion_insertion(
        mean_probe_logits, x, saliency, target, torch.zeros_like(x), torch.zeros_like(x), steps=steps
    )
    inserted = torch.tensor([round(i * n / steps) for i in range(steps + 1)]) / n
    assert d_curve.shape == i_curve.shape == (3, steps + 1)
    assert torch.allclose(i_curve, inserted.expand(3, -1), atol=1e-6)
    assert torch.allclose(d_curve, 1 - inserted.expand(3, -1), atol=1e-6)
    assert torch.allclose(d_auc, auc(d_curve)) and torch.allclose(i_auc, auc(i_curve))
    assert d_auc.tolist() == pytest.approx([0.5] * 3, abs=2e-3)


def test_deletion_of_the_oracle_is_lower_and_insertion_higher_than_a_random_map():
    results = {"oracle": [], "random": []}
    for seed in range(3):
        x = square_images(4, seed=seed)
        target = torch.zeros(4, dtype=torch.long)
        maps = {"oracle": square_region(4).float(),
                "random": torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + seed))}
        for name, saliency in maps.items():
            d_auc, i_auc, d_curve, i_curve = deletion_insertion(
                square_logits, x, saliency, target, torch.zeros_like(x), torch.zeros_like(x), steps=16,
                batch_size=20,
            )
            p_x = torch.softmax(square_logits(x), 1)[:, 0]
            assert torch.allclose(d_curve[:, 0], p_x) and torch.allclose(i_curve[:, -1], p_x)
            results[name].append(torch.stack([d_auc, i_auc]))
    oracle, random = torch.cat(results["oracle"], 1).mean(1), torch.cat(results["random"], 1).mean(1)
    assert oracle[0] < 0.1 < 0.3 < random[0]  # deletion: the oracle kills the evidence at once
    assert oracle[1] > 0.9 > 0.7 > random[1]  # insertion: the oracle restores it at once


def test_binary_evidence_all_ones_keeps_the_image_and_removes_it_all():
    x = square_images(3, seed=4)
    baseline = torch.full_like(x, 0.5)
    target = torch.tensor([0, 1, 0])
    ones = torch.ones(3, SIZE, SIZE, dtype=torch.bool)
    ev = binary_evidence(square_logits, x, ones, target, baseline)
    p = torch.softmax(square_logits(x), 1).gather(1, target[:, None])[:, 0]
    p_b = torch.softmax(square_logits(baseline), 1).gather(1, target[:, None])[:, 0]
    assert torch.allclose(ev["p_kept"], p) and torch.allclose(ev["p_removed"], p_b)
    assert ev["area"].tolist() == [1.0] * 3
    ev0 = binary_evidence(square_logits, x, ~ones, target, baseline)
    assert torch.allclose(ev0["p_kept"], p_b) and torch.allclose(ev0["p_removed"], p)
    assert ev0["area"].tolist() == [0.0] * 3
    square = binary_evidence(mean_probe_logits, torch.ones(3, 1, SIZE, SIZE), square_region(3),
                             torch.zeros(3, dtype=torch.long), torch.zeros(1, 1, 1, 1))
    assert torch.allclose(square["p_kept"], torch.full((3,), 16 / 256))
    assert torch.allclose(square["p_removed"], torch.full((3,), 240 / 256))
    with pytest.raises(ValueError):
        binary_evidence(square_logits, x, ones.float(), target, baseline)


def test_bad_arguments_raise():
    x = square_images(2, seed=0)
    saliency = torch.rand(2, SIZE, SIZE)
    target = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="NaN"):
        preservation_at_area(square_logits, x, torch.full_like(saliency, math.nan), target, x)
    with pytest.raises(ValueError, match="target"):
        preservation_at_area(square_logits, x, saliency, torch.tensor([0, 2]), x)
    with pytest.raises(ValueError, match="target"):
        preservation_at_area(square_logits, x, saliency, target.float(), x)
    with pytest.raises(ValueError, match="saliency"):
        deletion_insertion(square_logits, x, saliency[:, :8], target, x, x)
    with pytest.raises(ValueError, match="broadcast"):
        deletion_insertion(square_logits, x, saliency, target, x[:, :, :8], x)


# ------------------------------------------------------------------------------------------ spearman


def _reference_spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ by the textbook definition: average ranks, then Pearson, O(n²)."""

    def ranks(v: list[float]) -> list[float]:
        return [sum(u < w for u in v) + (sum(u == w for u in v) + 1) / 2 for w in v]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb, strict=True))
    va = sum((p - ma) ** 2 for p in ra)
    vb = sum((q - mb) ** 2 for q in rb)
    return cov / math.sqrt(va * vb)


def test_spearman_identical_reversed_and_constant_maps():
    a = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(3))
    assert spearman(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert spearman(a, 2 * a + 1).tolist() == pytest.approx([1.0, 1.0])
    assert spearman(a, -a).tolist() == pytest.approx([-1.0, -1.0])
    rho = spearman(a, torch.stack([torch.ones(5, 5), a[1]]))
    assert math.isnan(float(rho[0])) and float(rho[1]) == pytest.approx(1.0)


def test_spearman_with_ties_matches_the_hand_computed_value():
    a = torch.tensor([[[1.0, 2.0], [2.0, 3.0]]])  # ranks 1, 2.5, 2.5, 4
    b = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])  # ranks 1, 3, 2, 4
    # centred ranks (−1.5, 0, 0, 1.5) and (−1.5, .5, −.5, 1.5): ρ = 4.5 / √(4.5·5) = √0.9
    assert float(spearman(a, b)) == pytest.approx(math.sqrt(0.9), abs=1e-6)


def test_spearman_matches_the_textbook_definition_on_maps_with_many_ties():
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 4, (3, 6, 6), generator=g).float()
    b = torch.randint(0, 3, (3, 6, 6), generator=g).float() - a
    rho = spearman(a, b)
    for i in range(3):
        expected = _reference_spearman(a[i].flatten().tolist(), b[i].flatten().tolist())
        assert float(rho[i]) == pytest.approx(expected, abs=1e-6)


def test_spearman_absolute_correlates_magnitudes():
    a = torch.tensor([[[-3.0, 1.0, 2.0]]])
    b = torch.tensor([[[3.0, 1.0, 2.0]]])
    assert float(spearman(a, b, absolute=True)) == pytest.approx(1.0)
    assert float(spearman(a, b)) == pytest.approx(-0.5)  # ranks (1, 2, 3) vs (3, 1, 2)


# --------------------------------------------------------------------------------- randomization


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, Tensor], model: nn.Module) -> set[str]:
    return {k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_cascading_randomization_goes_from_the_output_to_the_input_cumulatively():
    model = small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    original = _state(model)
    inputs = torch.randn(2, 1, 8, 8)
    rng_before = torch.get_rng_state()
    seen = []
    for name, randomized in cascading_randomization(model, seed=0):
        seen.append((name, _changed(original, randomized)))
        assert not randomized.training
        assert [p.requires_grad for p in randomized.parameters()] == [p.requires_grad for p in model.parameters()]
        assert randomized(inputs).shape == (2, 2)
    assert seen == [("4", {"4"}), ("2", {"2", "4"}), ("0", {"0", "2", "4"})]
    assert _changed(original, model) == set() and model.training
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_cascading_randomization_is_reproducible_and_yields_one_copy():
    model = small_cnn()
    a = [(name, _state(m)) for name, m in cascading_randomization(model, seed=7)]
    b = [(name, _state(m)) for name, m in cascading_randomization(model, seed=7)]
    c = [(name, _state(m)) for name, m in cascading_randomization(model, seed=8)]
    for (na, sa), (nb, sb), (nc, sc) in zip(a, b, c, strict=True):
        assert na == nb == nc
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    copies = {id(m) for _, m in cascading_randomization(model)}
    assert len(copies) == 1 and id(model) not in copies


class _Scaled(nn.Module):
    """A module without ``reset_parameters``: randomized by N(0, 0.02²) weights and zero biases."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(64, 4))
        self.bias = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.scale + self.bias


def test_cascading_randomization_keeps_batchnorm_statistics_and_falls_back_to_normal_init():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), _Scaled())
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].weight.fill_(3.0)
    names = []
    for name, randomized in cascading_randomization(model, seed=1):
        names.append(name)
        if name == "3":
            assert torch.equal(randomized[3].bias, torch.zeros(4))
            assert 0.01 < float(randomized[3].scale.detach().std()) < 0.03
        if name == "1":
            assert torch.equal(randomized[1].weight, torch.ones(4))  # reset_parameters: γ = 1
            assert torch.equal(randomized[1].running_mean, torch.full((4,), 0.5))  # statistics kept
    assert names == ["3", "1", "0"]
    with pytest.raises(ValueError):
        cascading_randomization(nn.Sequential(nn.ReLU()))


def test_cascade_checkpoints():
    assert cascade_checkpoints(20, 4) == [5, 10, 15, 20]
    assert cascade_checkpoints(3, 10) == [1, 2, 3]
    assert cascade_checkpoints(7, 1) == [7]
    for n in range(1, 40):
        for s in range(1, 12):
            points = cascade_checkpoints(n, s)
            assert points[-1] == n and points[0] >= 1 and len(points) == min(n, s)
            assert all(p < q for p, q in zip(points, points[1:], strict=False))
    with pytest.raises(ValueError):
        cascade_checkpoints(0, 3)


def test_paired_difference_of_a_constant_shift_is_exact_and_of_identical_scores_is_zero():
    a = torch.tensor([0.2, 0.9, 0.4, 0.7])
    shifted = paired_difference(a + 0.1, a)
    assert shifted.mean == pytest.approx(0.1) and shifted.low == pytest.approx(0.1)
    assert shifted.high == pytest.approx(0.1) and shifted.wins == 4 and shifted.n == 4
    same = paired_difference(a, a)
    assert (same.mean, same.low, same.high, same.wins, same.p_value) == (0.0, 0.0, 0.0, 0, 1.0)


def test_sign_flip_p_value_is_exact_for_few_images_and_never_significant_on_one():
    # a constant shift on n images: only the two all-equal sign vectors reach |Δ|, so p = 2/2ⁿ exactly
    assert paired_difference([0.3, 1.0, 0.5, 0.8], [0.2, 0.9, 0.4, 0.7]).p_value == pytest.approx(2 / 16)
    twelve = torch.arange(12.0)
    assert paired_difference(twelve + 0.1, twelve).p_value == pytest.approx(2 / 4096)
    assert paired_difference([1.0], [0.0]).p_value == 1.0  # one image proves nothing
    # above 12 images the signs are drawn: (#{≥} + 1)/(B + 1), here only the identity reaches it
    forty = torch.arange(40.0)
    assert paired_difference(forty + 0.1, forty, n_boot=999).p_value == pytest.approx(1 / 1000)
    g = torch.Generator().manual_seed(0)
    assert paired_difference(torch.randn(200, generator=g), torch.zeros(200)).p_value > 0.05  # no shift


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, then max(0.06, 0.04·1) = 0.06
    h = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert h.adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert h.reject == [True, False, False, True]
    # uncorrected, 0.03 and 0.04 would pass too; Bonferroni (·4) would keep 0.01 at 0.04 — as Holm does
    assert holm([0.2]) == ([0.2], [False]) and holm([0.04]) == ([0.04], [True])
    assert holm([]) == ([], [])
    assert holm([0.5, 0.5, 0.5]).adjusted == [1.0, 1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError):
        holm([math.nan])
    with pytest.raises(ValueError):
        holm([1.5])


def test_paired_difference_interval_covers_the_mean_and_shrinks_with_more_images():
    g = torch.Generator().manual_seed(0)
    small = paired_difference(0.05 + 0.1 * torch.randn(16, generator=g), torch.zeros(16), seed=1)
    large = paired_difference(0.05 + 0.1 * torch.randn(1024, generator=g), torch.zeros(1024), seed=1)
    assert small.low < small.mean < small.high and large.low < large.mean < large.high
    assert large.high - large.low < (small.high - small.low) / 4  # ∝ 1/√n: 8× narrower in expectation
    assert large.low > 0 and abs(large.mean - 0.05) < 0.01
    assert paired_difference([1, 2, 3], [0, 0, 5], seed=3) == paired_difference([1, 2, 3], [0, 0, 5], seed=3)
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_difference([math.nan], [1.0])


# --------------------------------------------------------------------- faithfulness correlation, monotonicity


def _probe_images(batch: int, seed: int, size: int = SIZE) -> Tensor:
    """Images in (0.3, 1): above the 0.2 baseline everywhere, so every pixel is evidence for class 0."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.7 * torch.rand(batch, 2, size, size, generator=g)


def _probe_oracle(x: Tensor, b: float) -> Tensor:
    """The exact attribution of ``p_0 = mean(x)`` against the baseline ``b``: ``Σ_c (x_c − b)/(C·H·W)``."""
    return (x - b).sum(1) / x[0].numel()


def test_faithfulness_correlation_of_the_oracle_on_a_linear_model_is_one():
    x, b = _probe_images(3, seed=1), 0.2
    t = torch.zeros(3, dtype=torch.long)
    oracle = _probe_oracle(x, b)
    base = torch.full_like(x, b)
    fc = faithfulness_correlation(mean_probe_logits, x, oracle, t, base, n_subsets=32, subset_fraction=0.1)
    assert fc.shape == (3,) and torch.allclose(fc, torch.ones(3), atol=1e-4)
    anti = faithfulness_correlation(mean_probe_logits, x, -oracle, t, base, n_subsets=32, subset_fraction=0.1)
    assert torch.allclose(anti, -torch.ones(3), atol=1e-4)
    noise = faithfulness_correlation(mean_probe_logits, x, torch.rand(3, SIZE, SIZE), t, base, n_subsets=32,
                                     subset_fraction=0.1)
    assert (noise.abs() < 0.9).all()
    # the same subsets for every map scored on the same batch: reproducible
    assert torch.equal(fc, faithfulness_correlation(mean_probe_logits, x, oracle, t, base, n_subsets=32,
                                                    subset_fraction=0.1))


def test_faithfulness_correlation_of_a_constant_map_is_undefined():
    x, t = _probe_images(2, seed=2), torch.zeros(2, dtype=torch.long)
    fc = faithfulness_correlation(mean_probe_logits, x, torch.full((2, SIZE, SIZE), 0.7), t, torch.zeros_like(x))
    assert torch.isnan(fc).all()  # every subset sums to k·0.7: zero variance, no correlation
    with pytest.raises(ValueError):
        faithfulness_correlation(mean_probe_logits, x, torch.rand(2, SIZE, SIZE), t, torch.zeros_like(x), n_subsets=1)


def test_monotonicity_of_the_oracle_on_a_linear_model_is_one_and_of_its_inverse_minus_one():
    x, b = _probe_images(3, seed=3), 0.2
    t = torch.zeros(3, dtype=torch.long)
    oracle = _probe_oracle(x, b)
    base = torch.full_like(x, b)
    assert torch.allclose(monotonicity(mean_probe_logits, x, oracle, t, base, groups=16), torch.ones(3))
    # |s| ranks the pixels in reverse: the groups with the largest attribution matter least
    assert torch.allclose(monotonicity(mean_probe_logits, x, 1 / oracle, t, base, groups=16), -torch.ones(3))
    # the sign does not matter: monotonicity correlates magnitudes
    assert torch.allclose(monotonicity(mean_probe_logits, x, -oracle, t, base, groups=16), torch.ones(3))


def test_monotonicity_of_a_constant_map_is_undefined():
    x, t = _probe_images(2, seed=4), torch.zeros(2, dtype=torch.long)
    mono = monotonicity(mean_probe_logits, x, torch.ones(2, SIZE, SIZE), t, torch.zeros_like(x), groups=10)
    assert torch.isnan(mono).all()  # unequal groups (256 = 6·26 + 4·25 pixels) still have equal mean |s|
    for bad in (1, SIZE * SIZE + 1):
        with pytest.raises(ValueError):
            monotonicity(mean_probe_logits, x, torch.ones(2, SIZE, SIZE), t, torch.zeros_like(x), groups=bad)


def test_an_imputer_that_writes_the_baseline_scores_exactly_as_the_baseline_image():
    x = square_images(3, seed=5)
    t = torch.tensor([0, 1, 0])
    s = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    b = torch.full_like(x, -0.5)
    calls = []

    def imputer(xs: Tensor, removed: Tensor) -> Tensor:
        calls.append(removed.shape[0])
        return torch.where(removed[:, None], torch.full_like(xs, -0.5), xs)

    for fn in (lambda sub: preservation_at_area(square_logits, x, s, t, sub, batch_size=5),
               lambda sub: deletion_insertion(square_logits, x, s, t, sub, sub, steps=4, batch_size=5)[:2],
               lambda sub: faithfulness_correlation(square_logits, x, s, t, sub, n_subsets=8, batch_size=5),
               lambda sub: monotonicity(square_logits, x, s, t, sub, groups=8, batch_size=5),
               lambda sub: tuple(binary_evidence(square_logits, x, s > 0.5, t, sub, batch_size=2).values())):
        with_image, with_imputer = fn(b), fn(imputer)
        for u, v in zip(with_image if isinstance(with_image, tuple) else (with_image,),
                        with_imputer if isinstance(with_imputer, tuple) else (with_imputer,), strict=True):
            assert torch.allclose(u, v, equal_nan=True)
    assert calls and max(calls) <= 5  # the imputer sees chunks of at most batch_size composites


def test_top_count_mask_takes_each_images_own_count():
    s = torch.tensor([[[0.1, 0.9], [0.5, 0.5]], [[1.0, 1.0], [1.0, 1.0]]])
    m = top_count_mask(s, torch.tensor([2, 3]))
    assert m.tolist() == [[[False, True], [True, False]], [[True, True], [True, False]]]  # ties by index
    assert not top_count_mask(s, [0, 0]).any() and top_count_mask(s, [4, 4]).all()
    with pytest.raises(ValueError):
        top_count_mask(s, [5, 1])


# ------------------------------------------------------------------------------------------- controls


def test_a_random_blob_has_the_exact_area_in_one_piece_and_is_seeded():
    areas = torch.tensor([0, 1, 37, 400, 1024])
    blobs = random_blob(areas, 32, 32, seed=3)
    assert blobs.dtype == torch.bool and blobs.flatten(1).sum(1).tolist() == areas.tolist()
    pieces = connected_pieces(blobs)
    assert pieces.count.tolist() == [0, 1, 1, 1, 1]
    assert torch.equal(blobs, random_blob(areas, 32, 32, seed=3))
    assert not torch.equal(blobs, random_blob(areas, 32, 32, seed=4))


def test_a_random_map_is_seeded_uniform_noise():
    a = random_map(2, 8, 9, seed=1)
    assert a.shape == (2, 8, 9) and float(a.min()) >= 0 and float(a.max()) < 1
    assert torch.equal(a, random_map(2, 8, 9, seed=1)) and not torch.equal(a, random_map(2, 8, 9, seed=2))


# ---------------------------------------------------------------------------------------- readability


def test_connected_pieces_join_diagonal_neighbours_and_measure_the_largest():
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, 0:2, 0:2] = True  # 4 pixels
    m[0, 5:8, 5:8] = True  # 9 pixels, apart
    m[1, 1, 1] = m[1, 2, 2] = m[1, 3, 3] = True  # a diagonal: one piece with 8-connectivity
    pieces = connected_pieces(m)
    assert pieces.count.tolist() == [2, 1, 0]
    assert pieces.largest_fraction[0] == pytest.approx(9 / 13) and pieces.largest_fraction[1] == 1.0
    assert math.isnan(float(pieces.largest_fraction[2]))  # an empty mask has no largest piece


def _grid(size: int = 64) -> tuple[Tensor, Tensor]:
    return torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")


def test_lattice_score_flags_a_dot_lattice_of_its_period_and_not_a_disc():
    yy, xx = _grid()
    dots = ((yy % 4 == 0) & (xx % 4 == 0))[None]
    disc = (((yy - 30) ** 2 + (xx - 34) ** 2) <= 100)[None]
    stripes = (xx % 8 < 4)[None]
    assert float(lattice_score(dots, 4)[0]) >= 10 * LATTICE_THRESHOLD
    assert float(lattice_score(stripes, 8)[0]) >= 10 * LATTICE_THRESHOLD
    for stride in (2, 4, 8, 16):
        assert float(lattice_score(disc, stride)[0]) < 2, stride  # a region: about 1 or less
    band = ((xx >= 20) & (xx < 28))[None]  # one band 8 wide: half a period of stride 16, not a lattice
    assert float(lattice_score(band, 16)[0]) < LATTICE_THRESHOLD


def test_lattice_score_does_not_flag_speckle_and_is_undefined_for_empty_masks():
    g = torch.Generator().manual_seed(0)
    speckle = torch.rand(50, 64, 64, generator=g) < 0.15
    assert float(lattice_score(speckle, 8).max()) < LATTICE_THRESHOLD
    empty_full = torch.stack([torch.zeros(16, 16, dtype=torch.bool), torch.ones(16, 16, dtype=torch.bool)])
    assert torch.isnan(lattice_score(empty_full, 4)).all()
    with pytest.raises(ValueError):
        lattice_score(empty_full, 9)  # a period longer than half the side is not resolved


# ---------------------------------------------------------------------------------------------- SSIM


@pytest.mark.peers
def test_map_ssim_is_one_for_a_rescaled_copy_and_low_for_an_unrelated_map():
    pytest.importorskip("skimage")
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 34, 34, generator=g), 3, 1)[:, 0]  # smooth 32×32 maps
    assert torch.allclose(map_ssim(a, 5 * a - 2), torch.ones(3), atol=1e-6)  # min–max scaling first
    assert torch.allclose(map_ssim(torch.ones(3, 8, 8), torch.full((3, 8, 8), 4.0)), torch.ones(3))
    other = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 34, 34, generator=g), 3, 1)[:, 0]
    assert (map_ssim(a, other) < 0.5).all()
    assert (map_ssim(a, -a) < 0).all()  # the inverted map
    with pytest.raises(ValueError):
        map_ssim(torch.rand(1, 6, 6), torch.rand(1, 6, 6))


def test_map_ssim_without_scikit_image_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.metrics", None)
    with pytest.raises(ImportError, match=r"medcam-fast\[baselines\]"):
        map_ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_match_cpu():
    x = square_images(3, seed=9)
    saliency = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    target = torch.tensor([0, 1, 0])
    region = square_region(3)
    cpu = [
        preservation_at_area(square_logits, x, saliency, target, torch.zeros_like(x)),
        *deletion_insertion(square_logits, x, saliency, target, torch.zeros_like(x), x.flip(-1), steps=8),
        *binary_evidence(square_logits, x, region, target, torch.zeros_like(x)).values(),
        pointing_game(saliency, region, tolerance=2), topk_iou(saliency, region), spearman(saliency, x[:, 0]),
        faithfulness_correlation(square_logits, x, saliency, target, torch.zeros_like(x), n_subsets=8),
        monotonicity(square_logits, x, saliency, target, torch.zeros_like(x), groups=8),
        top_count_mask(saliency, torch.tensor([3, 0, 9])),
    ]
    xc, sc, tc, rc = x.cuda(), saliency.cuda(), target.cuda(), region.cuda()
    gpu = [
        preservation_at_area(square_logits, xc, sc, tc, torch.zeros_like(xc)),
        *deletion_insertion(square_logits, xc, sc, tc, torch.zeros_like(xc), xc.flip(-1), steps=8),
        *binary_evidence(square_logits, xc, rc, tc, torch.zeros_like(xc)).values(),
        pointing_game(sc, rc, tolerance=2), topk_iou(sc, rc), spearman(sc, xc[:, 0]),
        faithfulness_correlation(square_logits, xc, sc, tc, torch.zeros_like(xc), n_subsets=8),
        monotonicity(square_logits, xc, sc, tc, torch.zeros_like(xc), groups=8),
        top_count_mask(sc, torch.tensor([3, 0, 9], device="cuda")),
    ]
    for c, g in zip(cpu, gpu, strict=True):
        assert g.is_cuda and torch.allclose(c.float(), g.cpu().float(), atol=1e-5, equal_nan=True)
    model = small_cnn()
    cpu_states = [_state(m) for _, m in cascading_randomization(model, seed=3)]
    gpu_states = [_state(m) for _, m in cascading_randomization(model.cuda(), seed=3)]
    for sc_, sg in zip(cpu_states, gpu_states, strict=True):
        assert all(torch.allclose(sc_[k], sg[k].cpu()) for k in sc_)
