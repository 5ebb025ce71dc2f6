"""Baselines: RISE and extremal perturbations (written here), the grad-cam / captum wrappers, the registry.

The peer wrappers' tests carry the ``peers`` marker: skipped where ``grad-cam`` / ``captum`` are not installed,
run (and never skipped) by ``make test-peers`` in the environment that has them.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medcam_fast.classifiers.frozen import FrozenClassifier
from medcam_fast.data.lesions import make_lesions
from medcam_fast.errors import UsageError
from medcam_fast.evaluation._peers import INSTALL_HINT, PeerUnavailable
from medcam_fast.evaluation.baselines import METHODS, MethodSpec, PeerSettings, available_peers
from medcam_fast.evaluation.baselines.attributions import captum_attr
from medcam_fast.evaluation.baselines.cam import grad_cam
from medcam_fast.evaluation.baselines.extremal import extremal_perturbation
from medcam_fast.evaluation.baselines.rise import rise
from medcam_fast.evaluation.road import road


@pytest.fixture(scope="module")
def lesions(lesion_bundle):
    """The lesion classifier and 8 positive 32-px lesion images: ``(classifier, x, target, masks)``."""
    s = make_lesions(24, size=32, seed=3)
    pos = s.labels == 1
    images, masks = s.images[pos][:8], s.masks[pos][:8]
    assert len(images) == 8
    x = torch.from_numpy(lesion_bundle.preprocess(images))
    return lesion_bundle.frozen(), x, torch.ones(len(x), dtype=torch.long), torch.from_numpy(masks)


def pointing(saliency: Tensor, masks: Tensor) -> float:
    """Fraction of images whose saliency maximum lies inside the true evidence."""
    idx = saliency.flatten(1).argmax(1)
    return float(masks.flatten(1).gather(1, idx[:, None]).float().mean())


def concentration(saliency: Tensor, masks: Tensor) -> Tensor:
    """Per image: the share of the map's *positive* mass inside the evidence over the evidence's share of the
    image (1 = chance): the relevance mass accuracy of Arras, Osman & Samek 2022 over its chance level.

    Only positive values are evidence for the class, so a signed map (occlusion, integrated gradients) is
    judged by what it attributes *to* the class; dividing by the signed map's mean instead — near 0 when the
    positive and negative parts cancel — made occlusion's concentration −1080 on these images. For a
    non-negative map this is mean saliency inside over mean saliency everywhere.
    """
    positive, m = saliency.clamp_min(0), masks.float()
    return (positive * m).sum((1, 2)) / positive.sum((1, 2)) / m.mean((1, 2))


def test_concentration_is_chance_for_a_flat_map_and_ignores_negative_evidence():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :2, :2] = True  # a sixteenth of the image
    flat = torch.ones(2, 8, 8)
    assert torch.allclose(concentration(flat, masks), torch.ones(2))
    inside_only = masks.float()
    assert torch.allclose(concentration(inside_only, masks), torch.full((2,), 16.0))
    signed = inside_only - 0.01 * (~masks).float()  # mean ≈ 0.05: the old ratio divided by it
    assert torch.allclose(concentration(signed, masks), torch.full((2,), 16.0))


class _TopLeft(nn.Module):
    """Two logits ``[0, 8·(mean(x over the top-left quadrant) − ½)]``: only that quadrant matters."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = 8 * (x[:, :, : h // 2, : w // 2].mean((1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def quadrant_means(saliency: Tensor) -> Tensor:
    """Mean saliency of the four quadrants ``[B, 4]`` (top-left first)."""
    h, w = saliency.shape[-2:]
    q = [saliency[:, : h // 2, : w // 2], saliency[:, : h // 2, w // 2 :],
         saliency[:, h // 2 :, : w // 2], saliency[:, h // 2 :, w // 2 :]]
    return torch.stack([t.mean((1, 2)) for t in q], dim=1)


@pytest.fixture(scope="module")
def top_left():
    """A classifier that only looks at the top-left quadrant, and two non-square images of ones."""
    clf = FrozenClassifier(_TopLeft(), layers=[], num_classes=2)
    return clf, torch.ones(2, 1, 20, 28), torch.ones(2, dtype=torch.long)


# --------------------------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------------------------


def test_rise_ranks_the_only_quadrant_the_model_sees_highest(top_left):
    clf, x, t = top_left
    s = rise(clf, x, t, n_masks=400, cells=4, seed=1)
    assert s.shape == (2, 20, 28) and torch.isfinite(s).all() and (s >= 0).all()
    q = quadrant_means(s)
    assert (q[:, 0] > q[:, 1:].max(1).values + 0.02).all(), q


def test_rise_masks_are_shared_and_independent_of_batching(top_left):
    clf, x, t = top_left
    x = x * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)
    both = rise(clf, x, t, n_masks=64, cells=4, batch_size=10)
    one = rise(clf, x[1:], t[1:], n_masks=64, cells=4, batch_size=3)
    assert torch.allclose(both[1], one[0], atol=1e-5)
    assert torch.equal(both, rise(clf, x, t, n_masks=64, cells=4, batch_size=10))
    assert not torch.allclose(both, rise(clf, x, t, n_masks=64, cells=4, seed=1))


def test_rise_uses_the_baseline_for_removed_pixels(top_left):
    clf, x, t = top_left
    # baseline = the image itself: masking changes nothing, so S = p_c(x)·mean(M)/p ≈ p_c(x) everywhere
    s = rise(clf, x, t, n_masks=200, cells=4, baseline=x)
    p_c = torch.softmax(clf.logits(x), -1)[:, 1]
    assert torch.allclose(s.mean((1, 2)), p_c, rtol=0.1)


def test_rise_points_at_the_lesions(lesions):
    clf, x, t, masks = lesions
    s = rise(clf, x, t, n_masks=300)
    assert s.shape == (8, 32, 32) and torch.isfinite(s).all()
    chance = float(masks.float().mean())
    assert chance < 0.15
    assert pointing(s, masks) >= 0.6


def test_rise_rejects_bad_arguments(top_left):
    clf, x, t = top_left
    with pytest.raises(UsageError):
        rise(clf, x, t, p=0.0)
    with pytest.raises(UsageError):
        rise(clf, x, t, n_masks=0)
    with pytest.raises(UsageError):
        rise(clf, x[0], t)
    with pytest.raises(UsageError):
        rise(clf, x, t, baseline=torch.zeros(3, 1, 20, 28))


# --------------------------------------------------------------------------------------------------------
# Extremal perturbations
# --------------------------------------------------------------------------------------------------------


def test_extremal_keeps_the_only_quadrant_the_model_sees(top_left):
    clf, x, t = top_left
    s = extremal_perturbation(clf, x, t, areas=(0.1,), steps=80, baseline=torch.zeros_like(x))
    assert s.shape == (2, 20, 28) and torch.isfinite(s).all()
    q = quadrant_means(s)
    assert (q[:, 0] > 3 * q[:, 1:].max(1).values).all(), q
    again = extremal_perturbation(clf, x, t, areas=(0.1,), steps=80, baseline=torch.zeros_like(x))
    assert torch.equal(s, again)


def test_extremal_mask_has_the_requested_area(lesions):
    clf, x, t, _ = lesions
    m = extremal_perturbation(clf, x[:4], t[:4], areas=(0.1,), steps=100)
    assert ((m >= 0) & (m <= 1)).all()
    area = m.flatten(1).mean(1)
    assert (area - 0.1).abs().max() < 0.1, area


def test_extremal_points_at_the_lesions(lesions):
    clf, x, t, masks = lesions
    s = extremal_perturbation(clf, x, t, steps=60)
    assert s.shape == (8, 32, 32) and torch.isfinite(s).all()
    assert 0 <= float(s.min()) and float(s.max()) <= 3
    assert pointing(s, masks) >= 0.6


def test_extremal_rejects_bad_areas(top_left):
    clf, x, t = top_left
    for areas in ((), (0.0,), (1.5,)):
        with pytest.raises(UsageError):
            extremal_perturbation(clf, x, t, areas=areas, steps=1)


# --------------------------------------------------------------------------------------------------------
# Peers: missing packages, registry
# --------------------------------------------------------------------------------------------------------


def test_missing_peer_raises_with_an_install_hint(monkeypatch, top_left):
    clf, x, t = top_left
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(PeerUnavailable) as e:
        grad_cam(clf, x, t)
    assert e.value.method == "gradcam" and e.value.install_hint == INSTALL_HINT == "pip install 'medcam-fast[baselines]'"
    assert INSTALL_HINT in str(e.value) and isinstance(e.value, RuntimeError)
    assert isinstance(e.value.__cause__, ImportError)
    with pytest.raises(PeerUnavailable, match="road"):
        road(clf, x, t, torch.rand(2, 20, 28))
    with pytest.raises(PeerUnavailable) as e:
        captum_attr(clf, x, t, method="integrated_gradients")
    assert e.value.method == "integrated_gradients" and e.value.package == "captum"
    peers = available_peers()
    assert set(peers) == set(METHODS) | {"road"}
    assert peers["rise"] is None and peers["extremal"] is None
    for name in ("gradcam", "gradcam++", "scorecam", "occlusion", "ig", "road"):
        assert peers[name] is not None and INSTALL_HINT in peers[name]


def test_registry():
    assert list(METHODS) == ["rise", "extremal", "gradcam", "gradcam++", "scorecam", "occlusion", "ig"]
    for name, spec in METHODS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name and spec.label and callable(spec.fn)
        assert set(spec.settings) <= set(PeerSettings().to_dict())
    assert {k for k, s in METHODS.items() if s.peer is None} == {"rise", "extremal"}
    assert {s.peer for s in METHODS.values()} == {None, "grad-cam", "captum"}
    with pytest.raises(AttributeError):
        METHODS["rise"].label = "x"  # type: ignore[misc]


def test_peer_settings_default_to_the_functions_own_defaults():
    import inspect

    defaults = PeerSettings()
    assert defaults.rise_masks == inspect.signature(rise).parameters["n_masks"].default
    assert defaults.extremal_steps == inspect.signature(extremal_perturbation).parameters["steps"].default
    assert defaults.seed == inspect.signature(rise).parameters["seed"].default


def test_registry_passes_the_settings_to_rise_and_extremal(top_left):
    clf, x, t = top_left
    b = torch.zeros_like(x)
    few = PeerSettings(rise_masks=16, extremal_steps=2, seed=3)
    assert torch.equal(METHODS["rise"].fn(clf, x, t, b, few), rise(clf, x, t, n_masks=16, baseline=b, seed=3))
    assert not torch.equal(METHODS["rise"].fn(clf, x, t, b, few), METHODS["rise"].fn(clf, x, t, b, few.with_(seed=4)))
    assert torch.equal(METHODS["extremal"].fn(clf, x, t, b, few),
                       extremal_perturbation(clf, x, t, steps=2, baseline=b, seed=3))


# --------------------------------------------------------------------------------------------------------
# Peers: grad-cam and captum (skipped without them)
# --------------------------------------------------------------------------------------------------------


def _check_maps(s: Tensor, x: Tensor) -> None:
    assert s.shape == (x.shape[0], *x.shape[-2:]) and s.device == x.device and s.dtype == x.dtype
    assert torch.isfinite(s).all()
    assert (s.flatten(1).std(1) > 0).all(), "a constant map"


@pytest.mark.peers
@pytest.mark.parametrize("variant", ["gradcam", "gradcam++", "scorecam"])
def test_grad_cam_variants_find_the_lesions(lesions, variant):
    pytest.importorskip("pytorch_grad_cam")
    clf, x, t, masks = lesions
    s = grad_cam(clf, x, t, variant=variant)  # layer4: 4×4 at 32 px
    _check_maps(s, x)
    assert float(s.min()) >= 0 and float(s.max()) <= 1 + 1e-6
    assert float(concentration(s, masks).mean()) > 2
    fine = grad_cam(clf, x, t, variant=variant, layer="layer3")  # 8×8
    _check_maps(fine, x)
    assert pointing(fine, masks) >= 0.6
    assert torch.equal(METHODS[variant].fn(clf, x[:2], t[:2], torch.zeros_like(x[:2]), PeerSettings()), s[:2])


@pytest.mark.peers
def test_grad_cam_rejects_unknown_layers_and_variants(lesions):
    pytest.importorskip("pytorch_grad_cam")
    clf, x, t, _ = lesions
    with pytest.raises(UsageError):
        grad_cam(clf, x[:1], t[:1], layer="no.such.layer")
    with pytest.raises(UsageError):
        grad_cam(clf, x[:1], t[:1], variant="eigencam")  # type: ignore[arg-type]


@pytest.mark.peers
@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_captum_methods_find_the_lesions(lesions, method):
    pytest.importorskip("captum")
    clf, x, t, masks = lesions
    s = captum_attr(clf, x, t, method=method)
    _check_maps(s, x)
    assert pointing(s, masks) >= 0.6
    assert float(concentration(s, masks).mean()) > 2
    key = "occlusion" if method == "occlusion" else "ig"
    assert torch.allclose(METHODS[key].fn(clf, x[:2], t[:2], torch.zeros_like(x[:2]), PeerSettings()), s[:2],
                          atol=1e-5)


@pytest.mark.peers
def test_occlusion_with_the_image_as_baseline_is_zero(lesions):
    pytest.importorskip("captum")
    clf, x, t, _ = lesions
    s = captum_attr(clf, x[:2], t[:2], method="occlusion", baseline=x[:2])
    assert s.abs().max() < 1e-4


@pytest.mark.peers
def test_road_scores_per_image_with_documented_signs(lesions):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    clf, x, t, masks = lesions
    x, t, masks = x[:4], t[:4], masks[:4]
    good = masks.float() + 0.01 * torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    r = road(clf, x, t, good, percentiles=(30, 50, 70))
    assert set(r) == {"morf", "lerf", "combined"}
    for v in r.values():
        assert v.shape == (4,) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert torch.allclose(r["combined"], (r["lerf"] - r["morf"]) / 2)
    assert (r["morf"] < r["lerf"]).all()  # removing the evidence first hurts more
    bad = road(clf, x, t, -good, percentiles=(30, 50, 70))
    assert (bad["combined"] < r["combined"]).all()
    assert torch.equal(road(clf, x, t, good, percentiles=(30, 50, 70))["combined"], r["combined"])  # seeded
    # the same numbers as grad-cam's own ROADCombined under the same seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        targets = [ClassifierOutputSoftmaxTarget(1)] * 4
        ref = ROADCombined([30, 50, 70])(x, good.numpy(), targets, clf.model)
    assert np.allclose(ref, r["combined"].numpy(), atol=1e-6)


@pytest.mark.peers
def test_noisy_linear_imputation_reproduces_a_linear_ramp_and_keeps_the_kept_pixels():
    pytest.importorskip("pytorch_grad_cam")
    from medcam_fast.evaluation.road import NoisyLinearImputation

    # a ramp is harmonic for the symmetric 8-neighbour weights: imputing interior pixels gives it back exactly
    ramp = (torch.arange(12.0)[:, None] * 0.3 + torch.arange(10.0)[None, :] * 0.1).expand(2, 1, 12, 10).clone()
    removed = torch.zeros(2, 12, 10, dtype=torch.bool)
    removed[0, 3:7, 2:6] = True
    removed[1, 5, 5] = True
    exact = NoisyLinearImputation(noise=0.0)(ramp, removed)
    assert torch.allclose(exact, ramp, atol=1e-5)
    noisy = NoisyLinearImputation(noise=0.01, seed=3)(ramp, removed)
    assert torch.equal(noisy[~removed[:, None]], ramp[~removed[:, None]])  # kept pixels untouched
    changed = (noisy - ramp)[removed[:, None]]
    assert 0 < float(changed.abs().max()) < 0.06  # N(0, 0.01²) noise on the imputed pixels only
    assert torch.equal(noisy, NoisyLinearImputation(noise=0.01, seed=3)(ramp, removed))  # seeded
    # nothing to anchor the system: the data set's mean (0) plus noise, not a singular solve
    everything = NoisyLinearImputation(noise=0.0)(ramp, torch.ones(2, 12, 10, dtype=torch.bool))
    assert torch.equal(everything, torch.zeros_like(ramp))
    assert torch.equal(NoisyLinearImputation()(ramp, torch.zeros(2, 12, 10, dtype=torch.bool)), ramp)


@pytest.mark.peers
def test_the_noisy_linear_fill_is_what_road_imputes_and_serves_every_metric(lesions):
    pytest.importorskip("pytorch_grad_cam")
    from medcam_fast.evaluation.fills import Fill, substrate
    from medcam_fast.evaluation.metrics import binary_evidence, preservation_at_area
    from medcam_fast.evaluation.road import NoisyLinearImputation

    clf, x, t, masks = lesions
    x, t, masks = x[:3], t[:3], masks[:3]
    fill = substrate(Fill.NOISY_LINEAR, x, [0.5], [0.5], seed=0)
    assert isinstance(fill, NoisyLinearImputation)
    verdict = binary_evidence(clf.logits, x, masks, t, fill)
    # the lesion kept and imputed around keeps the class better than the lesion imputed away
    assert (verdict["p_kept"] > verdict["p_removed"]).all(), verdict
    keep = preservation_at_area(clf.logits, x, masks.float(), t, fill, fractions=(1.0,))
    assert torch.allclose(keep[:, 0], torch.softmax(clf.logits(x), 1)[:, 1], atol=1e-6)  # nothing removed


def test_the_registry_says_which_fill_each_peer_perturbs_with():
    from medcam_fast.types import BaselineKind

    uses = {k for k, s in METHODS.items() if s.uses_baseline}
    assert uses == {"rise", "extremal", "occlusion", "ig"}
    assert {k: s.own_fill for k, s in METHODS.items() if s.own_fill is not None} == {"scorecam": BaselineKind.MEAN}
