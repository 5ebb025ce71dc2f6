"""Meta-training one shared first-guess network on the composite loss (MAML, with torch.func), and amortized
training.

The network (:class:`~medcam_fast.types.Architecture`) is by default the classifier-aware
:class:`~medcam_fast.method.decoder.FeatureDecoder`: it reads the frozen classifier's activations from the same
batched reference pass the loss needs, so only the decoder is trained and the classifier is shared between
the loss and the first guess; its coarse-grid logits are what the inner loop adapts. The classifier-blind
U-Net stays available (``architecture="unet"``) for comparison, and is the only one the weights loop adapts.

Each image is a task. With shared weights θ, a meta-batch of images ``x_i`` with targets ``c_i``:

    inner loop (per image, K steps):  θ_i⁰ = θ,   θ_iᵏ⁺¹ = θ_iᵏ − α ⊙ ∇_θ L_i(θ_iᵏ)
    outer objective:                  J(θ) = (1/B) Σ_i [ L_i(θ_iᴷ) + λ₀ · L_i(θ) ]

``L_i(θ) = L(σ(f_θ(x_i, c_i)/τ))`` is :func:`medcam_fast.method.losses.composite_loss`; ``λ₀``
(``zero_step_weight``) keeps the shared U-Net's own output — the first guess exported to ONNX — good without
adaptation. The inner loops are :mod:`medcam_fast.method.inner`: the inner gradients come from
``torch.func.grad`` over ``torch.func.functional_call`` of the U-Net, one set of weights per image;
second-order MAML differentiates through them, ``first_order`` detaches them (FOMAML), exactly learn2learn's
``clone()`` / ``adapt(loss, first_order=…)`` semantics (learn2learn itself does not build on Python ≥ 3.11).
``meta_sgd`` learns the inner step sizes α (one per parameter tensor, Meta-SGD). ``inner_steps = 0`` is
plain amortized training (Dabkowski & Gal 2017): the outer loss at zero steps only.

``inner_mode="logits"`` adapts what refinement at inference adapts — the mask logits, not the weights:

    u_i⁰ = f_θ(x_i, c_i),   u_iᵏ⁺¹ = Adam(u_iᵏ, ∇_u L_i(u_iᵏ))   (K steps, as refinement's logits mode)
    outer objective:        J(θ) = (1/B) Σ_i [ L_i^bin(u_i⁰ + sg(u_iᴷ − u_i⁰)) + λ₀ · L_i(u_i⁰) ]

first order by construction (the Adam trajectory is not differentiated; its end point is reached from
``u⁰`` by a constant shift, so ``∂u^K/∂u⁰ = I``, as in FOMAML), with the K-step loss taken on the
straight-through binary mask the user receives. The U-Net then learns a first guess from which the
deployed refinement — ONNX first guess plus K logit steps — goes furthest.

The images of one meta-batch go through the frozen classifier in one batched call; per-image U-Nets run in
a loop (``torch.func.vmap`` over per-image weights measured ~6× slower on a CPU).

Independence (decoder only). A decoder reads the classifier's features, but a classifier with random
weights still has features that outline the image (random convolutions are edge detectors), and an image
branch reads the image itself: left alone, the decoder learns a prior that survives the randomization sanity
check (measured: Spearman ρ 0.56–0.72 after full randomization on blood, brain MRI and lesions). The outer objective therefore
adds ``λ_ind · L_ind`` (``independence``), with ``Ã`` and ``W̃`` the activations and head of a copy of the
classifier whose every layer is re-initialized (:func:`medcam_fast.classifiers.randomize.randomized`, a new
draw every :data:`RANDOM_CLASSIFIER_EVERY` steps, seeds disjoint from the sanity check's seed 0):

    L_ind = (1/B) Σ_i r_i²,   r_i = Pearson_grid( s(f_θ(x_i, A(x_i), W)_{c_i}),  s(f_θ(x_i, Ã(x_i), W̃)_{c_i}) )

where ``s`` (``independence_measure``, :class:`~medcam_fast.types.Correlation`) is by default the soft rank

    s(u)_j = Σ_k σ((z_j − z_k)/t),   z = (u − median(u)) / (1.4826 · MAD(u)),   t = SOFT_RANK_TEMPERATURE,

so ``r_i`` is a differentiable Spearman ρ — the statistic the sanity check reports; as ``t → 0`` it is
Spearman's exactly (ties count ½). The earlier measure, ``s(u) = c·tanh(u/c)`` with ``c`` =
:data:`~medcam_fast.method.inner.START_CLIP` (refinement's starting clip), is kept as ``pearson``: a Pearson
correlation is carried by the largest logits, so a decoder could drive it to 0.03 on brain MRI while the
ranks of the rest of the map — the image's outline, read through the randomized classifier — still gave
Spearman ρ ≈ 0.35 (measured on 32 test images, three random draws). The first guess of a meaningless
classifier shares no spatial structure with the trained one's: what the decoder shows must come from what the
classifier learned. Only θ is trained; neither classifier is.

Targets: the predicted class, or with probability ``other_class_prob`` another class, so one explainer
explains any class. Sampling depends only on ``(seed, step)``, so a resumed run repeats an uninterrupted
one exactly; each image's robustness draws come from its own generator, seeded by ``(seed, step, position
in the batch)``, so a meta-batch split over processes (``workers``, :mod:`~.distributed`) draws what one
process draws.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.func import functional_call

from .._config import Config
from .._io import atomic_write, atomic_write_json
from ..classifiers.frozen import ClassifierBundle, FrozenClassifier
from ..classifiers.randomize import randomized
from ..errors import MedCamError, ModelError, UsageError, one_line
from ..method.decoder import DecoderConfig, FeatureDecoder, describe_taps, select_class
from ..method.first_guess import first_guess, head_of
from ..method.inner import (
    HARD_AFTER,
    START_CLIP,
    STEP_SIZES,
    InnerLoop,
    Params,
    adapt,
    adapt_logits,
    task_losses,
)
from ..method.losses import TERMS, LossWeights
from ..method.masking import THRESHOLD
from ..method.objective import Objective
from ..method.unet import UNetConfig, auto_downsample
from ..types import Architecture, BaselineKind, Correlation, InnerMode, LRSchedule, choice
from .bundle import ExplainerBundle, NetConfig, build_net, save_explainer

if TYPE_CHECKING:
    from .distributed import World

__all__ = ["MetaConfig", "meta_train", "independence_loss", "soft_clip", "soft_rank", "outer_learning_rate",
           "RANDOM_CLASSIFIER_EVERY", "SOFT_RANK_TEMPERATURE", "random_classifier"]

#: Outer steps between two draws of the randomized classifier of the independence term.
RANDOM_CLASSIFIER_EVERY = 10
#: Temperature ``t`` of :func:`soft_rank`, in robust standard deviations of the map (1.4826 · MAD): about two
#: neighbours' spacing on a 16 × 16 grid, so ranks are nearly exact and every cell still has a gradient.
SOFT_RANK_TEMPERATURE = 0.05


@dataclass(frozen=True)
class MetaConfig(Config):
    """Settings of meta-training.

    Args:
        architecture: the first-guess network: ``decoder`` (over the classifier's features, every class at
            once, coarse grid) or ``unet`` (classifier-blind, pixel logits).
        inner_steps: K, adaptation steps per image (0 = amortized training, no inner loop).
        inner_mode: what the inner loop adapts: ``"weights"`` (MAML on the U-Net weights, SGD) or
            ``"logits"`` (the mask logits, Adam, first order; see the module docstring).
        inner_lr: initial inner step size α (SGD on weights, or Adam on logits); None resolves to the loop's
            default, :data:`~medcam_fast.method.inner.STEP_SIZES` (0.1 weights, 1.0 logits).
        first_order: first-order MAML (no gradients through the inner gradients).
        meta_sgd: learn one inner step size per parameter tensor (Meta-SGD).
        outer_steps: meta-updates.
        outer_lr: Adam learning rate of the outer loop, ``η₀``.
        lr_schedule: how it moves over the run (:func:`outer_learning_rate`): constant, or cosine-annealed to
            zero by the end of ``outer_steps`` or of the time budget, whichever comes first.
        meta_batch: images (tasks) per meta-update.
        zero_step_weight: λ₀, weight of the loss of the un-adapted U-Net in the outer objective.
        other_class_prob: probability of training on a class other than the predicted one.
        width: channels of the network; None: 32 for the decoder, 16 for the U-Net (its first stage).
        depth: U-Net depth (the decoder has none).
        tau: mask temperature τ.
        baseline: what replaces removed pixels.
        weights: composite-loss weights.
        seed: seeds initialization, sampling and perturbations.
        checkpoint_every: outer steps between checkpoints.
        independence_measure: the correlation ``L_ind`` squares (``spearman`` or ``pearson``, module docstring).
        independence: λ_ind, weight of the independence term ``L_ind`` (module docstring); decoder only (the
            U-Net never reads the classifier, so the term is not computed for it).
    """

    architecture: Architecture = Architecture.DECODER
    inner_steps: int = 10
    inner_mode: InnerMode = InnerMode.LOGITS
    inner_lr: float | None = None
    first_order: bool = True
    meta_sgd: bool = False
    outer_steps: int = 400
    outer_lr: float = 2e-3
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    meta_batch: int = 8
    zero_step_weight: float = 0.5
    other_class_prob: float = 0.2
    width: int | None = None
    depth: int = 3
    tau: float = 1.0
    baseline: BaselineKind = BaselineKind.BLUR
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    checkpoint_every: int = 25
    independence: float = 3.0
    independence_measure: Correlation = Correlation.SPEARMAN

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_schedule", choice(LRSchedule, self.lr_schedule, "learning-rate schedule"))
        object.__setattr__(self, "independence_measure",
                           choice(Correlation, self.independence_measure, "independence measure"))
        mode = choice(InnerMode, self.inner_mode, "inner mode")
        object.__setattr__(self, "inner_mode", mode)
        arch = choice(Architecture, self.architecture, "architecture")
        object.__setattr__(self, "architecture", arch)
        if arch is Architecture.DECODER and mode is InnerMode.WEIGHTS and self.inner_steps > 0:
            raise UsageError("the weights inner loop adapts a U-Net: use the logits inner mode with the decoder, "
                             "or the unet architecture")
        object.__setattr__(self, "baseline", choice(BaselineKind, self.baseline, "baseline"))
        if mode is InnerMode.LOGITS and not self.first_order:
            raise UsageError("the logits inner loop is first-order (Adam is not differentiated): set first_order")
        if mode is InnerMode.LOGITS and self.meta_sgd:
            raise UsageError("meta_sgd learns per-tensor U-Net step sizes: it needs the weights inner mode")

    @property
    def net_width(self) -> int:
        """The network's width: ``width``, or 32 (decoder) / 16 (U-Net) when it is None."""
        if self.width is not None:
            return self.width
        return 32 if self.architecture is Architecture.DECODER else 16

    @property
    def step_size(self) -> float:
        """The inner step size α: ``inner_lr``, or the loop's default when it is None."""
        return float(self.inner_lr if self.inner_lr is not None else STEP_SIZES[self.inner_mode])

    def resolved(self) -> MetaConfig:
        """The same settings with ``inner_lr`` and ``width`` filled in (what the run actually uses)."""
        return replace(self, inner_lr=self.step_size, width=self.net_width)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaConfig:
        """Inverse of :meth:`to_dict`; a record written before ``lr_schedule`` existed trained at a constant
        rate, whatever the default is now."""
        return super().from_dict({"lr_schedule": LRSchedule.CONSTANT.value, **d})


def outer_learning_rate(base: float, progress: float, schedule: LRSchedule) -> float:
    """The outer learning rate after a share ``progress`` of the run (clipped to [0, 1]):

        constant:  η(p) = η₀
        cosine:    η(p) = η₀ · ½ (1 + cos π p)      (Loshchilov & Hutter 2017, one cycle, no restart)

    Args:
        base: ``η₀``, the configured ``outer_lr``.
        progress: ``p``, the share of the run done before the step: the larger of ``step / outer_steps`` and
            ``seconds / time_budget``, since either may end the run.
        schedule: which of the two.
    """
    if schedule is LRSchedule.CONSTANT:
        return base
    p = min(max(progress, 0.0), 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * p))


def _sample(n_images: int, step: int, cfg: MetaConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, step])
    return rng.choice(n_images, size=min(cfg.meta_batch, n_images), replace=False)


def _targets(pred: Tensor, k: int, step: int, cfg: MetaConfig) -> Tensor:
    rng = np.random.default_rng([cfg.seed, step, 1])
    t = pred.clone()
    if k > 1:
        other = rng.random(len(t)) < cfg.other_class_prob
        shift = torch.from_numpy(rng.integers(1, k, size=len(t)))
        t = torch.where(torch.from_numpy(other), (t + shift) % k, t)
    return t


def _draws(cfg: MetaConfig, step: int, n: int) -> list[torch.Generator]:
    """One random source per image of step ``step``'s meta-batch, seeded by ``(seed, step, position)``: an
    image's robustness draws do not depend on the other images of the batch, nor on which process computes it
    (:mod:`~medcam_fast.explainer.distributed`)."""
    states = [np.random.SeedSequence([cfg.seed, step, j]).generate_state(2, np.uint32) for j in range(n)]
    return [torch.Generator().manual_seed(int(a) << 31 | int(b) >> 1) for a, b in states]


def independence_loss(u: Tensor, u_random: Tensor, measure: Correlation = Correlation.SPEARMAN,
                      eps: float = 1e-6) -> Tensor:
    """``r_i²`` per image: the squared correlation over grid cells of two logit maps ``[B,1,h,w]`` (the first
    guess read from the trained classifier and from a randomized one), after ``s`` (module docstring). 0 when
    they share no ordering (Spearman) or no linear structure (Pearson), 1 when one is a monotone (Spearman) or
    affine (Pearson) copy of the other; a constant map counts as uncorrelated.

    Args:
        u: first-guess logits from the trained classifier's features.
        u_random: the same network's logits from the randomized classifier's features.
        measure: ``spearman`` (soft ranks, :func:`soft_rank`) or ``pearson`` (soft-clipped logits, :func:`soft_clip`).
        eps: keeps the correlation of a constant map finite (0).
    """
    s = soft_rank if choice(Correlation, measure, "independence measure") is Correlation.SPEARMAN else soft_clip
    a, b = s(u).flatten(1), s(u_random).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / ((a.pow(2).sum(1) * b.pow(2).sum(1)).add(eps).sqrt())
    return r.pow(2)


def soft_clip(u: Tensor, c: float = START_CLIP) -> Tensor:
    """``c·tanh(u/c)``: the clip refinement starts from (``±c``), differentiable."""
    return c * torch.tanh(u / c)


def soft_rank(u: Tensor, t: float = SOFT_RANK_TEMPERATURE, eps: float = 1e-6) -> Tensor:
    """Differentiable ranks over each map's cells, ``s(u)_j = Σ_k σ((z_j − z_k)/t)`` with
    ``z = (u − median(u)) / (1.4826 · MAD(u))`` (a robust standardization: a few logits of ±40 would otherwise
    inflate the standard deviation and squeeze the rest of the map into ties); ``[B,…]`` → ``[B,n]``. Ranks
    from ½ (lowest) to ``n − ½`` as ``t → 0``; a constant map gets ``n/2`` everywhere.

    Args:
        u: maps, one per batch row.
        t: temperature, in robust standard deviations of the map.
        eps: keeps a constant map's standardization finite.
    """
    f = u.flatten(1)
    centred = f - f.median(1, keepdim=True).values
    z = centred / (1.4826 * centred.abs().median(1, keepdim=True).values + eps)
    return torch.sigmoid((z.unsqueeze(2) - z.unsqueeze(1)) / t).sum(2)


def random_classifier(clf: FrozenClassifier, step: int, seed: int) -> FrozenClassifier:
    """The independence term's randomized classifier for ``step`` of a run seeded ``seed``: a fresh draw every
    :data:`RANDOM_CLASSIFIER_EVERY` steps, seeded by ``(seed, draw)`` and never with the sanity check's seed 0."""
    draw = step // RANDOM_CLASSIFIER_EVERY
    model = randomized(clf.model, seed=1 + seed * 1_000_003 + draw)
    return FrozenClassifier(model, clf.layers, num_classes=clf.num_classes)


def _net_config(cfg: MetaConfig, clf: FrozenClassifier, example: Tensor, channels: int, k: int,
                size: tuple[int, int]) -> NetConfig:
    """The shape of the network to train: a decoder reads the classifier's activation layers (their shapes
    from one forward pass of ``example``) and, when the head's input width matches one of them, its head."""
    if cfg.architecture is Architecture.UNET:
        return UNetConfig(channels, k, cfg.net_width, cfg.depth, downsample=auto_downsample(max(size)))
    with torch.no_grad():
        _, acts = clf(example)
    try:
        taps = describe_taps(acts, size)
    except ValueError as e:
        raise ModelError(f"the decoder cannot read this classifier: {e}") from None
    head = head_of(clf)
    width_in = None if head is None else int(head[0].shape[1])
    cam = [t.name for t in taps if t.channels == width_in]
    return DecoderConfig(channels, k, size, taps, cam[-1] if cam else None, width=cfg.net_width)


def _save_checkpoint(folder: Path, step: int, theta: Params, lrs: Params, opt: torch.optim.Optimizer,
                     cfg: MetaConfig, history: list[dict[str, float]], seconds: float) -> None:
    tensors: dict[str, Tensor] = {f"theta.{k}": v.detach().contiguous() for k, v in theta.items()}
    tensors.update({f"lr.{k}": v.detach().contiguous() for k, v in lrs.items()})
    names = list(theta) + [f"lr.{k}" for k in lrs]
    for name, p in zip(names, opt.param_groups[0]["params"], strict=True):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"adam.{key}.{name}"] = st[key].contiguous()
        if "step" in st:
            tensors[f"adam.step.{name}"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    atomic_write(folder / "checkpoint.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(folder / "checkpoint.json", {
        "step": step, "config": cfg.to_dict(), "history": history, "seconds": seconds,
    })


def _load_checkpoint(folder: Path, theta: Params, lrs: Params, opt: torch.optim.Optimizer,
                     cfg: MetaConfig) -> tuple[int, list[dict[str, float]], float]:
    meta_path = folder / "checkpoint.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        saved = MetaConfig.from_dict(meta["config"]).resolved()
        step, history, seconds = int(meta["step"]), list(meta["history"]), float(meta["seconds"])
    except (OSError, ValueError, KeyError, TypeError, MedCamError) as e:
        raise ModelError(f"damaged checkpoint.json ({one_line(e)}); start afresh instead of resuming", meta_path) from None
    try:
        tensors = load_file(str(folder / "checkpoint.safetensors"))
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error type for a damaged file
        raise ModelError(f"damaged checkpoint ({one_line(e)}); start afresh instead of resuming",
                         folder / "checkpoint.safetensors") from None
    if saved != cfg.resolved():
        raise UsageError("the checkpoint was written with other settings; resume with the same options", meta_path)
    missing = [k for k in [*(f"theta.{k}" for k in theta), *(f"lr.{k}" for k in lrs)] if k not in tensors]
    if missing or any(tensors[f"theta.{k}"].shape != v.shape for k, v in theta.items() if f"theta.{k}" in tensors):
        raise ModelError("the checkpoint's tensors do not fit this U-Net; start afresh instead of resuming",
                         folder / "checkpoint.safetensors")
    with torch.no_grad():
        for k, v in theta.items():
            v.copy_(tensors[f"theta.{k}"])
        for k, v in lrs.items():
            v.copy_(tensors[f"lr.{k}"])
    names = list(theta) + [f"lr.{k}" for k in lrs]
    for name, p in zip(names, opt.param_groups[0]["params"], strict=True):
        if f"adam.exp_avg.{name}" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(tensors[f"adam.step.{name}"][0])),
                "exp_avg": tensors[f"adam.exp_avg.{name}"].clone(),
                "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"].clone(),
            }
    return step, history, seconds


def meta_train(
    classifier: ClassifierBundle,
    images: np.ndarray,
    config: MetaConfig = MetaConfig(),
    out_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    time_budget: float | None = None,
    init: ExplainerBundle | None = None,
    workers: int = 1,
    world: World | None = None,
) -> ExplainerBundle:
    """Meta-train (or, with ``inner_steps=0``, amortize-train) an explainer for ``classifier``.

    Args:
        classifier: the frozen classifier's bundle.
        images: training images (raw, as the bundle's preprocessing takes them), ``[N,H,W(,C)]``.
        config: meta-training settings.
        out_dir: folder for checkpoints (every ``checkpoint_every`` steps, atomically) and the final bundle.
        resume: continue from the checkpoint in ``out_dir``.
        callback: called after each outer step with the step and its logged values.
        stop_after: stop (after checkpointing) once this many outer steps are done in this call (tests).
        time_budget: finish (checkpoint and save the bundle) once training has taken this many seconds in
            all, even before ``outer_steps`` — for comparisons at equal wall time.
        init: start θ from this explainer's U-Net (e.g. meta-train on top of amortized training) instead
            of a fresh initialization; its shape must match ``width``/``depth``.
        workers: train on this many processes, each computing a share of every meta-batch, gradients averaged
            (:mod:`medcam_fast.explainer.distributed`; the same result to float rounding).
        world: set by :mod:`~medcam_fast.explainer.distributed` in each of those processes: this process's
            rank and the number of processes.

    Returns:
        The explainer bundle (also saved to ``out_dir`` when given).
    """
    if workers > 1 and world is None:
        from .distributed import meta_train_parallel

        return meta_train_parallel(meta_train, workers, classifier, images, config, out_dir=out_dir, resume=resume,
                                   callback=callback, stop_after=stop_after, time_budget=time_budget, init=init)
    cfg = config
    pre = classifier.preprocess
    clf: FrozenClassifier = classifier.frozen()
    x_all = torch.from_numpy(pre(images))
    with torch.no_grad():
        pred_all = torch.cat([clf.logits(x_all[i : i + 256]).argmax(1) for i in range(0, len(x_all), 256)])
    k = len(classifier.classes)
    torch.manual_seed(cfg.seed)
    net = build_net(_net_config(cfg, clf, x_all[:1], pre.channels, k, pre.size))
    if init is not None:
        if init.net.config != net.config:
            raise UsageError(f"the initial explainer has network {init.net.config}, expected {net.config}")
        net.load_state_dict(init.net.state_dict())
    theta: Params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
    lrs: Params = {}
    if cfg.meta_sgd and cfg.inner_steps > 0:
        lrs = {n: torch.tensor(math.log(cfg.step_size), requires_grad=True) for n in theta}
    opt = torch.optim.Adam(list(theta.values()) + list(lrs.values()), lr=cfg.outer_lr)
    folder = Path(out_dir) if out_dir is not None else None
    step, history, seconds = 0, [], 0.0
    if resume:
        if folder is None or not (folder / "checkpoint.json").exists():
            raise UsageError("nothing to resume: no checkpoint.json", folder)
        step, history, seconds = _load_checkpoint(folder, theta, lrs, opt, cfg)
    done_here = 0
    out_of_time = False
    random_clf: FrozenClassifier | None = None
    clock = seconds  # the run's time as every process agrees on it (the ranks' mean, logged) for the schedule
    while step < cfg.outer_steps:
        t0 = time.perf_counter()
        progress = max(step / cfg.outer_steps, clock / time_budget if time_budget else 0.0)
        for group in opt.param_groups:
            group["lr"] = outer_learning_rate(cfg.outer_lr, progress, cfg.lr_schedule)
        idx = torch.from_numpy(_sample(len(x_all), step, cfg))
        target = _targets(pred_all[idx], k, step, cfg)
        gen = _draws(cfg, step, len(idx))
        if world is not None:  # this process's share of the meta-batch
            part = world.share(len(idx))
            idx, target, gen = idx[part], target[part], gen[part]
        x = x_all[idx]
        obj = Objective.build(clf, x, target, baseline=cfg.baseline, weights=cfg.weights, tau=cfg.tau,
                              normalization=(pre.mean, pre.std))
        # θ is shared at zero steps: one batched call (GroupNorm and FiLM act per image).
        u0 = first_guess(net, obj, theta)
        zero_total, zero_terms = obj.loss_of_logits(u0, generator=gen)
        log = {"zero": float(zero_total.detach().mean()), "lr": float(opt.param_groups[0]["lr"])}
        if cfg.inner_steps > 0 and cfg.inner_mode is InnerMode.LOGITS:
            u_k = adapt_logits(obj, u0, cfg.inner_steps, cfg.step_size, HARD_AFTER, gen)
            shifted = u0 + (u_k - u0.detach())
            k_total, k_terms = obj.loss_of_logits(shifted, hard=True, generator=gen)
            objective = k_total.mean() + cfg.zero_step_weight * zero_total.mean()
            log["adapted"] = float(k_total.detach().mean())
            log.update({t: float(k_terms[t].detach().mean()) for t in TERMS})
        elif cfg.inner_steps > 0:
            lr = {n: v.exp() for n, v in lrs.items()} if lrs else cfg.step_size
            adapted = adapt(net, theta, obj, cfg.inner_steps, lr, cfg.first_order, gen)  # a U-Net (checked)
            k_total, k_terms = task_losses(net, adapted, obj, gen)
            objective = k_total.mean() + cfg.zero_step_weight * zero_total.mean()
            log["adapted"] = float(k_total.detach().mean())
            log.update({t: float(k_terms[t].detach().mean()) for t in TERMS})
        else:
            objective = zero_total.mean()
            log.update({t: float(zero_terms[t].detach().mean()) for t in TERMS})
        if cfg.independence > 0 and isinstance(net, FeatureDecoder):
            if random_clf is None or step % RANDOM_CLASSIFIER_EVERY == 0:
                random_clf = random_classifier(clf, step, cfg.seed)
            with torch.no_grad():
                _, random_acts = random_clf(x)
            u_random = select_class(functional_call(net, theta, (obj.x, random_acts, head_of(random_clf))), target)
            ind = independence_loss(u0, u_random, cfg.independence_measure)
            objective = objective + cfg.independence * ind.mean()
            log["independence"] = float(ind.detach().mean())
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if world is not None:
            world.average_gradients(list(theta.values()) + list(lrs.values()))
        opt.step()
        step += 1
        done_here += 1
        seconds += time.perf_counter() - t0
        log["step"] = step
        log["seconds"] = seconds
        if world is not None:
            log = world.mean_log(log)
        clock = log["seconds"]
        history.append(log)
        if callback is not None:
            callback(step, log)
        out_of_time = time_budget is not None and seconds >= time_budget
        if world is not None:
            out_of_time = world.any(out_of_time)  # every process stops at the same step
        writes = folder is not None and (world is None or world.root)
        if writes and (step % cfg.checkpoint_every == 0 or step == cfg.outer_steps or out_of_time):
            _save_checkpoint(folder, step, theta, lrs, opt, cfg, history, seconds)
        if (stop_after is not None and done_here >= stop_after) or out_of_time:
            break

    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(theta[n])
    inner = InnerLoop(
        steps=cfg.inner_steps,
        mode=cfg.inner_mode,
        lr=cfg.step_size,
        first_order=cfg.first_order,
        lrs={n: float(v.detach().exp()) for n, v in lrs.items()} or None,
    )
    bundle = ExplainerBundle(
        net=net.eval(),
        net_config=net.config,
        threshold=THRESHOLD,
        preprocess=pre,
        classes=list(classifier.classes),
        classifier_sha256=classifier.sha256,
        tau=cfg.tau,
        baseline=cfg.baseline,
        weights=cfg.weights,
        inner=inner,
        training={"method": (("maml-logits" if cfg.inner_mode is InnerMode.LOGITS else "maml") if cfg.inner_steps
                             else "amortized") + ("+init" if init is not None else ""),
                  "init": None if init is None else init.training, "config": cfg.to_dict(),
                  "steps_done": step, "seconds": seconds, "n_images": int(len(x_all)),
                  "final": history[-1] if history else {}},
    )
    if folder is not None and (world is None or world.root) and (step >= cfg.outer_steps or out_of_time):
        save_explainer(bundle, folder)
    return bundle
