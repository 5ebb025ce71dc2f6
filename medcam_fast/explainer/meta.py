"""explainer.meta: TODO docstring (split from meta.py)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.func import functional_call

from .._io import atomic_write, atomic_write_json
from ..classifiers.frozen import ClassifierBundle, FrozenClassifier
from ..errors import ModelError, UsageError
from ..method.fit import FitConfig
from ..method.inner import Params, adapt, adapt_logits, task_losses
from ..method.losses import TERMS, LossWeights, Reference, composite_loss
from ..method.masking import make_baseline, mask_from_logits
from ..method.unet import UNet, UNetConfig, auto_downsample
from .bundle import ExplainerBundle, InnerLoop

__all__ = ["MetaConfig", "meta_train"]


@dataclass(frozen=True)
class MetaConfig:
    """Settings of meta-training.

    Args:
        inner_steps: K, adaptation steps per image (0 = amortized training, no inner loop).
        inner_mode: what the inner loop adapts: ``"weights"`` (MAML on the U-Net weights, SGD) or
            ``"logits"`` (the mask logits, Adam, first order; see the module docstring).
        inner_lr: initial inner step size α (SGD on weights, or Adam on logits).
        first_order: first-order MAML (no gradients through the inner gradients).
        meta_sgd: learn one inner step size per parameter tensor (Meta-SGD).
        outer_steps: meta-updates.
        outer_lr: Adam learning rate of the outer loop.
        meta_batch: images (tasks) per meta-update.
        zero_step_weight: λ₀, weight of the loss of the un-adapted U-Net in the outer objective.
        other_class_prob: probability of training on a class other than the predicted one.
        width: U-Net width.
        depth: U-Net depth.
        tau: mask temperature τ.
        baseline: what replaces removed pixels.
        weights: composite-loss weights.
        seed: seeds initialization, sampling and perturbations.
        checkpoint_every: outer steps between checkpoints.
    """

    inner_steps: int = 3
    inner_mode: str = "weights"
    inner_lr: float = 0.1
    first_order: bool = False
    meta_sgd: bool = False
    outer_steps: int = 400
    outer_lr: float = 2e-3
    meta_batch: int = 8
    zero_step_weight: float = 0.5
    other_class_prob: float = 0.2
    width: int = 16
    depth: int = 3
    tau: float = 1.0
    baseline: str = "blur"
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        if self.inner_mode not in ("weights", "logits"):
            raise UsageError(f"unknown inner mode {self.inner_mode!r}: choose weights or logits")
        if self.inner_mode == "logits" and not self.first_order:
            raise UsageError("the logits inner loop is first-order (Adam is not differentiated): add --first-order")
        if self.inner_mode == "logits" and self.meta_sgd:
            raise UsageError("--meta-sgd learns per-tensor U-Net step sizes; it needs --inner-mode weights")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (weights nested)."""
        d = asdict(self)
        d["weights"] = self.weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        w = LossWeights.from_dict(d.pop("weights", {}))
        return cls(**d, weights=w)

    def with_(self, **changes: Any) -> MetaConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


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
        tensors = load_file(str(folder / "checkpoint.safetensors"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read checkpoint: {e}", folder) from e
    if MetaConfig.from_dict(meta["config"]) != cfg:
        raise UsageError("the checkpoint was written with other settings; resume with the same options", meta_path)
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
    return int(meta["step"]), list(meta["history"]), float(meta["seconds"])


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

    Returns:
        The explainer bundle (also saved to ``out_dir`` when given).
    """
    cfg = config
    pre = classifier.preprocess
    clf: FrozenClassifier = classifier.frozen()
    x_all = torch.from_numpy(pre(images))
    with torch.no_grad():
        pred_all = torch.cat([clf.logits(x_all[i : i + 256]).argmax(1) for i in range(0, len(x_all), 256)])
    k = len(classifier.classes)
    torch.manual_seed(cfg.seed)
    unet = UNet(UNetConfig(pre.channels, k, cfg.width, cfg.depth, downsample=auto_downsample(max(pre.size))))
    if init is not None:
        if init.unet.config != unet.config:
            raise UsageError(f"--init explainer has U-Net {init.unet.config}, expected {unet.config}")
        unet.load_state_dict(init.unet.state_dict())
    theta: Params = {n: p.detach().clone().requires_grad_(True) for n, p in unet.named_parameters()}
    lrs: Params = {}
    if cfg.meta_sgd and cfg.inner_steps > 0:
        lrs = {n: torch.tensor(math.log(cfg.inner_lr), requires_grad=True) for n in theta}
    opt = torch.optim.Adam(list(theta.values()) + list(lrs.values()), lr=cfg.outer_lr)
    folder = Path(out_dir) if out_dir is not None else None
    step, history, seconds = 0, [], 0.0
    if resume:
        if folder is None or not (folder / "checkpoint.json").exists():
            raise UsageError("nothing to resume: no checkpoint.json", folder)
        step, history, seconds = _load_checkpoint(folder, theta, lrs, opt, cfg)
    done_here = 0
    out_of_time = False
    while step < cfg.outer_steps:
        t0 = time.perf_counter()
        idx = torch.from_numpy(_sample(len(x_all), step, cfg))
        x = x_all[idx]
        target = _targets(pred_all[idx], k, step, cfg)
        with torch.no_grad():
            ref = Reference(*clf(x))
        base = make_baseline(x, cfg.baseline, pre.mean, pre.std)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        # θ is shared at zero steps: one batched call (GroupNorm and FiLM act per image).
        u0 = functional_call(unet, theta, (x, target))
        zero_total, zero_terms = composite_loss(clf, x, mask_from_logits(u0, cfg.tau), target, ref, base,
                                                cfg.weights, gen)
        log = {"zero": float(zero_total.detach().mean())}
        if cfg.inner_steps > 0 and cfg.inner_mode == "logits":
            u_k = adapt_logits(clf, x, u0, target, ref, base, cfg.weights, cfg.tau, cfg.inner_steps, cfg.inner_lr,
                               FitConfig.hard_after, gen)
            shifted = u0 + (u_k - u0.detach())
            k_total, k_terms = composite_loss(clf, x, mask_from_logits(shifted, cfg.tau, hard=True), target, ref,
                                              base, cfg.weights, gen)
            objective = k_total.mean() + cfg.zero_step_weight * zero_total.mean()
            log["adapted"] = float(k_total.detach().mean())
            log.update({t: float(k_terms[t].detach().mean()) for t in TERMS})
        elif cfg.inner_steps > 0:
            lr = {n: v.exp() for n, v in lrs.items()} if lrs else cfg.inner_lr
            adapted = adapt(unet, theta, clf, x, target, ref, base, cfg.weights, cfg.tau, cfg.inner_steps, lr,
                            cfg.first_order, gen)
            k_total, k_terms = task_losses(unet, adapted, clf, x, target, ref, base, cfg.weights, cfg.tau, gen)
            objective = k_total.mean() + cfg.zero_step_weight * zero_total.mean()
            log["adapted"] = float(k_total.detach().mean())
            log.update({t: float(k_terms[t].detach().mean()) for t in TERMS})
        else:
            objective = zero_total.mean()
            log.update({t: float(zero_terms[t].detach().mean()) for t in TERMS})
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        step += 1
        done_here += 1
        seconds += time.perf_counter() - t0
        log["step"] = step
        log["seconds"] = seconds
        history.append(log)
        if callback is not None:
            callback(step, log)
        out_of_time = time_budget is not None and seconds >= time_budget
        if folder is not None and (step % cfg.checkpoint_every == 0 or step == cfg.outer_steps or out_of_time):
            _save_checkpoint(folder, step, theta, lrs, opt, cfg, history, seconds)
        if (stop_after is not None and done_here >= stop_after) or out_of_time:
            break

    with torch.no_grad():
        for n, p in unet.named_parameters():
            p.copy_(theta[n])
    inner = InnerLoop(
        steps=cfg.inner_steps,
        mode=cfg.inner_mode,
        lr=cfg.inner_lr,
        first_order=cfg.first_order,
        lrs={n: float(v.detach().exp()) for n, v in lrs.items()} or None,
    )
    bundle = ExplainerBundle(
        unet=unet.eval(),
        preprocess=pre,
        classes=list(classifier.classes),
        classifier_sha256=classifier.sha256,
        tau=cfg.tau,
        baseline=cfg.baseline,
        weights=cfg.weights,
        inner=inner,
        training={"method": (("maml-logits" if cfg.inner_mode == "logits" else "maml") if cfg.inner_steps
                             else "amortized") + ("+init" if init is not None else ""),
                  "init": None if init is None else init.training, "config": cfg.to_dict(),
                  "steps_done": step, "seconds": seconds, "n_images": int(len(x_all)),
                  "final": history[-1] if history else {}},
    )
    if folder is not None and (step >= cfg.outer_steps or out_of_time):
        from .bundle import save_explainer

        save_explainer(bundle, folder)
    return bundle
