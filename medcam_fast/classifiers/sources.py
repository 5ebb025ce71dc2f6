"""Users' own classifiers: a module built in Python, an import path, a ``torch.export`` program, a timm name.

Each loader returns a :class:`~.frozen.ClassifierBundle` once a forward pass of a zero batch has shown one
logit per class: :func:`classifier_from_module` (a module in hand), :func:`load_import_path` (a
``package.module:factory`` called with no arguments, plus safetensors weights), :func:`load_exported` (a
``.pt2`` archive, unflattened so submodule names, and activation hooks, survive) and :func:`load_timm`
(``pretrained=False``: nothing is downloaded). :data:`SOURCES` names where a bundle's model came from.
Nothing runs code the caller did not name: a factory is imported only because it was passed, weights are
safetensors only, and ``torch.export.load`` runs with ``weights_only`` forced, so an archive holding other
pickled data is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._io import sha256_file
from ..errors import ModelError, UsageError, one_line
from .architectures import ResNet, ViT
from .frozen import ClassifierBundle, _as_logits, _set_eval
from .weights import _load_weights_strict, state_sha256

if TYPE_CHECKING:
    from ..data.preprocess import Preprocess

__all__ = ["SOURCES", "classifier_from_module", "load_import_path", "load_exported", "load_timm"]


#: Where a bundle's model came from.
SOURCES: tuple[str, ...] = ("builtin", "import", "export", "timm")


def _input_channels(model: nn.Module) -> int | None:
    """The input channels of the model's first convolution (in module order), or None without one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


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
        takes = _input_channels(model)
        if takes is not None and takes != preprocess.channels:
            said = "classifier.json says" if Path(str(where)).name == "classifier.json" else "the preprocessing gives"
            raise ModelError(f"{said} {preprocess.channels} channels, its weights take {takes}", where) from e
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
    if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive; a pickle or weights file is not
        raise ModelError("not a .pt2 exported program (torch.export)", path)
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
