"""The first guess of either explainer network, for one batch's :class:`~.objective.Objective`.

* :class:`~.decoder.FeatureDecoder` (classifier-aware, the default): reads the activations the objective's
  reference pass already holds and the classifier's head, gives coarse logits for every class
  ``[B,K,g_h,g_w]``; the target picks a channel → ``[B,1,g_h,g_w]``. No second classifier pass.
* :class:`~.unet.UNet` (classifier-blind): re-reads the image, pixel logits ``[B,1,H,W]`` for the target.

Both return logits on their own grid; :func:`~.masking.to_image_grid` maps them to the image.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

from .decoder import FeatureDecoder, select_class
from .objective import Objective
from .unet import UNet

__all__ = ["ExplainerNet", "head_of", "all_classes", "first_guess"]

#: A network that makes first guesses.
ExplainerNet = UNet | FeatureDecoder


def head_of(classifier: Any) -> tuple[Tensor, Tensor | None] | None:
    """The classifier's final linear layer ``(W, b)`` when it exposes one (``FrozenClassifier.head``)."""
    head = getattr(classifier, "head", None)
    return head() if callable(head) else None


def _call(net: nn.Module, params: dict[str, Tensor] | None, *args: Any) -> Tensor:
    return net(*args) if params is None else functional_call(net, params, args)


def all_classes(decoder: FeatureDecoder, objective: Objective, params: dict[str, Tensor] | None = None) -> Tensor:
    """Coarse logits of every class ``[B,K,g_h,g_w]`` from the objective's reference activations.

    Args:
        decoder: the classifier-aware decoder.
        objective: the batch (its ``reference.activations`` must hold the decoder's taps).
        params: decoder weights to call it with (``torch.func.functional_call``); None: its own.

    Raises:
        ValueError: a tap the reference pass did not capture.
    """
    acts = objective.reference.activations
    missing = [n for n in decoder.config.tap_names if n not in acts]
    if missing:
        raise ValueError(f"the classifier's reference pass has no activation of layer {missing[0]!r} that the "
                         "decoder reads: build the classifier with the decoder's taps as its layers")
    return _call(decoder, params, objective.x, acts, head_of(objective.classifier))


def first_guess(net: ExplainerNet, objective: Objective, params: dict[str, Tensor] | None = None) -> Tensor:
    """Mask logits for each image's target class, on the network's own grid ``[B,1,h,w]``.

    Args:
        net: the explainer network.
        objective: the batch's problem.
        params: weights to call ``net`` with (meta-training's θ); None: its own.
    """
    if isinstance(net, FeatureDecoder):
        return select_class(all_classes(net, objective, params), objective.target)
    return _call(net, params, objective.x, objective.target)
