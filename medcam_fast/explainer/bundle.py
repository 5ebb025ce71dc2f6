"""Explainer bundles: a trained U-Net and the facts needed to use it faithfully.

A bundle is a folder with

* ``weights.safetensors`` — the U-Net's state dict (the meta-learned initialization θ);
* ``explainer.json`` — U-Net shape, preprocessing, class names, mask temperature and threshold, baseline,
  loss weights, inner-loop settings, the sha256 of the classifier it was trained against, and training facts;
* ``explainer.onnx`` — after ``medcam-fast export``, the same U-Net for onnxruntime, carrying the same
  facts in its ``metadata_props``.

No pickle is ever read: weights are safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .._io import atomic_write, atomic_write_json, sha256_file
from ..data.preprocess import Preprocess
from ..errors import ModelError
from ..method.losses import LossWeights
from ..method.unet import UNet, UNetConfig

__all__ = ["InnerLoop", "ExplainerBundle", "save_explainer", "load_explainer", "EXPLAINER_FORMAT"]

EXPLAINER_FORMAT = "medcam-fast-explainer/1"


@dataclass(frozen=True)
class InnerLoop:
    """How the explainer adapts to one image (the MAML inner loop, reused by refinement).

    Args:
        steps: K, the adaptation steps used in training.
        lr: inner learning rate η (SGD on the U-Net weights, or Adam on the mask logits).
        first_order: whether training ignored second-order terms (first-order MAML).
        lrs: learned step size per parameter tensor (Meta-SGD), overriding ``lr`` where given.
        mode: what the inner loop adapted in training: ``"weights"`` or ``"logits"``.
    """

    steps: int = 5
    lr: float = 0.05
    first_order: bool = False
    lrs: dict[str, float] | None = None
    mode: str = "weights"


@dataclass
class ExplainerBundle:
    """A trained explainer U-Net and its facts.

    Args:
        unet: the U-Net (meta-learned initialization).
        preprocess: preprocessing of the classifier it explains.
        classes: class names of that classifier.
        classifier_sha256: sha256 of the classifier's weights file it was trained against.
        tau: mask temperature τ, ``m = σ(u/τ)``.
        threshold: binary mask threshold on ``m``.
        baseline: baseline kind for removed pixels.
        weights: composite-loss weights used in training (and by default in refinement).
        inner: inner-loop settings.
        training: facts about the training run (steps, seconds, method, data).
        sha256: sha256 of ``weights.safetensors`` once saved or loaded.
    """

    unet: UNet
    preprocess: Preprocess
    classes: list[str]
    classifier_sha256: str
    tau: float = 1.0
    threshold: float = 0.5
    baseline: str = "blur"
    weights: LossWeights = field(default_factory=LossWeights)
    inner: InnerLoop = field(default_factory=InnerLoop)
    training: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def facts(self) -> dict[str, Any]:
        """The JSON-safe facts of ``explainer.json`` (also written into the ONNX metadata)."""
        return {
            "format": EXPLAINER_FORMAT,
            "unet": self.unet.config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "classes": list(self.classes),
            "classifier_sha256": self.classifier_sha256,
            "tau": self.tau,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "loss_weights": self.weights.to_dict(),
            "inner": asdict(self.inner),
            "training": self.training,
            "sha256": self.sha256,
        }


def save_explainer(bundle: ExplainerBundle, out_dir: str | Path) -> Path:
    """Write ``weights.safetensors`` and ``explainer.json`` under ``out_dir`` (atomically). Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in bundle.unet.state_dict().items()}
    wpath = atomic_write(out / "weights.safetensors", lambda tmp: save_file(state, str(tmp)))
    bundle.sha256 = sha256_file(wpath)
    atomic_write_json(out / "explainer.json", bundle.facts())
    return out


def load_explainer(path: str | Path) -> ExplainerBundle:
    """Load a bundle from its folder (or its ``explainer.json``); checks the weights' sha256.

    Raises:
        ModelError: missing or malformed files, a sha256 mismatch, or weights that do not fit the config.
    """
    p = Path(path)
    folder = p.parent if p.suffix == ".json" else p
    meta_path = folder / "explainer.json"
    wpath = folder / "weights.safetensors"
    if not meta_path.is_file():
        raise ModelError("not an explainer bundle (no explainer.json)", folder)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read explainer.json: {e}", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != EXPLAINER_FORMAT:
        raise ModelError(f"not a medcam-fast explainer (format must be {EXPLAINER_FORMAT!r})", meta_path)
    if not wpath.is_file():
        raise ModelError("weights.safetensors is missing", folder)
    digest = sha256_file(wpath)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise ModelError("weights do not match the sha256 recorded in explainer.json", wpath)
    try:
        cfg = UNetConfig.from_dict(meta["unet"])
        unet = UNet(cfg)
        state = load_file(str(wpath))
        unet.load_state_dict(state, strict=True)
        inner = meta.get("inner", {})
        bundle = ExplainerBundle(
            unet=unet.eval(),
            preprocess=Preprocess.from_dict(meta["preprocess"]),
            classes=list(meta["classes"]),
            classifier_sha256=str(meta["classifier_sha256"]),
            tau=float(meta.get("tau", 1.0)),
            threshold=float(meta.get("threshold", 0.5)),
            baseline=str(meta.get("baseline", "mean")),
            weights=LossWeights.from_dict(meta.get("loss_weights", {})),
            inner=InnerLoop(**inner),
            training=dict(meta.get("training", {})),
            sha256=digest,
        )
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 — any malformed content is a model error for the user
        raise ModelError(f"invalid explainer bundle: {type(e).__name__}: {e}".splitlines()[0], folder) from e
    return bundle
