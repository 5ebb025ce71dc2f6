"""Frozen classifiers: built-in architectures, activation capture, safe bundles, users' own models, training.

medcam-fast explains a *frozen* image classifier: it needs the classifier's logits and a few internal
activations, both differentiable with respect to the input image. This module provides

* two small built-in architectures (:func:`build_classifier`: a narrow ResNet-18 and a small ViT);
* :class:`FrozenClassifier`, which wraps any ``nn.Module`` (eval mode, parameters frozen) and returns
  ``(logits, activations)`` per call, with forward hooks that live only for the duration of that call;
* classifier bundles (:class:`ClassifierBundle`): ``weights.safetensors`` + ``classifier.json``, written
  atomically and verified by sha256 on load (:func:`save_classifier`, :func:`load_classifier`). Nothing
  here unpickles anything: weights are read with ``safetensors`` only;
* loaders for users' own models (:func:`classifier_from_module`, :func:`load_import_path`,
  :func:`load_exported`, :func:`load_timm`);
* :func:`train_classifier`, a small deterministic CPU training loop for the built-in architectures.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._io import atomic_write, atomic_write_bytes, atomic_write_json, sha256_file
from .errors import ModelError, UsageError, one_line

if TYPE_CHECKING:
    from .data import ImageSet, Preprocess

__all__ = [
    "ARCHITECTURES",
    "FORMAT_VERSION",
    "SOURCES",
    "ClassifierBundle",
    "ClassifierOutput",
    "FrozenClassifier",
    "ResNet",
    "ViT",
    "build_classifier",
    "classifier_from_module",
    "default_layers",
    "load_classifier",
    "load_exported",
    "load_import_path",
    "load_timm",
    "save_classifier",
    "state_sha256",
    "train_classifier",
]

#: Names accepted by :func:`build_classifier`.
ARCHITECTURES: tuple[str, ...] = ("resnet18", "vit")
#: Where a bundle's model came from.
SOURCES: tuple[str, ...] = ("builtin", "import", "export", "timm")
#: Version of the ``classifier.json`` layout written by :func:`save_classifier`.
FORMAT_VERSION = 1

_FORMAT_NAME = "medcam-fast-classifier"
_JSON_NAME = "classifier.json"
_WEIGHTS_NAME = "weights.safetensors"
_PROGRAM_NAME = "program.pt2"
_RESNET_DEFAULT_WIDTH = 16
_VIT_HEADS = 4
_VIT_DEPTH = 4
_VIT_MLP_RATIO = 2


# --------------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------------


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
) -> nn.Module:
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


# --------------------------------------------------------------------------------------------------------
# Frozen classifier with per-call activation capture
# --------------------------------------------------------------------------------------------------------


class ClassifierOutput(NamedTuple):
    """What a :class:`FrozenClassifier` returns.

    Args:
        logits: ``[B, K]`` class scores.
        activations: layer name → activation: ``[B, C, h, w]`` for CNN layers, ``[B, T, D]`` for
            transformer blocks (the token sequence, cls token first).
    """

    logits: Tensor
    activations: dict[str, Tensor]


#: A forward hook: ``hook(module, inputs, output)``.
_Hook = Callable[[nn.Module, Any, Any], None]


def _unwrap(model: nn.Module) -> nn.Module:
    """The user model inside a :class:`FrozenClassifier` (or ``model`` itself)."""
    return model.model if isinstance(model, FrozenClassifier) else model


def _first_tensor(output: Any) -> Tensor | None:
    """``output`` if it is a tensor, else the first element of a tuple/list output if that is a tensor."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _as_logits(output: Any) -> Tensor:
    """Logits from a model's output: a tensor, an object with ``.logits``, a dict or a tuple (first item).

    Raises:
        ModelError: no ``[B, K]`` tensor can be found.
    """
    if isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    elif not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
        output = output.logits
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise ModelError(f"the model returned {type(output).__name__}, expected a logits tensor [B, K]")
    if output.dim() != 2:
        raise ModelError(
            f"the model returned a tensor of shape {tuple(output.shape)}, expected logits [B, K]"
        )
    return output


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` under every name it has (the root excluded)."""
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if n}


def _valid_names_hint(names: Sequence[str], limit: int = 12) -> str:
    """A short comma-separated list of some valid layer names, shallowest (top-level) first."""
    shown = ", ".join(sorted(names, key=lambda n: n.count("."))[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _builtin_defaults(model: nn.Module) -> list[str] | None:
    """The documented default layers of a built-in architecture, or None for another model."""
    if isinstance(model, ResNet):
        return ["layer3", "layer4"]
    if isinstance(model, ViT):
        n = len(model.blocks)
        return [f"blocks.{i}" for i in range(max(0, n - 2), n)]
    return None


def _scan_outputs(model: nn.Module, example_input: Tensor) -> list[tuple[str, Tensor]]:
    """Run one forward pass with a hook on every submodule; ``(name, output)`` in order of completion.

    A module called several times is listed at its last call. Non-tensor outputs are skipped.
    """
    events: list[tuple[str, Tensor]] = []
    handles = []

    def make_hook(name: str) -> _Hook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is not None:
                events.append((name, t))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            try:
                model(example_input)
            except Exception as e:
                raise ModelError(f"forward pass on the example input failed: {one_line(e, typed=True)}") from e
    finally:
        for h in handles:
            h.remove()
    last: dict[str, int] = {}
    for i, (name, _) in enumerate(events):
        last[name] = i
    return [events[i] for i in sorted(last.values())]


def default_layers(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """The layers whose activations medcam-fast matches by default.

    The rule, in order:

    1. the built-in :class:`ResNet`: ``["layer3", "layer4"]``; the built-in :class:`ViT`: its last two
       blocks (``["blocks.2", "blocks.3"]``);
    2. any other model: one forward pass of ``example_input`` with a hook on every submodule; the last two
       modules, in order of completion, whose outputs are 4-D feature maps with ``h·w > 1``, or, if there
       are none, 3-D token sequences ``[B, T, D]``; the model itself is excluded. When several modules
       return the very same tensor (a container and its last child), only the outermost (last to
       complete) counts. Fewer than two candidates give a one-element list.

    Args:
        model: the classifier (a :class:`FrozenClassifier` is unwrapped).
        example_input: one normalized batch ``[B, C, H, W]``; only needed for non-built-in models.

    Raises:
        UsageError: a non-built-in model without ``example_input``.
        ModelError: the forward pass fails, or no submodule produces a feature map or token sequence.
    """
    model = _unwrap(model)
    builtin = _builtin_defaults(model)
    if builtin is not None:
        return builtin
    if example_input is None:
        raise UsageError("default_layers needs an example input for a model that is not built in")
    events = _scan_outputs(model, example_input)
    # Collapse modules that returned the same tensor object: keep the one that completed last.
    last_by_tensor: dict[int, int] = {}
    for i, (_, t) in enumerate(events):
        last_by_tensor[id(t)] = i
    distinct = [events[i] for i in sorted(last_by_tensor.values())]
    maps = [n for n, t in distinct if t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1]
    tokens = [n for n, t in distinct if t.dim() == 3]
    chosen = maps[-2:] if maps else tokens[-2:]
    if not chosen:
        raise ModelError(
            "no submodule returns a 4-D feature map or a 3-D token sequence: pass layers explicitly "
            "(or layers=[] to use the logits only)"
        )
    return chosen


class FrozenClassifier(nn.Module):
    """A frozen classifier that returns ``(logits, activations)``, differentiable w.r.t. the input.

    The wrapped model is put in eval mode (and kept there: :meth:`train` is a no-op) and every parameter
    gets ``requires_grad=False``; gradients still flow to the input image. Activations are captured by
    forward hooks registered at the start of each :meth:`forward` call and removed in ``finally``, so no
    state survives a call, calls are independent, and it works inside ``torch.func`` transforms. A layer
    called several times in one forward pass reports its last output.

    Args:
        model: the classifier; its forward maps normalized images ``[B, C, H, W]`` to logits ``[B, K]``
            (or a tuple / dict / object with ``.logits`` holding them).
        layers: names (as in ``model.named_modules()``) of the layers whose outputs are returned; None
            selects :func:`default_layers`; ``[]`` returns no activations.
        example_input: a normalized batch used to find the default layers of a non-built-in model; without
            it they are found on the first call.
        num_classes: number of classes, if known (otherwise read from the model or the first call).

    Raises:
        UsageError: an unknown layer name (the message lists some valid names).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        example_input: Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        model = _unwrap(model)
        self.model = model
        _set_eval(model)
        for p in model.parameters():
            p.requires_grad_(False)
        self.training = False
        self._num_classes = num_classes
        self._layers: list[str] | None = None
        if layers is not None:
            self._layers = self._check_layers(layers)
        elif _builtin_defaults(model) is not None or example_input is not None:
            self._layers = default_layers(model, example_input)

    def _check_layers(self, layers: Sequence[str]) -> list[str]:
        """Validate layer names against the model's submodules.

        Args:
            layers: requested layer names.
        """
        if isinstance(layers, str):
            raise UsageError(f"layers must be a list of names, got the string {layers!r}")
        modules = _named_modules(self.model)
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise UsageError(
                f"unknown layer {unknown[0]!r}; valid names include: {_valid_names_hint(list(modules))}"
            )
        return list(dict.fromkeys(layers))

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Does nothing but keep eval mode: a frozen classifier never trains.

        Args:
            mode: ignored.
        """
        _set_eval(self.model)
        self.training = False
        return self

    @property
    def layers(self) -> list[str]:
        """Names of the layers whose activations :meth:`forward` returns.

        Raises:
            UsageError: the defaults of a non-built-in model are not known yet (no example input, no call).
        """
        if self._layers is None:
            raise UsageError(
                "the default layers of this model are found on the first call: pass example_input or layers"
            )
        return list(self._layers)

    @property
    def num_classes(self) -> int:
        """Number of classes (logits per image).

        Raises:
            UsageError: not known yet (pass ``num_classes`` or call the classifier once).
        """
        if self._num_classes is not None:
            return self._num_classes
        k = getattr(self.model, "num_classes", None)
        if isinstance(k, int):
            return k
        raise UsageError("the number of classes is known after the first call: pass num_classes")

    def logits(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` of normalized images ``x`` ``[B, C, H, W]``, without activation hooks.

        Args:
            x: normalized images.
        """
        logits = _as_logits(self.model(x))
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        return logits

    def probs(self, x: Tensor) -> Tensor:
        """Class probabilities ``softmax(logits)`` ``[B, K]``.

        Args:
            x: normalized images.
        """
        return torch.softmax(self.logits(x), dim=-1)

    def forward(self, x: Tensor) -> ClassifierOutput:
        """Logits and activations of normalized images ``x`` ``[B, C, H, W]``.

        Args:
            x: normalized images (may require grad, or be a ``torch.func`` wrapped tensor).

        Raises:
            ModelError: a requested layer is not called by the model's forward.
        """
        if self._layers is None:
            self._layers = default_layers(self.model, x.detach())
        modules = _named_modules(self.model)
        captured: dict[str, Tensor] = {}
        handles = []

        def make_hook(name: str) -> _Hook:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                t = _first_tensor(output)
                if t is not None:
                    captured[name] = t

            return hook

        try:
            for name in self._layers:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            logits = _as_logits(self.model(x))
        finally:
            for h in handles:
                h.remove()
        missing = [name for name in self._layers if name not in captured]
        if missing:
            raise ModelError(f"layer {missing[0]!r} did not return a tensor during the forward pass")
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        return ClassifierOutput(logits, {name: captured[name] for name in self._layers})


def _set_eval(model: nn.Module) -> None:
    """Put ``model`` and all submodules in eval mode (exported programs refuse ``.eval()``: set the flags)."""
    try:
        model.eval()
    except NotImplementedError:
        for m in model.modules():
            m.training = False


# --------------------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------------------


@dataclass
class ClassifierBundle:
    """A classifier together with everything needed to use, save and rebuild it.

    Args:
        model: the ``nn.Module`` (normalized ``[B, C, H, W]`` → logits ``[B, K]``).
        preprocess: the preprocessing its inputs need (:class:`~medcam_fast.data.Preprocess`).
        classes: class names, index = logit index.
        arch: ``"resnet18"``, ``"vit"``, ``"import"``, ``"export"`` or ``"timm:<name>"``.
        config: what is needed to rebuild the architecture (arch, in_channels, num_classes, image_size,
            width … for built-ins; the factory / program / timm name for other sources).
        metrics: training results (``val_accuracy``, ``test_accuracy``, ``epochs``, ``seconds``, ``n_train``).
        sha256: sha256 of the weights as written to ``weights.safetensors`` (see :func:`state_sha256`).
        source: ``"builtin"``, ``"import"``, ``"export"`` or ``"timm"``.
    """

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    arch: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    source: str = "builtin"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def frozen(self, layers: Sequence[str] | None = None) -> FrozenClassifier:
        """A :class:`FrozenClassifier` of this bundle's model (freezes ``self.model`` in place).

        Args:
            layers: activation layers; None selects :func:`default_layers` (found with a zero image of the
                preprocessing's size for non-built-in models).
        """
        example = None
        if layers is None and _builtin_defaults(self.model) is None:
            h, w = self.preprocess.size
            example = torch.zeros(1, self.preprocess.channels, h, w)
        return FrozenClassifier(self.model, layers, example_input=example, num_classes=len(self.classes))




def _version() -> str:
    """The installed medcam-fast version (``"unknown"`` when running from an uninstalled tree)."""
    try:
        return importlib.metadata.version("medcam-fast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _state_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as independent, contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _state_bytes(model: nn.Module) -> bytes:
    """The exact bytes :func:`save_classifier` writes to ``weights.safetensors`` (deterministic)."""
    return safetensors.torch.save(_state_tensors(model))


def state_sha256(model: nn.Module) -> str:
    """sha256 of ``model``'s state dict serialized as safetensors (equal to the saved file's sha256).

    Args:
        model: any ``nn.Module``.
    """
    return hashlib.sha256(_state_bytes(model)).hexdigest()


def _json_safe(obj: Any) -> Any:
    """``obj`` with numpy / torch scalars and arrays turned into plain Python (for JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, Tensor)) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, (np.ndarray, Tensor)):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_classifier(bundle: ClassifierBundle, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``weights.safetensors`` and ``classifier.json`` (and ``program.pt2`` for exported models).

    Every file is written atomically; ``classifier.json`` is written last and records the sha256 of the
    weights file, the format version, the architecture config, classes, preprocessing, metrics and the
    medcam-fast version. ``bundle.sha256`` is set to the sha256 of the written weights.

    Args:
        bundle: the classifier to save.
        out_dir: the folder to write into (created if needed).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ModelError: an exported model whose program file is missing or changed since it was loaded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _json_safe(dict(bundle.config))
    if bundle.source == "export":
        program = Path(str(bundle.config.get("program", "")))
        if not program.is_file():
            raise ModelError("the exported program file is missing", program)
        if sha256_file(program) != bundle.config.get("program_sha256"):
            raise ModelError("the exported program file changed since it was loaded", program)
        target = out / _PROGRAM_NAME
        if program.resolve() != target.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(program, tmp))
        config["program"] = _PROGRAM_NAME
    weights = out / _WEIGHTS_NAME
    atomic_write_bytes(weights, _state_bytes(bundle.model))
    digest = sha256_file(weights)
    bundle.sha256 = digest
    meta = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "medcam_fast_version": _version(),
        "source": bundle.source,
        "arch": bundle.arch,
        "config": config,
        "classes": list(bundle.classes),
        "preprocess": _json_safe(bundle.preprocess.to_dict()),
        "metrics": _json_safe(dict(bundle.metrics)),
        "weights": _WEIGHTS_NAME,
        "sha256": digest,
    }
    atomic_write_json(out / _JSON_NAME, meta)
    return out


_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "source": str,
    "arch": str,
    "config": dict,
    "classes": list,
    "preprocess": dict,
    "sha256": str,
}


def _read_meta(json_path: Path) -> dict[str, Any]:
    """Read and validate ``classifier.json``.

    Args:
        json_path: the file.

    Raises:
        ModelError: missing, unreadable, not JSON, or missing / mistyped keys.
    """
    if not json_path.is_file():
        raise ModelError(f"no {_JSON_NAME} here (not a medcam-fast classifier bundle)", json_path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read classifier metadata: {one_line(e, typed=True)}", json_path) from e
    if not isinstance(meta, dict):
        raise ModelError("classifier metadata is not a JSON object", json_path)
    for key, kind in _REQUIRED_KEYS.items():
        if key not in meta:
            raise ModelError(f"classifier metadata lacks the key {key!r}", json_path)
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise ModelError(f"classifier metadata key {key!r} has the wrong type", json_path)
    if meta["format_version"] > FORMAT_VERSION:
        raise ModelError(
            f"written by a newer medcam-fast (format {meta['format_version']}, this one reads up to "
            f"{FORMAT_VERSION}): upgrade medcam-fast",
            json_path,
        )
    if meta["source"] not in SOURCES:
        raise ModelError(f"unknown source {meta['source']!r}", json_path)
    if not meta["classes"] or not all(isinstance(c, str) for c in meta["classes"]):
        raise ModelError("'classes' must be a non-empty list of names", json_path)
    return meta


def _bundle_file(folder: Path, name: Any, json_path: Path) -> Path:
    """``folder / name`` for a plain file name recorded in the metadata (no directories, no ``..``)."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ModelError(f"invalid file name {name!r} in the metadata", json_path)
    return folder / name


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file on the CPU (never unpickles).

    Raises:
        ModelError: missing or not a valid safetensors file.
    """
    if not path.is_file():
        raise ModelError("weights file not found", path)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError, OSError, …
        raise ModelError(f"not a valid safetensors file ({one_line(e, typed=True)})", path) from e


def _load_weights_strict(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``: every key present, no extra key, every shape equal.

    Args:
        model: the freshly built model.
        path: a ``.safetensors`` file.

    Raises:
        ModelError: unreadable file or any key / shape mismatch (one line, naming the file).
    """
    tensors = _read_safetensors(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise ModelError(f"weights do not match the architecture: {', '.join(parts)} tensors", path)
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ModelError(
                f"weights do not match the architecture: {k!r} has shape {tuple(tensors[k].shape)}, "
                f"the model expects {tuple(v.shape)}",
                path,
            )
    try:
        model.load_state_dict(tensors, strict=True)
    except Exception as e:
        raise ModelError(f"cannot load the weights: {one_line(e, typed=True)}", path) from e


def _preprocess_from_dict(d: Mapping[str, Any], path: Path) -> Preprocess:
    """:meth:`Preprocess.from_dict`, with errors as :class:`ModelError` naming ``path``."""
    from .data import Preprocess

    try:
        return Preprocess.from_dict(d)
    except Exception as e:
        raise ModelError(f"invalid preprocessing in the metadata: {one_line(e, typed=True)}", path) from e


def load_classifier(path: str | os.PathLike[str], *, allow_import: bool = False) -> ClassifierBundle:
    """Load a bundle written by :func:`save_classifier`.

    The weights file's sha256 is checked against the metadata before it is read, and weights are read with
    ``safetensors`` only (no pickle), strictly (no missing, extra or mis-shaped tensor).

    Args:
        path: the bundle folder or its ``classifier.json``.
        allow_import: bundles of ``source="import"`` name a Python factory (``package.module:function``);
            it is imported and called only when this is True (importing runs that package's code).

    Raises:
        ModelError: missing files, bad JSON, sha256 mismatch, weights that do not fit the architecture,
            an unavailable rebuild (timm missing, a factory not allowed) — each one line naming the file.
    """
    p = Path(path)
    json_path = p / _JSON_NAME if p.is_dir() else p
    folder = json_path.parent
    meta = _read_meta(json_path)
    weights = _bundle_file(folder, meta.get("weights", _WEIGHTS_NAME), json_path)
    if not weights.is_file():
        raise ModelError("weights file not found", weights)
    digest = sha256_file(weights)
    if digest != meta["sha256"]:
        raise ModelError(
            f"sha256 mismatch: the file changed since {_JSON_NAME} was written "
            f"(recorded {meta['sha256'][:12]}…, found {digest[:12]}…)",
            weights,
        )
    preprocess = _preprocess_from_dict(meta["preprocess"], json_path)
    classes = list(meta["classes"])
    config = dict(meta["config"])
    source = meta["source"]
    model: nn.Module
    if source == "builtin":
        if config.get("arch") not in ARCHITECTURES:
            raise ModelError(f"unknown built-in architecture {config.get('arch')!r}", json_path)
        if config.get("num_classes") != len(classes):
            raise ModelError(
                f"config says {config.get('num_classes')} classes but {len(classes)} names are listed",
                json_path,
            )
        try:
            model = _rebuild_builtin(config)
        except (UsageError, TypeError, KeyError) as e:
            raise ModelError(f"invalid architecture config: {one_line(e, typed=True)}", json_path) from e
    elif source == "timm":
        in_channels = config.get("in_channels", preprocess.channels)
        if not isinstance(in_channels, int):
            raise ModelError("invalid in_channels in the timm config", json_path)
        model = _create_timm(str(config.get("timm_name")), len(classes), in_channels)
    elif source == "export":
        program = _bundle_file(folder, config.get("program"), json_path)
        if not program.is_file():
            raise ModelError("exported program file not found", program)
        program_sha = sha256_file(program)
        if program_sha != config.get("program_sha256"):
            raise ModelError("sha256 mismatch: the program changed since the bundle was written", program)
        model = _load_program(program)
        config["program"] = str(program.resolve())
    else:  # import
        spec = config.get("factory")
        if not spec:
            raise ModelError(
                "this classifier wraps a Python object: rebuild it in Python and load the weights with "
                "load_import_path(factory, weights, …)",
                json_path,
            )
        if not allow_import:
            raise ModelError(
                f"this classifier is built by the Python factory {spec!r}: pass allow_import=True to import it",
                json_path,
            )
        try:
            model = _call_factory(str(spec))
        except UsageError as e:
            raise ModelError(e.cause, json_path) from e
    _load_weights_strict(model, weights)
    _set_eval(model)
    return ClassifierBundle(
        model=model,
        preprocess=preprocess,
        classes=classes,
        arch=meta["arch"],
        config=config,
        metrics=dict(meta.get("metrics") or {}),
        sha256=digest,
        source=source,
    )


# --------------------------------------------------------------------------------------------------------
# Users' own models
# --------------------------------------------------------------------------------------------------------


def _check_model_fits(model: nn.Module, preprocess: Preprocess, classes: Sequence[str], where: Any) -> None:
    """One forward pass of a zero batch of the preprocessing's shape: the logits must be ``[2, len(classes)]``.

    Args:
        model: the classifier (in eval mode).
        preprocess: gives the input shape.
        classes: class names.
        where: the file or spec named in errors.

    Raises:
        ModelError: the forward pass fails or returns the wrong number of classes.
    """
    h, w = preprocess.size
    x = torch.zeros(2, preprocess.channels, h, w)
    try:
        with torch.no_grad():
            logits = _as_logits(model(x))
    except ModelError as e:
        raise ModelError(e.cause, where) from e
    except Exception as e:
        raise ModelError(f"the model fails on a {tuple(x.shape)} input: {one_line(e, typed=True)}", where) from e
    if logits.shape != (2, len(classes)):
        raise ModelError(
            f"the model returns {logits.shape[1]} logits but {len(classes)} classes are named", where
        )


def _check_classes(classes: Sequence[str]) -> list[str]:
    """Validate class names (a non-empty list of strings)."""
    if isinstance(classes, str) or not classes or not all(isinstance(c, str) for c in classes):
        raise UsageError("classes must be a non-empty list of class names")
    return list(classes)


def classifier_from_module(
    model: nn.Module, preprocess: Preprocess, classes: Sequence[str]
) -> ClassifierBundle:
    """Bundle a model built in Python.

    A built-in :class:`ResNet` / :class:`ViT` keeps ``source="builtin"`` (it can be saved and reloaded on
    its own); any other module gets ``source="import"`` with no factory: its weights can be saved, and
    reloaded with :func:`load_import_path`.

    Args:
        model: normalized ``[B, C, H, W]`` → logits ``[B, len(classes)]``; put in eval mode.
        preprocess: the preprocessing its inputs need.
        classes: class names, index = logit index.

    Raises:
        UsageError: empty ``classes``.
        ModelError: the model does not give ``len(classes)`` logits on an input of the preprocessing's shape.
    """
    classes = _check_classes(classes)
    _set_eval(model)
    _check_model_fits(model, preprocess, classes, type(model).__name__)
    if isinstance(model, (ResNet, ViT)):
        config, source, arch = dict(model.config), "builtin", model.config["arch"]
    else:
        config = {"factory": None, "in_channels": preprocess.channels, "num_classes": len(classes)}
        source, arch = "import", "import"
    return ClassifierBundle(model, preprocess, classes, arch, config, {}, state_sha256(model), source)


def _call_factory(spec: str) -> nn.Module:
    """Import ``package.module:factory`` (attribute path allowed after the colon) and call it with no arguments.

    Raises:
        UsageError: ``spec`` is not of the form ``module:attribute``.
        ModelError: the import or the call fails, or it does not return an ``nn.Module``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected 'package.module:factory', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:
        raise ModelError(f"cannot import the factory: {one_line(e, typed=True)}", spec) from e
    if not callable(obj):
        raise ModelError("the factory is not callable", spec)
    try:
        model = obj()
    except Exception as e:
        raise ModelError(f"the factory failed: {one_line(e, typed=True)}", spec) from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"the factory returned {type(model).__name__}, not a torch.nn.Module", spec)
    return model


def load_import_path(
    spec: str, weights: str | os.PathLike[str], preprocess: Preprocess, classes: Sequence[str]
) -> ClassifierBundle:
    """Build a user's model with its own code and load its weights from a safetensors file.

    The factory is imported only because the caller named it; it is called with no arguments and must
    return an ``nn.Module`` whose state dict matches the weights exactly.

    Args:
        spec: ``"package.module:factory"`` (importable from ``sys.path``).
        weights: the ``.safetensors`` state dict.
        preprocess: the preprocessing the model's inputs need.
        classes: class names, index = logit index.

    Raises:
        UsageError: a malformed ``spec`` or empty ``classes``.
        ModelError: import / call failure, unreadable weights, key or shape mismatch, or wrong class count.
    """
    classes = _check_classes(classes)
    path = Path(weights)
    model = _call_factory(spec)
    _load_weights_strict(model, path)
    _set_eval(model)
    _check_model_fits(model, preprocess, classes, path)
    config = {"factory": spec, "in_channels": preprocess.channels, "num_classes": len(classes)}
    return ClassifierBundle(model, preprocess, classes, "import", config, {}, sha256_file(path), "import")


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Force every ``torch.load`` in this block to ``weights_only=True`` (no arbitrary unpickling).

    ``torch.export.load`` unpickles a few parts of a ``.pt2`` archive (sample inputs, legacy weights) and
    falls back to ``weights_only=False`` when the safe loader refuses; the ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
    switch turns that fallback into an error.
    """
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _load_program(path: Path) -> nn.Module:
    """``torch.export.load(path)`` as a module keeping the original submodule names (for activation hooks).

    Raises:
        ModelError: missing, unreadable or unsafe archive.
    """
    if not path.is_file():
        raise ModelError("exported program file not found", path)
    try:
        with _weights_only_torch_load(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as e:
        if type(e).__name__ == "UnpicklingError":
            raise ModelError(
                "refused: the archive holds pickled data other than plain tensors (loading it could run code)",
                path,
            ) from e
        raise ModelError(f"cannot load the exported program: {one_line(e, typed=True)}", path) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module: nn.Module = torch.export.unflatten(program)
    except Exception:
        module = program.module()
    return module


def load_exported(
    path: str | os.PathLike[str], preprocess: Preprocess, classes: Sequence[str]
) -> ClassifierBundle:
    """Load a ``torch.export`` program (``.pt2``, from ``torch.export.save``) as a classifier.

    The archive's tensors are read with ``torch.load(weights_only=True)`` forced (no arbitrary unpickling).
    The program is unflattened so its submodules keep their names (``layer4``, ``blocks.3`` …) and
    activation hooks work. Export the model in eval mode, with a dynamic batch dimension.

    Args:
        path: the ``.pt2`` file.
        preprocess: the preprocessing the model's inputs need.
        classes: class names, index = logit index.

    Raises:
        UsageError: empty ``classes``.
        ModelError: unreadable or unsafe archive, or a model that does not fit ``preprocess`` / ``classes``.
    """
    classes = _check_classes(classes)
    p = Path(path)
    model = _load_program(p)
    _set_eval(model)
    _check_model_fits(model, preprocess, classes, p)
    config = {
        "program": str(p.resolve()),
        "program_sha256": sha256_file(p),
        "in_channels": preprocess.channels,
        "num_classes": len(classes),
    }
    return ClassifierBundle(model, preprocess, classes, "export", config, {}, state_sha256(model), "export")


def _create_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``timm.create_model(name, pretrained=False, …)`` — never downloads.

    Raises:
        ModelError: timm missing or unknown model name.
    """
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError as e:
        raise ModelError("timm is not installed: pip install 'medcam-fast[timm]'") from e
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as e:
        raise ModelError(f"timm cannot create {name!r}: {one_line(e, typed=True)}") from e


def load_timm(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str],
    preprocess: Preprocess,
    classes: Sequence[str] | None = None,
) -> ClassifierBundle:
    """A timm architecture (created with ``pretrained=False``: nothing is downloaded) with local weights.

    Args:
        name: the timm model name, e.g. ``"resnet18"``.
        num_classes: number of classes of the head.
        weights: the ``.safetensors`` state dict.
        preprocess: the preprocessing the model's inputs need (its channels set ``in_chans``).
        classes: class names; default ``class_0`` … ``class_{K-1}``.

    Raises:
        UsageError: ``classes`` disagrees with ``num_classes``.
        ModelError: timm missing, unknown name, unreadable weights or key / shape mismatch.
    """
    names = [f"class_{i}" for i in range(num_classes)] if classes is None else _check_classes(classes)
    if len(names) != num_classes:
        raise UsageError(f"num_classes is {num_classes} but {len(names)} class names were given")
    path = Path(weights)
    model = _create_timm(name, num_classes, preprocess.channels)
    _load_weights_strict(model, path)
    _set_eval(model)
    _check_model_fits(model, preprocess, names, path)
    config = {"timm_name": name, "in_channels": preprocess.channels, "num_classes": num_classes}
    return ClassifierBundle(model, preprocess, names, f"timm:{name}", config, {}, sha256_file(path), "timm")


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Light, vectorized augmentation of a normalized batch ``[B, C, H, W]``.

    Random horizontal flips (p = ½), shifts of up to ``max(1, min(H, W) // 16)`` pixels (replicate padding
    and a random crop per image) and a brightness / contrast jitter of ±0.1 (in normalized units).

    Args:
        x: the batch.
        g: the random generator (seeded: augmentation is deterministic).
    """
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, min(h, w) // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1)  # B, H+2p, W+2p, C
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # B, H, 1
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # B, 1, W
    crops = padded[torch.arange(b)[:, None, None], rows, cols]  # B, H, W, C
    x = crops.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    scale = 1 + 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    shift = 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    return x * scale + shift


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``x``, ``y`` in eval mode.

    Args:
        model: the classifier.
        x: normalized images.
        y: labels.
        batch_size: images per forward pass.
    """
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    n = max(1, len(x))
    return correct / n, loss / n


def _as_tensors(
    images: ImageSet, preprocess: Preprocess, num_classes: int, what: str
) -> tuple[Tensor, Tensor]:
    """Preprocessed images and labels of an :class:`~medcam_fast.data.ImageSet` as tensors.

    Raises:
        UsageError: empty set, or labels outside ``0 … num_classes-1``.
    """
    if len(images) == 0:
        raise UsageError(f"the {what} set is empty")
    x = torch.from_numpy(np.ascontiguousarray(preprocess(images.images), dtype=np.float32))
    y = torch.from_numpy(np.asarray(images.labels, dtype=np.int64))
    if len(y) != len(x):
        raise UsageError(f"the {what} set has {len(x)} images but {len(y)} labels")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise UsageError(f"the {what} set has labels outside 0…{num_classes - 1}")
    return x, y


def train_classifier(
    train: ImageSet,
    val: ImageSet,
    test: ImageSet | None = None,
    arch: str = "resnet18",
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int | None = None,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
) -> ClassifierBundle:
    """Train a built-in classifier on the CPU (or wherever torch runs) and keep its best validation epoch.

    Preprocessing is fitted on the training images (:meth:`Preprocess.fit`); optimization is AdamW
    (weight decay 0.01) with a one-cycle schedule (20 % warm-up, cosine decay), cross-entropy with label
    smoothing 0.05, weighted by inverse class frequency when the largest class has ≥ 1.5× the images of the
    smallest. The weights of the epoch with the best validation accuracy (ties: lower validation loss) are
    kept. The run is deterministic for a given seed on the CPU; the caller's global RNG state is restored
    afterwards. The number of threads is left to the caller (``torch.set_num_threads``).

    Args:
        train: training images and labels.
        val: validation images (same classes), used to pick the best epoch.
        test: optional test images, evaluated once with the kept weights.
        arch: ``"resnet18"`` or ``"vit"``.
        epochs: passes over the training set.
        batch_size: images per optimization step.
        lr: peak learning rate.
        width: architecture width (see :func:`build_classifier`); None for its default.
        seed: seeds the initialization, the shuffling and the augmentation.
        augment: apply flips / shifts / brightness jitter to training batches.
        progress: show a rich progress bar (epoch, loss, validation accuracy) on stderr.

    Returns:
        A ``source="builtin"`` bundle with metrics ``val_accuracy``, ``test_accuracy`` (None without a test
        set), ``epochs``, ``best_epoch``, ``seconds`` and ``n_train``.

    Raises:
        UsageError: invalid arguments, empty sets, mismatched classes or labels out of range.
    """
    from .data import Preprocess

    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise UsageError(f"batch_size must be an integer ≥ 2, got {batch_size!r}")
    if not lr > 0:
        raise UsageError(f"lr must be positive, got {lr!r}")
    classes = list(train.classes)
    for other, what in ((val, "validation"), (test, "test")):
        if other is not None and list(other.classes) != classes:
            raise UsageError(f"the {what} set's classes {list(other.classes)} differ from the training set's")
    start = time.perf_counter()
    preprocess = Preprocess.fit(train.images)
    k = len(classes)
    x_train, y_train = _as_tensors(train, preprocess, k, "training")
    x_val, y_val = _as_tensors(val, preprocess, k, "validation")
    n = len(x_train)
    counts = torch.bincount(y_train, minlength=k).clamp_min(1).float()
    weight = None
    if counts.max() >= 1.5 * counts.min():
        weight = counts.sum() / (k * counts)
    image_size = int(max(preprocess.size))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, preprocess.channels, k, image_size, width)
        g = torch.Generator().manual_seed(seed)
        bs = min(batch_size, n)
        steps_per_epoch = max(1, n // bs)  # the last partial batch is dropped
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
        )
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)
        best: tuple[float, float] = (-1.0, math.inf)
        best_state = {kk: v.clone() for kk, v in model.state_dict().items()}
        best_epoch = 0

        with contextlib.ExitStack() as stack:
            bar = _progress_bar(stack, epochs) if progress else None
            for epoch in range(epochs):
                model.train()
                order = torch.randperm(n, generator=g)
                total, seen = 0.0, 0
                for s in range(steps_per_epoch):
                    idx = order[s * bs : (s + 1) * bs]
                    xb, yb = x_train[idx], y_train[idx]
                    if augment:
                        xb = _augment(xb, g)
                    loss = loss_fn(model(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                acc, vloss = _evaluate(model, x_val, y_val)
                if acc > best[0] or (acc == best[0] and vloss < best[1]):
                    best = (acc, vloss)
                    best_state = {kk: v.detach().clone() for kk, v in model.state_dict().items()}
                    best_epoch = epoch + 1
                if bar is not None:
                    progress_obj, task = bar
                    progress_obj.update(
                        task,
                        advance=1,
                        description=f"epoch {epoch + 1}/{epochs}",
                        loss=total / max(1, seen),
                        acc=acc,
                    )
        model.load_state_dict(best_state)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        test_acc = None
        if test is not None:
            x_test, y_test = _as_tensors(test, preprocess, k, "test")
            test_acc = _evaluate(model, x_test, y_test)[0]
    metrics = {
        "val_accuracy": best[0],
        "test_accuracy": test_acc,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "seconds": round(time.perf_counter() - start, 3),
        "n_train": n,
    }
    config = dict(model.config)  # type: ignore[arg-type]
    return ClassifierBundle(model, preprocess, classes, arch, config, metrics, state_sha256(model), "builtin")


def _progress_bar(stack: contextlib.ExitStack, epochs: int) -> tuple[Any, Any]:
    """A rich progress bar on stderr showing the epoch, training loss and validation accuracy.

    Args:
        stack: the bar is stopped when this stack closes.
        epochs: total epochs.

    Returns:
        ``(progress, task_id)``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  val acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    stack.enter_context(bar)
    task = bar.add_task(f"epoch 0/{epochs}", total=epochs, loss=float("nan"), acc=float("nan"))
    return bar, task
