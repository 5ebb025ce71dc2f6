"""Class activation maps from the ``grad-cam`` package (Gildenblat et al., ``pytorch-grad-cam``): Grad-CAM
(Selvaraju et al., ICCV 2017), Grad-CAM++ (Chattopadhay et al., WACV 2018) and Score-CAM (Wang et al., CVPR
workshops 2020).

Each weights the channels ``A^k`` of one layer (the last of the classifier's matched layers by default) and
takes ``ReLU(Σ_k w_k A^k)``, resized to the image and min-max normalized: Grad-CAM's ``w_k`` is the mean
gradient of the target logit, Grad-CAM++'s a positively weighted gradient sum, Score-CAM's the softmax of
the target logit with the image masked by each upsampled channel.

The package's own code runs unchanged; the wrapper only adapts the frozen classifier to it: the logits
become a module (models returning tuples or dicts work), and since the classifier's parameters do not
require grad, the input does, so the hooked layer still receives a gradient.
"""

from __future__ import annotations

import importlib
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ...classifiers.frozen import FrozenClassifier
from ...errors import UsageError
from .._peers import _check_batch, _import_peer, _Logits, _positive_int, _target_layer

__all__ = ["CamVariant", "grad_cam"]


CamVariant = Literal["gradcam", "gradcam++", "scorecam"]


def grad_cam(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    variant: CamVariant = "gradcam",
    layer: str | None = None,
    scorecam_batch_size: int = 64,
) -> Tensor:
    """Grad-CAM, Grad-CAM++ or Score-CAM from the ``grad-cam`` package, for class ``target`` at one layer.

    With ``A^k`` the ``k``-th channel of the layer's activation and ``y_c`` the target logit
    (``ClassifierOutputTarget``): Grad-CAM ``L = ReLU(Σ_k w_k A^k)`` with ``w_k = mean_uv ∂y_c/∂A^k_uv``;
    Grad-CAM++ weights ``w_k = Σ_uv α^k_uv ReLU(∂y_c/∂A^k_uv)`` (Chattopadhay et al., 2018); Score-CAM
    ``w = softmax_k(y_c(x ⊙ norm(up(A^k))))`` (Wang et al., 2020), no gradients. ``grad-cam`` then resizes
    ``L`` to ``H×W`` (OpenCV bilinear) and min-max normalizes each map to [0,1] (a map that is 0 everywhere
    stays 0).

    The classifier's parameters do not require grad, so the layer's activations would not either and
    ``grad-cam`` would record no gradient: the input is a detached clone that requires grad. ``grad-cam``
    is given ``classifier.logits`` wrapped as a module, so models returning dicts or tuples work.
    Score-CAM runs ``B × channels`` forward passes in batches of ``scorecam_batch_size`` and shows a tqdm
    bar per image (``TQDM_DISABLE=1`` silences it).

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes to explain ``[B]``.
        variant: ``"gradcam"``, ``"gradcam++"`` or ``"scorecam"``.
        layer: a name in ``classifier.model.named_modules()`` with a spatial ``[B,K,h,w]`` output; None = the
            last of ``classifier.layers`` (``layer4`` for the built-in ResNet).
        scorecam_batch_size: masked images per forward pass for Score-CAM.

    Returns:
        maps ``[B,H,W]`` in [0,1] on ``x.device``, dtype of ``x``.

    Raises:
        PeerUnavailable: ``grad-cam`` cannot be imported.
        UsageError: unknown variant or layer.
    """
    _check_batch(x, target)
    classes = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}
    if variant not in classes:
        raise UsageError(f"unknown Grad-CAM variant {variant!r}: choose one of {', '.join(classes)}")
    _positive_int("scorecam_batch_size", scorecam_batch_size)
    gc = _import_peer("grad-cam", variant)
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    module = _target_layer(classifier, layer)
    cam = getattr(gc, classes[variant])(model=_Logits(classifier), target_layers=[module])
    cam.batch_size = scorecam_batch_size  # read by ScoreCAM only
    targets = [targets_mod.ClassifierOutputTarget(int(c)) for c in target.tolist()]
    x_in = x.detach().clone().requires_grad_(True)
    try:  # not ``with cam``: BaseCAM.__exit__ prints and swallows IndexError
        maps = cam(input_tensor=x_in, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(np.ascontiguousarray(maps)).to(device=x.device, dtype=x.dtype)
