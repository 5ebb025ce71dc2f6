"""Learned refinement steps: ``u_{k+1} = u_k − a·ĝ_k + f_φ(…)`` for the first ``K_φ`` steps, Adam after."""

from __future__ import annotations

import pytest
import torch

from medcam_fast.data.lesions import make_lesions
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.explainer.steps import StepTrainConfig, draw_seed, train_steps
from medcam_fast.method.first_guess import first_guess
from medcam_fast.method.inner import adapt_logits
from medcam_fast.method.learned import StepNet, StepNetConfig, gradient_of_logits, learned_adapt
from medcam_fast.method.refine import RefineConfig, refine, uses_learned_steps


@pytest.fixture
def problem(lesion_problem):
    return lesion_problem


def _random_net(config: StepNetConfig = StepNetConfig(), seed: int = 0) -> StepNet:
    torch.manual_seed(seed)
    net = StepNet(config)
    with torch.no_grad():
        for p in net.f[-1].parameters():
            p.normal_(0, 0.1)
    return net.eval()


def test_an_untrained_step_is_normalized_gradient_descent():
    net = StepNet(StepNetConfig(steps=3))
    gen = torch.Generator().manual_seed(0)
    u, g, u0 = (torch.randn(2, 1, 5, 5, generator=gen) for _ in range(3))
    g[1] *= 1000.0  # the step does not depend on the gradient's scale
    rms = g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    with torch.no_grad():
        out = net(u, g, u0, 1)
    assert torch.allclose(out, u - g / rms, atol=1e-6)
    assert float((out - u)[1].pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-5)


def test_zero_steps_return_the_first_guess_itself_unclipped(problem):
    u0 = torch.full((4, 1, 8, 8), 9.0)
    assert torch.equal(learned_adapt(problem, u0, 0, _random_net()), u0)


def test_k_learned_steps_then_adam_steps_from_where_they_left_off(problem):
    net = _random_net(StepNetConfig(steps=2))
    u0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 5
    start = u0.clamp(-3, 3)

    def by_hand(k: int) -> torch.Tensor:  # the hard phase from ⌊0.7·2⌋ = 1; the same robustness draws
        gen = problem.generators(0)
        with torch.no_grad():
            u1 = net(start, gradient_of_logits(problem, start, False, gen), start, 0)
            u2 = net(u1, gradient_of_logits(problem, u1, True, gen), start, 1)
        return u2 if k == 2 else adapt_logits(problem, u2, k - 2, 1.0, 0.7, gen, clip=None)

    for k in (2, 5):
        assert torch.allclose(learned_adapt(problem, u0, k, net, lr=1.0, generator=problem.generators(0)),
                              by_hand(k), atol=1e-5)
    with torch.no_grad():  # one step asked: one learned step, its gradient hard (⌊0.7·1⌋ = 0)
        one = net(start, gradient_of_logits(problem, start, True, problem.generators(0)), start, 0)
    assert torch.allclose(learned_adapt(problem, u0, 1, net, generator=problem.generators(0)), one, atol=1e-6)


def test_refine_takes_learned_steps_unless_told_not_to_or_smoothing(problem):
    net = _random_net()
    u0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    adam = refine(problem, RefineConfig(steps=3), first_guess=u0)
    off = refine(problem, RefineConfig(steps=3, learned=False), first_guess=u0, steps_net=net)
    learned = refine(problem, RefineConfig(steps=3, keep_best=False), first_guess=u0, steps_net=net)
    assert torch.equal(adam.logits, off.logits)
    gen = problem.generators(0)
    assert torch.allclose(learned.logits, torch.nn.functional.interpolate(
        learned_adapt(problem, u0, 3, net, generator=gen), size=(32, 32), mode="bilinear")[:, 0], atol=1e-5)
    assert not torch.allclose(learned.logits, adam.logits)
    assert uses_learned_steps(RefineConfig(steps=3), net)
    for config in (RefineConfig(steps=3, smooth=1.0), RefineConfig(steps=0), RefineConfig(steps=3, learned=False),
                   RefineConfig(steps=3, mode="full")):
        assert not uses_learned_steps(config, net)
    assert not uses_learned_steps(RefineConfig(steps=3), None)


def test_one_training_update_is_adams_first_step_on_the_documented_objective(lesion_bundle):
    """J(φ) = Σ_k w_k · mean_i L_i(u_k), the last step's loss binary: Adam's first update is −lr·sign(∇J)."""
    images = make_lesions(12, size=32, seed=5).images
    explainer = meta_train(lesion_bundle, images, MetaConfig(inner_steps=0, outer_steps=3, meta_batch=4, width=4))
    config = StepTrainConfig(net=StepNetConfig(steps=2, channels=4), updates=1, batch=len(images), lr=1e-3,
                             intermediate=0.25, other_class_prob=0.0, seed=3)
    trained, facts = train_steps(explainer, lesion_bundle, images, config)
    assert facts["updates"] == 1
    torch.manual_seed(3)
    phi = StepNet(config.net)
    before = {n: p.detach().clone() for n, p in phi.named_parameters()}
    clf = lesion_bundle.frozen(explainer.net_config.tap_names)
    obj = explainer.objective(clf, torch.from_numpy(lesion_bundle.preprocess(images)))
    gen = obj.generators(draw_seed(3, 0))
    with torch.no_grad():
        u0 = first_guess(explainer.net, obj).clamp(-3, 3)
    g0 = gradient_of_logits(obj, u0, False, gen)  # hard phase from ⌊0.7·2⌋ = 1
    u1 = phi(u0, g0, u0, 0)
    l1 = obj.loss_of_logits(u1, hard=True, generator=gen)[0]
    (g1,) = torch.autograd.grad(l1.sum(), u1, retain_graph=True)
    u2 = phi(u1, g1.detach(), u0, 1)
    l2 = obj.loss_of_logits(u2, hard=True, generator=gen)[0]
    (0.25 * l1.mean() + l2.mean()).backward()
    moved = 0
    for n, p in trained.named_parameters():
        g = phi.get_parameter(n).grad
        firm = g.abs() > 1e-6
        step = (p.detach() - before[n])[firm]
        assert torch.allclose(step, -1e-3 * g[firm].sign(), rtol=1e-3, atol=1e-7), n
        assert torch.all((p.detach() - before[n])[g == 0] == 0), n
        moved += int(firm.sum())
    assert moved > 0 and trained.f[-1].weight.abs().max() > 0  # the zero-initialized last layer learns first


def test_the_independence_term_reaches_the_steps_and_is_logged(lesion_bundle):
    """λ > 0 adds mean r²(u_K, ũ_K) through a randomized classifier: logged in [0, 1], and it moves φ."""
    images = make_lesions(8, size=32, seed=5).images
    explainer = meta_train(lesion_bundle, images, MetaConfig(inner_steps=0, outer_steps=3, meta_batch=4, width=4))
    base = StepTrainConfig(net=StepNetConfig(steps=2, channels=4), updates=1, batch=8, seed=2)
    plain, plain_facts = train_steps(explainer, lesion_bundle, images, base)
    ind, ind_facts = train_steps(explainer, lesion_bundle, images, base.with_(independence=5.0))
    assert "independence" not in plain_facts["final"]
    assert 0.0 <= ind_facts["final"]["independence"] <= 1.0
    assert ind_facts["final"]["loss2"] == pytest.approx(plain_facts["final"]["loss2"])  # same batch, same steps
    moved = [n for n, p in ind.named_parameters() if not torch.equal(p, plain.get_parameter(n))]
    assert moved, "the independence term's gradient did not reach φ"
    with pytest.raises(ValueError, match="independence must be ≥ 0"):
        base.with_(independence=-1.0)
