"""Class activation maps from the ``grad-cam`` package (Gildenblat et al., ``pytorch-grad-cam``): Grad-CAM
(Selvaraju et al., ICCV 2017), Grad-CAM++ (Chattopadhay et al., WACV 2018) and Score-CAM (Wang et al., CVPR
workshops 2020).

Each weights the channels ``A^k`` of one layer (the last of the classifier's matched layers by default) and
takes ``ReLU(Σ_k w_k A^k)``, resized to the image and min-max normalized: Grad-CAM's ``w_k`` is the mean
gradient of the target logit, Grad-CAM++'s a positively weighted gradient sum, Score-CAM's the softmax of
the target logit with the image masked by each upsampled channel.

The package's own code runs unchanged; the wrapper only adapts the frozen classifier to it: the logits
become a module (models returning tuples or dicts work), and since the classifier's parameters do not
require grad, the input does, so the hooked layer still receives a gradient. A transformer's token stream
``[B, P+N, D]`` is given to it as a map ``[B, D, h, w]`` (its ``reshape_transform``: the ``P`` leading
tokens — class, distillation, registers — dropped, the ``N = h·w`` patch tokens laid on the patch grid).
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ...classifiers.frozen import FrozenClassifier
from ...errors import UsageError
from ...method.decoder import token_grid
from .._peers import _check_batch, _import_peer, _Logits, _positive_int, _target_layer

__all__ = ["CamVariant", "cam_layer", "grad_cam"]


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
        layer: a name in ``classifier.model.named_modules()`` with a spatial ``[B,K,h,w]`` output or a token
            stream ``[B,P+N,D]``; None = the last of ``classifier.layers`` (``layer4`` for the built-in
            ResNet), or for a transformer the last block's ``norm1`` (:func:`cam_layer`).
        scorecam_batch_size: masked images per forward pass for Score-CAM.

    Returns:
        maps ``[B,H,W]`` in [0,1] on ``x.device``, dtype of ``x``.

    Raises:
        PeerUnavailable: ``grad-cam`` cannot be imported.
        UsageError: unknown variant or layer, or a layer whose output is neither a map nor a token grid.
    """
    _check_batch(x, target)
    classes = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}
    if variant not in classes:
        raise UsageError(f"unknown Grad-CAM variant {variant!r}: choose one of {', '.join(classes)}")
    _positive_int("scorecam_batch_size", scorecam_batch_size)
    gc = _import_peer("grad-cam", variant)
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    _, module, to_map = cam_layer(classifier, x, layer)
    cam = getattr(gc, classes[variant])(model=_Logits(classifier), target_layers=[module],
                                        reshape_transform=to_map)
    cam.batch_size = scorecam_batch_size  # read by ScoreCAM only
    targets = [targets_mod.ClassifierOutputTarget(int(c)) for c in target.tolist()]
    x_in = x.detach().clone().requires_grad_(True)
    try:  # not ``with cam``: BaseCAM.__exit__ prints and swallows IndexError
        maps = cam(input_tensor=x_in, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(np.ascontiguousarray(maps)).to(device=x.device, dtype=x.dtype)


def cam_layer(classifier: FrozenClassifier, x: Tensor, layer: str | None = None
              ) -> tuple[str, nn.Module, Callable[[Tensor], Tensor] | None]:
    """The layer a CAM reads, and how its output becomes a map: ``(name, module, reshape_transform)``.

    One forward pass of ``x[:1]`` shows the layer's output (once per classifier, layer and image size: the
    finding is kept while the classifier lives, so timed repeats do not pay for it). A map ``[B,K,h,w]`` is
    read as it is (transform None). A token stream ``[B,P+N,D]`` (a transformer's) is read through a
    transform that drops the ``P`` leading tokens and lays the ``N`` patch tokens on the ``h×w`` patch grid
    of the image (:func:`~medcam_fast.method.decoder.token_grid`), giving ``[B,D,h,w]``.

    The default layer (``layer`` None) is the last of ``classifier.layers``; when that is a token stream, the
    last module named ``norm1`` is read instead — the tokens entering the last block's attention, as
    ``pytorch-grad-cam``'s own ViT recipe does (``model.blocks[-1].norm1``). The reason: a class-token model
    (timm's ViTs, the built-in ViT) classifies from the class token alone, and after the last block's
    attention no patch token reaches it, so the target logit's gradient on every patch token of the last
    block's output (and of the final norm) is exactly 0 and Grad-CAM's map is 0 everywhere. A layer passed
    by name is read as it is.

    Raises:
        UsageError: no layer given and the classifier records none, an unknown name, or an output that is
            neither a map nor a token stream on a patch grid.
    """
    key = (layer, int(x.shape[-2]), int(x.shape[-1]))
    known = _CHOSEN.setdefault(classifier, {})
    if key not in known:  # one probing forward pass per classifier, layer and image size
        name = layer if layer is not None else (classifier.layers or [None])[-1]
        out = _layer_output(classifier, _target_layer(classifier, name), x[:1])
        if out.dim() == 3 and layer is None:
            norms = [n for n, _ in classifier.model.named_modules() if n.rsplit(".", 1)[-1] == "norm1"]
            if norms:
                name = norms[-1]
                out = _layer_output(classifier, _target_layer(classifier, name), x[:1])
        grid = token_grid(int(out.shape[1]), x.shape[-2:]) if out.dim() == 3 else None
        if out.dim() != 4 and grid is None:
            raise UsageError(f"layer {name!r} returns a tensor of shape {tuple(out.shape)}: a CAM reads a map "
                             f"[B,K,h,w] or tokens [B,P+N,D] on the patch grid of a {x.shape[-2]}×{x.shape[-1]} "
                             "image")
        known[key] = (str(name), grid)
    name, grid = known[key]
    module = _target_layer(classifier, name)
    if grid is None:
        return name, module, None
    gh, gw = grid

    def to_map(tokens: Tensor) -> Tensor:
        """``[B,P+N,D]`` → ``[B,D,h,w]``: the patch tokens on their grid."""
        return tokens[:, tokens.shape[1] - gh * gw :].transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

    return name, module, to_map


#: :func:`cam_layer`'s findings per classifier: ``(layer, H, W)`` → (the layer read, its token grid or None).
_Found = dict[tuple[str | None, int, int], tuple[str, tuple[int, int] | None]]
_CHOSEN: weakref.WeakKeyDictionary[FrozenClassifier, _Found] = weakref.WeakKeyDictionary()


def _layer_output(classifier: FrozenClassifier, module: nn.Module, x: Tensor) -> Tensor:
    """The (first tensor of the) output of ``module`` in one forward pass of ``x``."""
    seen: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(t, Tensor):
            seen.append(t)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            classifier.logits(x)
    finally:
        handle.remove()
    if not seen:
        raise UsageError("the CAM layer produced no tensor in a forward pass of the classifier")
    return seen[-1]
