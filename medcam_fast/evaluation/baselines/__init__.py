"""evaluation.baselines: TODO docstring (split from baselines.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ...classifiers.frozen import FrozenClassifier
from .._peers import _PEER_MODULES, _peer_problem
from .attributions import CaptumMethod, captum_attr
from .cam import CamVariant, grad_cam
from .extremal import extremal_perturbation
from .rise import rise

__all__ = ["available_peers", "SaliencyFn", "MethodSpec", "METHODS"]


def available_peers() -> dict[str, str | None]:
    """Which baselines can run here: method name → None if usable, else why not and how to install.

    Covers every key of :data:`METHODS` and ``"road"``. Importing the peers is the only reliable check
    (``grad-cam`` imports torchvision, OpenCV and ttach), so this call imports them (seconds, once per
    process). Only :class:`ImportError` counts as "unavailable"; any other import error propagates.
    """
    problems = {pkg: _peer_problem(pkg) for pkg in _PEER_MODULES}
    out = {name: None if spec.peer is None else problems[spec.peer] for name, spec in METHODS.items()}
    out["road"] = problems["grad-cam"]
    return out


#: ``fn(classifier, x, target, baseline) -> saliency [B,H,W]``.
SaliencyFn = Callable[[FrozenClassifier, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A registered baseline method.

    Args:
        name: registry key.
        label: display name for reports.
        fn: ``fn(classifier, x, target, baseline) -> saliency [B,H,W]`` with default settings (Grad-CAM
            variants ignore ``baseline``).
        peer: the pip package it needs (``"grad-cam"``, ``"captum"``) or None.
    """

    name: str
    label: str
    fn: SaliencyFn
    peer: str | None = None


def _rise_fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor) -> Tensor:
    """:func:`rise` with its defaults."""
    return rise(classifier, x, target, baseline=baseline)


def _extremal_fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor) -> Tensor:
    """:func:`extremal_perturbation` with its defaults."""
    return extremal_perturbation(classifier, x, target, baseline=baseline)


def _cam_fn(variant: CamVariant) -> SaliencyFn:
    """:func:`grad_cam` of ``variant`` at the default layer (the baseline is not used)."""

    def fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor) -> Tensor:
        return grad_cam(classifier, x, target, variant=variant)

    fn.__name__ = fn.__qualname__ = f"grad_cam_{variant.replace('+', 'p')}"
    return fn


def _captum_fn(method: CaptumMethod) -> SaliencyFn:
    """:func:`captum_attr` with ``method`` and its defaults."""

    def fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor) -> Tensor:
        return captum_attr(classifier, x, target, method=method, baseline=baseline)

    fn.__name__ = fn.__qualname__ = f"captum_{method}"
    return fn


def _registry(specs: Sequence[MethodSpec]) -> dict[str, MethodSpec]:
    """``{spec.name: spec}``."""
    return {s.name: s for s in specs}


#: The baseline methods by key: ``rise``, ``extremal``, ``gradcam``, ``gradcam++``, ``scorecam``,
#: ``occlusion``, ``ig``.
METHODS: dict[str, MethodSpec] = _registry([
    MethodSpec("rise", "RISE", _rise_fn),
    MethodSpec("extremal", "Extremal perturbation", _extremal_fn),
    MethodSpec("gradcam", "Grad-CAM", _cam_fn("gradcam"), "grad-cam"),
    MethodSpec("gradcam++", "Grad-CAM++", _cam_fn("gradcam++"), "grad-cam"),
    MethodSpec("scorecam", "Score-CAM", _cam_fn("scorecam"), "grad-cam"),
    MethodSpec("occlusion", "Occlusion", _captum_fn("occlusion"), "captum"),
    MethodSpec("ig", "Integrated gradients", _captum_fn("integrated_gradients"), "captum"),
])
