"""The per-image fit (the paper's method) on lesion images whose true evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam_fast.data.lesions import make_lesions
from medcam_fast.method.fit import FitConfig, fit_masks
from medcam_fast.method.losses import LossWeights


@pytest.fixture(scope="module")
def positives(lesion_bundle):
    ds = make_lesions(40, size=32, seed=77)
    idx = np.flatnonzero(ds.labels == 1)[:4]
    x = torch.from_numpy(lesion_bundle.preprocess(ds.images[idx]))
    return x, ds.masks[idx]


def _fit(bundle, x, **kw):
    clf = bundle.frozen()
    cfg = FitConfig(**{"steps": 120, **kw})
    pre = bundle.preprocess
    return fit_masks(clf, x, None, cfg, normalization=(pre.mean, pre.std))


def test_fit_keeps_the_decision_with_a_small_mask_on_the_lesion(lesion_bundle, positives):
    x, truth = positives
    r = _fit(lesion_bundle, x)
    v = r.verification
    assert (v.predicted == 1).all()
    assert v.p_kept.mean() >= v.p_original.mean() - 0.05
    assert v.area.mean() < 0.35
    assert (v.p_original - v.p_removed).mean() > 0.3
    # the evidence overlaps the lesion far more than chance (the lesion covers ~8 % of the image)
    hit = (r.binary.numpy() & truth).sum((1, 2)) / np.maximum(r.binary.numpy().sum((1, 2)), 1)
    assert hit.mean() > 0.3
    assert r.binary.dtype == torch.bool and r.soft.shape == x.shape[:1] + x.shape[2:]


def test_fit_is_deterministic_and_traces_every_term(lesion_bundle, positives):
    x, _ = positives
    a = _fit(lesion_bundle, x[:2], steps=15)
    b = _fit(lesion_bundle, x[:2], steps=15)
    assert torch.equal(a.soft, b.soft) and torch.equal(a.binary, b.binary)
    c = fit_masks(lesion_bundle.frozen(), x[:2], None, FitConfig(steps=15), record_trace=True)
    assert set(c.trace) == {"act", "kl", "ce", "area", "bin", "tv", "rob", "nec", "total"}
    assert c.trace["total"].shape == (15, 2)
    assert c.trace["total"][-1].mean() < c.trace["total"][0].mean()


def test_an_image_does_not_depend_on_its_batch_neighbours(lesion_bundle, positives):
    """Exactly, up to float64 rounding, in the soft phase, robustness draws included (each image draws from its
    own generator, seeded by its pixels). (The hard phase thresholds ``m > ½``: a fresh U-Net
    starts at ``m ≈ ½``, so a pixel within rounding of the threshold can flip with the batch's kernel choice —
    in float32 that drifted 10 steps apart by up to 2e-3 depending on the classifier.)"""
    import copy

    from medcam_fast.classifiers.frozen import FrozenClassifier

    x, _ = positives
    clf = FrozenClassifier(copy.deepcopy(lesion_bundle.model).double(), num_classes=2)
    pre = lesion_bundle.preprocess
    cfg = FitConfig(steps=10, hard_after=1.0, weights=LossWeights(draws=2))  # robustness draws per image
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the fit's fresh U-Nets
    try:
        alone = fit_masks(clf, x[:1].double(), None, cfg, normalization=(pre.mean, pre.std))
        batch = fit_masks(clf, x[:3].double(), None, cfg, normalization=(pre.mean, pre.std))
    finally:
        torch.set_default_dtype(default)
    assert torch.allclose(alone.soft[0], batch.soft[0], rtol=0, atol=1e-12)
    assert not torch.allclose(batch.soft[0], batch.soft[1], atol=1e-3)  # the images do differ


def test_explaining_another_class(lesion_bundle, positives):
    x, _ = positives
    r = fit_masks(lesion_bundle.frozen(), x[:2], 0, FitConfig(steps=60))
    assert (r.verification.target == 0).all()
    assert (r.verification.p_kept > r.verification.p_original).all()


def test_target_out_of_range_is_refused(lesion_bundle, positives):
    x, _ = positives
    with pytest.raises(ValueError, match="out of range"):
        fit_masks(lesion_bundle.frozen(), x[:1], 5, FitConfig(steps=1))
