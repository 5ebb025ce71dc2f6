"""``medcam-fast serve``: the explainer as an HTTP service, on Ray Serve.

Two deployments behind one HTTP proxy:

* :class:`ExplainerService` (the ingress, ``--replicas N``): reads and checks the request, decodes the image
  (:func:`medcam_fast.data.images.decode`, the CLI's reader: 16-bit and float images through the same window
  as ``medcam-fast explain`` without ``--window``; DICOM and NIfTI uploads are refused, 415), and answers first guesses from the
  combined ONNX graph of the explainer bundle (``explainer.onnx``: classifier, decoder and verdict in one
  graph; :class:`~medcam_fast.export.runtime.OnnxExplainer`). Concurrent requests are batched
  (``serve.batch``: up to ``max_batch_size`` images, waiting at most ``batch_wait_s`` for a batch to fill).
  This deployment never imports torch.
* :class:`Refiner` (``--refine-replicas M``, torch): requests with ``refine=true`` go to
  :class:`~medcam_fast.explain.MedCAM` built exactly as ``medcam-fast explain`` builds it (the first guess
  from the bundle's torch weights, then K steps on the mask logits), batched the same way.

Endpoints: ``POST /explain`` (the image as the raw body, or multipart ``file``; query ``target``, ``refine``,
``steps``, ``format=json|png``) answers the per-image JSON record of ``medcam-fast explain`` (its ``NAME.json``
less ``files``) plus ``mask_png``, the binary mask PNG ``NAME_mask.png`` would hold, base64-encoded; with
``format=png`` the PNG itself, the record in the ``X-MedCAM-Verdict`` header. ``GET /healthz``,
``GET /metadata`` (classes, hashes, versions, limits), ``GET /openapi.json`` and ``GET /docs``.

Every refusal is a 4xx with ``{"error": "<one line>"}``: a body over the size limit or an image over the
pixel limit 413, a file that is not an image 415, a damaged image or a bad query 400, a refinement that
this service does not offer 400; a request that takes longer than the timeout 504. An unexpected failure is
a 500 with one line, never a traceback.

A first guess's record comes from the ONNX graph: ``p_original``, ``p_kept``, ``p_removed`` and ``area``
are the graph's (equal to the torch path's to float tolerance, :func:`compare_records`), and ``loss`` is
``null`` (the composite loss needs the torch classifier). A refined record is MedCAM's, field for field.
"""

# No ``from __future__ import annotations``: Serve pickles the deployment classes by value, and FastAPI must
# see real annotations (``Request``, ``Query``) on the routes in the replica process.
import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..data.images import _DEFAULT_MAX_PIXELS, decode
from ..data.medical import SourceKind, sniff_kind
from ..errors import DataError, MedCamError, ModelError, UsageError, one_line
from ..types import _Choice
from .ray_cluster import init_ray
from .writers import png_bytes

__all__ = [
    "ServeConfig", "OutputFormat", "ExplainerService", "Refiner", "build_app", "start_service", "stop_service",
    "compare_records", "VERDICT_KEYS", "APP_NAME",
]

#: The Serve application's name (one per Ray cluster).
APP_NAME = "medcam-fast"
#: The record fields a service response and the CLI's JSON must agree on (:func:`compare_records`).
VERDICT_KEYS = ("predicted", "predicted_name", "target", "target_name", "p_original", "p_kept", "p_removed",
                "area", "loss", "mode", "steps", "refined", "classifier_sha256", "explainer_sha256")
_FLOAT_KEYS = ("p_original", "p_kept", "p_removed", "area", "loss")

log = logging.getLogger("medcam_fast.serve")


class OutputFormat(_Choice):
    """What ``POST /explain`` answers: the JSON record (mask PNG base64 inside) or the mask PNG itself."""

    JSON = "json"
    PNG = "png"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one service (the owner of every service default).

    Args:
        classifier: classifier bundle folder (absolute: replicas run in other processes).
        explainer: explainer bundle folder holding ``explainer.onnx`` (a combined graph).
        refine_steps: K for ``refine=true`` without ``steps`` (the CLI's default, ``RefineConfig().steps``,
            is filled in by :func:`resolve_config`).
        max_steps: the most ``steps`` a request may ask for (bounds one request's cost).
        replicas: first-guess (ingress) replicas.
        refine_replicas: torch refinement replicas; 0 refuses ``refine=true`` (400).
        replica_cpus: Ray CPUs each replica reserves (logical: what the scheduler counts).
        threads: onnxruntime / torch threads per replica.
        max_batch_size: most images in one first-guess batch.
        refine_batch_size: most images in one refinement batch.
        batch_wait_s: longest wait for a first-guess batch to fill.
        refine_wait_s: longest wait for a refinement batch to fill: MedCAM computes 8 images at a time
            (:data:`medcam_fast.explain.CHUNK`, a partial chunk costs a full one), and a chunk of K steps takes
            hundreds of milliseconds, so waiting a little for a fuller batch pays.
        max_body_bytes: largest request body (413 beyond).
        max_pixels: largest image, width × height, checked from the header before decoding (413 beyond;
            the image reader's default, as ``explain --max-pixels``).
        timeout_s: a request that takes longer is answered 504.
        max_queued: requests queued per deployment beyond the replicas' capacity (503 beyond).
        allow_unsealed: accept bundles without a content hash (0.1.0).
    """

    classifier: str
    explainer: str
    refine_steps: int | None = None
    max_steps: int = 50
    replicas: int = 1
    refine_replicas: int = 1
    replica_cpus: float = 1.0
    threads: int = 1
    max_batch_size: int = 32
    refine_batch_size: int = 8
    batch_wait_s: float = 0.005
    refine_wait_s: float = 0.02
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = _DEFAULT_MAX_PIXELS
    timeout_s: float = 60.0
    max_queued: int = 2000
    allow_unsealed: bool = False

    @property
    def onnx(self) -> str:
        """The combined graph the first guesses come from."""
        return str(Path(self.explainer) / "explainer.onnx")


def resolve_config(config: ServeConfig) -> ServeConfig:
    """``config`` with absolute paths and the refinement default filled in, after checking that its bundles
    load and pair (in this process: a broken bundle is one line before any replica starts).

    Raises:
        UsageError: an explainer without ``explainer.onnx``, or bad limits.
        ModelError: a bundle that does not load, an ONNX file that is not a combined decoder graph, or an
            explainer trained for another classifier.
    """
    from ..classifiers.bundle import load_classifier
    from ..explainer.bundle import load_explainer
    from ..export.runtime import OnnxExplainer
    from ..method.refine import RefineConfig

    classifier, explainer = Path(config.classifier).resolve(), Path(config.explainer).resolve()
    for name, value in (("replicas", config.replicas), ("threads", config.threads),
                        ("max_batch_size", config.max_batch_size), ("refine_batch_size", config.refine_batch_size),
                        ("max_body_bytes", config.max_body_bytes), ("max_pixels", config.max_pixels)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if config.refine_replicas < 0 or config.max_steps < 0 or config.timeout_s <= 0:
        raise UsageError("refine replicas and max steps must be >= 0, the timeout > 0")
    clf = load_classifier(classifier, allow_unsealed=config.allow_unsealed)
    bundle = load_explainer(explainer, allow_unsealed=config.allow_unsealed)
    onnx_file = explainer / "explainer.onnx"
    if not onnx_file.is_file():
        raise UsageError("the service answers first guesses from explainer.onnx, which this bundle lacks: run "
                         "`medcam-fast export --explainer … --combined <classifier>` first", explainer)
    graph = OnnxExplainer(onnx_file, threads=1)
    if not graph.combined:
        raise UsageError("explainer.onnx does not contain the classifier: export it with --combined", onnx_file)
    if bundle.classifier_sha256 != clf.sha256 or graph.classifier_sha256 != clf.sha256:
        raise ModelError("the explainer was trained for another classifier than --classifier", explainer)
    steps = RefineConfig().steps if config.refine_steps is None else config.refine_steps
    if steps > config.max_steps:
        raise UsageError(f"--refine-steps {steps} is above --max-steps {config.max_steps}")
    return ServeConfig(**{**asdict(config), "classifier": str(classifier), "explainer": str(explainer),
                          "refine_steps": steps})


class _Refused(Exception):
    """A request this service answers with a 4xx/5xx status and one line."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(cause)
        self.status = status
        self.cause = cause


def _error(status: int, cause: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(cause).split())[:400]}, status_code=status)


def _data_status(cause: str) -> int:
    """The HTTP status of an image the reader refused: too large 413, not an image 415, damaged 400."""
    if "(max_pixels)" in cause:
        return 413
    if cause.startswith(("not an image file", "a DICOM file", "a NIfTI volume", "empty file")):
        return 415
    return 400


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded image's pixels, read as ``medcam-fast explain`` reads an image file without ``--window``:
    the same reader (:func:`~medcam_fast.data.images.decode`), the same checks and the same window, so a
    16-bit or float image gives the same mask here as on the command line.

    Raises:
        _Refused: the reader's one-line cause, naming ``name``, with its HTTP status; a DICOM or NIfTI upload
            is 415 (a volume or multi-frame object needs ``explain``'s frame and slice options).
    """
    if not data:
        raise _Refused(400, "empty body: send the image file as the body or as multipart field 'file'")
    fd, tmp = tempfile.mkstemp(prefix=".medcam-upload-", suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        kind = sniff_kind(tmp)
        if kind is not SourceKind.IMAGE:
            raise _Refused(415, f"{name}: a {_MEDICAL_NAMES[kind]} file: the service reads image files (PNG, "
                                "JPEG, TIFF, …); `medcam-fast explain` reads DICOM and NIfTI")
        return decode(tmp, kind=SourceKind.IMAGE, max_pixels=max_pixels).pixels
    except DataError as e:
        raise _Refused(_data_status(e.cause), f"{name}: {e.cause}") from None
    finally:
        os.unlink(tmp)


_MEDICAL_NAMES = {SourceKind.DICOM: "DICOM", SourceKind.NIFTI: "NIfTI"}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _Refused(413, f"body of {int(length)} bytes is above the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _Refused(413, f"body is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request, limit: int) -> tuple[bytes, str]:
    """``(image bytes, name)`` of a request: the raw body, or multipart field ``file`` (else ``image``,
    else the first file)."""
    body = await _read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, request.query_params.get("name") or "image"
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream()).parse()
    except (MultiPartException, ValueError, KeyError) as e:
        raise _Refused(400, f"malformed multipart body: {one_line(e)}") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    named = [form.get(k) for k in ("file", "image") if isinstance(form.get(k), UploadFile)]
    upload = (named or files or [None])[0]
    if upload is None:
        raise _Refused(400, "multipart body without a file: send the image as field 'file'")
    data = await upload.read()
    await upload.close()
    return data, Path(upload.filename or "image").name


def _verdict(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record without its mask: what the ``X-MedCAM-Verdict`` header carries."""
    return {k: v for k, v in record.items() if k != "mask_png"}


def compare_records(service: Mapping[str, Any], cli: Mapping[str, Any], service_mask: np.ndarray,
                    cli_mask: np.ndarray) -> dict[str, Any]:
    """How a service response differs from the CLI's record of the same image.

    Returns:
        ``mismatched_keys`` (the :data:`VERDICT_KEYS` whose values differ beyond float rounding — a float
        within 1e-4 of the CLI's counts as equal, and a ``null`` loss of an ONNX first guess is not compared),
        ``max_abs_diff`` (the largest float difference) and ``mask_pixels_differ`` (pixels where the binary
        masks disagree).
    """
    mismatched, worst = [], 0.0
    for key in VERDICT_KEYS:
        a, b = service.get(key), cli.get(key)
        if key in _FLOAT_KEYS:
            if a is None and key == "loss":
                continue
            if a is None or b is None:
                mismatched.append(key)
                continue
            worst = max(worst, abs(float(a) - float(b)))
            if abs(float(a) - float(b)) > 1e-4:
                mismatched.append(key)
        elif a != b:
            mismatched.append(key)
    differ = int(np.count_nonzero(service_mask != cli_mask)) if service_mask.shape == cli_mask.shape else -1
    return {"mismatched_keys": mismatched, "max_abs_diff": worst, "mask_pixels_differ": differ}


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


_API_DOC = """Evidence masks for a frozen medical-image classifier (Med-CAM, made fast).

`POST /explain` with an image (PNG, JPEG, TIFF, BMP …) as the body or as multipart field `file` answers the
verdict of `medcam-fast explain` (its per-image JSON) and the binary evidence mask as a base64 PNG.
"""

app = FastAPI(title="medcam-fast", version=__version__, description=_API_DOC)


@app.exception_handler(RequestValidationError)
async def _bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
    return _error(400, f"{where}: {first.get('msg', 'invalid request')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image file: the raw body, or multipart/form-data with the file in field `file`.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        },
    },
}
_ERROR = {"content": {"application/json": {"example": {"error": "image.png: not an image file"}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The record (format=json) or the mask PNG (format=png, record in X-MedCAM-Verdict).",
          "content": {"image/png": {}}},
    400: {"description": "A bad query or a damaged image.", **_ERROR},
    413: {"description": "Body or image above the limits.", **_ERROR},
    415: {"description": "Not an image file.", **_ERROR},
    504: {"description": "Took longer than the timeout.", **_ERROR},
}


@serve.deployment
@serve.ingress(app)
class ExplainerService:
    """The ingress: HTTP, decoding, and batched ONNX first guesses (no torch in this process).

    Args:
        config: the resolved :class:`ServeConfig`.
        refiner: a handle of the :class:`Refiner` deployment, or None (no refinement offered).
    """

    def __init__(self, config: ServeConfig, refiner: Any = None) -> None:
        from ..export.runtime import OnnxExplainer

        self.config = config
        self.graph = OnnxExplainer(config.onnx, threads=config.threads)
        self.refiner = refiner
        self.first_guess.set_max_batch_size(config.max_batch_size)
        self.first_guess.set_batch_wait_timeout_s(config.batch_wait_s)
        import onnxruntime

        facts = self.graph.facts
        self.meta: dict[str, Any] = {
            "classes": list(self.graph.classes),
            "preprocess": self.graph.preprocess.to_dict(),
            "classifier": config.classifier,
            "classifier_sha256": self.graph.classifier_sha256,
            "explainer": config.explainer,
            "explainer_sha256": facts.get("sha256"),
            "onnx": config.onnx,
            "provider": self.graph.provider,
            "versions": {"medcam_fast": __version__, "explainer_exported_by": facts.get("medcam_fast_version"),
                         "onnxruntime": onnxruntime.__version__, "ray": _ray_version()},
            "refine": {"offered": refiner is not None, "default_steps": config.refine_steps,
                       "max_steps": config.max_steps, "replicas": config.refine_replicas},
            "replicas": config.replicas,
            "limits": {"max_body_bytes": config.max_body_bytes, "max_pixels": config.max_pixels,
                       "timeout_s": config.timeout_s, "max_batch_size": config.max_batch_size},
        }

    @app.get("/healthz", summary="Liveness: 200 while the replica can answer")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata", summary="Classes, model hashes, versions and limits of this service")
    async def metadata(self) -> dict[str, Any]:
        return self.meta

    @app.post("/explain", summary="Explain one image: its evidence mask and verdict", openapi_extra=_BODY,
              responses=_RESPONSES)
    async def explain(
        self,
        request: Request,
        target: int | None = Query(None, ge=0, description="Class to explain (default: the predicted class)."),
        refine: bool = Query(False, description="Refine the first guess with K steps in torch."),
        steps: int | None = Query(None, ge=0, description="K for refine=true (default: the service's)."),
        format: OutputFormat = Query(OutputFormat.JSON, description="json: the record; png: the mask PNG."),
    ) -> Response:
        try:
            return await asyncio.wait_for(self._explain(request, target, refine, steps, format),
                                          self.config.timeout_s)
        except _Refused as e:
            return _error(e.status, e.cause)
        except asyncio.TimeoutError:
            return _error(504, f"no answer within {self.config.timeout_s:g} s: the service is busy, try again")
        except Exception as e:  # noqa: BLE001 — a bug: one line to the client, the traceback in the log
            log.exception("explain failed")
            return _error(500, f"internal error: {one_line(e, typed=True)}")

    async def _explain(self, request: Request, target: int | None, refine: bool, steps: int | None,
                       fmt: OutputFormat) -> Response:
        k = len(self.graph.classes)
        if target is not None and target >= k:
            raise _Refused(400, f"target {target} is out of range: the classifier has {k} classes (0..{k - 1})")
        if steps is not None and not refine and steps > 0:
            raise _Refused(400, "steps needs refine=true")
        if refine and self.refiner is None:
            raise _Refused(400, "this service does not refine (started with --refine-replicas 0)")
        k_steps = self.config.refine_steps if steps is None else steps
        if refine and k_steps > self.config.max_steps:
            raise _Refused(400, f"steps {k_steps} is above this service's limit of {self.config.max_steps}")
        data, name = await _upload(request, self.config.max_body_bytes)
        pixels = await asyncio.to_thread(decode_image, data, name, self.config.max_pixels)
        try:
            x = self.graph.preprocess(pixels)
        except MedCamError as e:
            raise _Refused(400, f"{name}: {e.cause}") from None
        if refine:
            record, mask, batch = await self.refiner.refine.remote(x, target, k_steps)
        else:
            record, mask, batch = await self.first_guess(x, -1 if target is None else target)
        stem = Path(name).stem or "image"
        record = {"image": stem, "source": name, "source_sha256": hashlib.sha256(data).hexdigest(), **record}
        headers = {"X-MedCAM-Batch": str(batch)}  # images computed together with this one
        if fmt is OutputFormat.PNG:
            headers["X-MedCAM-Verdict"] = json.dumps(record, allow_nan=False)
            return Response(mask, media_type="image/png", headers=headers)
        return JSONResponse({**record, "mask_png": base64.b64encode(mask).decode("ascii")}, headers=headers)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def first_guess(self, xs: list[np.ndarray], targets: list[int]) -> list[tuple[dict[str, Any], bytes, int]]:
        """One ONNX call for the requests that arrived together (a thread keeps the event loop free)."""
        return await asyncio.to_thread(self._first_guess, xs, targets)

    def _first_guess(self, xs: Sequence[np.ndarray], targets: Sequence[int]) -> list[tuple[dict[str, Any], bytes, int]]:
        start = time.perf_counter()
        masks = self.graph(np.concatenate(xs), np.asarray(targets, dtype=np.int64), preprocessed=True)
        seconds = (time.perf_counter() - start) / len(xs)
        classes, facts = self.graph.classes, self.graph.facts
        assert masks.probs_original is not None and masks.p_kept is not None  # a combined graph (checked)
        out = []
        for i in range(len(xs)):
            predicted, t = int(masks.probs_original[i].argmax()), int(masks.targets[i])
            record = {
                "predicted": predicted, "predicted_name": classes[predicted], "target": t, "target_name": classes[t],
                "p_original": float(masks.p_original[i]), "p_kept": float(masks.p_kept[i]),  # type: ignore[index]
                "p_removed": float(masks.p_removed[i]), "area": float(masks.area[i]),  # type: ignore[index]
                "loss": None, "mode": "logits", "steps": 0, "refined": False, "seconds": seconds,
                "classifier_sha256": self.graph.classifier_sha256, "medcam_fast_version": __version__,
                "explainer": str(self.graph.path), "explainer_provider": self.graph.provider,
                "explainer_sha256": facts.get("sha256"),
            }
            out.append((record, png_bytes(masks.binary[i].astype(np.uint8) * 255), len(xs)))
        return out


@serve.deployment
class Refiner:
    """Torch refinement: :class:`~medcam_fast.explain.MedCAM` as ``medcam-fast explain`` builds it.

    Args:
        config: the resolved :class:`ServeConfig`.
    """

    def __init__(self, config: ServeConfig) -> None:
        from ..explain import MedCAM

        self.medcam = MedCAM(config.classifier, config.explainer, threads=config.threads,
                             allow_unsealed=config.allow_unsealed)
        self.refine.set_max_batch_size(config.refine_batch_size)
        self.refine.set_batch_wait_timeout_s(config.refine_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def refine(self, xs: list[np.ndarray], targets: list[int | None],
                     steps: list[int]) -> list[tuple[dict[str, Any], bytes, int]]:
        """Refine the requests that arrived together: one MedCAM call per (steps, target given) group."""
        return await asyncio.to_thread(self._refine, xs, targets, steps)

    def _refine(self, xs: Sequence[np.ndarray], targets: Sequence[int | None],
                steps: Sequence[int]) -> list[tuple[dict[str, Any], bytes, int]]:
        import torch

        groups: dict[tuple[int, bool], list[int]] = {}
        for i, (t, k) in enumerate(zip(targets, steps, strict=True)):
            groups.setdefault((k, t is None), []).append(i)
        out: list[tuple[dict[str, Any], bytes, int]] = [({}, b"", 0)] * len(xs)
        for (k, no_target), idx in groups.items():
            x = torch.from_numpy(np.concatenate([xs[i] for i in idx]))
            ex = self.medcam(x, targets=None if no_target else [int(targets[i]) for i in idx],  # type: ignore[arg-type]
                             refine_steps=k)
            for j, i in enumerate(idx):
                out[i] = (ex.record(j), png_bytes(ex.binary[j].astype(np.uint8) * 255), len(xs))
        return out


def build_app(config: ServeConfig) -> Any:
    """The Serve application of a resolved ``config``: the ingress, bound to a refiner when one is offered."""
    refiner = None
    if config.refine_replicas > 0:
        refiner = Refiner.options(
            num_replicas=config.refine_replicas, ray_actor_options={"num_cpus": config.replica_cpus},
            max_ongoing_requests=4 * config.refine_batch_size, max_queued_requests=config.max_queued,
        ).bind(config)
    return ExplainerService.options(
        num_replicas=config.replicas, ray_actor_options={"num_cpus": config.replica_cpus},
        max_ongoing_requests=4 * config.max_batch_size, max_queued_requests=config.max_queued,
    ).bind(config, refiner)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_service(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  num_cpus: float | None = None) -> str:
    """Start the service (Ray too, when this process has none) and wait until it answers. Returns its URL.

    Args:
        config: a :class:`ServeConfig` (resolved here).
        host, port: where the HTTP proxy listens (on the head node of a remote cluster).
        address: a Ray cluster to join; None starts a local instance (``num_cpus``: default, the replicas'
            needs or this machine's cores, whichever is more).

    Raises:
        UsageError: the port is taken, Ray cannot be reached. ModelError: bundles that do not load.
    """
    config = resolve_config(config)
    if address is None and not _port_free(host, port):
        raise UsageError(f"port {port} on {host} is in use: pick another with --port")
    need = (config.replicas + config.refine_replicas) * config.replica_cpus
    init_ray(address, num_cpus if num_cpus is not None else max(need, float(os.cpu_count() or 1)))
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": config.timeout_s + 30},
                logging_config={"log_level": "WARNING"})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
    return f"http://{host}:{port}"


def stop_service(shutdown_ray: bool = True) -> None:
    """Stop the service (and, with ``shutdown_ray``, the Ray instance this process started or joined)."""
    import ray

    if ray.is_initialized():
        serve.shutdown()
        if shutdown_ray:
            ray.shutdown()
