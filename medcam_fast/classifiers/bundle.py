"""Classifier bundles on disk: a folder with ``weights.safetensors`` and ``classifier.json``.

:func:`save_classifier` writes every file atomically (``program.pt2`` too, for a ``torch.export`` model) and
``classifier.json`` last, recording the weights' sha256, :data:`FORMAT_VERSION`, the rebuild config, class
names, preprocessing, metrics and the medcam-fast version. :func:`load_classifier` rebuilds the model from
its source (built-in, timm, exported program, or an import factory only with ``allow_import=True``); the
sha256 is checked before the weights are read, and they are loaded strictly. No pickle is ever read:
safetensors only. A newer format, a file name with folders in it or a changed file is refused with a
one-line :class:`~medcam_fast.errors.ModelError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from .._io import atomic_write, atomic_write_bytes, atomic_write_json, check_seal, seal, sha256_file
from .._version import __version__
from ..errors import ModelError, UsageError, one_line
from .architectures import ARCHITECTURES, _rebuild_builtin
from .frozen import ClassifierBundle, _set_eval
from .sources import SOURCES, _call_factory, _check_model_fits, _create_timm, _load_program
from .weights import _load_weights_strict, _state_bytes

if TYPE_CHECKING:
    from ..data.preprocess import Preprocess

__all__ = ["FORMAT_VERSION", "save_classifier", "load_classifier"]


#: Version of the ``classifier.json`` layout written by :func:`save_classifier`.
FORMAT_VERSION = 1


_FORMAT_NAME = "medcam-fast-classifier"


_JSON_NAME = "classifier.json"


_WEIGHTS_NAME = "weights.safetensors"


_PROGRAM_NAME = "program.pt2"


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
        "medcam_fast_version": __version__,
        "source": bundle.source,
        "arch": bundle.arch,
        "config": config,
        "classes": list(bundle.classes),
        "preprocess": _json_safe(bundle.preprocess.to_dict()),
        "metrics": _json_safe(dict(bundle.metrics)),
        "weights": _WEIGHTS_NAME,
        "sha256": digest,
    }
    atomic_write_json(out / _JSON_NAME, seal(meta))
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


def _preprocess_from_dict(d: Mapping[str, Any], path: Path) -> Preprocess:
    """:meth:`Preprocess.from_dict`, with errors as :class:`ModelError` naming ``path``."""
    from ..data.preprocess import Preprocess

    try:
        return Preprocess.from_dict(d)
    except Exception as e:
        raise ModelError(f"invalid preprocessing in the metadata: {one_line(e, typed=True)}", path) from e


def load_classifier(path: str | os.PathLike[str], *, allow_import: bool = False,
                    allow_unsealed: bool = False) -> ClassifierBundle:
    """Load a bundle written by :func:`save_classifier`.

    ``classifier.json`` is checked against its seal (:func:`~medcam_fast._io.check_seal`: editing its classes
    or preprocessing is caught), the weights file's sha256 against the metadata before it is read, and
    weights are read with ``safetensors`` only (no pickle), strictly (no missing, extra or mis-shaped tensor).

    Args:
        path: the bundle folder or its ``classifier.json``.
        allow_import: bundles of ``source="import"`` name a Python factory (``package.module:function``);
            it is imported and called only when this is True (importing runs that package's code).
        allow_unsealed: accept a ``classifier.json`` without a seal (written by 0.1.0); the bundle's
            ``sealed`` is then False.

    Raises:
        ModelError: missing files, bad JSON, sha256 mismatch, weights that do not fit the architecture,
            an unavailable rebuild (timm missing, a factory not allowed) — each one line naming the file.
    """
    p = Path(path)
    if p.is_file() and p.suffix != ".json":  # its weights, say: read as JSON it was a UnicodeDecodeError
        raise ModelError(f"is a file, expected a bundle folder (with {_JSON_NAME})", p)
    json_path = p / _JSON_NAME if p.is_dir() else p
    folder = json_path.parent
    meta = _read_meta(json_path)
    sealed = check_seal(meta, json_path, allow_unsealed)
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
    _check_model_fits(model, preprocess, classes, json_path)  # channels, size and classes agree with the weights
    return ClassifierBundle(
        model=model,
        preprocess=preprocess,
        classes=classes,
        arch=meta["arch"],
        config=config,
        metrics=dict(meta.get("metrics") or {}),
        sha256=digest,
        source=source,
        sealed=sealed,
    )
