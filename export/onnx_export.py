"""Export an explainer to one self-contained ONNX file (torch's dynamo-based exporter, onnxscript).

Two graphs:

* :func:`export_explainer` — the U-Net core. Inputs ``image`` float32 ``[B, C, H, W]`` (normalized, as
  :class:`~medcam_fast.data.preprocess.Preprocess` returns) and ``target`` int64 ``[B]``; output ``mask_logits``
  float32 ``[B, 1, H, W]``. ``B``, ``H`` and ``W`` are dynamic; ``H`` and ``W`` must be multiples of
  ``2**depth`` (metadata ``size_multiple``) — :class:`~medcam_fast.export.runtime.OnnxExplainer` pads any
  other size (replicate, bottom/right, as ``UNet.forward`` does) and crops back.
* :func:`export_combined` — "explain and verify": the classifier and the U-Net in one graph. Inputs as
  above with ``H×W`` fixed to the classifier's input size and ``target = -1`` meaning "the classifier's
  decision"; outputs ``mask_logits``, ``probs_original`` ``[B, K]`` (the classifier's softmax on the
  image) and the verdict on the binary mask ``m = σ(u/τ) > threshold`` for the explained class, each
  ``[B]``: ``p_original``, ``p_kept`` (only the evidence kept, the rest replaced by the bundle's baseline),
  ``p_removed`` (the evidence replaced by the baseline) and ``area`` — the names the Python API, the JSON
  records and ``summary.csv`` use. (0.1.0 files named the kept view's softmax ``probs_masked``; the runtime
  still reads them.)

Both write the bundle's facts into ``metadata_props``: key ``medcam_fast`` holds the JSON of
``bundle.facts()`` plus ``medcam_fast_version`` and ``graph`` (``"core"`` or ``"combined"``); flat
convenience keys ``input_channels``, ``input_size``, ``mean``, ``std``, ``classes`` (JSON), ``threshold``,
``tau``, ``size_multiple``, ``classifier_sha256``, ``graph``, ``medcam_fast_version`` and ``exporter`` repeat the
essentials for tools that read metadata without parsing the facts.

Files are written atomically (a temporary file beside the target, checked with ``onnx.checker`` and, with
``verify``, run once with onnxruntime against torch, then ``os.replace``), so a failed export never leaves
a half-written or unverified file behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from medcam_fast._io import SEAL_KEY, atomic_write
from medcam_fast._version import __version__
from medcam_fast.classifiers.frozen import FrozenClassifier, _as_logits
from medcam_fast.classifiers.weights import state_sha256
from medcam_fast.errors import ModelError, UsageError, one_line
from medcam_fast.explainer.bundle import ExplainerBundle, record_onnx
from medcam_fast.method.decoder import DecoderConfig, select_class
from medcam_fast.method.masking import keep, make_baseline, remove, to_image_grid
from medcam_fast.types import Architecture, BaselineKind

from .runtime import METADATA_KEY, VERDICT, OnnxExplainer, _sigmoid

__all__ = ["export_explainer", "export_combined", "onnx_metadata", "MIN_OPSET", "PARITY_TOLERANCE"]

#: The dynamo exporter emits opset 18 or newer.
MIN_OPSET = 18
#: Largest accepted difference of mask probabilities ``σ(u/τ)`` (and class probabilities) between torch
#: and onnxruntime in the verification run.
PARITY_TOLERANCE = 1e-4
#: Protobuf's hard limit: a single-file ONNX model must stay below 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 1


_ANSI = re.compile(r"\x1b\[[0-9;]*m")




def _export_cause(e: BaseException) -> str:
    """One line for an exporter failure: the stage that failed and the innermost cause.

    The dynamo exporter wraps the real error (e.g. ``GuardOnDataDependentSymNode`` for data-dependent
    control flow) in ``TorchExportError`` / ``ConversionError`` whose first line only says which step failed.
    """
    root = e
    seen = {id(e)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    stage = {"TorchExportError": "torch.export could not capture the model",
             "ConversionError": "the ONNX translation failed"}.get(type(e).__name__)
    if stage is None:
        return one_line(e, typed=True)
    return f"{stage}: {one_line(root, typed=True)}" if root is not e else stage


# ----------------------------------------------------------------------------------------------------------
# The exported modules
# ----------------------------------------------------------------------------------------------------------


class _DecoderGraph(nn.Module):
    """Classifier + classifier-aware decoder: ``(image, target) → (mask_logits, class_mask_logits, mask_grid,
    probs_original, p_original, p_kept, p_removed, area)``. The classifier runs once on the image (logits and
    the decoder's taps from the same pass) and once on the kept and removed views stacked.

    Args:
        decoder: the explainer's :class:`~medcam_fast.method.decoder.FeatureDecoder`.
        classifier: a :class:`FrozenClassifier` whose layers are the decoder's taps.
        tau, threshold, baseline, mean, std: as :class:`_Combined`.
    """

    def __init__(self, decoder: nn.Module, classifier: FrozenClassifier, tau: float, threshold: float,
                 baseline: BaselineKind, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.decoder = decoder
        self.classifier = classifier
        self.tau, self.threshold, self.baseline = float(tau), float(threshold), baseline
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, image: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        logits, acts = self.classifier(image)
        probs_original = torch.softmax(logits, dim=-1)
        t = torch.where(target < 0, torch.argmax(probs_original, dim=-1), target)
        grid = self.decoder(image, acts, self.classifier.head())
        every = to_image_grid(grid, image.shape[-2:])
        u = select_class(every, t)
        verdict = _verdict(self.classifier.logits, image, u, t, probs_original, self.tau, self.threshold,
                           self.baseline, self.mean, self.std)
        return u, every, grid, probs_original, *verdict


class _Core(nn.Module):
    """The U-Net's pad-free core with the graph's argument names (``image``, ``target``)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, image: Tensor, target: Tensor) -> Tensor:
        return self.unet.forward_padded(image, target)


class _Combined(nn.Module):
    """Classifier + U-Net: ``(image, target) → (mask_logits, probs_original, p_original, p_kept, p_removed,
    area)``; the classifier runs once on the image, the kept view and the removed view stacked.

    Args:
        unet: the explainer U-Net.
        classifier: normalized images → logits ``[B, K]`` (or a tuple / dict / object holding them).
        tau: mask temperature τ.
        threshold: binary mask threshold on ``σ(u/τ)``.
        baseline: what replaces removed pixels.
        mean: per-channel normalization mean (for the ``"zero"`` baseline).
        std: per-channel normalization std (for the ``"zero"`` baseline).
    """

    def __init__(self, unet: nn.Module, classifier: nn.Module, tau: float, threshold: float,
                 baseline: BaselineKind, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.unet = unet
        self.classifier = classifier
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.baseline = baseline
        self.mean = tuple(mean)
        self.std = tuple(std)

    def forward(self, image: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        probs_original = torch.softmax(_as_logits(self.classifier(image)), dim=-1)
        decision = torch.argmax(probs_original, dim=-1)
        t = torch.where(target < 0, decision, target)
        u = self.unet(image, t)  # UNet.forward: static H×W, padding (if any) inside the graph
        verdict = _verdict(lambda v: _as_logits(self.classifier(v)), image, u, t, probs_original, self.tau,
                           self.threshold, self.baseline, self.mean, self.std)
        return u, probs_original, *verdict


def _verdict(logits: Callable[[Tensor], Tensor], image: Tensor, u: Tensor, t: Tensor, probs_original: Tensor,
             tau: float, threshold: float, baseline: BaselineKind, mean: tuple[float, ...],
             std: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p_original, p_kept, p_removed, area)`` of the binary mask ``m = σ(u/τ) > threshold`` for the classes
    ``t``: one classifier call on the kept and removed views stacked (the graphs' :data:`VERDICT`)."""
    m = (torch.sigmoid(u / tau) > threshold).to(image.dtype)
    b = make_baseline(image, baseline, mean, std)
    views = torch.cat([keep(image, m, b), remove(image, m, b)])
    probs = torch.softmax(logits(views), dim=-1).gather(1, t.repeat(2)[:, None])[:, 0]
    n = image.shape[0]
    return probs_original.gather(1, t[:, None])[:, 0], probs[:n], probs[n:], m.flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of ``module`` (the caller's module keeps its device and mode).

    Raises:
        ModelError: the module cannot be copied.
    """
    try:
        clone = copy.deepcopy(module)
    except Exception as e:  # noqa: BLE001 — any failure to copy is reported as a model problem
        raise ModelError(f"cannot copy the model for export: {one_line(e, typed=True)}") from None
    clone = clone.cpu()
    try:
        clone.eval()
    except NotImplementedError:  # exported programs refuse .eval(): set the flags
        for m in clone.modules():
            m.training = False
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter for one export: warnings, log records below ERROR, and stderr prints.

    ``torch.export`` prints a failed capture's partial FX graph straight to ``sys.stderr`` (pages of text);
    the failure itself is reported as a one-line :class:`ModelError`.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _check_opset(opset: int) -> int:
    """Validate the opset (the dynamo exporter writes opset >= 18)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise UsageError(f"opset must be an integer >= {MIN_OPSET} (the dynamo exporter's minimum), got {opset!r}")
    return opset


def _check_bundle(bundle: ExplainerBundle, out: Path) -> None:
    """The network must fit the preprocessing and the class list, or the exported file would be unusable."""
    cfg = bundle.net.config
    if cfg.in_channels != bundle.preprocess.channels:
        raise ModelError(f"the network takes {cfg.in_channels} channel(s) but the preprocessing gives "
                         f"{bundle.preprocess.channels}", out)
    if cfg.num_classes != len(bundle.classes):
        raise ModelError(f"the network knows {cfg.num_classes} classes but the bundle names {len(bundle.classes)}",
                         out)


def onnx_metadata(bundle: ExplainerBundle, graph: str = "core") -> dict[str, str]:
    """The ``metadata_props`` an exported explainer carries.

    Args:
        bundle: the explainer.
        graph: ``"core"`` (U-Net only), ``"combined"`` (classifier + U-Net) or ``"decoder"`` (classifier +
            decoder, every class's mask).

    Returns:
        key → string value: ``medcam_fast`` (JSON facts) and the flat convenience keys.
    """
    facts = bundle.facts()
    facts.pop("onnx_sha256", None)  # the file's own hash cannot be inside it
    facts["medcam_fast_version"] = __version__
    facts["graph"] = graph
    pre = bundle.preprocess
    return {
        METADATA_KEY: json.dumps(facts, sort_keys=False),
        "medcam_fast_version": __version__,
        "graph": graph,
        "input_channels": str(pre.channels),
        "input_size": json.dumps(list(pre.size)),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "classes": json.dumps(list(bundle.classes)),
        "threshold": repr(float(bundle.threshold)),
        "tau": repr(float(bundle.tau)),
        "size_multiple": str(getattr(bundle.net.config, "multiple", 1)),
        "classifier_sha256": bundle.classifier_sha256,
        "exporter": f"torch {torch.__version__} (dynamo), onnx {onnx.__version__}",
    }


def _torch_to_onnx(module: nn.Module, args: tuple[Tensor, Tensor], output_names: list[str],
                   dynamic_shapes: dict[str, dict[int, Any]], opset: int, what: str,
                   out: Path) -> onnx.ModelProto:
    """Run the dynamo exporter and return the optimized ModelProto (weights inside).

    Raises:
        ModelError: the exporter fails (the cause on one line).
    """
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=["image", "target"], output_names=output_names,
                dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=False, optimize=True,
                verbose=False,
            )
            if program is None:  # only when f is given; kept for type checkers
                raise RuntimeError("the exporter returned no program")
            return program.model_proto
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 — torch.export / onnxscript raise many types
        raise ModelError(f"cannot export {what} to ONNX: {_export_cause(e)}", out) from None


def _finish(proto: onnx.ModelProto, metadata: dict[str, str], doc: str, inputs_doc: dict[str, str],
            outputs_doc: dict[str, str]) -> None:
    """Set metadata_props and doc strings on the exported model in place."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = doc
    proto.producer_name = "medcam-fast"
    proto.producer_version = __version__
    for value_info in list(proto.graph.input) + list(proto.graph.output):
        text = inputs_doc.get(value_info.name) or outputs_doc.get(value_info.name)
        if text:
            value_info.doc_string = text


def _write(proto: onnx.ModelProto, out: Path, verify: Callable[[Path], None] | None) -> Path:
    """Save ``proto`` atomically: temp file, ``onnx.checker``, optional verification, ``os.replace``.

    Raises:
        ModelError: the model is too large for one file, fails the checker or the verification.
    """
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ModelError("the model is larger than 2 GB, the limit of a single-file ONNX model", out)

    def write(tmp: Path) -> None:
        onnx.save_model(proto, os.fspath(tmp))
        try:
            onnx.checker.check_model(os.fspath(tmp), full_check=True)
        except Exception as e:  # noqa: BLE001 — ValidationError, shape inference errors
            raise ModelError(f"the exported model fails onnx.checker: {one_line(e, typed=True)}", out) from None
        if verify is not None:
            verify(tmp)

    return atomic_write(out, write)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of two arrays (inf when shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------

#: Doc strings of the outputs every graph with the classifier inside shares.
_VERIFY_DOC = {
    "probs_original": "classifier softmax on the image [B, K]",
    "p_original": "p_target(image) [B]",
    "p_kept": "p_target(m*x + (1-m)*baseline), m = sigmoid(u/tau) > threshold [B]",
    "p_removed": "p_target((1-m)*x + m*baseline) [B]",
    "area": "fraction of pixels in m [B]",
}

_INPUT_DOC = {
    "image": "normalized images float32 [B, C, H, W]: ((pixels on [0,1]) - mean) / std, see metadata",
    "target": "class to explain per image, int64 [B]",
}


def export_explainer(bundle: ExplainerBundle, out: str | os.PathLike[str], opset: int = 18,
                     verify: bool = True) -> Path:
    """Write the explainer U-Net as one self-contained ONNX file with its facts in the metadata.

    Args:
        bundle: the explainer (its U-Net is copied; the caller's module is left as it is).
        out: the ``.onnx`` file to write (parent folders are created; an existing file is replaced
            atomically).
        opset: the ONNX opset (>= 18).
        verify: run onnxruntime on random inputs (at the preprocessing size, which exercises the runtime's
            padding, and at a second size) and compare the mask probabilities ``σ(u/τ)`` with torch's; the
            file is only written when they agree within :data:`PARITY_TOLERANCE`.

    Returns:
        the written path.

    Raises:
        UsageError: an invalid opset.
        ModelError: the export, the checker or the verification fails (nothing is written then).
    """
    out = Path(out)
    opset = _check_opset(opset)
    if bundle.architecture is Architecture.DECODER:
        raise UsageError("a decoder explainer reads its classifier: export it with the classifier "
                         "(export_combined, or `medcam-fast export --combined CLASSIFIER`)", out)
    _check_bundle(bundle, out)
    unet = _frozen_copy(bundle.net)
    cfg = unet.config
    mult = cfg.multiple
    h, w = bundle.preprocess.size
    # Example sizes of at least two blocks per axis: a root dimension of 1 would be specialized away.
    ex_h, ex_w = max(2, -(-h // mult)) * mult, max(2, -(-w // mult)) * mult
    example = (torch.zeros(2, cfg.in_channels, ex_h, ex_w), torch.zeros(2, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1)
    rows = torch.export.Dim(f"h_div{mult}", min=1)
    cols = torch.export.Dim(f"w_div{mult}", min=1)
    dynamic = {"image": {0: batch, 2: mult * rows, 3: mult * cols}, "target": {0: batch}}
    proto = _torch_to_onnx(_Core(unet), example, ["mask_logits"], dynamic, opset, "the explainer U-Net", out)
    _finish(
        proto, onnx_metadata(bundle, "core"),
        doc=(f"medcam-fast explainer U-Net ({len(bundle.classes)} classes). H and W must be multiples of {mult}; "
             "the medcam_fast metadata key holds the facts. Mask = sigmoid(mask_logits / tau) > threshold."),
        inputs_doc=_INPUT_DOC,
        outputs_doc={"mask_logits": "mask logits u float32 [B, 1, H, W]; mask m = sigmoid(u / tau)"},
    )

    def check(tmp: Path) -> None:
        runtime = OnnxExplainer(tmp, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        k = cfg.num_classes
        for n, size in ((2, (h, w)), (1, (h + mult, w + mult // 2 + 1))):
            x = rng.standard_normal((n, cfg.in_channels, *size)).astype(np.float32)
            t = rng.integers(0, k, n).astype(np.int64)
            with torch.no_grad():
                u = unet(torch.from_numpy(x), torch.from_numpy(t))
                ref = torch.sigmoid(u / bundle.tau).numpy()
            got = _sigmoid(runtime.logits(x, t) / np.float32(bundle.tau))
            diff = _max_diff(got, ref)
            if not diff <= PARITY_TOLERANCE:
                raise ModelError(f"onnxruntime disagrees with torch at {n}x{size[0]}x{size[1]}: max |Δm| = "
                                 f"{diff:.3g} > {PARITY_TOLERANCE:g}", out)

    path = _write(proto, out, check if verify else None)
    _record_in_bundle(bundle, path)
    return path


def _record_in_bundle(bundle: ExplainerBundle, path: Path) -> None:
    """A core graph written as ``explainer.onnx`` beside the bundle's own (sealed) ``explainer.json`` is
    recorded there, so the bundle's seal covers it and :class:`~medcam_fast.explain.MedCAM` uses it."""
    meta_path = path.parent / "explainer.json"
    if path.name != "explainer.onnx" or not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(meta, dict) and meta.get("sha256") == bundle.sha256 and meta.get(SEAL_KEY):
        record_onnx(path.parent)


def export_combined(bundle: ExplainerBundle, classifier_module: nn.Module, out: str | os.PathLike[str],
                    opset: int = 18, verify: bool = True, check_sha256: bool = True) -> Path:
    """Write an "explain and verify" graph: the classifier and the explainer in one ONNX file.

    Inputs ``image`` float32 ``[B, C, H, W]`` (normalized, ``H×W`` = ``bundle.preprocess.size``) and
    ``target`` int64 ``[B]`` (``-1`` = explain the classifier's decision, argmax of ``probs_original``);
    outputs ``mask_logits`` ``[B, 1, H, W]``, ``probs_original`` ``[B, K]`` (softmax of the classifier on
    the image), and for the explained class ``c`` with the binary mask ``m = σ(u/τ) > threshold`` and the
    bundle's baseline ``b``: ``p_original = p_c(x)``, ``p_kept = p_c(m⊙x + (1−m)⊙b)``,
    ``p_removed = p_c((1−m)⊙x + m⊙b)`` and ``area = mean(m)``, each ``[B]``. Batch is dynamic.

    Args:
        bundle: the explainer.
        classifier_module: the classifier the explainer was trained against: an ``nn.Module`` mapping
            normalized images ``[B, C, H, W]`` to logits ``[B, K]`` (a tuple / dict / object with
            ``.logits`` also works; a :class:`~medcam_fast.classifiers.frozen.FrozenClassifier` is unwrapped). It is
            copied; the caller's module is left as it is.
        out: the ``.onnx`` file to write.
        opset: the ONNX opset (>= 18).
        verify: compare onnxruntime with torch once on random inputs (mask probabilities and
            ``probs_original`` everywhere, the verdict where both binary masks agree) within
            :data:`PARITY_TOLERANCE` before the file is written.
        check_sha256: refuse a classifier whose weights' sha256 differs from ``bundle.classifier_sha256``
            (when the bundle records one).

    Returns:
        the written path.

    Raises:
        UsageError: an invalid opset.
        ModelError: a classifier that does not fit the bundle (sha256, classes, input), or an export,
            checker or verification failure, with the cause on one line.
    """
    out = Path(out)
    opset = _check_opset(opset)
    _check_bundle(bundle, out)
    model = classifier_module.model if isinstance(classifier_module, FrozenClassifier) else classifier_module
    if not isinstance(model, nn.Module):
        raise ModelError(f"the classifier must be a torch.nn.Module, got {type(model).__name__}", out)
    if check_sha256 and bundle.classifier_sha256:
        digest = state_sha256(model)
        if digest != bundle.classifier_sha256:
            raise ModelError(f"the classifier's weights (sha256 {digest[:12]}…) are not the ones the explainer was "
                             f"trained against ({bundle.classifier_sha256[:12]}…); pass check_sha256=False to "
                             "export anyway", out)
    if isinstance(bundle.net_config, DecoderConfig):
        path = _export_decoder(bundle, _frozen_copy(model), out, opset, verify)
        _record_in_bundle(bundle, path)
        return path
    classifier = _frozen_copy(model)
    unet = _frozen_copy(bundle.net)
    pre = bundle.preprocess
    h, w = pre.size
    k = len(bundle.classes)
    combined = _Combined(unet, classifier, bundle.tau, bundle.threshold, bundle.baseline, pre.mean, pre.std).eval()
    example = (torch.zeros(2, pre.channels, h, w), torch.tensor([-1, 0], dtype=torch.int64))
    try:
        with torch.no_grad():
            shapes = [tuple(o.shape) for o in combined(*example)]
    except ModelError as e:
        raise ModelError(e.cause, out) from None
    except Exception as e:  # noqa: BLE001 — whatever the user's model raises
        raise ModelError(f"the classifier fails on a [2, {pre.channels}, {h}, {w}] input: {one_line(e, typed=True)}", out) from None
    if shapes[1] != (2, k):
        raise ModelError(f"the classifier returns {shapes[1][-1]} logits but the explainer knows {k} classes", out)
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"image": {0: batch}, "target": {0: batch}}
    names = ["mask_logits", "probs_original", *VERDICT]
    proto = _torch_to_onnx(combined, example, names, dynamic, opset, "the classifier with the explainer", out)
    _finish(
        proto, onnx_metadata(bundle, "combined"),
        doc=(f"medcam-fast explain-and-verify graph ({k} classes, {h}x{w} input): target -1 explains the "
             "classifier's decision; p_kept / p_removed: the classifier on the image with only the binary "
             "evidence kept / removed."),
        inputs_doc={**_INPUT_DOC, "target": "class to explain per image, int64 [B]; -1 = argmax of probs_original"},
        outputs_doc={"mask_logits": "mask logits u float32 [B, 1, H, W]; mask m = sigmoid(u / tau)", **_VERIFY_DOC},
    )

    check = _combined_check(combined, names, "mask_logits", bundle, k, out)
    return _write(proto, out, check if verify else None)


def _combined_check(module: nn.Module, names: list[str], masks: str, bundle: ExplainerBundle, k: int,
                    out: Path) -> Callable[[Path], None]:
    """The verification of a graph with the classifier inside: onnxruntime against torch on 3 random images
    (targets −1, 0, K−1) — mask probabilities ``σ(·/τ)`` of the output ``masks`` and ``probs_original``
    everywhere, the :data:`VERDICT` where both binary target masks (``mask_logits``) agree — within
    :data:`PARITY_TOLERANCE`."""
    pre = bundle.preprocess
    tau = np.float32(bundle.tau)
    at = {name: i for i, name in enumerate(names)}

    def check(tmp: Path) -> None:
        runtime = OnnxExplainer(tmp, providers=["CPUExecutionProvider"])
        n = 3
        x = np.random.default_rng(0).standard_normal((n, pre.channels, *pre.size)).astype(np.float32)
        t = np.array([-1, 0, k - 1], dtype=np.int64)
        with torch.no_grad():
            ref = [o.numpy() for o in module(torch.from_numpy(x), torch.from_numpy(t))]
        got = runtime._session.run(names, {"image": x, "target": t})
        u = at["mask_logits"]
        same = ((_sigmoid(ref[u] / tau) > bundle.threshold)
                == (_sigmoid(got[u] / tau) > bundle.threshold)).reshape(n, -1).all(axis=1)
        checks = [(masks, _max_diff(_sigmoid(got[at[masks]] / tau), _sigmoid(ref[at[masks]] / tau))),
                  ("probs_original", _max_diff(got[at["probs_original"]], ref[at["probs_original"]]))]
        checks += [(name, _max_diff(got[at[name]][same], ref[at[name]][same])) for name in VERDICT]
        for name, diff in checks:
            if not diff <= PARITY_TOLERANCE:
                raise ModelError(f"onnxruntime disagrees with torch on {name}: max diff {diff:.3g} > "
                                 f"{PARITY_TOLERANCE:g}", out)

    return check


_DECODER_OUTPUTS = ["mask_logits", "class_mask_logits", "mask_grid", "probs_original", *VERDICT]


def _export_decoder(bundle: ExplainerBundle, model: nn.Module, out: Path, opset: int, verify: bool) -> Path:
    """The decoder's graph (see :func:`export_combined`): one classifier pass feeds the logits and the
    decoder; outputs the target's ``mask_logits`` ``[B,1,H,W]``, every class's ``class_mask_logits``
    ``[B,K,H,W]`` and coarse ``mask_grid`` ``[B,K,g_h,g_w]``, ``probs_original`` and the verdict."""
    cfg = bundle.net_config
    assert isinstance(cfg, DecoderConfig)
    pre = bundle.preprocess
    h, w = pre.size
    k = len(bundle.classes)
    try:
        classifier = FrozenClassifier(model, cfg.tap_names, num_classes=k)
    except Exception as e:  # noqa: BLE001 — a classifier without the decoder's layers
        raise ModelError(f"the classifier does not fit the decoder: {one_line(e)}", out) from None
    graph = _DecoderGraph(_frozen_copy(bundle.net), classifier, bundle.tau, bundle.threshold, bundle.baseline,
                          pre.mean, pre.std).eval()
    example = (torch.zeros(2, pre.channels, h, w), torch.tensor([-1, 0], dtype=torch.int64))
    try:
        with torch.no_grad():
            graph(*example)
    except Exception as e:  # noqa: BLE001 — whatever the user's model raises
        raise ModelError(f"the classifier with the decoder fails on a [2, {pre.channels}, {h}, {w}] input: "
                         f"{one_line(e, typed=True)}", out) from None
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"image": {0: batch}, "target": {0: batch}}
    proto = _torch_to_onnx(graph, example, _DECODER_OUTPUTS, dynamic, opset, "the classifier with the decoder", out)
    g_h, g_w = cfg.grid or (h, w)
    _finish(
        proto, onnx_metadata(bundle, "decoder"),
        doc=(f"medcam-fast explainer ({k} classes, {h}x{w} input): the classifier and a decoder over its features. "
             "target -1 explains the classifier's decision; class_mask_logits holds every class's mask; p_kept / "
             "p_removed: the classifier on the image with only the binary evidence kept / removed."),
        inputs_doc={**_INPUT_DOC, "target": "class to explain per image, int64 [B]; -1 = argmax of probs_original"},
        outputs_doc={
            "mask_logits": "mask logits u of the target float32 [B, 1, H, W]; mask m = sigmoid(u / tau)",
            "class_mask_logits": f"mask logits of every class float32 [B, {k}, H, W]",
            "mask_grid": f"the coarse logits they are upsampled from (bilinear) [B, {k}, {g_h}, {g_w}]",
            **_VERIFY_DOC,
        },
    )

    check = _combined_check(graph, _DECODER_OUTPUTS, "class_mask_logits", bundle, k, out)
    return _write(proto, out, check if verify else None)
