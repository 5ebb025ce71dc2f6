"""The classifier-aware first guess: a light decoder over the explained classifier's own features.

``FeatureDecoder(x, A(x), head) → U``: ``A(x)`` are the frozen classifier's activations at its taps (the
activation-matching layers, computed by the same forward pass that gives the logits ``z(x)``), ``head`` the
classifier's final linear layer ``(W, b)``; ``U`` are coarse-grid mask logits for **every class at once**
``[B, K, g_h, g_w]`` (:func:`~.masking.coarse_grid`); the target ``c`` selects a channel and the mask is
``m = σ(up(U_c)/τ)`` with ``up`` bilinear (:func:`~.masking.to_image_grid`).

The anchor is real-time saliency (Dabkowski & Gal, NeurIPS 2017): a frozen encoder, a class-conditioned
feature filter and an upsampling decoder — here the encoder is the classifier being explained, so the first
guess changes whenever the classifier does (the randomization sanity check of Adebayo et al. 2018 has
something to see). On the coarse grid ``g``:

    h     = SiLU( Σ_l GN(P_l · R_g(A_l(x))) + C_img ∗ R_g(x) )           every tap projected to ``width``
    M_k   = standardize_hw( W_k · R_g(A_t(x)) + b_k )                    class maps (CAM, Zhou et al. 2016)
    U_k   = [conv(h ‖ M)]_k + s_k · M_k + β                               one channel per class

``R_g`` resizes to the grid (average pooling when the ratio is an integer, else bilinear), ``A_t`` is the
tap the head reads (the last one whose width equals the head's input), ``standardize_hw`` makes each class
map zero-mean, unit-variance over space. A ViT's tokens ``[B, T, D]`` are reshaped to their patch grid
(leading cls / register tokens dropped). What differs from real-time saliency, and why: no gradients and no
separate encoder (ONNX graphs have no autograd; the classifier's forward is already paid for), the class
enters through the classifier's own head rather than a learned embedding, and the output is a coarse grid
(the mask cannot be speckle, and the few refinement steps act on a few hundred logits, not 4096).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import coarse_grid

__all__ = ["Tap", "DecoderConfig", "FeatureDecoder", "describe_taps", "select_class", "token_grid"]

#: Largest number of leading non-patch tokens (cls, distillation, registers) a token sequence may carry.
_MAX_PREFIX = 16


@dataclass(frozen=True)
class Tap:
    """One classifier layer the decoder reads.

    Args:
        name: the layer's name in ``model.named_modules()``.
        channels: its feature width (``C`` of ``[B,C,h,w]``, ``D`` of ``[B,T,D]``).
        tokens: the patch grid ``(h, w)`` when the layer returns a token sequence; None for a feature map.
    """

    name: str
    channels: int
    tokens: tuple[int, int] | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of a :class:`FeatureDecoder`.

    Args:
        in_channels: channels of the input image.
        num_classes: ``K``, one output channel per class.
        image_size: ``(H, W)`` of the classifier's input.
        taps: the classifier layers read, shallow to deep.
        cam_tap: the tap the classifier's head reads (class maps); None: no class maps.
        width: channels of the decoder.
        grid: the coarse mask grid ``(g_h, g_w)``; default :func:`~.masking.coarse_grid` of ``image_size``.
        image_branch: also read the image itself, resized to the grid.
        init_bias: initial mask logit everywhere (0 → m = 0.5).
    """

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    taps: tuple[Tap, ...]
    cam_tap: str | None
    width: int = 32
    grid: tuple[int, int] | None = None
    image_branch: bool = True
    init_bias: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "taps", tuple(t if isinstance(t, Tap) else Tap(
            str(t["name"]), int(t["channels"]), None if t.get("tokens") is None else tuple(t["tokens"]))
            for t in self.taps))
        if self.grid is None:
            object.__setattr__(self, "grid", coarse_grid(self.image_size))
        else:
            object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if not self.taps:
            raise ValueError("the decoder needs at least one classifier layer to read")
        if self.cam_tap is not None and self.cam_tap not in {t.name for t in self.taps}:
            raise ValueError(f"cam_tap {self.cam_tap!r} is not one of the taps")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of the fields."""
        d = asdict(self)
        d["taps"] = [{"name": t.name, "channels": t.channels, "tokens": None if t.tokens is None else list(t.tokens)}
                     for t in self.taps]
        d["image_size"], d["grid"] = list(self.image_size), list(self.grid or ())
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        return cls(**dict(d))

    @property
    def tap_names(self) -> list[str]:
        """The names of the taps, in order."""
        return [t.name for t in self.taps]


def token_grid(tokens: int, size: Sequence[int]) -> tuple[int, int] | None:
    """The patch grid ``(h, w)`` of a sequence of ``tokens`` tokens for an ``H×W`` image: the fewest leading
    tokens (≤ 16: cls, distillation, registers) whose removal leaves ``h·w`` tokens with ``h/w = H/W``.

    Args:
        tokens: ``T`` of ``[B, T, D]``.
        size: ``(H, W)`` of the image.
    """
    h_img, w_img = int(size[0]), int(size[1])
    for prefix in range(min(_MAX_PREFIX, tokens - 1) + 1):
        n = tokens - prefix
        gh = math.isqrt(n * h_img // w_img) if w_img else 0
        for cand in (gh - 1, gh, gh + 1):
            if cand > 0 and n % cand == 0 and cand * w_img == (n // cand) * h_img:
                return cand, n // cand
    return None


def describe_taps(activations: Mapping[str, Tensor], size: Sequence[int]) -> tuple[Tap, ...]:
    """:class:`Tap` records from one forward pass's activations (``[B,C,h,w]`` maps or ``[B,T,D]`` tokens).

    Raises:
        ValueError: an activation that is neither, or tokens that do not form a patch grid.
    """
    taps = []
    for name, a in activations.items():
        if a.dim() == 4:
            taps.append(Tap(name, int(a.shape[1])))
        elif a.dim() == 3:
            grid = token_grid(int(a.shape[1]), size)
            if grid is None:
                raise ValueError(f"layer {name!r} returns {a.shape[1]} tokens, which form no patch grid of a "
                                 f"{size[0]}×{size[1]} image")
            taps.append(Tap(name, int(a.shape[2]), grid))
        else:
            raise ValueError(f"layer {name!r} returns a {a.dim()}-D tensor; the decoder reads [B,C,h,w] or [B,T,D]")
    return tuple(taps)


def _as_map(a: Tensor, tap: Tap) -> Tensor:
    """A tap's activation as a feature map ``[B, C, h, w]`` (tokens: prefix dropped, reshaped to the grid)."""
    if tap.tokens is None:
        return a
    gh, gw = tap.tokens
    return a[:, a.shape[1] - gh * gw :].transpose(1, 2).reshape(a.shape[0], a.shape[2], gh, gw)


def _resize(t: Tensor, size: tuple[int, int]) -> Tensor:
    """``R_g``: average pooling by an integer ratio, else bilinear (static sizes: exportable)."""
    h, w = t.shape[-2:]
    if (h, w) == size:
        return t
    if h % size[0] == 0 and w % size[1] == 0 and h >= size[0] and w >= size[1]:
        return F.avg_pool2d(t, (h // size[0], w // size[1]))
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def _groups(channels: int, groups: int = 8) -> int:
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def standardize(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """Each map ``[B,K,h,w]`` minus its spatial mean, over its spatial standard deviation (+ε)."""
    mu = maps.mean(dim=(-2, -1), keepdim=True)
    sd = (maps - mu).pow(2).mean(dim=(-2, -1), keepdim=True).add(eps).sqrt()
    return (maps - mu) / sd


def select_class(u: Tensor, target: Tensor) -> Tensor:
    """The target's channel of all-class logits: ``[B,K,h,w]`` → ``[B,1,h,w]``."""
    return u.gather(1, target.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[-2:]))


class FeatureDecoder(nn.Module):
    """Coarse-grid mask logits for every class from a classifier's features. See the module docstring.

    Args:
        config: a :class:`DecoderConfig`.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        w, k = config.width, config.num_classes
        self.project = nn.ModuleDict({
            _key(t.name): nn.Sequential(nn.Conv2d(t.channels, w, 1), nn.GroupNorm(_groups(w), w))
            for t in config.taps
        })
        self.image = nn.Conv2d(config.in_channels, w, 3, padding=1) if config.image_branch else None
        extra = k if config.cam_tap is not None else 0
        self.trunk = nn.Sequential(
            nn.Conv2d(w + extra, w, 3, padding=1), nn.GroupNorm(_groups(w), w), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(_groups(w), w), nn.SiLU(),
        )
        self.out = nn.Conv2d(w, k, 1)
        nn.init.normal_(self.out.weight, std=1e-2)
        nn.init.constant_(self.out.bias, config.init_bias)
        self.cam_scale = nn.Parameter(torch.full((k,), 0.5)) if config.cam_tap is not None else None

    def class_maps(self, activations: Mapping[str, Tensor], head: tuple[Tensor, Tensor | None]) -> Tensor:
        """``M = standardize_hw(W · R_g(A_t) + b)`` ``[B,K,g_h,g_w]``: the head applied at every position."""
        tap = next(t for t in self.config.taps if t.name == self.config.cam_tap)
        feats = _resize(_as_map(activations[tap.name], tap), self.config.grid)
        weight, bias = head
        maps = torch.einsum("bdhw,kd->bkhw", feats, weight.to(feats.dtype))
        if bias is not None:
            maps = maps + bias.to(feats.dtype)[None, :, None, None]
        return standardize(maps)

    def forward(self, x: Tensor, activations: Mapping[str, Tensor],
                head: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
        """Coarse mask logits for every class.

        Args:
            x: normalized images ``[B, C, H, W]`` (the classifier's input).
            activations: the classifier's activations on ``x`` at every tap.
            head: the classifier's final linear layer ``(W [K, D], b [K] or None)``; required when the config
                has a ``cam_tap``.

        Returns:
            ``U`` ``[B, K, g_h, g_w]``.
        """
        grid = self.config.grid
        assert grid is not None
        h = None
        for tap in self.config.taps:
            f = self.project[_key(tap.name)](_resize(_as_map(activations[tap.name], tap), grid))
            h = f if h is None else h + f
        assert h is not None
        if self.image is not None:
            h = h + self.image(_resize(x, grid))
        h = F.silu(h)
        maps = None
        if self.config.cam_tap is not None:
            if head is None:
                raise ValueError("this decoder reads the classifier's head: pass head=(weight, bias)")
            maps = self.class_maps(activations, head)
            h = torch.cat([h, maps], dim=1)
        u = self.out(self.trunk(h))
        if maps is not None and self.cam_scale is not None:
            u = u + self.cam_scale[None, :, None, None] * maps
        return u


def _key(name: str) -> str:
    """A layer name as a ModuleDict key (dots are not allowed there)."""
    return name.replace(".", "__")
