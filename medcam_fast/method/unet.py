"""The class-conditional 2-D U-Net that outputs mask logits.

``UNet(x, c) → u``: ``x`` is a normalized image batch ``[B, C, H, W]``, ``c`` the target class of each
image ``[B]``; ``u`` are mask logits ``[B, 1, H, W]`` and the mask is ``m = σ(u / τ)``.

Shape: an encoder of ``depth`` stages (two 3×3 convs, GroupNorm, SiLU; 2×2 average-pool between stages),
a bottleneck where a class embedding modulates the features (FiLM: ``h ← h·(1+γ_c) + β_c``), and a
decoder with nearest-neighbour upsampling and skip connections. GroupNorm keeps no running statistics,
so every image is processed independently — the property per-image adaptation relies on.

Large images are handled at ``1/downsample`` resolution (``UNetConfig.downsample``). Any ``H×W`` works:
:meth:`UNet.forward` pads to a multiple of ``2**depth · downsample`` (replicate) and crops back;
:meth:`UNet.forward_padded` is the pad-free core that the ONNX export uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetConfig", "UNet", "auto_downsample"]


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`.

    Args:
        in_channels: channels of the input image (1 grey, 3 RGB).
        num_classes: number of target classes the class embedding knows.
        width: channels of the first stage; stage ``i`` has ``width · 2**i``.
        depth: number of down-sampling stages; inputs are padded to a multiple of ``2**depth``.
        groups: GroupNorm groups (clipped to the channel count).
        init_bias: initial bias of the output layer, i.e. the mask logit everywhere before training
            (0 → m = 0.5).
        downsample: the U-Net works at ``1/downsample`` of the input resolution (average-pooled in,
            mask logits bilinearly upsampled out). 1 for small images; :func:`auto_downsample` picks 4 above
            96 px, where a full-resolution U-Net would cost more than the classifier it explains.
    """

    in_channels: int
    num_classes: int
    width: int = 16
    depth: int = 3
    groups: int = 4
    init_bias: float = 0.0
    downsample: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        return cls(**d)

    @property
    def multiple(self) -> int:
        """Spatial sizes the pad-free core accepts are multiples of this."""
        return 2**self.depth * self.downsample


def auto_downsample(image_size: int) -> int:
    """The :attr:`UNetConfig.downsample` medcam-fast uses for square images of this side: 1 up to 96 px, else 4."""
    return 1 if image_size <= 96 else 4


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    g = max(1, min(groups, cout))
    while cout % g:
        g -= 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(g, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(g, cout),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """Class-conditional U-Net producing mask logits. See the module docstring for the shape.

    Args:
        config: a :class:`UNetConfig`.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w, d = config.width, config.depth
        chans = [w * 2**i for i in range(d + 1)]
        self.down = nn.ModuleList()
        cin = config.in_channels
        for c in chans[:-1]:
            self.down.append(_block(cin, c, config.groups))
            cin = c
        self.mid = _block(chans[-2], chans[-1], config.groups)
        self.film = nn.Embedding(config.num_classes, 2 * chans[-1])
        nn.init.zeros_(self.film.weight)
        self.up = nn.ModuleList()
        for i in reversed(range(d)):
            self.up.append(_block(chans[i + 1] + chans[i], chans[i], config.groups))
        self.out = nn.Conv2d(chans[0], 1, 1)
        nn.init.normal_(self.out.weight, std=1e-2)
        nn.init.constant_(self.out.bias, config.init_bias)

    def forward_padded(self, x: Tensor, target: Tensor) -> Tensor:
        """The core: ``x`` must have ``H`` and ``W`` divisible by :attr:`UNetConfig.multiple`. Returns ``[B,1,H,W]``."""
        d = self.config.downsample
        if d > 1:
            return F.interpolate(self._core(F.avg_pool2d(x, d), target), scale_factor=float(d), mode="bilinear",
                                 align_corners=False)
        return self._core(x, target)

    def _core(self, x: Tensor, target: Tensor) -> Tensor:
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.mid(h)
        gamma, beta = self.film(target).chunk(2, dim=-1)
        h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        for block, skip in zip(self.up, reversed(skips), strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """Mask logits for images of any size.

        Args:
            x: normalized images ``[B, C, H, W]``.
            target: target class per image, integer ``[B]``.

        Returns:
            Mask logits ``[B, 1, H, W]``.
        """
        h, w = x.shape[-2:]
        m = self.config.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.forward_padded(x, target)[..., :h, :w]
