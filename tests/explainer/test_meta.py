"""Meta-training (MAML with torch.func), its checkpoints, and the refinement modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.bundle import load_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train, outer_learning_rate
from medcam_fast.method.inner import STEP_SIZES, adapt, task_losses
from medcam_fast.method.losses import LossWeights
from medcam_fast.method.objective import Objective
from medcam_fast.method.refine import RefineConfig, refine
from medcam_fast.types import BaselineKind, InnerMode, LRSchedule

# The U-Net with the weights loop (MAML proper); the decoder's logits loop is tested on its own below.
FAST = MetaConfig(architecture="unet", inner_mode="weights", first_order=False, inner_steps=2, outer_steps=4,
                  meta_batch=4, width=4, depth=2, checkpoint_every=2, weights=LossWeights(draws=1))


@pytest.fixture(scope="module")
def images():
    return make_lesions(24, size=32, seed=5).images


def _refine(explainer, clf, x, config, weights=None, first_guess=None):
    """Refinement exactly as MedCAM runs it: the explainer's problem, its U-Net and its trained inner loop."""
    objective = explainer.objective(clf, x, weights=weights)
    return refine(objective, config, net=explainer.net, first_guess=first_guess, trained=explainer.inner)


def _theta(bundle):
    return {k: v.clone() for k, v in bundle.net.state_dict().items()}


def test_second_order_differs_from_first_order_and_both_learn(lesion_bundle, images):
    so = meta_train(lesion_bundle, images, FAST)
    fo = meta_train(lesion_bundle, images, FAST.with_(first_order=True))
    a, b = _theta(so), _theta(fo)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for bundle in (so, fo):
        hist = bundle.training["final"]
        assert np.isfinite(hist["adapted"]) and np.isfinite(hist["zero"])
        assert bundle.classifier_sha256 == lesion_bundle.sha256


def test_inner_loop_lowers_each_images_loss(lesion_bundle, images):
    clf = lesion_bundle.frozen()
    x = torch.from_numpy(lesion_bundle.preprocess(images[:4]))
    obj = Objective.build(clf, x, None, baseline=BaselineKind.MEAN, weights=LossWeights(rob=0.0), tau=1.0)
    torch.manual_seed(0)
    from medcam_fast.method.unet import UNet, UNetConfig

    unet = UNet(UNetConfig(1, 2, width=4, depth=2))
    theta = {k: v.detach() for k, v in unet.named_parameters()}
    before, _ = task_losses(unet, [theta] * 4, obj)
    after_p = adapt(unet, theta, obj, steps=5, lr=0.1)
    after, _ = task_losses(unet, after_p, obj)
    assert after.mean() < before.mean() and (after < before).sum() >= 3


@pytest.mark.parametrize("schedule", list(LRSchedule))
def test_resume_repeats_an_uninterrupted_run_exactly(lesion_bundle, images, tmp_path, schedule):
    cfg = FAST.with_(lr_schedule=schedule)
    full = meta_train(lesion_bundle, images, cfg, out_dir=tmp_path / "a")
    part = meta_train(lesion_bundle, images, cfg, out_dir=tmp_path / "b", stop_after=2)
    assert part.training["steps_done"] == 2 and not (tmp_path / "b" / "explainer.json").exists()
    resumed = meta_train(lesion_bundle, images, cfg, out_dir=tmp_path / "b", resume=True)
    a, b = _theta(full), _theta(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_explainer(tmp_path / "b")
    assert all(torch.equal(loaded.net.state_dict()[k], b[k]) for k in a)


def test_the_cosine_schedule_anneals_the_outer_rate_from_its_base_towards_zero_step_by_step(lesion_bundle, images):
    rates: list[float] = []
    meta_train(lesion_bundle, images, FAST.with_(lr_schedule="cosine", outer_lr=0.01),
               callback=lambda step, log: rates.append(log["lr"]))
    assert rates == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    constant: list[float] = []
    meta_train(lesion_bundle, images, FAST.with_(outer_lr=0.01), callback=lambda step, log: constant.append(log["lr"]))
    assert constant == [0.01] * 4


def test_the_outer_learning_rate_is_the_base_halved_at_mid_run_and_zero_at_the_end():
    assert [outer_learning_rate(2.0, p, LRSchedule.COSINE) for p in (-1.0, 0.0, 0.5, 1.0, 3.0)] == pytest.approx(
        [2.0, 2.0, 1.0, 0.0, 0.0])
    assert {outer_learning_rate(2.0, p, LRSchedule.CONSTANT) for p in (0.0, 0.5, 1.0)} == {2.0}


def test_a_training_record_without_a_schedule_trained_at_a_constant_rate():
    d = MetaConfig(lr_schedule="cosine").to_dict()
    assert MetaConfig.from_dict(d).lr_schedule is LRSchedule.COSINE
    del d["lr_schedule"]
    assert MetaConfig.from_dict(d).lr_schedule is LRSchedule.CONSTANT


def test_meta_sgd_and_amortized_variants_run(lesion_bundle, images, tmp_path):
    msgd = meta_train(lesion_bundle, images, FAST.with_(meta_sgd=True, outer_steps=2))
    assert msgd.inner.lrs and all(v > 0 for v in msgd.inner.lrs.values())
    amort = meta_train(lesion_bundle, images, FAST.with_(inner_steps=0, outer_steps=2))
    assert amort.training["method"] == "amortized"


@pytest.mark.parametrize("mode", ["logits", "weights", "full"])
def test_refinement_lowers_the_loss_of_the_first_guess(lesion_bundle, images, mode):
    explainer = meta_train(lesion_bundle, images, FAST.with_(outer_steps=2))
    clf = lesion_bundle.frozen()
    x = torch.from_numpy(lesion_bundle.preprocess(images[:3]))
    w = LossWeights(rob=0.0)
    first = _refine(explainer, clf, x, RefineConfig(steps=0), weights=w)
    better = _refine(explainer, clf, x, RefineConfig(steps=15, mode=mode), weights=w)
    assert better.steps == 15 and better.binary.shape == (3, 32, 32)
    assert better.loss.mean() < first.loss.mean()


def test_refinement_starts_from_the_clipped_first_guess(lesion_bundle, images):
    explainer = meta_train(lesion_bundle, images, FAST.with_(outer_steps=1))
    clf = lesion_bundle.frozen()
    x = torch.from_numpy(lesion_bundle.preprocess(images[:2]))
    saturated = torch.full((2, 1, 32, 32), 40.0)
    saturated[:, :, :8] = -40.0
    cfg = RefineConfig(steps=3, start_clip=1.5, keep_best=False)  # the loop itself, no fallback
    clipped = _refine(explainer, clf, x, cfg, first_guess=saturated)
    by_hand = _refine(explainer, clf, x, cfg.with_(start_clip=None), first_guess=saturated.clamp(-1.5, 1.5))
    assert torch.equal(clipped.logits, by_hand.logits)
    unclipped = _refine(explainer, clf, x, cfg.with_(start_clip=None), first_guess=saturated)
    lr = STEP_SIZES[InnerMode.LOGITS]
    assert unclipped.logits.abs().min() > 40 - 3 * lr * 3.2  # three Adam steps cannot undo a saturated start
    assert clipped.logits.abs().max() < 1.5 + 3 * lr * 3.2  # Adam's step is at most lr·(1−β₁)/√(1−β₂)


def test_refinement_never_reports_a_mask_worse_than_its_first_guess(lesion_bundle, images):
    explainer = meta_train(lesion_bundle, images, FAST.with_(outer_steps=1))
    clf = lesion_bundle.frozen()
    x = torch.from_numpy(lesion_bundle.preprocess(images[:6]))
    # Three images start from a well refined mask, which one large step spoils; three from an empty mask,
    # which it improves.
    good = _refine(explainer, clf, x, RefineConfig(steps=30)).logits
    start = torch.where(torch.arange(6).view(-1, 1, 1) < 3, good, torch.full_like(good, -3.0))[:, None]
    first = _refine(explainer, clf, x, RefineConfig(steps=0), first_guess=start)
    big = RefineConfig(steps=1, lr=3.0, start_clip=None)
    raw = _refine(explainer, clf, x, big.with_(keep_best=False), first_guess=start)
    kept = _refine(explainer, clf, x, big, first_guess=start)
    worse = raw.loss > first.loss
    assert worse.tolist() == [True, True, True, False, False, False]
    assert torch.equal(kept.loss, torch.where(worse, first.loss, raw.loss))
    assert kept.refined.tolist() == (~worse).tolist() and raw.refined.all() and not first.refined.any()
    for i in range(len(x)):
        chosen = first if worse[i] else raw
        assert torch.equal(kept.logits[i], chosen.logits[i]) and torch.equal(kept.binary[i], chosen.binary[i])
        assert kept.verification.p_kept[i] == chosen.verification.p_kept[i]
        assert kept.terms["area"][i] == chosen.terms["area"][i]


def test_logits_inner_loop_meta_trains_the_first_guess_for_refinement(lesion_bundle, images, tmp_path):
    cfg = FAST.with_(inner_mode="logits", first_order=True, inner_lr=0.3, inner_steps=3, outer_steps=3)
    explainer = meta_train(lesion_bundle, images, cfg, out_dir=tmp_path)
    assert explainer.training["method"] == "maml-logits"
    loaded = load_explainer(tmp_path)
    assert loaded.inner.mode is InnerMode.LOGITS and loaded.inner.lr == 0.3 and loaded.inner.steps == 3
    hist = explainer.training["final"]
    assert np.isfinite(hist["adapted"]) and np.isfinite(hist["zero"])
    torch.manual_seed(cfg.seed)
    amort = meta_train(lesion_bundle, images, cfg.with_(inner_mode="weights", inner_steps=0))
    a, b = _theta(amort), _theta(explainer)
    assert any(not torch.equal(a[k], b[k]) for k in a), "the K-step term must change the outer gradient"


def test_logits_inner_mode_is_first_order_only():
    from medcam_fast.errors import UsageError

    with pytest.raises(UsageError, match="first-order"):
        MetaConfig(inner_mode="logits", first_order=False)
    with pytest.raises(UsageError, match="U-Net"):
        MetaConfig(inner_mode="weights", first_order=False)  # the decoder has no weights loop
    with pytest.raises(UsageError, match="meta_sgd"):
        MetaConfig(inner_mode="logits", first_order=True, meta_sgd=True)
    with pytest.raises(UsageError, match="inner mode"):
        MetaConfig(inner_mode="pixels")


def test_the_inner_step_size_has_one_owner_per_loop():
    """Meta-training and refinement read the same table; a mode change re-resolves an unset step."""
    from medcam_fast.method.inner import STEP_SIZES, step_size
    from medcam_fast.types import RefineMode

    logits = MetaConfig(inner_mode="logits", first_order=True)
    assert logits.inner_lr is None and logits.step_size == STEP_SIZES[InnerMode.LOGITS] == 1.0
    assert step_size(RefineMode.LOGITS) == logits.step_size
    assert MetaConfig().step_size == STEP_SIZES[InnerMode.LOGITS]
    unet = MetaConfig(architecture="unet", inner_mode="weights", first_order=False)
    assert unet.step_size == STEP_SIZES[InnerMode.WEIGHTS] == step_size(RefineMode.WEIGHTS) == 0.1
    assert logits.with_(architecture="unet", inner_mode="weights", first_order=False).step_size == 0.1
    assert MetaConfig(inner_lr=0.02).step_size == 0.02


def test_the_default_explainer_is_a_decoder_that_saves_loads_and_refines(lesion_bundle, images, tmp_path):
    """The default: a decoder over the classifier's features, the logits loop (K steps, first order)."""
    from medcam_fast.method.decoder import DecoderConfig, FeatureDecoder

    cfg = MetaConfig(inner_steps=2, outer_steps=3, meta_batch=4, width=4, checkpoint_every=3)
    explainer = meta_train(lesion_bundle, images, cfg, out_dir=tmp_path)
    assert isinstance(explainer.net, FeatureDecoder) and explainer.training["method"] == "maml-logits"
    loaded = load_explainer(tmp_path)
    assert isinstance(loaded.net_config, DecoderConfig) and loaded.net_config == explainer.net_config
    assert loaded.net_config.tap_names == lesion_bundle.frozen().layers  # the activation-matching layers
    assert loaded.net_config.cam_tap == "layer4"  # the layer the head reads
    clf = lesion_bundle.frozen()
    x = torch.from_numpy(lesion_bundle.preprocess(images[:3]))
    w = LossWeights(rob=0.0)
    first = _refine(loaded, clf, x, RefineConfig(steps=0), weights=w)
    better = _refine(loaded, clf, x, RefineConfig(steps=15), weights=w)
    assert first.logits.shape == better.logits.shape == (3, 32, 32)  # reported on the image grid
    assert better.loss.mean() < first.loss.mean()


def test_independence_loss_is_the_squared_rank_correlation_of_the_two_first_guesses():
    """By default ``r²`` of soft ranks: 1 for any monotone copy (either sign), 0 for a constant map, and the
    exact Spearman ρ² of maps without ties."""
    from medcam_fast.evaluation.metrics import spearman
    from medcam_fast.explainer.meta import independence_loss

    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 1, 16, 16, generator=g)
    assert independence_loss(u, u.exp() * 40).mean().item() == pytest.approx(1.0, abs=0.01)  # Pearson would not
    assert independence_loss(u, u.exp() * 40, "pearson").mean().item() < 0.9
    assert independence_loss(u, -u).mean().item() == pytest.approx(1.0, abs=1e-3)
    assert independence_loss(u, torch.full_like(u, 5.0)).max().item() == pytest.approx(0.0, abs=1e-6)
    v = 0.5 * u + torch.randn(4, 1, 16, 16, generator=g)
    rho = spearman(u[:, 0], v[:, 0])
    assert independence_loss(u, v).sqrt() == pytest.approx(rho.abs(), abs=0.02)


def test_a_map_whose_largest_logits_decorrelate_still_counts_when_its_ranks_agree():
    """The brain-MRI failure of the Pearson measure: a few large logits that differ between the two maps carry
    Pearson's r towards 0, while the rest of the map — the shared outline — keeps Spearman's ρ high."""
    from medcam_fast.explainer.meta import independence_loss

    g = torch.Generator().manual_seed(1)
    outline = 0.3 * torch.randn(1, 1, 16, 16, generator=g)
    u, v = outline.clone(), outline.clone()
    u[..., :3, :3] += 60.0  # the trained classifier's evidence: a corner blob
    v[..., -3:, -3:] += 60.0  # the randomized one's: another corner
    pearson = independence_loss(u, v, "pearson").item()
    spearman = independence_loss(u, v, "spearman").item()
    assert pearson < 0.05 < 0.5 < spearman


def test_the_pearson_measure_is_the_squared_correlation_of_the_soft_clipped_maps():
    """``r²`` of ``c·tanh(u/c)``: 1 for an affine copy inside the clip (either sign), 0 for an orthogonal or
    a constant map."""
    from medcam_fast.explainer.meta import independence_loss

    u = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2) / 10
    flip = torch.tensor([[1.0, -1.0], [1.0, -1.0]]).view(1, 1, 2, 2) / 10
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).view(1, 1, 2, 2)  # centred u is (-1.5,-.5,.5,1.5)/10
    p = "pearson"
    assert independence_loss(u, 2 * u + 0.1, p).item() == pytest.approx(1.0, abs=2e-3)
    assert independence_loss(u, -u, p).item() == pytest.approx(1.0, abs=1e-3)
    assert independence_loss(u, torch.full_like(u, 5.0), p).item() == pytest.approx(0.0, abs=1e-4)
    assert independence_loss(u, checker, p).item() == pytest.approx(0.0, abs=1e-4)
    assert independence_loss(u, flip, p).item() == pytest.approx(0.2, abs=1e-3)  # r = -1/√5


def test_the_decoder_is_trained_against_a_randomized_classifier_and_the_unet_is_not(lesion_bundle, images):
    """The independence term is logged for the decoder (it reads the classifier) and absent for the U-Net;
    with λ_ind = 0 it is not computed, and the run is otherwise unchanged."""
    logs: dict[str, list[dict[str, float]]] = {"dec": [], "off": [], "unet": []}
    cfg = MetaConfig(inner_steps=0, outer_steps=2, meta_batch=4, width=4)
    meta_train(lesion_bundle, images, cfg, callback=lambda s, log: logs["dec"].append(log))
    meta_train(lesion_bundle, images, MetaConfig(inner_steps=0, outer_steps=2, meta_batch=4, width=4, independence=0),
               callback=lambda s, log: logs["off"].append(log))
    meta_train(lesion_bundle, images, FAST, stop_after=1, callback=lambda s, log: logs["unet"].append(log))
    assert all(0.0 <= log["independence"] <= 1.0 for log in logs["dec"])
    assert not any("independence" in log for log in logs["off"] + logs["unet"])
    assert logs["off"][0]["zero"] == pytest.approx(logs["dec"][0]["zero"])  # the same first step's loss


def test_the_randomized_classifier_is_the_last_cascade_stage_and_never_the_sanity_checks_draw(lesion_bundle):
    """``randomized(model, s)`` equals the cascade's last stage at seed ``s``; meta-training's draws start at 1."""
    from medcam_fast.classifiers.randomize import cascading_randomization, randomized
    from medcam_fast.explainer.meta import RANDOM_CLASSIFIER_EVERY, random_classifier

    model = lesion_bundle.model
    *_, (_, last) = cascading_randomization(model, seed=3)
    full = randomized(model, seed=3)
    for (n, a), (_, b) in zip(last.state_dict().items(), full.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    clf = lesion_bundle.frozen()
    sanity = randomized(model, seed=0).state_dict()
    draws = [random_classifier(clf, step, MetaConfig().seed).model.state_dict() for step in (0, RANDOM_CLASSIFIER_EVERY)]
    weights = [n for n, t in sanity.items() if t.is_floating_point() and t.dim() > 1]
    for drawn in draws:
        assert all(not torch.equal(drawn[n], sanity[n]) for n in weights)
    assert all(not torch.equal(draws[0][n], draws[1][n]) for n in weights)  # a new draw every N steps

