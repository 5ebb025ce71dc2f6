"""Run an exported explainer with onnxruntime alone: numpy in, masks out, no torch anywhere.

This module imports only numpy, onnxruntime, the standard library, :class:`medcam_fast.data.preprocess.Preprocess`
and :mod:`medcam_fast.data.geometry` (numpy and Pillow) and :mod:`medcam_fast.errors`, so it works in an environment without torch::

    from medcam_fast.export.runtime import OnnxExplainer

    explainer = OnnxExplainer("explainer.onnx")
    masks = explainer(images, targets=predicted_classes)   # raw uint8 images, the classifier's decisions
    masks.binary                                            # bool [B, H, W]
    masks.at_input(0).binary                                # bool, the first image's own size

Targets: the plain explainer graph (written by ``export_explainer``) does not contain the classifier, so
the class each mask explains comes from the caller — usually the classifier's predicted class, computed
wherever that classifier runs. A *combined* graph (written by ``export_combined``) contains the classifier:
there ``targets=None`` explains the classifier's own decision (argmax of ``probs_original``), and the result
also holds the class probabilities of the original and the masked image. A *decoder* graph (a
classifier-aware explainer, always exported with its classifier) is a combined graph that also returns every
class's mask from the same call (:attr:`RuntimeMasks.class_logits`) and the coarse grid they come from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medcam_fast.data.geometry import Geometry, InputMasks, geometries, masks_at_input
from medcam_fast.data.preprocess import ImageInput, Preprocess
from medcam_fast.errors import ModelError, UsageError, one_line

__all__ = ["OnnxExplainer", "RuntimeMasks", "METADATA_KEY", "default_providers"]

#: The ``metadata_props`` key holding the JSON facts of the explainer.
METADATA_KEY = "medcam_fast"
#: The verdict outputs of a combined graph, per image ``[B]``: the names of the Python API, JSON and CSV.
VERDICT = ("p_original", "p_kept", "p_removed", "area")
#: A combined graph written by 0.1.0: ``probs_masked`` was the kept view's softmax ``[B, K]``.
_LEGACY_COMBINED = ("probs_original", "probs_masked")

#: The extra outputs of a decoder graph: every class's mask logits and the coarse grid they come from.
_DECODER_EXTRA = ("class_mask_logits", "mask_grid")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"




def _ort_cause(e: BaseException) -> str:
    """onnxruntime's load error without its ``[ONNXRuntimeError] : 7 : CODE : Load model from … failed:`` prefix."""
    text = one_line(e)
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    return re.sub(r"^Load model from .*? failed:\s*", "", text) or type(e).__name__


def default_providers() -> list[str]:
    """The providers :class:`OnnxExplainer` uses by default: CUDA first when onnxruntime offers it, then CPU."""
    available = ort.get_available_providers()
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in float32: ``σ(z) = (1 + tanh(z/2)) / 2``."""
    z = np.asarray(z, dtype=np.float32)
    return (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * z))).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class RuntimeMasks:
    """Masks of a batch, as numpy arrays.

    Args:
        logits: mask logits ``u``, float32 ``[B, H, W]``.
        soft: mask probabilities ``m = σ(u/τ)``, float32 ``[B, H, W]``.
        binary: ``m > threshold``, bool ``[B, H, W]`` (True = evidence kept).
        targets: the class each mask explains, int64 ``[B]``.
        probs_original: combined graph only: the classifier's class probabilities of the image, ``[B, K]``.
        p_original: combined graph only: ``p_c(x)`` for the explained class ``c``, ``[B]``.
        p_kept: combined graph only: ``p_c`` of the image with only the binary evidence kept (the rest
            replaced by the bundle's baseline), ``[B]``.
        p_removed: combined graph only: ``p_c`` of the image with the binary evidence replaced by the
            baseline, ``[B]`` (None for a 0.1.0 combined file, which did not compute it).
        area: combined graph only: fraction of pixels in the binary mask, ``[B]``.
        class_logits: decoder graph only: mask logits of every class, float32 ``[B, K, H, W]`` (the row of
            the explained class equals ``logits``).
        grid: decoder graph only: the coarse logits every class's mask is upsampled from ``[B, K, g_h, g_w]``.
        geometry: per image, how its own pixel grid maps to the model's, when raw images were given; None
            with ``preprocessed=True``. :meth:`at_input` brings the masks back to an image's own grid.
    """

    logits: np.ndarray
    soft: np.ndarray
    binary: np.ndarray
    targets: np.ndarray
    probs_original: np.ndarray | None = None
    p_original: np.ndarray | None = None
    p_kept: np.ndarray | None = None
    p_removed: np.ndarray | None = None
    area: np.ndarray | None = None
    class_logits: np.ndarray | None = None
    grid: np.ndarray | None = None
    geometry: tuple[Geometry, ...] | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def at_input(self, i: int) -> InputMasks:
        """Image ``i``'s masks on its own pixel grid: binary by nearest neighbour, soft bilinearly — the same
        code as ``MedCAM``'s ``Explanation.at_input`` and the CLI's ``--mask-grid input``
        (:meth:`Geometry.masks_to_input <medcam_fast.data.geometry.Geometry.masks_to_input>`).

        Raises:
            UsageError: the images were given preprocessed (no input grid recorded), or ``i`` out of range.
        """
        return masks_at_input(self.geometry, i, self.binary, self.soft, "these images were given preprocessed")


class OnnxExplainer:
    """An explainer exported by :mod:`medcam_fast.export.onnx_export`, run with onnxruntime.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers in order of preference; None picks
            ``CUDAExecutionProvider`` when the installed onnxruntime offers it (onnxruntime-gpu), else
            ``CPUExecutionProvider``. :attr:`provider` tells which one the session actually uses.
        threads: CPU threads for one inference (onnxruntime's intra-op threads); None lets onnxruntime
            choose (one per physical core).

    Attributes:
        path: the file.
        facts: the explainer's facts (``ExplainerBundle.facts()`` plus ``medcam_fast_version``).
        preprocess: the classifier's preprocessing (size, channels, mean, std) used for raw images.
        classes: class names, index = target.
        threshold: binary mask threshold on ``m``.
        tau: mask temperature τ.
        multiple: the core graph's ``H`` and ``W`` must be multiples of this (:meth:`logits` pads).
        classifier_sha256: sha256 of the classifier weights the explainer was trained against.
        combined: whether the file is a combined graph (it contains the classifier).
        provider: the execution provider the session uses.

    Raises:
        ModelError: a missing file, a file that is not ONNX, an ONNX model without medcam-fast metadata, or
            one whose inputs and outputs are not an explainer's.
        UsageError: a requested provider that this onnxruntime does not offer, or ``threads < 1``.
    """

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ModelError("file not found", self.path)
        if self.path.is_dir():
            raise ModelError("is a folder, expected an .onnx file", self.path)
        if self.path.stat().st_size == 0:
            raise ModelError("not an ONNX model: empty file (0 bytes)", self.path)
        available = ort.get_available_providers()
        if providers is None:
            chosen = default_providers()
        else:
            if isinstance(providers, str):
                raise UsageError(f"providers must be a list of names, got the string {providers!r}")
            chosen = list(providers)
            unknown = [p for p in chosen if p not in available]
            if unknown or not chosen:
                raise UsageError(f"execution provider {unknown[0] if unknown else '(none)'!r} is not available; "
                                 f"this onnxruntime offers: {', '.join(available)}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider-assignment chatter
        if threads is not None:
            if int(threads) < 1:
                raise UsageError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own exception types; any failure is the file's
            cause = _ort_cause(e)
            if "INVALID_PROTOBUF" in str(e) or "Protobuf parsing failed" in cause or "No graph" in cause:
                raise ModelError(f"not an ONNX model: {cause}", self.path) from None
            raise ModelError(f"cannot load the ONNX model: {cause}", self.path) from None
        self.provider: str = self._session.get_providers()[0]
        meta = self._session.get_modelmeta().custom_metadata_map or {}
        if METADATA_KEY not in meta:
            raise ModelError("no medcam-fast metadata: not exported by medcam-fast export", self.path)
        try:
            facts = json.loads(meta[METADATA_KEY])
            if not isinstance(facts, dict):
                raise ValueError("the facts are not a JSON object")
            self.facts: dict[str, Any] = facts
            self.preprocess: Preprocess = Preprocess.from_dict(facts["preprocess"])
            self.classes: list[str] = [str(c) for c in facts["classes"]]
            self.threshold: float = float(facts.get("threshold", 0.5))
            self.tau: float = float(facts.get("tau", 1.0))
            net = facts["decoder"] if "decoder" in facts else facts["unet"]
            self.multiple: int = int(meta.get("size_multiple") or 2 ** int(net["depth"]))
            self.classifier_sha256: str = str(facts.get("classifier_sha256", ""))
            num_classes = int(net["num_classes"])
        except Exception as e:  # malformed JSON, missing keys, invalid values
            raise ModelError(f"invalid medcam-fast metadata: {one_line(e)}", self.path) from None
        self._num_classes = num_classes
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if set(inputs) != {"image", "target"} or "mask_logits" not in outputs:
            raise ModelError(f"not a medcam-fast explainer graph (inputs {sorted(inputs)}, outputs {outputs})",
                             self.path)
        self._legacy = set(_LEGACY_COMBINED) <= set(outputs) and not set(VERDICT) <= set(outputs)
        self.combined: bool = self._legacy or ("probs_original" in outputs and set(VERDICT) <= set(outputs))
        #: whether the graph is a classifier-aware decoder's (every class's mask from one call)
        self.decoder: bool = self.combined and {"class_mask_logits", "mask_grid"} <= set(outputs)
        self._outputs = (["mask_logits", *_LEGACY_COMBINED] if self._legacy else
                         ["mask_logits", "probs_original", *VERDICT, *_DECODER_EXTRA[:2 * self.decoder]]
                         if self.combined else ["mask_logits"])
        shape = inputs["image"].shape
        self._channels = shape[1] if isinstance(shape[1], int) else self.preprocess.channels
        # A combined graph has a fixed H, W (the classifier's input size); the core graph a dynamic one.
        self._fixed_hw: tuple[int, int] | None = (
            (int(shape[2]), int(shape[3])) if all(isinstance(s, int) for s in shape[2:]) else None
        )

    # ------------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes a target may name."""
        return self._num_classes

    def __repr__(self) -> str:
        kind = "decoder" if self.decoder else "combined" if self.combined else "core"
        return (f"OnnxExplainer({str(self.path)!r}, {kind}, classes={len(self.classes)}, "
                f"provider={self.provider!r})")

    def _check_images(self, x: Any) -> np.ndarray:
        """Validate a normalized float NCHW batch and return it as contiguous float32."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise UsageError(f"normalized images must be float32 NCHW, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise UsageError(f"normalized images must be float32 NCHW, got type {x.dtype}")
        if x.shape[1] != self._channels:
            raise UsageError(f"the explainer expects {self._channels} channel(s), got {x.shape[1]} (shape {x.shape})")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise UsageError(f"empty images (shape {x.shape})")
        if self._fixed_hw is not None and tuple(x.shape[2:]) != self._fixed_hw:
            raise UsageError(f"this combined graph takes {self._fixed_hw[0]}x{self._fixed_hw[1]} images, got "
                             f"{x.shape[2]}x{x.shape[3]}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_targets(self, targets: Any, n: int, allow_none: bool) -> np.ndarray:
        """Targets as int64 ``[n]``: an int broadcasts; None becomes -1 (classifier's choice) when allowed."""
        if targets is None:
            if not allow_none:
                raise UsageError(
                    "targets are required: this explainer graph does not contain the classifier, so pass the "
                    "class to explain per image (e.g. the classifier's prediction), or export the combined graph"
                )
            return np.full(n, -1, dtype=np.int64)
        t = np.asarray(targets)
        if t.dtype == np.bool_ or not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
            raise UsageError(f"targets must be integers, got type {t.dtype}")
        if np.issubdtype(t.dtype, np.floating) and not np.all(np.isfinite(t) & (t == np.round(t))):
            raise UsageError("targets must be integers")
        t = t.astype(np.int64)
        if t.ndim == 0:
            t = np.full(n, int(t), dtype=np.int64)
        t = t.reshape(-1)
        if t.shape[0] != n:
            raise UsageError(f"got {t.shape[0]} targets for {n} images")
        low = -1 if allow_none else 0  # a combined graph reads -1 as "the classifier's decision", per image
        if t.size and (int(t.min()) < low or int(t.max()) >= self._num_classes):
            raise UsageError(f"targets must lie in [{low}, {self._num_classes - 1}], found "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t

    def _run(self, x: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
        """Run the graph on a checked batch, padding H, W to the multiple (core graph) and cropping back."""
        h, w = x.shape[2:]
        ph, pw = (0, 0) if self._fixed_hw is not None else ((-h) % self.multiple, (-w) % self.multiple)
        if ph or pw:  # replicate padding at the bottom and right, as UNet.forward does
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        try:
            out = self._session.run(self._outputs, {"image": x, "target": t})
        except Exception as e:  # onnxruntime's own exception types
            raise ModelError(f"onnxruntime failed: {one_line(e)}", self.path) from None
        out[0] = out[0][:, :, :h, :w]
        return out

    def logits(self, x: np.ndarray, targets: np.ndarray | int) -> np.ndarray:
        """Mask logits of normalized images, any ``H×W`` (padded to the multiple and cropped back).

        Args:
            x: normalized images, float32 ``[B, C, H, W]`` (what :attr:`preprocess` returns).
            targets: the class to explain per image, int64 ``[B]`` (or one int for all).

        Returns:
            mask logits ``u``, float32 ``[B, 1, H, W]``.

        Raises:
            UsageError: wrong shape, type or channel count, or targets out of range.
        """
        x = self._check_images(x)
        t = self._check_targets(targets, x.shape[0], allow_none=False)
        return self._run(x, t)[0]

    def grid_logits(self, x: np.ndarray, targets: np.ndarray | int) -> np.ndarray:
        """A decoder graph's coarse logits for each image's target ``[B, 1, g_h, g_w]`` — the parameters
        refinement adapts (:func:`~medcam_fast.method.masking.to_image_grid` maps them to the image).

        Raises:
            UsageError: not a decoder graph, or wrong images or targets.
        """
        if not self.decoder:
            raise UsageError("only a decoder explainer graph has coarse mask logits")
        x = self._check_images(x)
        t = self._check_targets(targets, x.shape[0], allow_none=False)
        grid = self._run(x, t)[-1]
        return np.take_along_axis(grid, t[:, None, None, None], axis=1)

    def __call__(self, images: ImageInput, targets: np.ndarray | Sequence[int] | int | None = None,
                 *, preprocessed: bool = False, batched: bool | None = None,
                 batch_size: int = 64) -> RuntimeMasks:
        """Masks of images.

        Args:
            images: raw images — anything :class:`~medcam_fast.data.preprocess.Preprocess` accepts (a PIL image, an array
                HW / HWC / NHW / NHWC of uint8, uint16 or float on [0, 1], or a list of those), resized and
                normalized with :attr:`preprocess`; or, with ``preprocessed=True``, an already normalized
                float32 ``[B, C, H, W]`` array (any ``H×W`` for the core graph).
            targets: the class each mask explains: an int for every image or an int array ``[B]``. Required
                for the core graph, which does not run the classifier (pass its predictions). For a combined
                graph None means the classifier's own decision, argmax of ``probs_original``, and so does a
                target of -1 (per image: one batch may mix given targets and decisions).
            preprocessed: ``images`` is already normalized float32 NCHW.
            batched: how to read a 3-D raw array (True NHW, False HWC, None guess), as in
                :meth:`Preprocess.__call__ <medcam_fast.data.preprocess.Preprocess.__call__>`.
            batch_size: at most this many images per onnxruntime call (bounds memory).

        Returns:
            :class:`RuntimeMasks` (``probs_original`` and the verdict set for a combined graph).

        Raises:
            UsageError: missing or out-of-range targets, a wrong shape, type or channel count.
            DataError: raw images that cannot be preprocessed.
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        x = self._check_images(images if preprocessed else self.preprocess(images, batched=batched))
        n = x.shape[0]
        geometry = None if preprocessed else geometries(images, self.preprocess.size, batched=batched)
        t = self._check_targets(targets, n, allow_none=self.combined)
        parts: list[list[np.ndarray]] = []
        for s in range(0, n, batch_size):
            parts.append(self._run(x[s:s + batch_size], t[s:s + batch_size]))
        if parts:
            out = [np.concatenate([p[k] for p in parts]) for k in range(len(self._outputs))]
        else:
            h, w = x.shape[2:]
            k = len(self.classes)
            out = [np.zeros((0, 1, h, w), np.float32), np.zeros((0, k), np.float32)]
            out += [np.zeros((0, k) if self._legacy else (0,), np.float32)] * (len(self._outputs) - 2)
            if self.decoder:
                out[-2:] = [np.zeros((0, k, h, w), np.float32), np.zeros((0, k, 1, 1), np.float32)]
        logits = out[0][:, 0]
        soft = _sigmoid(logits / np.float32(self.tau))
        binary = soft > self.threshold
        if not self.combined:
            return RuntimeMasks(logits=logits, soft=soft, binary=binary, targets=t, geometry=geometry)
        probs_original = out[1]
        if n and (t < 0).any():  # the graph explained its argmax: report which class that was
            t = np.where(t < 0, probs_original.argmax(axis=1), t).astype(np.int64)
        if self._legacy:  # 0.1.0: the kept view's softmax; the removed view was not computed
            pick = lambda p: p[np.arange(n), t] if n else np.zeros(0, np.float32)  # noqa: E731
            verdict = [pick(probs_original), pick(out[2]), None, binary.reshape(n, -1).mean(axis=1)]
        else:
            verdict = out[2:2 + len(VERDICT)]
        extra = out[-2:] if self.decoder else [None, None]
        return RuntimeMasks(logits, soft, binary, t, probs_original, *verdict, *extra, geometry=geometry)
