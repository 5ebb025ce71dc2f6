"""Explainer bundles: a trained first-guess network and the facts needed to use it faithfully.

The network is a :class:`~medcam_fast.method.decoder.FeatureDecoder` over the classifier's features (format
``medcam-fast-explainer/2``) or the classifier-blind :class:`~medcam_fast.method.unet.UNet` (format ``/1``,
what 0.1.0 wrote; still read). A bundle is a folder with

* ``weights.safetensors`` — the network's state dict (the meta-learned initialization θ);
* ``explainer.json`` — the :class:`ExplainerSettings` (network shape, preprocessing, class names, mask
  temperature and threshold, baseline, loss weights, inner loop, the sha256 of the classifier it was trained
  against, training facts) and the weights' sha256;
* ``explainer.onnx`` — after ``medcam-fast export``, the network for onnxruntime (a decoder's graph holds
  the classifier too), carrying the same facts in its ``metadata_props``;
* ``steps.safetensors`` — after ``medcam-fast train-steps``, the learned refinement steps
  (:mod:`medcam_fast.method.learned`), their shape, training and sha256 under ``learned_steps`` in
  ``explainer.json``. A bundle without them refines with Adam steps alone.

:class:`ExplainerSettings` is everything but the network's weights: what refinement needs when the first guess comes
from an ONNX file alone, read from the same facts by the same parser (:meth:`ExplainerSettings.from_facts`).
No pickle is ever read: weights are safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from .._io import atomic_write, atomic_write_json, check_seal, seal, sha256_file
from ..data.preprocess import Preprocess
from ..errors import ModelError
from ..method.decoder import DecoderConfig, FeatureDecoder
from ..method.first_guess import ExplainerNet
from ..method.inner import InnerLoop
from ..method.learned import StepNet, StepNetConfig
from ..method.losses import LossWeights, Reference
from ..method.objective import Objective
from ..method.unet import UNet, UNetConfig
from ..types import Architecture, BaselineKind, Classifier, choice

__all__ = [
    "ExplainerSettings", "ExplainerBundle", "save_explainer", "load_explainer", "record_onnx", "EXPLAINER_FORMAT",
    "build_net",
]

#: The format of a classifier-aware (decoder) explainer; :data:`_UNET_FORMAT` is a U-Net explainer's (0.1.0's).
EXPLAINER_FORMAT = "medcam-fast-explainer/2"
_UNET_FORMAT = "medcam-fast-explainer/1"
_FORMATS = (EXPLAINER_FORMAT, _UNET_FORMAT)
_STEPS_FILE = "steps.safetensors"

NetConfig = UNetConfig | DecoderConfig


def build_net(config: NetConfig) -> ExplainerNet:
    """A freshly initialized network of this shape."""
    return FeatureDecoder(config) if isinstance(config, DecoderConfig) else UNet(config)


@dataclass(kw_only=True)
class ExplainerSettings:
    """The facts of a trained explainer, without its U-Net weights. No field has a default: the values come
    from meta-training (:class:`~medcam_fast.explainer.meta.MetaConfig` owns the defaults) or from a file.

    Args:
        net_config: the network's shape (a :class:`DecoderConfig` or a :class:`UNetConfig`).
        preprocess: preprocessing of the classifier it explains.
        classes: class names of that classifier.
        classifier_sha256: sha256 of the classifier's weights file it was trained against.
        tau: mask temperature τ, ``m = σ(u/τ)``.
        threshold: binary mask threshold on ``m``.
        baseline: what replaces removed pixels.
        weights: composite-loss weights used in training (and by default in refinement).
        inner: the inner loop it was meta-trained with.
        training: facts about the training run (steps, seconds, method, data).
    """

    net_config: NetConfig
    preprocess: Preprocess
    classes: list[str]
    classifier_sha256: str
    tau: float
    threshold: float
    baseline: BaselineKind
    weights: LossWeights
    inner: InnerLoop
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.baseline = choice(BaselineKind, self.baseline, "baseline")

    @property
    def architecture(self) -> Architecture:
        """Which network makes the first guess."""
        return Architecture.DECODER if isinstance(self.net_config, DecoderConfig) else Architecture.UNET

    def facts(self) -> dict[str, Any]:
        """The JSON-safe facts of ``explainer.json`` (also written into the ONNX metadata)."""
        decoder = self.architecture is Architecture.DECODER
        return {
            "format": EXPLAINER_FORMAT if decoder else _UNET_FORMAT,
            "architecture": self.architecture.value,
            "decoder" if decoder else "unet": self.net_config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "classes": list(self.classes),
            "classifier_sha256": self.classifier_sha256,
            "tau": self.tau,
            "threshold": self.threshold,
            "baseline": self.baseline.value,
            "loss_weights": self.weights.to_dict(),
            "inner": self.inner.to_dict(),
            "training": self.training,
        }

    @classmethod
    def from_facts(cls, meta: Mapping[str, Any], where: str | Path) -> ExplainerSettings:
        """Settings from the facts of ``explainer.json`` or of an ONNX file's metadata.

        Args:
            meta: the parsed facts.
            where: the file named in errors.

        Raises:
            ModelError: not an explainer of this format, or a missing / malformed field.
        """
        if not isinstance(meta, Mapping) or meta.get("format") not in _FORMATS:
            raise ModelError(f"not a medcam-fast explainer (format must be {EXPLAINER_FORMAT!r} or "
                             f"{_UNET_FORMAT!r})", where)
        try:
            net_config: NetConfig = (DecoderConfig.from_dict(meta["decoder"]) if meta["format"] == EXPLAINER_FORMAT
                                     else UNetConfig.from_dict(meta["unet"]))
            return cls(
                net_config=net_config,
                preprocess=Preprocess.from_dict(meta["preprocess"]),
                classes=[str(c) for c in meta["classes"]],
                classifier_sha256=str(meta["classifier_sha256"]),
                tau=float(meta["tau"]),
                threshold=float(meta["threshold"]),
                baseline=meta["baseline"],
                weights=LossWeights.from_dict(meta["loss_weights"]),
                inner=InnerLoop.from_dict(meta["inner"]),
                training=dict(meta.get("training") or {}),
            )
        except KeyError as e:
            raise ModelError(f"invalid explainer facts: the field {e.args[0]!r} is missing", where) from None
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 — any malformed content is a model error for the user
            raise ModelError(f"invalid explainer facts: {type(e).__name__}: {e}".splitlines()[0], where) from None

    def objective(
        self,
        classifier: Classifier,
        x: Tensor,
        targets: Tensor | Sequence[int] | int | None = None,
        *,
        weights: LossWeights | None = None,
        reference: Reference | None = None,
    ) -> Objective:
        """The problem this explainer was trained on, for the images ``x``: its baseline, τ and (unless
        ``weights`` is given) loss weights, with the classifier's preprocessing normalization."""
        return Objective.build(classifier, x, targets, baseline=self.baseline, weights=weights or self.weights,
                               tau=self.tau, normalization=(self.preprocess.mean, self.preprocess.std),
                               reference=reference)


@dataclass(kw_only=True)
class ExplainerBundle(ExplainerSettings):
    """A trained explainer: its :class:`ExplainerSettings` and its network.

    Args:
        net: the network (meta-learned initialization); its config must equal ``net_config``.
        sha256: sha256 of ``weights.safetensors`` once saved or loaded.
        onnx_sha256: sha256 of the bundle's ``explainer.onnx`` once exported (None: no ONNX file).
        sealed: False when it was loaded from an ``explainer.json`` without a content hash (by request).
        steps: the learned refinement steps, or None.
        steps_training: facts of their training (:func:`~medcam_fast.explainer.steps.train_steps`).
        steps_sha256: sha256 of ``steps.safetensors`` once saved or loaded.
    """

    net: ExplainerNet
    sha256: str = ""
    onnx_sha256: str | None = None
    sealed: bool = True
    steps: StepNet | None = None
    steps_training: dict[str, Any] = field(default_factory=dict)
    steps_sha256: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.net.config != self.net_config:
            raise ValueError(f"the network has config {self.net.config}, the settings say {self.net_config}")

    @classmethod
    def of(cls, net: ExplainerNet, settings: ExplainerSettings, sha256: str = "", **extra: Any) -> ExplainerBundle:
        """A bundle of ``net`` with ``settings`` (whose ``net_config`` must match)."""
        fields = {k: getattr(settings, k) for k in ExplainerSettings.__dataclass_fields__}
        return cls(net=net, sha256=sha256, **fields, **extra)

    @property
    def settings(self) -> ExplainerSettings:
        """The settings alone."""
        return ExplainerSettings(**{k: getattr(self, k) for k in ExplainerSettings.__dataclass_fields__})

    def facts(self) -> dict[str, Any]:
        """The settings' facts plus the weights' ``sha256`` (and the ONNX file's, once exported)."""
        extra: dict[str, Any] = {} if self.onnx_sha256 is None else {"onnx_sha256": self.onnx_sha256}
        if self.steps is not None:
            extra["learned_steps"] = {"net": self.steps.config.to_dict(), "sha256": self.steps_sha256,
                                      "training": self.steps_training}
        return {**super().facts(), "sha256": self.sha256, **extra}


def save_explainer(bundle: ExplainerBundle, out_dir: str | Path) -> Path:
    """Write ``weights.safetensors`` and ``explainer.json`` under ``out_dir`` (atomically). Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in bundle.net.state_dict().items()}
    wpath = atomic_write(out / "weights.safetensors", lambda tmp: save_file(state, str(tmp)))
    bundle.sha256 = sha256_file(wpath)
    spath = out / _STEPS_FILE
    if bundle.steps is not None:
        steps = {k: v.detach().contiguous().cpu() for k, v in bundle.steps.state_dict().items()}
        bundle.steps_sha256 = sha256_file(atomic_write(spath, lambda tmp: save_file(steps, str(tmp))))
    else:  # another explainer's steps would be read as this one's
        spath.unlink(missing_ok=True)
    onnx_file = out / "explainer.onnx"
    bundle.onnx_sha256 = sha256_file(onnx_file) if onnx_file.is_file() else None
    atomic_write_json(out / "explainer.json", seal(bundle.facts()))
    return out


def record_onnx(folder: str | Path) -> Path:
    """Record the sha256 of ``folder/explainer.onnx`` in its (checked) ``explainer.json`` and seal it again:
    the seal then covers the ONNX file too. Returns the JSON's path."""
    meta_path = Path(folder) / "explainer.json"
    meta = _read_json(meta_path)
    check_seal(meta, meta_path)
    meta["onnx_sha256"] = sha256_file(Path(folder) / "explainer.onnx")
    atomic_write_json(meta_path, seal(meta))
    return meta_path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path.name}: {e}", path) from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path.name} is not a JSON object", path)
    return meta


def load_explainer(path: str | Path, *, allow_unsealed: bool = False, check_onnx: bool = True) -> ExplainerBundle:
    """Load a bundle from its folder (or its ``explainer.json``): checks the JSON's seal
    (:func:`~medcam_fast._io.check_seal`), then the weights' sha256 (required).

    Args:
        path: the bundle folder or its ``explainer.json``.
        allow_unsealed: accept an ``explainer.json`` without a seal (written by 0.1.0); ``sealed`` is then
            False.
        check_onnx: check the bundle's ``explainer.onnx``, when there is one, against the sha256 the seal
            records (off only for ``export``, which replaces it).

    Raises:
        ModelError: missing or malformed files, no or a broken seal, a missing or mismatched sha256 (of the
            weights or of ``explainer.onnx``), or weights that do not fit the config.
    """
    p = Path(path)
    if p.is_file() and p.suffix != ".json":  # its weights, say
        raise ModelError("is a file, expected a bundle folder (with explainer.json)", p)
    folder = p.parent if p.suffix == ".json" else p
    meta_path = folder / "explainer.json"
    wpath = folder / "weights.safetensors"
    if not meta_path.is_file():
        raise ModelError("not an explainer bundle (no explainer.json)", folder)
    meta = _read_json(meta_path)
    settings = ExplainerSettings.from_facts(meta, meta_path)
    sealed = check_seal(meta, meta_path, allow_unsealed)
    if not wpath.is_file():
        raise ModelError("weights.safetensors is missing", folder)
    digest = sha256_file(wpath)
    if not meta.get("sha256"):
        raise ModelError("explainer.json records no sha256 of its weights", meta_path)
    if meta["sha256"] != digest:
        raise ModelError("weights do not match the sha256 recorded in explainer.json", wpath)
    try:
        net = build_net(settings.net_config)
        net.load_state_dict(load_file(str(wpath)), strict=True)
    except Exception as e:  # noqa: BLE001 — weights that do not fit are a model error for the user
        raise ModelError(f"invalid explainer weights: {type(e).__name__}: {e}".splitlines()[0], wpath) from e
    onnx_sha256 = meta.get("onnx_sha256")
    onnx_file = folder / "explainer.onnx"
    if check_onnx and onnx_file.exists():
        if onnx_sha256 is None and sealed:
            raise ModelError("explainer.onnx is not covered by explainer.json's seal: export it again", onnx_file)
        if onnx_sha256 is not None and sha256_file(onnx_file) != onnx_sha256:
            raise ModelError("explainer.onnx changed after it was exported (sha256 mismatch)", onnx_file)
    steps, steps_training, steps_sha256 = _load_steps(meta.get("learned_steps"), folder, meta_path)
    return ExplainerBundle.of(net.eval(), settings, digest, onnx_sha256=None if onnx_sha256 is None else str(onnx_sha256),
                              sealed=sealed, steps=steps, steps_training=steps_training, steps_sha256=steps_sha256)


def _load_steps(facts: Any, folder: Path, meta_path: Path) -> tuple[StepNet | None, dict[str, Any], str]:
    """The learned steps ``explainer.json`` records (``learned_steps``), checked against their sha256; none
    when it records none.

    Raises:
        ModelError: malformed facts, a missing file, a sha256 mismatch or weights that do not fit.
    """
    if facts is None:
        return None, {}, ""
    spath = folder / _STEPS_FILE
    try:
        config = StepNetConfig.from_dict(facts["net"])
        digest, training = str(facts["sha256"]), dict(facts.get("training") or {})
    except Exception as e:  # noqa: BLE001 — any malformed content is a model error for the user
        raise ModelError(f"invalid learned_steps facts: {type(e).__name__}: {e}".splitlines()[0], meta_path) from None
    if not spath.is_file():
        raise ModelError(f"{_STEPS_FILE} is missing (explainer.json records learned steps)", folder)
    if sha256_file(spath) != digest:
        raise ModelError("learned steps do not match the sha256 recorded in explainer.json", spath)
    try:
        net = StepNet(config)
        net.load_state_dict(load_file(str(spath)), strict=True)
    except Exception as e:  # noqa: BLE001 — weights that do not fit are a model error for the user
        raise ModelError(f"invalid learned steps: {type(e).__name__}: {e}".splitlines()[0], spath) from e
    return net.eval(), training, digest
