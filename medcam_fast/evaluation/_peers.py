"""What the peer baselines share: argument checks, the baseline tensor, and importing the optional packages.

``grad-cam`` and ``captum`` are optional (``pip install 'medcam-fast[baselines]'``): they are imported
when a method needs them, and a failed import becomes :class:`PeerUnavailable`, which carries the install
command, so ``evaluate`` reports a missing peer as skipped instead of failing or scoring it as zeros.
:class:`_Logits` adapts a :class:`~medcam_fast.classifiers.frozen.FrozenClassifier` to the plain
``x ↦ logits`` module both packages expect.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor, nn

from ..classifiers.frozen import FrozenClassifier
from ..errors import UsageError, one_line

__all__ = ["INSTALL_HINT", "PeerUnavailable"]


#: How to install the optional peer packages.
INSTALL_HINT = "pip install 'medcam-fast[baselines]'"


#: pip package → the module imported to use it.
_PEER_MODULES: dict[str, str] = {"grad-cam": "pytorch_grad_cam", "captum": "captum"}


def _check_batch(x: Tensor, target: Tensor) -> None:
    """Check that ``x`` is a float ``[B,C,H,W]`` batch and ``target`` integer class indices ``[B]``.

    Raises:
        UsageError: wrong rank, dtype or batch size.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise UsageError(f"x must be a float tensor [B,C,H,W], got {getattr(x, 'shape', type(x))}")
    if not isinstance(target, Tensor) or target.shape != (x.shape[0],) or target.is_floating_point():
        raise UsageError(
            f"target must be an integer tensor [{x.shape[0]}], got {getattr(target, 'shape', type(target))}"
        )


def _baseline_or_zeros(x: Tensor, baseline: Tensor | None) -> Tensor:
    """The baseline ``b`` as a tensor shaped like ``x`` on ``x.device``; None → zeros (the data set's mean).

    Args:
        x: normalized images ``[B,C,H,W]``.
        baseline: a tensor broadcastable to ``x`` (e.g. ``[B,C,H,W]`` or ``[1,C,1,1]``), or None.

    Raises:
        UsageError: the baseline does not broadcast to ``x``'s shape.
    """
    if baseline is None:
        return torch.zeros_like(x)
    try:
        shape = torch.broadcast_shapes(baseline.shape, x.shape)
    except RuntimeError as e:
        raise UsageError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to {tuple(x.shape)}") from e
    if shape != x.shape:
        raise UsageError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to {tuple(x.shape)}")
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)


def _positive_int(name: str, value: int) -> None:
    """Raise :class:`UsageError` unless ``value`` is an integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


class PeerUnavailable(RuntimeError):
    """A baseline needs an optional package that cannot be imported.

    Args:
        method: the method that needs it (e.g. ``"gradcam"``).
        package: the pip package (``"grad-cam"`` or ``"captum"``).
        cause: why the import failed (one line).

    Attributes:
        method: as given.
        package: as given.
        install_hint: how to install it: ``pip install 'medcam-fast[baselines]'``.
    """

    def __init__(self, method: str, package: str, cause: str) -> None:
        self.method = method
        self.package = package
        self.install_hint = INSTALL_HINT
        super().__init__(f"{method} needs the optional package {package!r} ({cause}); install it: {INSTALL_HINT}")


def _import_peer(package: str, method: str) -> ModuleType:
    """Import the module of a peer package.

    Args:
        package: ``"grad-cam"`` or ``"captum"``.
        method: the method that needs it (for the error message).

    Raises:
        PeerUnavailable: the import fails with an :class:`ImportError` (chained as its cause).
    """
    try:
        return importlib.import_module(_PEER_MODULES[package])
    except ImportError as e:
        raise PeerUnavailable(method, package, one_line(e, typed=True)) from e


def _peer_problem(package: str) -> str | None:
    """None when the peer package imports, else why not and how to install it (only ImportError is caught)."""
    try:
        importlib.import_module(_PEER_MODULES[package])
    except ImportError as e:
        return f"{package} cannot be imported ({one_line(e, typed=True)}); {INSTALL_HINT}"
    return None


class _Logits(nn.Module):
    """``x ↦ classifier.logits(x)`` as an ``nn.Module`` (what ``grad-cam`` calls: it needs ``.parameters()``
    for the device, and plain logits whatever the wrapped model returns)."""

    def __init__(self, classifier: FrozenClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B,K]``."""
        return self.classifier.logits(x)


def _target_layer(classifier: FrozenClassifier, layer: str | None) -> nn.Module:
    """The module named ``layer`` in ``classifier.model``; None = the last of ``classifier.layers``.

    Raises:
        UsageError: no layer given and the classifier records none, or an unknown name.
    """
    if layer is None:
        layers = classifier.layers
        if not layers:
            raise UsageError("the classifier records no layers: pass layer= (a name in model.named_modules())")
        layer = layers[-1]
    modules = dict(classifier.model.named_modules())
    if layer not in modules:
        raise UsageError(f"unknown layer {layer!r} in the classifier's model")
    return modules[layer]
