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

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "DEMO_DIR": "_assets",
    "ClassifierBundle": "classifiers.frozen",
    "FrozenClassifier": "classifiers.frozen",
    "build_classifier": "classifiers.architectures",
    "load_classifier": "classifiers.bundle",
    "save_classifier": "classifiers.bundle",
    "train_classifier": "classifiers.training",
    "TrainConfig": "classifiers.training",
    "MetaConfig": "explainer.meta",
    "meta_train": "explainer.meta",
    "RefineConfig": "method.refine",
    "BaselineKind": "types",
    "RefineMode": "types",
    "InnerMode": "types",
    "ImageSet": "data.images",
    "Preprocess": "data.preprocess",
    "load_image": "data.images",
    "load_npz": "data.medmnist",
    "make_lesions": "data.lesions",
    "resolve_data": "data.medmnist",
    "EXIT_CODES": "errors",
    "DataError": "errors",
    "MedCamError": "errors",
    "ModelError": "errors",
    "UsageError": "errors",
    "FitConfig": "method.fit",
    "fit_masks": "method.fit",
    "LossWeights": "method.losses",
    "composite_loss": "method.losses",
    "MaskResult": "method.result",
    "Verification": "method.result",
    "UNet": "method.unet",
    "UNetConfig": "method.unet",
    "MedCAM": "explain",
    "Explanation": "explain",
    "ExplainerBundle": "explainer.bundle",
    "load_explainer": "explainer.bundle",
    "save_explainer": "explainer.bundle",
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
    from ._assets import DEMO_DIR
    from .classifiers.architectures import build_classifier
    from .classifiers.bundle import load_classifier, save_classifier
    from .classifiers.frozen import ClassifierBundle, FrozenClassifier
    from .classifiers.training import TrainConfig, train_classifier
    from .data.images import ImageSet, load_image
    from .data.lesions import make_lesions
    from .data.medmnist import load_npz, resolve_data
    from .data.preprocess import Preprocess
    from .errors import EXIT_CODES, DataError, MedCamError, ModelError, UsageError
    from .explain import Explanation, MedCAM
    from .explainer.bundle import ExplainerBundle, load_explainer, save_explainer
    from .explainer.meta import MetaConfig, meta_train
    from .method.fit import FitConfig, fit_masks
    from .method.losses import LossWeights, composite_loss
    from .method.refine import RefineConfig
    from .method.result import MaskResult, Verification
    from .method.unet import UNet, UNetConfig
    from .types import BaselineKind, InnerMode, RefineMode
