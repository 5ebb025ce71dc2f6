"""Model-parameter randomization of a classifier (Adebayo et al. 2018, "Sanity checks for saliency maps").

Two users: the cascading randomization sanity check of ``evaluate`` (:func:`cascading_randomization`, one
stage per parameterized module, output end first) and meta-training of the classifier-aware decoder, which
is taught that a classifier with **every** layer re-initialized (:func:`randomized`) carries no evidence of
the trained one (:mod:`medcam_fast.explainer.meta`, the independence term). Both re-initialize each module
from a seed derived from ``(seed, module name)``, so a stage or a fully randomized copy is reproducible and
device-independent.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["parameterized_modules", "cascading_randomization", "randomized"]


def parameterized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules that own parameters directly (``parameters(recurse=False)``), in
    ``named_modules()`` order: the stages of :func:`cascading_randomization`, input end first."""
    return [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def _module_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from ``(seed, module name)``, stable across processes and platforms."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _randomize_module(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters in place, reproducibly, leaving buffers and the global RNG alone.

    The new values are drawn on the CPU (so they are the same on every device) and copied into the
    parameters: ``reset_parameters()`` of a CPU copy of the module when it has one, else ``N(0, 0.02²)``
    for weights and zeros for parameters whose name contains ``"bias"``.
    """
    own = dict(module.named_parameters(recurse=False))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        if callable(getattr(module, "reset_parameters", None)):
            scratch = copy.deepcopy(module).to("cpu")
            getattr(scratch, "reset_parameters")()  # noqa: B009 — nn.Module does not declare it
            fresh = dict(scratch.named_parameters(recurse=False))
        else:
            generator = torch.Generator().manual_seed(seed)
            fresh = {
                name: torch.zeros(p.shape) if "bias" in name else 0.02 * torch.randn(p.shape, generator=generator)
                for name, p in own.items()
            }
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(fresh[name].to(device=p.device, dtype=p.dtype))


def cascading_randomization(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Cascading model-parameter randomization (Adebayo et al. 2018, "Sanity checks for saliency maps").

    ``model`` is deep-copied once; the copy's parameterized modules — those owning parameters directly
    (``parameters(recurse=False)``: Conv, Linear, norm layers, a ViT's own tokens…) — are re-initialized
    one at a time from the output end (last in ``named_modules()`` order, i.e. registration order, which
    usually matches the data flow) to the input end. After each, ``(name, copy)`` is yielded: the stage is
    cumulative, every module from the output down to ``name`` being randomized.

    Re-initialization: ``reset_parameters()`` when the module has one (for a norm layer this sets the affine
    ``γ = 1, β = 0``), else ``N(0, 0.02²)`` for weights and zeros for parameters named ``*bias*``. Only the
    module's own parameters change: buffers, such as BatchNorm running statistics, are kept (Adebayo et al.
    randomize the learned weights). Each module's draw is seeded from ``(seed, name)`` and made on the CPU,
    so it is reproducible and device-independent; the global RNG state is left unchanged
    (:func:`torch.random.fork_rng`).

    The copy is in eval mode, its parameters keep ``model``'s ``requires_grad``, and ``model`` itself is
    never modified. The gradient mode of the caller is not changed between yields (saliency methods may
    back-propagate through the copy).

    Warning:
        Every yield returns the *same* copy, mutated in place: use it (compute the saliency maps) before
        advancing the iterator, and ``copy.deepcopy`` it to keep a stage.

    Args:
        model: the trained model (left untouched).
        seed: the seed of the re-initializations.

    Returns:
        an iterator of ``(module name, randomized copy)``, one per parameterized module, output end first.

    Raises:
        ValueError: ``model`` has no parameters (raised at once, not on the first ``next``).
    """
    if not parameterized_modules(model):
        raise ValueError("the model has no parameters to randomize")
    return _cascade(model, seed)


def _cascade(model: nn.Module, seed: int) -> Iterator[tuple[str, nn.Module]]:
    randomized = copy.deepcopy(model)
    randomized.eval()
    for name, module in reversed(parameterized_modules(randomized)):
        _randomize_module(module, _module_seed(seed, name))
        yield name, randomized


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with **every** parameterized module re-initialized: the last stage of
    :func:`cascading_randomization` with the same ``seed`` (the same parameters), in eval mode.

    Args:
        model: the trained model (left untouched).
        seed: the seed of the re-initializations.
    """
    copy_ = copy.deepcopy(model)
    copy_.eval()
    for name, module in parameterized_modules(copy_):
        _randomize_module(module, _module_seed(seed, name))
    return copy_
