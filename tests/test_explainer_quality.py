"""scripts/explainer_quality.py's paired bootstrap interval of a ratio to the fit (the README table's brackets)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script

eq = load_script("explainer_quality")


def test_a_method_against_itself_has_the_interval_one_to_one():
    a = np.random.default_rng(0).uniform(0.5, 2.0, 32).tolist()
    assert eq.ratio_interval(a, a) == (1.0, 1.0)


def test_a_method_at_twice_the_reference_on_every_image_has_the_interval_two_to_two():
    b = np.random.default_rng(1).uniform(0.5, 2.0, 32)
    lo, hi = eq.ratio_interval((2 * b).tolist(), b.tolist())
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_the_interval_holds_the_ratio_of_medians_and_narrows_with_more_images():
    rng = np.random.default_rng(2)
    widths = []
    for n in (8, 512):
        a, b = rng.uniform(1.0, 2.0, n), rng.uniform(1.0, 2.0, n)
        lo, hi = eq.ratio_interval(a.tolist(), b.tolist())
        assert lo <= np.median(a) / np.median(b) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3


def test_the_pairing_is_kept_images_are_resampled_together():
    """A method that is the reference plus a small constant on every image is tightly above it, although both
    vary widely over images: an unpaired resampling would give an interval straddling 1."""
    b = np.random.default_rng(3).uniform(0.2, 5.0, 32)
    lo, hi = eq.ratio_interval((b * 1.05).tolist(), b.tolist())
    assert lo == pytest.approx(1.05) and hi == pytest.approx(1.05)


def test_values_of_different_images_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        eq.ratio_interval([1.0, 2.0], [1.0])


def test_a_table_cell_gives_the_interval_only_where_both_rows_kept_their_images():
    row = {"loss": 1.1, "per_image": {"loss": [1.1, 1.1, 1.1]}}
    fit = {"loss": 1.0, "per_image": {"loss": [1.0, 1.0, 1.0]}}
    assert eq._ratio(row, fit, "loss", 3) == "1.100 (1.100–1.100)"
    assert eq._ratio(row, {"loss": 1.0}, "loss", 3) == "1.100"


def test_validation_images_are_other_images_than_the_test_images_and_get_their_own_file():
    """A candidate explainer is judged on validation images before it replaces a shipped one."""
    (val, _), (test, _) = eq._images("lesions", 4, "val"), eq._images("lesions", 4, "test")
    assert val.shape == test.shape and not np.array_equal(val, test)
    assert eq.result_name("blood") == "explainer_quality_blood"
    assert eq.result_name("blood", "val") == "explainer_quality_blood_val"


def _result(loss: np.ndarray, area: np.ndarray, split: str = "val", first_loss: np.ndarray | None = None,
            few_loss: np.ndarray | None = None) -> dict:
    """A result with the decoder's first guess (K = 0; its loss ``first_loss``, else ``loss``), a few steps
    (K = FEW_STEPS; ``few_loss``, else ``loss``) and refined (K = VERDICT_K) rows on ``len(loss)`` images."""
    given = {0: first_loss, eq.FEW_STEPS: few_loss}
    rows = [{"method": "decoder", "steps": k,
             "per_image": {"loss": (loss if given.get(k) is None else given[k]).tolist(), "area": area.tolist()}}
            for k in eq.VERDICT_KS]
    return {"set": "path", "split": split, "n": len(loss), "sample": "pick_images seed 0", "rows": rows}


_RNG = np.random.default_rng(4)
_LOSS, _AREA = _RNG.uniform(0.5, 3.0, 64), _RNG.uniform(0.05, 0.6, 64)


def test_a_candidate_with_firmly_lower_losses_replaces_the_shipped_explainer():
    v = eq.replacement_verdict(_result(_LOSS * 0.9, _AREA * 1.3), _result(_LOSS, _AREA))
    assert v["replace"] and "firmly lower loss at K = 0" in v["reason"]
    assert v["loss"][0][2] < 1 and v["loss"][eq.VERDICT_K][2] < 1


def test_a_candidate_with_a_firmly_higher_loss_is_refused_whatever_its_first_guess():
    v = eq.replacement_verdict(_result(_LOSS * 1.1, _AREA * 0.5), _result(_LOSS, _AREA))
    assert not v["replace"] and "firmly higher" in v["reason"]


def test_a_smaller_first_guess_bought_with_a_firmly_worse_first_guess_loss_is_refused():
    """The case that put the first guess's loss into the rule: refined losses tie, the first guess is smaller,
    and its loss is firmly higher (a 20-minute breast run on 64 validation images)."""
    v = eq.replacement_verdict(_result(_RNG.permutation(_LOSS), _AREA * 0.8, first_loss=_LOSS * 1.2),
                               _result(_LOSS, _AREA))
    assert not v["replace"] and v["reason"] == "firmly higher loss at K = 0" and v["area"][2] < 1


def test_a_loss_tie_is_decided_by_a_firmly_smaller_first_guess():
    """A tie: the candidate's loss is the shipped one's, shuffled over images (same median, interval holds 1)."""
    tied = _RNG.permutation(_LOSS)
    smaller = eq.replacement_verdict(_result(tied, _AREA * 0.7), _result(_LOSS, _AREA))
    lo, hi = smaller["loss"][eq.VERDICT_K][1:]
    assert lo <= 1 <= hi and smaller["replace"] and "smaller first guess" in smaller["reason"]
    same = eq.replacement_verdict(_result(tied, _RNG.permutation(_AREA)), _result(_LOSS, _AREA))
    assert not same["replace"] and "no firmly smaller" in same["reason"]
    assert eq.verdict_line(same).startswith("keep the shipped explainer: loss ties")


def test_the_few_steps_loss_alone_can_refuse_or_decide_a_replacement():
    """K = 3 is read as K = 0 and 10 are: firmly worse there refuses, firmly better there replaces."""
    assert eq.VERDICT_KS == (0, 3, 10)
    tied = _RNG.permutation(_LOSS)
    worse = eq.replacement_verdict(_result(tied, _AREA * 0.7, first_loss=tied, few_loss=_LOSS * 1.1),
                                   _result(_LOSS, _AREA))
    assert not worse["replace"] and worse["reason"] == "firmly higher loss at K = 3"
    better = eq.replacement_verdict(_result(tied, _AREA, first_loss=tied, few_loss=_LOSS * 0.9), _result(_LOSS, _AREA))
    assert better["replace"] and better["reason"] == "firmly lower loss at K = 3, firmly higher nowhere"
    assert "loss ties at K = 0, 3 and 10" in eq.replacement_verdict(_result(tied, _AREA), _result(_LOSS, _AREA))["reason"]


def test_results_on_other_images_cannot_be_compared():
    with pytest.raises(ValueError, match="different images"):
        eq.replacement_verdict(_result(_LOSS, _AREA, "test"), _result(_LOSS, _AREA, "val"))


def test_results_of_another_draw_of_images_cannot_be_compared():
    """Results from before the sample (the first n images of a split) carry no ``sample`` and are refused."""
    old = _result(_LOSS, _AREA)
    del old["sample"]
    with pytest.raises(ValueError, match="different images"):
        eq.replacement_verdict(_result(_LOSS, _AREA), old)


def test_the_images_are_a_sample_of_every_class_not_the_first_of_a_class_sorted_split():
    """Brain's test split is sorted by class: its first 32 images were all one class of four."""
    from medcam_fast.data.images import ImageSet
    from medcam_fast.evaluation.harness import pick_images

    labels = np.repeat(np.arange(4), 60)
    split = ImageSet(images=np.zeros((240, 2, 2), np.uint8), labels=labels, classes=list("abcd"), name="sorted")
    picked = pick_images(split, 32, eq.SAMPLE_SEED)
    assert set(picked.labels.tolist()) == {0, 1, 2, 3} and len(picked.labels) == 32
    assert set(labels[:32].tolist()) == {0}


def test_the_smoothing_table_refuses_rows_of_other_images():
    with pytest.raises(ValueError, match="different images"):
        eq.smoothing_summary([_result(_LOSS, _AREA, "test")], [{**_result(_LOSS, _AREA, "val"), "smooth": 1.0}])
    assert eq.result_name("brain", "test", 1.0) == "explainer_quality_brain_smooth1"
    assert eq.result_name("brain", "val", 0.5) == "explainer_quality_brain_val_smooth0.5"


def _row(method: str, k: int, loss: float) -> dict:
    return {"method": method, "steps": k, "loss": loss, "p_kept": 0.9, "area": 0.2, "pieces": 1, "largest": 1.0,
            "lattice": 0.0, "rho": 0.1, "rho_abs": 0.0}


def test_smoothing_is_weighed_against_adam_steps_where_the_explainer_ships_learned_ones():
    """Smoothing turns the learned steps off, so σ = 0 → σ is read on the Adam-steps rows when there are some."""
    fit = {**_row("fit-coarse", 300, 1.0)}
    plain = {"set": "brain", "split": "test", "n": 2, "sample": "s", "rows": [
        fit, _row("decoder", 10, 0.9), _row("decoder-adam", 10, 1.1)]}
    smoothed = {**plain, "smooth": 1.0, "rows": [fit, _row("decoder-smooth", 10, 1.2)]}
    line = eq.smoothing_summary([plain], [smoothed]).splitlines()[2]
    assert line.startswith("| brain | 10 | 1.100 → 1.200")
    without = {**plain, "rows": [fit, _row("decoder", 10, 0.9)]}  # an explainer without learned steps
    assert eq.smoothing_summary([without], [smoothed]).splitlines()[2].startswith("| brain | 10 | 0.900 → 1.200")


def test_a_candidate_whose_masks_fail_the_sanity_check_is_refused_whatever_its_losses():
    better = _result(_LOSS * 0.8, _AREA)
    assert eq.replacement_verdict(better, _result(_LOSS, _AREA))["replace"]
    for key in ("rho", "rho_abs"):
        for row in better["rows"]:
            row[key] = 0.46 if row["steps"] == eq.FEW_STEPS else 0.1
        v = eq.replacement_verdict(better, _result(_LOSS, _AREA))
        assert not v["replace"] and v["reason"] == "fails the sanity check at K = 3 (ρ ≥ 0.3)"
        for row in better["rows"]:
            row[key] = 0.0
