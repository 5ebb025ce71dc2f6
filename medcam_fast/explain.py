"""The user-facing API: ``with MedCAM(classifier, explainer=…) as explain: result = explain(images)``.

``MedCAM`` loads (or takes) a classifier and, optionally, an explainer; calling it explains a batch and
returns an :class:`Explanation` — typed arrays, never a bare mask. Modes (:class:`~medcam_fast.types.RefineMode`):

* ``logits`` (default with an explainer) — the explainer's first guess (from onnxruntime when the
  bundle holds ``explainer.onnx``, else its torch U-Net), then ``K`` steps on the mask logits;
* ``weights`` — ``K`` inner-loop steps on the explainer's U-Net weights (MAML adaptation);
* ``full`` — the paper's per-image fit from a fresh U-Net (:func:`medcam_fast.method.fit.fit_masks`);
  the only mode without an explainer.

``refine_steps=0`` returns the first guess itself. An explainer records the sha256 of the classifier it was
trained for; a different classifier is refused unless ``allow_mismatch=True`` (then every record says so).
Every default belongs to a configuration dataclass: :class:`~medcam_fast.method.refine.RefineConfig`
(refinement) and :class:`~medcam_fast.method.fit.FitConfig` (the per-image fit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__
from .classifiers.bundle import load_classifier
from .classifiers.frozen import ClassifierBundle
from .classifiers.sources import classifier_from_module
from .data.geometry import Geometry, InputMasks, geometries, masks_at_input
from .data.preprocess import Preprocess
from .errors import ModelError, UsageError
from .explainer.bundle import ExplainerBundle, ExplainerSettings, load_explainer
from .method.decoder import DecoderConfig, describe_taps
from .method.fit import FitConfig
from .method.losses import Reference
from .method.masking import keep
from .method.objective import Objective
from .method.refine import RefineConfig, refine, uses_learned_steps
from .method.result import MaskResult
from .types import Architecture, RefineMode, choice

if TYPE_CHECKING:
    from .export.runtime import OnnxExplainer

__all__ = ["MedCAM", "Explanation", "CHUNK"]

#: Images computed together. Every call is cut into chunks of exactly this many images, the last one padded
#: with copies of its last image, so that every image always meets the same kernel shapes: float32 kernels
#: round differently at different batch sizes (oneDNN's batch-1 convolutions, for one), and refinement's
#: first Adam steps (≈ lr·sign(g)) turn that rounding into flipped pixels where a gradient is ~0. With a fixed
#: chunk a mask and its numbers are bit-identical whatever batch the image came in, alone, in any
#: ``--batch-size`` or after a resume. Measured on the demo (64 px, K = 10, one thread, CPU time;
#: ``benchmarks/results/batch_invariance.md``): at the CLI's batch of 16, 13.3 images/s against 13.0 before
#: the chunks, 13.6 with 16, 11.2 with 4 and 6.3 image by image; 8 keeps that while a short call pays half of
#: 16's padding (7 images: 10.6 images/s, 16: 5.0, before: 12.8; one image: 1.6, before: 6.3).
CHUNK = 8


@dataclass(frozen=True)
class Explanation:
    """Explanations of a batch of ``B`` images (numpy arrays, first axis = image).

    Args:
        soft: soft masks ``[B,H,W]`` in [0,1].
        binary: binary evidence masks ``[B,H,W]`` (bool).
        logits: mask logits ``u`` ``[B,H,W]`` (``soft = σ(u/τ)``).
        kept: the images with only the evidence kept, in [0,1] ``[B,H,W,C]`` (the "masked image").
        images: the preprocessed input images in [0,1] ``[B,H,W,C]``.
        predicted: the classifier's class for each original image ``[B]``.
        target: the class explained ``[B]``.
        p_original: ``p_target(x)`` ``[B]``.
        p_kept: ``p_target`` of the image with only the binary evidence kept ``[B]``.
        p_removed: ``p_target`` of the image with the binary evidence removed ``[B]``.
        area: fraction of the image in the binary mask ``[B]``.
        loss: composite loss of the binary masks ``[B]``.
        classes: class names.
        mode: how the masks were obtained.
        steps: optimization steps per image.
        refined: per image ``[B]`` (bool), whether its mask is the ``steps``-step one: False without steps and
            where refinement kept the first guess because it had the lower loss
            (:class:`~medcam_fast.method.refine.RefineConfig` ``keep_best``).
        seconds: wall time for the batch, including the classifier's forward passes.
        extra: facts to copy into output records (model hashes, versions, warnings).
        geometry: per image, how its own pixel grid maps to the model's (:class:`~medcam_fast.data.geometry.
            Geometry`), when raw images were explained; None for a normalized tensor (no input grid known).
            :meth:`at_input` brings the masks back to an image's own grid.
    """

    soft: np.ndarray
    binary: np.ndarray
    logits: np.ndarray
    kept: np.ndarray
    images: np.ndarray
    predicted: np.ndarray
    target: np.ndarray
    p_original: np.ndarray
    p_kept: np.ndarray
    p_removed: np.ndarray
    area: np.ndarray
    loss: np.ndarray
    classes: list[str]
    mode: RefineMode
    steps: int
    refined: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    geometry: tuple[Geometry, ...] | None = None

    def __len__(self) -> int:
        return int(self.soft.shape[0])

    def at_input(self, i: int) -> InputMasks:
        """Image ``i``'s masks on its own pixel grid: binary by nearest neighbour, soft bilinearly (the mapping
        the CLI's ``--mask-grid input`` writes, :meth:`Geometry.masks_to_input
        <medcam_fast.data.geometry.Geometry.masks_to_input>`).

        Raises:
            UsageError: the batch was a normalized tensor (no input grid recorded), or ``i`` out of range.
        """
        return masks_at_input(self.geometry, i, self.binary, self.soft, "these images were given as a normalized tensor")

    def record(self, i: int) -> dict[str, Any]:
        """JSON-safe facts of image ``i``."""
        return {
            "predicted": int(self.predicted[i]),
            "predicted_name": self.classes[int(self.predicted[i])],
            "target": int(self.target[i]),
            "target_name": self.classes[int(self.target[i])],
            "p_original": float(self.p_original[i]),
            "p_kept": float(self.p_kept[i]),
            "p_removed": float(self.p_removed[i]),
            "area": float(self.area[i]),
            "loss": float(self.loss[i]),
            "mode": self.mode.value,
            "steps": self.steps,
            "refined": bool(self.refined[i]),
            "seconds": self.seconds / max(1, len(self)),
            **({} if self.geometry is None else {"geometry": self.geometry[i].to_dict()}),
            **self.extra,
        }


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class MedCAM:
    """Explain a frozen classifier's decisions with binary evidence masks.

    Args:
        classifier: a :class:`~medcam_fast.classifiers.frozen.ClassifierBundle`, the path of a classifier
            bundle, or any ``nn.Module`` mapping normalized images to logits (then ``preprocess`` and
            ``classes`` are required).
        explainer: an :class:`~medcam_fast.explainer.bundle.ExplainerBundle`, its folder, an exported
            ``.onnx`` file or an :class:`~medcam_fast.export.runtime.OnnxExplainer` session (its providers and
            threads as the caller chose; first guess and ``logits`` refinement only); None uses the per-image
            fit (``mode="full"``).
        mode: ``logits``, ``weights`` or ``full`` (a :class:`~medcam_fast.types.RefineMode` or its value);
            default ``logits`` with an explainer, else ``full``.
        refine_steps: optimization steps per image; default ``refine_config.steps`` with an explainer, else
            ``fit_config.steps``.
        smooth: σ in grid cells for refinement and the fit alike (``RefineConfig.smooth``, ``FitConfig.smooth``):
            their steps shape the mask by Gaussian blobs; default: the configurations' own (0, off). The first
            guess is not smoothed.
        learned_steps: take the explainer's learned steps first in ``logits`` mode when it has them
            (``RefineConfig.learned``; records then carry ``learned_steps``, how many were taken); False: Adam
            steps only; default: the configuration's own (True).
        refine_config: refinement settings (step size, start clip, hard phase, seed); default
            :class:`~medcam_fast.method.refine.RefineConfig` ``()``.
        fit_config: settings of the per-image fit (``full`` mode); default
            :class:`~medcam_fast.method.fit.FitConfig` ``()``.
        preprocess: preprocessing for a plain ``nn.Module`` classifier.
        classes: class names for a plain ``nn.Module`` classifier.
        layers: classifier layers for activation matching; None picks the documented default.
        threads: CPU threads for torch and onnxruntime (None leaves torch's setting, and gives onnxruntime
            as many as torch has).
        allow_mismatch: accept an explainer trained for another classifier (records carry a warning).
        allow_unsealed: accept bundles whose JSON has no content hash (written by 0.1.0); records carry a
            warning. A broken seal is never accepted.
        use_onnx: take the first guess from ``explainer.onnx`` with onnxruntime when a U-Net bundle has one. A
            decoder bundle's first guess always comes from its torch weights here: the decoder reads the
            activations of the classifier pass the loss needs anyway, while its ONNX graph (the artifact for
            other tools) would run the classifier a second time.
        device: torch device for the classifier, refinement and the per-image fit (``"cpu"``, ``"cuda"``).
            onnxruntime picks its own provider (CUDA with onnxruntime-gpu and a GPU).
        chunk: images computed together (see :data:`CHUNK`): a call is cut into chunks of exactly this many
            images, the last padded, so results do not depend on the batch an image came in; results are
            bit-identical between runs with the same chunk (and device and torch build). 1 computes image by
            image (no padding, the lowest latency for single images, about half the throughput).

    Example::

        with MedCAM("models/breast/classifier", explainer="models/breast/explainer") as explain:
            result = explain(images)          # numpy uint8 images, or a normalized torch batch
            print(result.p_kept, result.p_removed, result.area)
    """

    def __init__(
        self,
        classifier: ClassifierBundle | str | Path | nn.Module,
        explainer: ExplainerBundle | OnnxExplainer | str | Path | None = None,
        *,
        mode: RefineMode | str | None = None,
        refine_steps: int | None = None,
        smooth: float | None = None,
        learned_steps: bool | None = None,
        refine_config: RefineConfig | None = None,
        fit_config: FitConfig | None = None,
        preprocess: Preprocess | None = None,
        classes: Sequence[str] | None = None,
        layers: Sequence[str] | None = None,
        threads: int | None = None,
        allow_mismatch: bool = False,
        allow_unsealed: bool = False,
        use_onnx: bool = True,
        device: str = "cpu",
        chunk: int = CHUNK,
    ) -> None:
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise UsageError(f"chunk must be a positive integer, got {chunk!r}")
        self.chunk = chunk
        if isinstance(classifier, (str, Path)):
            classifier = load_classifier(classifier, allow_unsealed=allow_unsealed)
        elif isinstance(classifier, nn.Module):
            if preprocess is None or classes is None:
                raise UsageError("a plain nn.Module classifier needs preprocess= and classes=")
            classifier = classifier_from_module(classifier, preprocess, list(classes))
        if not isinstance(classifier, ClassifierBundle):
            raise UsageError(f"classifier must be a bundle, a path or an nn.Module, not {type(classifier).__name__}")
        self.device = _device(device)
        self.bundle = classifier
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise UsageError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        self.settings, self.explainer, self.onnx = _load_explainer(explainer, use_onnx, allow_unsealed,
                                                                    torch.get_num_threads())
        #: The explainer's path, named in a mismatch error (None: given as an object without one).
        self._explainer_path = (Path(explainer) if isinstance(explainer, (str, Path))
                                else self.onnx.path if self.onnx is not None else None)
        decoder = self.settings.net_config if self.settings is not None and isinstance(
            self.settings.net_config, DecoderConfig) else None
        if decoder is not None and layers is not None and list(layers) != decoder.tap_names:
            raise UsageError(f"this explainer reads the classifier's layers {decoder.tap_names}: the activation "
                             "layers cannot be changed")
        self.classifier = classifier.frozen(decoder.tap_names if decoder is not None else layers).to(self.device)
        if self.explainer is not None:
            self.explainer.net.to(self.device)
        self.mode = choice(RefineMode, mode or (RefineMode.FULL if explainer is None else RefineMode.LOGITS),
                           "mode")
        if self.mode is not RefineMode.FULL and self.settings is None:
            raise UsageError(f"mode {self.mode.value!r} needs an explainer; without one use mode 'full'")
        if self.mode is RefineMode.WEIGHTS and self.explainer is None:
            raise UsageError("mode 'weights' needs the explainer's torch weights (its bundle folder), not only ONNX")
        if self.settings is not None:
            net, pre = self.settings.net_config, classifier.preprocess
            if (net.in_channels, net.num_classes) != (pre.channels, len(classifier.classes)):
                raise ModelError(f"the explainer takes {net.in_channels} channel(s) and {net.num_classes} classes, "
                                 f"this classifier {pre.channels} channel(s) and {len(classifier.classes)} classes: "
                                 "no mismatch can be allowed there", self._explainer_path)
        if decoder is not None:
            self._check_taps(decoder)
        if self.mode is RefineMode.WEIGHTS and decoder is not None:
            raise UsageError("mode 'weights' adapts a U-Net explainer's weights; this explainer is a decoder: "
                             "use mode 'logits'")
        self.warnings: list[str] = []
        if not classifier.sealed or (self.explainer is not None and not self.explainer.sealed):
            self.warnings.append("loaded without a content hash check (unsealed bundle allowed)")
        trained_for = None if self.settings is None else self.settings.classifier_sha256
        if trained_for is not None and trained_for != classifier.sha256:
            msg = (f"explainer was trained for classifier {trained_for[:12]}…, not this one "
                   f"({classifier.sha256[:12]}…)")
            if not allow_mismatch:
                raise ModelError(msg + "; allow the mismatch to use it anyway")
            self.warnings.append(msg)
        self.fit_config = fit_config or FitConfig()
        self.refine_config = (refine_config or RefineConfig()).with_(mode=self.mode)
        if refine_steps is not None:
            self._check_steps(refine_steps)
            self.refine_config = self.refine_config.with_(steps=refine_steps)
            self.fit_config = self.fit_config.with_(steps=refine_steps)
        if smooth is not None:
            if self.mode is RefineMode.WEIGHTS and smooth:
                raise UsageError("smoothing shapes the logits loop's and the fit's steps: weights refinement has none")
            self.refine_config = self.refine_config.with_(smooth=smooth)
            self.fit_config = self.fit_config.with_(smooth=smooth)
        if learned_steps is not None:
            self.refine_config = self.refine_config.with_(learned=bool(learned_steps))

    def _check_taps(self, decoder: DecoderConfig) -> None:
        """The decoder reads this classifier's layers: one forward pass of a blank image must give each of its
        taps with the width (and, for tokens, the patch grid) it was trained on, or no mismatch can be allowed.

        Raises:
            ModelError: a tap of another shape.
        """
        h, w = self.bundle.preprocess.size
        with torch.no_grad():
            _, acts = self.classifier(torch.zeros(1, self.bundle.preprocess.channels, h, w, device=self.device))
        try:
            found = {t.name: t for t in describe_taps(acts, (h, w))}
        except ValueError as e:
            raise ModelError(f"the explainer cannot read this classifier: {e}") from None
        for tap in decoder.taps:
            got = found.get(tap.name)
            if got is None or (got.channels, got.tokens) != (tap.channels, tap.tokens):
                shape = "missing" if got is None else f"{got.channels} channels"
                raise ModelError(f"the explainer reads layer {tap.name!r} with {tap.channels} channels, this "
                                 f"classifier gives {shape}: no mismatch can be allowed there", self._explainer_path)

    def __enter__(self) -> MedCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def preprocess(self) -> Preprocess:
        """The classifier's preprocessing."""
        return self.bundle.preprocess

    @staticmethod
    def _check_steps(steps: int) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise UsageError(f"refinement steps must be an integer >= 0, got {steps!r}")

    def prepare(self, images: Any) -> Tensor:
        """Normalized float32 batch ``[B,C,H,W]`` from raw images or an already-normalized tensor.

        A ``torch.Tensor`` of floats with 4 dimensions is taken as already normalized; anything else
        (numpy arrays, PIL images, lists of them) is preprocessed with the classifier's preprocessing.
        """
        if isinstance(images, Tensor) and images.is_floating_point() and images.dim() == 4:
            return images.detach().float().to(self.device)
        if isinstance(images, Tensor):
            images = images.detach().cpu().numpy()
        return torch.from_numpy(self.preprocess(images)).to(self.device)

    def __call__(
        self,
        images: Any,
        targets: Sequence[int] | np.ndarray | Tensor | int | None = None,
        refine_steps: int | None = None,
    ) -> Explanation:
        """Explain a batch: in chunks of :attr:`chunk` images (the last padded with copies of its last image),
        so that an image's result does not depend on the others in ``images``.

        Args:
            images: raw images (numpy / PIL / list) or a normalized ``[B,C,H,W]`` float tensor.
            targets: class to explain per image (or one for all); None explains the predicted class.
            refine_steps: optimization steps per image for this call (overrides the instance's).

        Raises:
            UsageError: no image, a target class outside the classifier's classes, or a negative step count.
        """
        start = time.perf_counter()
        x = self.prepare(images)
        geometry = self._geometries(images, x.shape[0])
        if x.shape[0] == 0:
            raise UsageError("no images to explain")
        k = len(self.bundle.classes)
        t = None
        if targets is not None:
            arr = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
            if arr.dtype.kind not in "iu":
                raise UsageError(f"targets must be class indices (integers), got {arr.dtype} values")
            if arr.size and (arr.min() < 0 or arr.max() >= k):
                raise UsageError(f"target class out of range: the classifier has {k} classes (0..{k - 1})")
            t = torch.as_tensor(arr, dtype=torch.long).reshape(-1).to(self.device)
            if t.numel() not in (1, x.shape[0]):
                raise UsageError(f"got {t.numel()} targets for {x.shape[0]} images")
        if refine_steps is not None:
            self._check_steps(refine_steps)
        n, w = x.shape[0], self.chunk
        parts = []
        for s in range(0, n, w):
            xs = x[s : s + w]
            ts = t if t is None or t.numel() == 1 else t[s : s + w]
            if xs.shape[0] < w:  # pad: every image meets the kernels at the same batch size
                pad = w - xs.shape[0]
                xs = torch.cat([xs, xs[-1:].expand(pad, *xs.shape[1:])])
                ts = ts if ts is None or ts.numel() == 1 else torch.cat([ts, ts[-1:].expand(pad)])
            parts.append(self._explain_chunk(xs, ts, refine_steps))
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])[:n] for f in fields(Explanation)
                  if isinstance(getattr(parts[0], f.name), np.ndarray)}
        return replace(parts[0], **arrays, seconds=time.perf_counter() - start, geometry=geometry)

    def _geometries(self, images: Any, n: int) -> tuple[Geometry, ...] | None:
        """Each raw image's grid against the model's, as :meth:`prepare` read them; None for a normalized
        tensor."""
        if isinstance(images, Tensor):
            if images.is_floating_point() and images.dim() == 4:
                return None
            images = images.detach().cpu().numpy()
        found = geometries(images, self.preprocess.size)
        return found if len(found) == n else None

    def _explain_chunk(self, x: Tensor, t: Tensor | None, refine_steps: int | None) -> Explanation:
        """:meth:`__call__` on one chunk ``x`` (targets ``t``: one per image, one for all, or None)."""
        start = time.perf_counter()
        with torch.no_grad():
            reference = Reference(*self.classifier(x))  # once: picks the target and anchors the loss
        if self.mode is RefineMode.FULL:
            fit = self.fit_config if refine_steps is None else self.fit_config.with_(steps=refine_steps)
            objective = Objective.build(self.classifier, x, t, baseline=fit.baseline, weights=fit.weights,
                                        tau=fit.tau, normalization=(self.preprocess.mean, self.preprocess.std),
                                        reference=reference)
            res = refine(objective, RefineConfig(steps=fit.steps, mode=RefineMode.FULL), fit_config=fit)
            return self._explanation(objective, res, time.perf_counter() - start)
        assert self.settings is not None  # checked in __init__
        config = self.refine_config if refine_steps is None else self.refine_config.with_(steps=refine_steps)
        objective = self.settings.objective(self.classifier, x, t, reference=reference)
        first_guess = None
        if self.onnx is not None and self.mode is RefineMode.LOGITS:
            read = self.onnx.grid_logits if self.onnx.decoder else self.onnx.logits
            first_guess = torch.from_numpy(read(x.cpu().numpy(), objective.target.cpu().numpy())).to(self.device)
        net = None if self.explainer is None else self.explainer.net
        steps_net = None if self.explainer is None else self.explainer.steps
        res = refine(objective, config, net=net, first_guess=first_guess, trained=self.settings.inner,
                     steps_net=steps_net)
        learned = ({"learned_steps": min(config.steps, steps_net.config.steps)}
                   if steps_net is not None and uses_learned_steps(config, steps_net) else {})
        return self._explanation(objective, res, time.perf_counter() - start, learned)

    def _explanation(self, objective: Objective, res: MaskResult, seconds: float,
                     facts: dict[str, Any] | None = None) -> Explanation:
        pre, x = self.preprocess, objective.x
        kept = keep(x, res.binary[:, None].to(x.dtype), objective.baseline)  # the baseline the loss used

        def unit(z: Tensor) -> np.ndarray:
            return np.clip(pre.denormalize(_to_numpy(z)), 0, 1).transpose(0, 2, 3, 1)

        v = res.verification
        return Explanation(
            soft=_to_numpy(res.soft),
            binary=_to_numpy(res.binary),
            logits=_to_numpy(res.logits),
            kept=unit(kept),
            images=unit(x),
            predicted=_to_numpy(v.predicted),
            target=_to_numpy(v.target),
            p_original=_to_numpy(v.p_original),
            p_kept=_to_numpy(v.p_kept),
            p_removed=_to_numpy(v.p_removed),
            area=_to_numpy(v.area),
            loss=_to_numpy(res.loss),
            classes=list(self.bundle.classes),
            mode=self.mode,
            steps=res.steps,
            refined=_to_numpy(res.refined),
            seconds=seconds,
            extra={"classifier_sha256": self.bundle.sha256, **self._model_facts(), **(facts or {})},
        )

    def _model_facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"medcam_fast_version": __version__}
        if self.onnx is not None:
            facts["explainer"] = str(self.onnx.path)
            facts["explainer_provider"] = self.onnx.provider
        if self.explainer is not None:
            facts["explainer_sha256"] = self.explainer.sha256
        smooth = self.fit_config.smooth if self.mode is RefineMode.FULL else self.refine_config.smooth
        if smooth:
            facts["smooth"] = smooth
        if self.warnings:
            facts["warnings"] = list(self.warnings)
        return facts


def _device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]`` when this torch has that GPU; anything else is a one-line usage error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's message lists its ~20 device types: not the user's choices
        raise UsageError(f"unknown device {name!r}: choose cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r} is not supported: choose cpu or cuda[:N]")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {name!r} requested but this torch has no CUDA GPU available")
        if device.index is not None and device.index >= count:
            raise UsageError(f"device {name!r} requested but this machine has {count} CUDA GPU(s)")
    return device


def _load_explainer(
    explainer: ExplainerBundle | OnnxExplainer | str | Path | None, use_onnx: bool, allow_unsealed: bool = False,
    threads: int | None = None,
) -> tuple[ExplainerSettings | None, ExplainerBundle | None, OnnxExplainer | None]:
    """(settings, torch bundle or None, onnxruntime explainer or None) from a bundle, a bundle folder or an
    ``.onnx`` file. An ONNX file alone gives the settings from its metadata: no U-Net is built. A bundle's
    own ``explainer.onnx`` is used only when its sha256 is the one the sealed ``explainer.json`` records."""
    if explainer is None:
        return None, None, None
    if isinstance(explainer, ExplainerBundle):
        return explainer, explainer, None
    if not isinstance(explainer, (str, Path)):
        from .export.runtime import OnnxExplainer

        if not isinstance(explainer, OnnxExplainer):
            raise UsageError(f"explainer must be a bundle, a path or an OnnxExplainer, not {type(explainer).__name__}")
        return ExplainerSettings.from_facts(explainer.facts, explainer.path), None, explainer
    path = Path(explainer)
    if path.suffix == ".onnx":
        from .export.runtime import OnnxExplainer

        onnx = OnnxExplainer(path, threads=threads)
        return ExplainerSettings.from_facts(onnx.facts, path), None, onnx
    bundle = load_explainer(path, allow_unsealed=allow_unsealed)
    folder = path.parent if path.suffix == ".json" else path
    onnx_file = folder / "explainer.onnx"
    if use_onnx and onnx_file.exists() and bundle.architecture is Architecture.UNET:
        from .export.runtime import OnnxExplainer

        return bundle, bundle, OnnxExplainer(onnx_file, threads=threads)
    return bundle, bundle, None
