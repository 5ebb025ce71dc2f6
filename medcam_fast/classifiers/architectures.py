"""The two built-in classifiers: a narrow ResNet-18 and a small ViT, sized for small images on a CPU.

:func:`build_classifier` makes a freshly initialized :class:`ResNet` or :class:`ViT` (the names are
:data:`ARCHITECTURES`); each keeps in ``model.config`` what a bundle needs to rebuild it. Any input size
works: the ResNet is fully convolutional, the ViT pads to a multiple of its patch size and interpolates its
position embeddings.

What differs from the references, and why: the ResNet has torchvision's ResNet-18 layout (BasicBlock
×[2, 2, 2, 2]) but a base width of 16 instead of 64 and, up to 96 px, a 3×3 stem instead of the 7×7 stem and
max-pool (stride 1 up to 32 px, 2 above), with the last BatchNorm of each residual branch zero-initialized:
small medical images, short CPU training and the per-image optimization all need it cheap. The ViT's
attention is written with plain matmuls, so it runs under autograd, ``torch.func`` and ONNX alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

if TYPE_CHECKING:
    pass

__all__ = ["ARCHITECTURES", "ResNet", "ViT", "build_classifier"]


#: Names accepted by :func:`build_classifier`.
ARCHITECTURES: tuple[str, ...] = ("resnet18", "vit")


_RESNET_DEFAULT_WIDTH = 16


_VIT_HEADS = 4


_VIT_DEPTH = 4


_VIT_MLP_RATIO = 2


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with BatchNorm and an identity (or 1×1) shortcut.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18-style CNN (BasicBlock ×[2, 2, 2, 2]) with a configurable base width.

    Submodules: ``stem``, ``layer1`` … ``layer4`` (feature maps ``[B, C, h, w]``), ``pool``, ``head``.

    Args:
        in_channels: image channels (1 for grey-level, 3 for RGB).
        num_classes: number of output logits.
        image_size: the image side the model is trained at: ≤ 32 selects a 3×3 stride-1 stem, ≤ 96 a 3×3
            stride-2 stem (a 64-px image meets ``layer1`` at 32 px: 4× cheaper, which the per-image
            optimization on a CPU needs), larger sizes the standard 7×7 stride-2 stem + 3×3 max-pool.
            Any input size works.
        width: channels of ``layer1`` (doubled at each later stage); 64 is the standard ResNet-18.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config: dict[str, Any] = {
            "arch": "resnet18",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
        }
        if image_size <= 96:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=1 if image_size <= 32 else 2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        w = width
        self.layer1 = nn.Sequential(_BasicBlock(w, w), _BasicBlock(w, w))
        self.layer2 = nn.Sequential(_BasicBlock(w, 2 * w, 2), _BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(_BasicBlock(2 * w, 4 * w, 2), _BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(_BasicBlock(4 * w, 8 * w, 2), _BasicBlock(8 * w, 8 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch: faster short training
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of normalized images ``x`` ``[B, C, H, W]``."""
        # A standard (NCHW) layout, always: on the CPU, torch 2.13's backward of a 1×1 stride-2 convolution
        # with ≤ 4 input channels corrupts the heap for channels-last inputs (incl. 1-channel tensors
        # whose strides look channels-last, e.g. from a permute). The copy is cheap next to the network.
        x = x.clone(memory_format=torch.contiguous_format)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.pool(x).flatten(1))


class _Attention(nn.Module):
    """Multi-head self-attention written with plain matmuls (works under autograd, ``torch.func`` and ONNX).

    Args:
        dim: token dimension.
        heads: number of heads (``dim`` must be divisible by it).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the tokens of ``x`` ``[B, T, D]``."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    Args:
        dim: token dimension.
        heads: attention heads.
        mlp_ratio: hidden size of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``[B, T, D]`` → tokens ``[B, T, D]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Small vision transformer: patch embedding, cls token, learned position embeddings, pre-norm blocks.

    The input is zero-padded (symmetrically) to a multiple of the patch size, and the position embeddings
    are bicubically interpolated when the patch grid differs from the training grid, so any input size
    works. Submodules: ``patch_embed``, ``blocks`` (``blocks.0`` … ``blocks.3``, tokens ``[B, 1+T, D]``),
    ``norm``, ``head``.

    Args:
        in_channels: image channels.
        num_classes: number of output logits.
        image_size: the image side the model is trained at; selects the patch size (4 up to 32 px,
            8 up to 128 px, 16 above) and the size of the position-embedding grid.
        width: token dimension (divisible by 4, the number of heads).
        depth: number of transformer blocks.
    """

    def __init__(
        self, in_channels: int, num_classes: int, image_size: int, width: int = 64, depth: int = _VIT_DEPTH
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch = 4 if image_size <= 32 else 8 if image_size <= 128 else 16
        self.grid = math.ceil(image_size / self.patch)
        self.config: dict[str, Any] = {
            "arch": "vit",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
            "depth": depth,
        }
        self.patch_embed = nn.Conv2d(in_channels, width, self.patch, stride=self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, width))
        self.blocks = nn.ModuleList(_Block(width, _VIT_HEADS, _VIT_MLP_RATIO) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _positions(self, gh: int, gw: int) -> Tensor:
        """Position embeddings ``[1, 1+gh*gw, D]`` for a ``gh × gw`` patch grid (interpolated if needed)."""
        if gh == self.grid and gw == self.grid:
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid_pos.shape[-1]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of normalized images ``x`` ``[B, C, H, W]``."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        x = self.patch_embed(x)
        gh, gw = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self._positions(gh, gw)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def build_classifier(
    arch: str, in_channels: int, num_classes: int, image_size: int, width: int | None = None
) -> ResNet | ViT:
    """A freshly initialized built-in classifier.

    Args:
        arch: ``"resnet18"`` (:class:`ResNet`) or ``"vit"`` (:class:`ViT`).
        in_channels: image channels (1 grey-level, 3 RGB).
        num_classes: number of classes (logits).
        image_size: the image side the model will be trained at (selects the ResNet stem and the ViT patch
            size); any input whose sides are multiples of 4 between 28 and 224 works afterwards.
        width: ResNet: channels of the first stage (default 16; the standard ResNet-18 has 64). ViT: token
            dimension (default 64 up to 64 px, 96 above; must be divisible by 4).

    Raises:
        UsageError: unknown architecture or an invalid size.
    """
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    for name, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1)):
        if not isinstance(value, int) or value < low:
            raise UsageError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if not isinstance(image_size, int) or not 8 <= image_size <= 4096:
        raise UsageError(f"image_size must be an integer between 8 and 4096, got {image_size!r}")
    if arch == "resnet18":
        w = _RESNET_DEFAULT_WIDTH if width is None else width
        if not isinstance(w, int) or w < 1:
            raise UsageError(f"resnet18 width must be a positive integer, got {w!r}")
        return ResNet(in_channels, num_classes, image_size, w)
    w = (64 if image_size <= 64 else 96) if width is None else width
    if not isinstance(w, int) or w < _VIT_HEADS or w % _VIT_HEADS:
        raise UsageError(f"vit width must be a positive multiple of {_VIT_HEADS}, got {w!r}")
    return ViT(in_channels, num_classes, image_size, w)


def _rebuild_builtin(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a built-in architecture from its ``config`` (``model.config`` of :class:`ResNet`/:class:`ViT`)."""
    arch = config.get("arch")
    args = {k: config.get(k) for k in ("in_channels", "num_classes", "image_size", "width")}
    if arch == "vit" and config.get("depth", _VIT_DEPTH) != _VIT_DEPTH:
        return ViT(
            args["in_channels"], args["num_classes"], args["image_size"], args["width"], config["depth"]
        )
    return build_classifier(str(arch), **args)
