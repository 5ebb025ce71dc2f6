"""medcam-fast: the smallest binary region of an image that, kept alone, keeps a frozen classifier's decision.

Public API (everything else is internal)::

    from medcam_fast import MedCAM

    with MedCAM("models/breast/classifier", explainer="models/breast/explainer") as explain:
        result = explain(images)          # typed Explanation: masks, probabilities, timings

Names are imported on first use (PEP 562), so ``import medcam_fast`` is light and the torch-free
``medcam_fast.export.runtime`` can be imported with only numpy, Pillow and onnxruntime installed.
Importing the package never pulls in typer or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ClassifierBundle": "classifier",
    "FrozenClassifier": "classifier",
    "build_classifier": "classifier",
    "load_classifier": "classifier",
    "save_classifier": "classifier",
    "train_classifier": "classifier",
    "ImageSet": "data",
    "Preprocess": "data",
    "load_image": "data",
    "load_npz": "data",
    "make_lesions": "data",
    "resolve_data": "data",
    "EXIT_CODES": "errors",
    "DataError": "errors",
    "MedCamError": "errors",
    "ModelError": "errors",
    "UsageError": "errors",
    "FitConfig": "fit",
    "fit_masks": "fit",
    "LossWeights": "losses",
    "composite_loss": "losses",
    "MaskResult": "result",
    "Verification": "result",
    "UNet": "unet",
    "UNetConfig": "unet",
    "MedCAM": "explain",
    "Explanation": "explain",
    "ExplainerBundle": "bundle",
    "load_explainer": "bundle",
    "save_explainer": "bundle",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medcam_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # static type checkers and IDEs see the eager imports
    from .bundle import ExplainerBundle, load_explainer, save_explainer
    from .classifier import (
        ClassifierBundle,
        FrozenClassifier,
        build_classifier,
        load_classifier,
        save_classifier,
        train_classifier,
    )
    from .data import ImageSet, Preprocess, load_image, load_npz, make_lesions, resolve_data
    from .errors import EXIT_CODES, DataError, MedCamError, ModelError, UsageError
    from .explain import Explanation, MedCAM
    from .fit import FitConfig, fit_masks
    from .losses import LossWeights, composite_loss
    from .result import MaskResult, Verification
    from .unet import UNet, UNetConfig
