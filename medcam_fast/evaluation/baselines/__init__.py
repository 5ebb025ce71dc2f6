"""The peers ``medcam-fast evaluate`` compares against, one file per family, and their registry.

* :mod:`.rise` — RISE (Petsiuk et al. 2018), written here: Monte-Carlo average of random masks;
* :mod:`.extremal` — Extremal Perturbations (Fong et al. 2019), written here: optimal masks of fixed areas;
* :mod:`.cam` — Grad-CAM, Grad-CAM++ and Score-CAM from the ``grad-cam`` package;
* :mod:`.attributions` — occlusion and integrated gradients from ``captum``.

Every registered method has one signature, ``fn(classifier, x, target, baseline, settings) -> saliency
[B,H,W]`` (higher = more important), so the harness runs each the same way. What a method may be tuned by
travels in one typed :class:`PeerSettings`; :attr:`MethodSpec.settings` names the fields a method reads (the
harness keys its cache by them, so changing RISE's mask count reruns RISE only). Methods whose package is
missing are not errors: :func:`available_peers` says why and how to install them, and the report lists
them as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ..._config import Config
from ...classifiers.frozen import FrozenClassifier
from ...types import BaselineKind
from .._peers import _PEER_MODULES, _peer_problem
from .attributions import CaptumMethod, captum_attr
from .cam import CamVariant, grad_cam
from .extremal import extremal_perturbation
from .rise import rise

__all__ = ["PeerSettings", "available_peers", "SaliencyFn", "MethodSpec", "METHODS"]


@dataclass(frozen=True)
class PeerSettings(Config):
    """What the registered peers may be tuned by; each reads only its own fields.

    Args:
        rise_masks: random masks per image for RISE (the paper: 4000 at 224 px).
        extremal_steps: optimization steps per area for Extremal Perturbations (the paper: 1600 at 224 px;
            300 converge at the 28–64 px of the MedMNIST sets).
        seed: seeds the random methods (RISE's masks, Extremal Perturbations' initial noise).
    """

    rise_masks: int = 4000
    extremal_steps: int = 300
    seed: int = 0


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


#: ``fn(classifier, x, target, baseline, settings) -> saliency [B,H,W]``.
SaliencyFn = Callable[[FrozenClassifier, Tensor, Tensor, Tensor, PeerSettings], Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A registered baseline method.

    Args:
        name: registry key.
        label: display name for reports.
        fn: ``fn(classifier, x, target, baseline, settings) -> saliency [B,H,W]`` (Grad-CAM variants ignore
            ``baseline``).
        peer: the pip package it needs (``"grad-cam"``, ``"captum"``) or None.
        settings: the :class:`PeerSettings` fields ``fn`` reads.
        uses_baseline: whether ``fn`` replaces pixels by the baseline it is given (RISE's masks, Extremal
            Perturbations' optimization, occlusion's window, integrated gradients' path): the fill of that
            baseline is then the one the method is tuned against, which ``evaluate``'s report says.
        own_fill: the fill a method perturbs with whatever baseline it is given (Score-CAM multiplies the
            normalized image by its masks, i.e. fills with 0, the data set's mean); None when there is none.
    """

    name: str
    label: str
    fn: SaliencyFn
    peer: str | None = None
    settings: tuple[str, ...] = ()
    uses_baseline: bool = True
    own_fill: BaselineKind | None = None


def _rise_fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor,
             settings: PeerSettings) -> Tensor:
    """:func:`rise` with ``settings.rise_masks`` masks drawn from ``settings.seed``."""
    return rise(classifier, x, target, n_masks=settings.rise_masks, baseline=baseline, seed=settings.seed)


def _extremal_fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor,
                 settings: PeerSettings) -> Tensor:
    """:func:`extremal_perturbation` with ``settings.extremal_steps`` steps per area, seeded."""
    return extremal_perturbation(classifier, x, target, steps=settings.extremal_steps, baseline=baseline,
                                 seed=settings.seed)


def _cam_fn(variant: CamVariant) -> SaliencyFn:
    """:func:`grad_cam` of ``variant`` at the default layer (neither the baseline nor a setting is used)."""

    def fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor,
           settings: PeerSettings) -> Tensor:
        return grad_cam(classifier, x, target, variant=variant)

    fn.__name__ = fn.__qualname__ = f"grad_cam_{variant.replace('+', 'p')}"
    return fn


def _captum_fn(method: CaptumMethod) -> SaliencyFn:
    """:func:`captum_attr` with ``method`` and its defaults."""

    def fn(classifier: FrozenClassifier, x: Tensor, target: Tensor, baseline: Tensor,
           settings: PeerSettings) -> Tensor:
        return captum_attr(classifier, x, target, method=method, baseline=baseline)

    fn.__name__ = fn.__qualname__ = f"captum_{method}"
    return fn


def _registry(specs: Sequence[MethodSpec]) -> dict[str, MethodSpec]:
    """``{spec.name: spec}``, checking that every spec names real :class:`PeerSettings` fields."""
    known = set(PeerSettings().to_dict())
    for s in specs:
        unknown = set(s.settings) - known
        if unknown:
            raise ValueError(f"{s.name} reads unknown settings {sorted(unknown)}")
    return {s.name: s for s in specs}


#: The baseline methods by key: ``rise``, ``extremal``, ``gradcam``, ``gradcam++``, ``scorecam``,
#: ``occlusion``, ``ig``.
METHODS: dict[str, MethodSpec] = _registry([
    MethodSpec("rise", "RISE", _rise_fn, settings=("rise_masks", "seed")),
    MethodSpec("extremal", "Extremal perturbation", _extremal_fn, settings=("extremal_steps", "seed")),
    MethodSpec("gradcam", "Grad-CAM", _cam_fn("gradcam"), "grad-cam", uses_baseline=False),
    MethodSpec("gradcam++", "Grad-CAM++", _cam_fn("gradcam++"), "grad-cam", uses_baseline=False),
    MethodSpec("scorecam", "Score-CAM", _cam_fn("scorecam"), "grad-cam", uses_baseline=False,
               own_fill=BaselineKind.MEAN),
    MethodSpec("occlusion", "Occlusion", _captum_fn("occlusion"), "captum"),
    MethodSpec("ig", "Integrated gradients", _captum_fn("integrated_gradients"), "captum"),
])
