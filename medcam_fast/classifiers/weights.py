"""Classifier weights as safetensors: the deterministic serialization, its sha256, and strict loading.

:func:`state_sha256` is the sha256 of a model's state dict serialized exactly as
:func:`~.bundle.save_classifier` writes ``weights.safetensors``, so a bundle's digest is known without
writing a file. Loading is strict — every key present, no extra key, every shape equal — and no pickle is
ever read: safetensors only. Each failure is a one-line :class:`~medcam_fast.errors.ModelError` naming the
file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
from torch import Tensor, nn

from ..errors import ModelError, one_line

if TYPE_CHECKING:
    pass

__all__ = ["state_sha256"]


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
