"""Baseline saliency methods that medcam-fast is compared with, behind one calling convention.

Two perturbation methods are written here from their papers (no code of any implementation was used):

* :func:`rise` — RISE, Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
  Black-box Models", BMVC 2018;
* :func:`extremal_perturbation` — Fong, Patrick & Vedaldi, "Understanding Deep Networks via Extremal
  Perturbations and Smooth Masks", ICCV 2019.

The others wrap the optional peer packages (``pip install 'medcam-fast[baselines]'``), imported only inside
the functions that need them, so this module imports without them:

* :func:`grad_cam` — Grad-CAM, Grad-CAM++ and Score-CAM from ``grad-cam`` (import name ``pytorch_grad_cam``);
* :func:`road` — the ROAD faithfulness metric (MoRF / LeRF / combined) from ``grad-cam``;
* :func:`captum_attr` — occlusion and integrated gradients from ``captum``.

Notation as in :mod:`medcam_fast.masking`: ``x`` normalized images ``[B,C,H,W]``, ``c`` the target classes
``[B]``, ``m ∈ [0,1]`` a mask (1 = kept), ``b`` a baseline image, kept view ``m⊙x + (1−m)⊙b``. Every
method returns a saliency map ``S`` ``[B,H,W]`` at the input resolution on ``x.device`` (higher = more
important for class ``c``); maps are comparable within a method, not across methods (scales differ).

:data:`METHODS` registers every method under one signature ``fn(classifier, x, target, baseline)``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import FrozenClassifier
from .errors import UsageError, one_line
from .masking import keep, make_baseline

__all__ = [
    "INSTALL_HINT",
    "METHODS",
    "MethodSpec",
    "PeerUnavailable",
    "available_peers",
    "captum_attr",
    "extremal_perturbation",
    "grad_cam",
    "rise",
    "road",
]

#: How to install the optional peer packages.
INSTALL_HINT = "pip install 'medcam-fast[baselines]'"

#: pip package → the module imported to use it.
_PEER_MODULES: dict[str, str] = {"grad-cam": "pytorch_grad_cam", "captum": "captum"}

CamVariant = Literal["gradcam", "gradcam++", "scorecam"]
CaptumMethod = Literal["occlusion", "integrated_gradients"]
RoadScore = Literal["probability", "logit"]


# --------------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------------------------


def _rise_draws(
    n_masks: int, cells: int, p: float, cell_size: tuple[int, int], seed: int
) -> tuple[Tensor, Tensor]:
    """The random numbers of RISE's masks, drawn on the CPU from one seeded generator.

    Args:
        n_masks: number of masks ``N``.
        cells: grid side ``s``.
        p: keep probability of a grid cell.
        cell_size: ``(C_H, C_W) = (⌈H/s⌉, ⌈W/s⌉)``, the upsampled size of one cell.
        seed: the generator seed.

    Returns:
        ``grids`` ``[N,1,s,s]`` float (1 = kept cell, i.i.d. Bernoulli(p)) and ``shifts`` ``[N,2]`` long
        (row and column offsets, uniform in ``[0,C_H) × [0,C_W)``).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    grids = (torch.rand(n_masks, 1, cells, cells, generator=g) < p).float()
    dy = torch.randint(0, cell_size[0], (n_masks,), generator=g)
    dx = torch.randint(0, cell_size[1], (n_masks,), generator=g)
    return grids, torch.stack([dy, dx], dim=1)


def _rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int], like: Tensor) -> Tensor:
    """RISE's smooth masks from their draws: upsample, then crop a shifted ``H×W`` window.

    Each ``s×s`` binary grid is upsampled bilinearly to ``((s+1)·C_H, (s+1)·C_W)`` and the window
    ``[dy, dy+H) × [dx, dx+W)`` is kept, so mask edges fall anywhere, not only on cell borders.

    Args:
        grids: ``[n,1,s,s]`` binary grids (CPU).
        shifts: ``[n,2]`` crop offsets (CPU).
        size: ``(H, W)``.
        like: a tensor whose device and dtype the masks take.

    Returns:
        masks ``[n,H,W]`` with values in [0,1].
    """
    h, w = size
    s = grids.shape[-1]
    big = ((s + 1) * math.ceil(h / s), (s + 1) * math.ceil(w / s))
    up = F.interpolate(grids.to(device=like.device, dtype=like.dtype), size=big, mode="bilinear",
                       align_corners=False)[:, 0]
    shifts = shifts.to(like.device)
    rows = shifts[:, 0, None] + torch.arange(h, device=like.device)  # [n,H]
    cols = shifts[:, 1, None] + torch.arange(w, device=like.device)  # [n,W]
    index = torch.arange(len(up), device=like.device)[:, None, None]
    return up[index, rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def rise(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    n_masks: int = 4000,
    cells: int = 8,
    p: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
    baseline: Tensor | None = None,
) -> Tensor:
    """RISE saliency (Petsiuk et al., BMVC 2018): the target probability averaged over random masks.

    ``N`` binary grids ``G_i ∈ {0,1}^{s×s}`` with ``P(G_i[u,v]=1) = p`` are upsampled bilinearly to
    ``(s+1)·⌈H/s⌉ × (s+1)·⌈W/s⌉`` and cropped at a uniformly random offset in ``[0,⌈H/s⌉) × [0,⌈W/s⌉)`` to
    smooth masks ``M_i ∈ [0,1]^{H×W}``. With ``f_c`` the softmax probability of class ``c``,

        ``S = 1/(N·p) · Σ_i f_c(M_i⊙x + (1−M_i)⊙b) · M_i``,

    a Monte-Carlo estimate of ``E[f_c(x̃) | pixel kept]`` (the paper's ``1/(E[M]·N) Σ_i f(I⊙M_i)·M_i``).

    The paper multiplies pixels by the mask, i.e. removed pixels become black in *pixel* space. Our inputs
    are normalized, so a masked pixel takes the value of the baseline ``b`` instead: ``b = 0`` (the default)
    is the data set's mean colour; pass ``make_baseline(x, "zero", mean, std)`` for the paper's black.

    The masks depend only on ``(n_masks, cells, p, H, W, seed)`` (drawn on the CPU with a seeded
    ``torch.Generator``, then moved to ``x.device``) and are shared by every image of the batch, as in the
    paper; an image's map does not depend on the batch it is in or on ``batch_size`` (up to float rounding).

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes to explain ``[B]``.
        n_masks: number of masks ``N``.
        cells: grid side ``s`` (the paper uses 7 for 224 px).
        p: probability that a grid cell is kept, in (0, 1].
        batch_size: masked images per forward pass (the batch is split into ``⌊batch_size/B⌋`` masks × ``B``
            images, at least one mask).
        seed: seeds the masks.
        baseline: the image ``b`` that replaces removed pixels, broadcastable to ``x``; None = zeros.

    Returns:
        ``S`` ``[B,H,W]`` on ``x.device``, ≥ 0 (≈ ``f_c`` where it does not matter whether a pixel is kept).

    Raises:
        UsageError: invalid arguments.
    """
    _check_batch(x, target)
    for name, value in (("n_masks", n_masks), ("cells", cells), ("batch_size", batch_size)):
        _positive_int(name, value)
    if not 0 < p <= 1:
        raise UsageError(f"p must lie in (0, 1], got {p!r}")
    bsz, ch, h, w = x.shape
    b = _baseline_or_zeros(x, baseline)
    grids, shifts = _rise_draws(n_masks, cells, p, (math.ceil(h / cells), math.ceil(w / cells)), seed)
    t = target.to(x.device).view(bsz, 1, 1)
    saliency = x.new_zeros(bsz, h, w)
    chunk = max(1, batch_size // bsz)
    for start in range(0, n_masks, chunk):
        m = _rise_masks(grids[start : start + chunk], shifts[start : start + chunk], (h, w), x)  # [n,H,W]
        n = len(m)
        kept = keep(x[:, None], m[None, :, None], b[:, None]).reshape(bsz * n, ch, h, w)
        probs = torch.softmax(classifier.logits(kept), dim=-1).reshape(bsz, n, -1)
        p_c = probs.gather(2, t.expand(bsz, n, 1))[..., 0].to(x.dtype)  # [B,n]
        saliency += torch.einsum("bn,nhw->bhw", p_c, m)
    return saliency / (n_masks * p)


# --------------------------------------------------------------------------------------------------------
# Extremal perturbations
# --------------------------------------------------------------------------------------------------------

#: λ of the area regularizer at the first and the last step (geometric growth in between).
_EXTREMAL_LAMBDA = (1.0, 5000.0)


def _smooth_mask(u: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """The mask ``m = G_σ * up(σ(u))``: sigmoid, bilinear upsampling to ``size``, Gaussian blur.

    Args:
        u: low-resolution mask parameters ``[N,1,h,w]``.
        size: output ``(H, W)``.
        sigma: Gaussian σ in output pixels (0: no blur).

    Returns:
        ``m`` ``[N,1,H,W]`` in [0,1].
    """
    m = F.interpolate(torch.sigmoid(u), size=size, mode="bilinear", align_corners=False)
    return make_baseline(m, "blur", sigma=sigma) if sigma > 0 else m


def _area_reference(areas: Sequence[float], n_pixels: int, bsz: int, like: Tensor) -> Tensor:
    """The sorted reference vectors ``r_a`` (``⌊(1−a)·n⌉`` zeros then ones), each repeated for ``B`` images.

    Returns:
        ``[A·B, n_pixels]`` (row ``i·B + j`` belongs to area ``i`` and image ``j``).
    """
    rows = []
    for a in areas:
        ones = int(round(a * n_pixels))
        r = torch.zeros(n_pixels, device=like.device, dtype=like.dtype)
        r[n_pixels - ones :] = 1
        rows.append(r.expand(bsz, n_pixels))
    return torch.cat(rows)


def _area_penalty(m: Tensor, reference: Tensor) -> Tensor:
    """``R_a(m) = ‖vecsort(m) − r_a‖² / (H·W)`` per mask (ascending sort), ``[N]``.

    Args:
        m: masks ``[N,1,H,W]``.
        reference: sorted reference vectors ``[N,H·W]``.
    """
    return (torch.sort(m.flatten(1), dim=1).values - reference).pow(2).mean(1)


def extremal_perturbation(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    areas: Sequence[float] = (0.05, 0.1, 0.2),
    steps: int = 300,
    lr: float = 0.05,
    baseline: Tensor | None = None,
    smooth: float = 0.5,
    seed: int = 0,
    stride: int = 4,
) -> Tensor:
    """Extremal perturbations (Fong, Patrick & Vedaldi, ICCV 2019), preservation game: the sum of the optimal
    masks of several areas.

    For each area ``a`` and image, a mask ``m_a`` solves

        ``m_a = argmax_m  Φ_c(m⊙x + (1−m)⊙b) − λ·R_a(m)``,   ``R_a(m) = ‖vecsort(m) − r_a‖² / (H·W)``,

    where ``vecsort`` sorts the mask's values in ascending order and ``r_a`` is the sorted reference vector
    with a fraction ``a`` of ones (so ``R_a = 0`` exactly for binary masks of area ``a``). The preservation
    score is the target logit ``y_c`` (the paper's class score), rescaled per image:

        ``Φ_c(x̃) = (y_c(x̃) − y_c(b)) / max(|y_c(x) − y_c(b)|, 1)``,

    i.e. 0 with everything removed and 1 with everything kept (an affine change per image, so the optimum
    of each λ is that of the raw logit with λ scaled by the image's logit gap; it makes λ independent of the
    model's logit scale). ``λ`` grows geometrically from 1 at the first step to 5000 at the last, so the
    area constraint is enforced increasingly strictly. The masks are found by ``steps`` Adam steps
    (learning rate ``lr``) on their parameters, all images and areas at once (each image and area has its
    own mask; the losses are summed and Adam is per-parameter, so they do not interact).

    Differences from the paper, on purpose:

    * λ schedule: the paper starts at λ = 300 and grows it. Started that high (with either score), the area
      term fixes where the mask lies before the score can move it: on the 32-px lesion classifier the
      optimal 10 % mask then missed the lesion in every image. Starting at 1 lets the score place the
      mask first; the growth to 5000 then enforces the area (mean of the final mask ≈ ``a`` + 0.01–0.02, the
      excess being the blurred edges);
    * smooth masks: the paper parametrizes ``m`` by a smooth max-convolution of a low-resolution mask. Here
      ``m = G_σ * up(sigmoid(u))``: parameters ``u`` on a ``⌈H/stride⌉ × ⌈W/stride⌉`` grid (initialized at
      ``0`` plus ``N(0, 0.01²)`` noise from ``seed``, i.e. ``m ≈ ½``), bilinear upsampling to ``H×W``, then a
      Gaussian blur of σ = ``smooth·stride`` pixels (replicate padding);
    * perturbation: the paper blurs each pixel with a σ that depends on ``m``; here the removed part is
      replaced by a fixed image, ``b = blur(x)`` (Gaussian σ = ``max(H,W)/10``, :func:`make_baseline`) by
      default, or ``baseline`` when given;
    * no final binarization: the soft optimal masks are summed.

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes to explain ``[B]``.
        areas: target areas ``a``, fractions in (0, 1).
        steps: optimization steps.
        lr: Adam learning rate on ``u``.
        baseline: the image that replaces removed pixels, broadcastable to ``x``; None = ``blur(x)``.
        smooth: blur σ after upsampling, in units of ``stride`` (0: no blur).
        seed: seeds the initial noise.
        stride: pixels per mask parameter (the parameter grid is ``⌈H/stride⌉ × ⌈W/stride⌉``).

    Returns:
        ``S = Σ_a m_a`` ``[B,H,W]`` on ``x.device``, in ``[0, len(areas)]``: pixels kept by the smaller
        masks rank higher.

    Raises:
        UsageError: invalid arguments.
    """
    _check_batch(x, target)
    _positive_int("steps", steps)
    _positive_int("stride", stride)
    areas = tuple(float(a) for a in areas)
    if not areas or not all(0 < a < 1 for a in areas):
        raise UsageError(f"areas must be a non-empty list of fractions in (0, 1), got {areas!r}")
    if not lr > 0 or not smooth >= 0:
        raise UsageError(f"lr must be positive and smooth ≥ 0, got lr={lr!r}, smooth={smooth!r}")
    bsz, _, h, w = x.shape
    n_areas = len(areas)
    x = x.detach()
    b = make_baseline(x, "blur") if baseline is None else _baseline_or_zeros(x, baseline)
    xs, bs = x.repeat(n_areas, 1, 1, 1), b.repeat(n_areas, 1, 1, 1)  # row i·B + j: area i, image j
    ts = target.to(x.device).repeat(n_areas).view(-1, 1)
    reference = _area_reference(areas, h * w, bsz, x)
    g = torch.Generator(device="cpu").manual_seed(seed)
    grid = (math.ceil(h / stride), math.ceil(w / stride))
    u0 = 0.01 * torch.randn(n_areas * bsz, 1, *grid, generator=g)
    u = u0.to(device=x.device, dtype=x.dtype).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    lam0, lam1 = _EXTREMAL_LAMBDA
    sigma = smooth * stride
    with torch.no_grad():
        y_x = classifier.logits(x).gather(1, ts[:bsz])[:, 0]
        y_b = classifier.logits(b).gather(1, ts[:bsz])[:, 0]
        offset, scale = y_b.repeat(n_areas), (y_x - y_b).abs().clamp_min(1.0).repeat(n_areas)
    with torch.enable_grad():
        for step in range(steps):
            lam = lam0 * (lam1 / lam0) ** (step / max(1, steps - 1))
            m = _smooth_mask(u, (h, w), sigma)
            score = (classifier.logits(keep(xs, m, bs)).gather(1, ts)[:, 0] - offset) / scale
            energy = (lam * _area_penalty(m, reference) - score).sum()
            opt.zero_grad(set_to_none=True)
            energy.backward()
            opt.step()
    with torch.no_grad():
        m = _smooth_mask(u, (h, w), sigma)[:, 0]
    return m.reshape(n_areas, bsz, h, w).sum(0)


# --------------------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------------------


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


def road(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    saliency: Tensor,
    percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    score: RoadScore = "probability",
    seed: int = 0,
) -> dict[str, Tensor]:
    """ROAD (Rong et al., ICML 2022) scores of saliency maps, per image, from ``grad-cam``'s implementation.

    For each percentile ``q`` the pixels are split at the ``q``-th percentile of the image's map and one side
    is replaced by noisy linear imputation (each removed pixel the weighted mean of its 8 neighbours, solved as
    a sparse linear system, plus N(0, 0.01²) noise), then the drop of the score ``y_c`` is recorded:

    * ``morf`` — most relevant first: pixels with saliency ≥ the ``q``-th percentile are imputed, i.e. the
      ``100−q`` % most salient; ``mean_q [y_c(imputed) − y_c(x)]``. **Lower (more negative) is better**;
    * ``lerf`` — least relevant first: pixels with saliency ≤ the ``(100−q)``-th percentile are imputed,
      i.e. the ``100−q`` % least salient (the ``q`` % most salient are kept);
      ``mean_q [y_c(imputed) − y_c(x)]``. **Higher (closer to 0) is better**;
    * ``combined`` — ``(lerf − morf) / 2`` (``ROADCombined``'s definition). **Higher is better**.

    ``combined`` is computed from the same two runs instead of calling ``ROADCombined`` (which would impute
    everything twice); it runs LeRF before MoRF like ``ROADCombined``, so with the same ``seed`` the numbers
    are identical. Ties in a map (e.g. the zeros of a Grad-CAM map) sit on one side of the percentile, so the
    imputed fraction can differ from ``100−q`` %. The imputation runs on the CPU (scipy); the model on
    ``x.device``.

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes ``[B]``.
        saliency: maps ``[B,H,W]`` (higher = more important).
        percentiles: the ``q`` values averaged over.
        score: ``"probability"`` — ``y_c`` the softmax probability (``ClassifierOutputSoftmaxTarget``), the
            ROAD paper's choice; ``"logit"`` — the target logit (``ClassifierOutputTarget``).
        seed: seeds the imputation noise (the global torch CPU RNG is forked, not changed).

    Returns:
        ``{"morf": [B], "lerf": [B], "combined": [B]}`` float32 tensors on ``x.device``.

    Raises:
        PeerUnavailable: ``grad-cam`` cannot be imported.
        UsageError: mismatched shapes or an unknown score.
    """
    _check_batch(x, target)
    if tuple(saliency.shape) != (x.shape[0], *x.shape[-2:]):
        raise UsageError(f"saliency must be [B,H,W] = {(x.shape[0], *x.shape[-2:])}, got {tuple(saliency.shape)}")
    if score not in ("probability", "logit"):
        raise UsageError(f"score must be 'probability' or 'logit', got {score!r}")
    if not percentiles or not all(0 < q < 100 for q in percentiles):
        raise UsageError(f"percentiles must be a non-empty list in (0, 100), got {percentiles!r}")
    _import_peer("grad-cam", "road")
    road_mod = importlib.import_module("pytorch_grad_cam.metrics.road")
    targets_mod = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    make_target = (
        targets_mod.ClassifierOutputSoftmaxTarget if score == "probability" else targets_mod.ClassifierOutputTarget
    )
    targets = [make_target(int(c)) for c in target.tolist()]
    cams = np.ascontiguousarray(saliency.detach().float().cpu().numpy())
    model = _Logits(classifier)
    qs = [int(q) if float(q).is_integer() else float(q) for q in percentiles]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        lerf = road_mod.ROADLeastRelevantFirstAverage(qs)(x.detach(), cams, targets, model)
        morf = road_mod.ROADMostRelevantFirstAverage(qs)(x.detach(), cams, targets, model)
    out = {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(-1), device=x.device) for k, v in out.items()}


def captum_attr(
    classifier: FrozenClassifier,
    x: Tensor,
    target: Tensor,
    method: CaptumMethod = "occlusion",
    baseline: Tensor | None = None,
    window: int | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 256,
    perturbations_per_eval: int = 16,
) -> Tensor:
    """Occlusion or integrated gradients from ``captum``, summed over channels.

    * ``"occlusion"`` (Zeiler & Fergus, 2014; ``captum.attr.Occlusion``): a ``C × k × k`` window
      (``k = window``, default ``⌈H/8⌉ × ⌈W/8⌉``) slides with stride ``⌈k/2⌉``; inside it ``x`` is replaced by
      ``b``; each pixel gets the mean of ``y_c(x) − y_c(x_occluded)`` over the windows covering it, per
      channel. ``y_c`` is the target logit.
    * ``"integrated_gradients"`` (Sundararajan et al., 2017; ``captum.attr.IntegratedGradients``):
      ``(x − b) ⊙ ∫₀¹ ∂y_c/∂x (b + α(x − b)) dα`` with ``n_steps`` Gauss-Legendre points (captum's default
      rule), in batches of ``internal_batch_size``.

    The channel sum is returned as is (signed): **positive = evidence for the target class**, negative =
    evidence against it.

    Args:
        classifier: the frozen classifier.
        x: normalized images ``[B,C,H,W]``.
        target: classes ``[B]``.
        method: ``"occlusion"`` or ``"integrated_gradients"``.
        baseline: ``b``, broadcastable to ``x``; None = zeros (the data set's mean).
        window: occlusion window side in pixels (square); None = ``⌈H/8⌉ × ⌈W/8⌉``.
        n_steps: integration points of integrated gradients.
        internal_batch_size: integrated gradients: images per forward/backward pass.
        perturbations_per_eval: occlusion: occluded copies per image in one forward pass.

    Returns:
        attributions ``[B,H,W]`` on ``x.device``.

    Raises:
        PeerUnavailable: ``captum`` cannot be imported.
        UsageError: unknown method or invalid arguments.
    """
    _check_batch(x, target)
    if method not in ("occlusion", "integrated_gradients"):
        raise UsageError(f"unknown captum method {method!r}: choose 'occlusion' or 'integrated_gradients'")
    for name, value in (("n_steps", n_steps), ("internal_batch_size", internal_batch_size),
                        ("perturbations_per_eval", perturbations_per_eval)):
        _positive_int(name, value)
    _import_peer("captum", method)
    attr = importlib.import_module("captum.attr")
    x = x.detach()
    b = _baseline_or_zeros(x, baseline).contiguous()
    t = target.to(x.device)
    if method == "occlusion":
        ch, h, w = x.shape[1:]
        if window is not None:
            _positive_int("window", window)
        kh, kw = (window, window) if window is not None else (math.ceil(h / 8), math.ceil(w / 8))
        with torch.no_grad():
            a = attr.Occlusion(classifier.logits).attribute(
                x, sliding_window_shapes=(ch, kh, kw), strides=(ch, math.ceil(kh / 2), math.ceil(kw / 2)),
                baselines=b, target=t, perturbations_per_eval=perturbations_per_eval,
            )
    else:
        with torch.enable_grad():
            a = attr.IntegratedGradients(classifier.logits).attribute(
                x, baselines=b, target=t, n_steps=n_steps, internal_batch_size=internal_batch_size
            )
    return a.sum(1).detach()


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


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

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

