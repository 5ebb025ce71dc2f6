"""``medcam-fast serve``: one Ray Serve instance for the module (the demo bundle, 2 logical CPUs), asked as a
client would ask it. Claims: answers equal the CLI's records, every bad input is a 4xx with one line,
batches form under concurrent load, and the API describes itself."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="needs the [scale] extra (Ray)")
requests = pytest.importorskip("requests")

from medcam_fast import DEMO_DIR, make_lesions  # noqa: E402
from medcam_fast.cli.loadtest import LoadSettings, load_test  # noqa: E402
from medcam_fast.cli.serve import ServeConfig, resolve_config, start_service, stop_service  # noqa: E402
from medcam_fast.cli.writers import png_bytes  # noqa: E402
from medcam_fast.errors import MedCamError  # noqa: E402

pytestmark = [pytest.mark.scale, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

LIMIT_BYTES = 300_000
LIMIT_PIXELS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def url() -> str:
    config = ServeConfig(str(DEMO_DIR / "classifier"), str(DEMO_DIR / "explainer"), replica_cpus=0.5,
                         max_body_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, max_steps=20)
    address = start_service(config, port=_free_port(), num_cpus=2)
    yield address
    stop_service()


@pytest.fixture(scope="module")
def lesion_png() -> bytes:
    return png_bytes(make_lesions(1, size=64, seed=31).images[0])


def _mask(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(record["mask_png"]))))


def test_load_test_answers_every_request_and_each_answer_equals_the_cli_record(url: str) -> None:
    report = load_test(LoadSettings(requests=24, concurrency=6, images=6, refine_steps=3), url=url)
    first, refined = report["results"]
    for r in (first, refined):
        assert r["errors"] == 0 and r["answered"] == 24, r["statuses"]
        assert r["vs_cli"]["compared"] == 24
        assert r["vs_cli"]["equal"], r["vs_cli"]
        assert r["throughput_rps"] > 0 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert refined["vs_cli"]["max_abs_diff"] == 0.0  # the refiner is MedCAM itself, chunked as the CLI is


@pytest.mark.parametrize("body, query, headers, status, says", [
    (b"", "", {}, 400, "empty body"),
    (b"\x00garbage" * 40, "", {}, 415, "not an image file"),
    ("cut", "", {}, 400, "truncated or corrupt"),
    (b"x" * (LIMIT_BYTES + 1), "", {}, 413, "above the limit"),
    ("big", "", {}, 413, "max_pixels"),
    ("dicom", "", {}, 415, "DICOM"),
    ("png", "?target=7", {}, 400, "out of range"),
    ("png", "?target=-1", {}, 400, "target"),
    ("png", "?target=one", {}, 400, "target"),
    ("png", "?format=xml", {}, 400, "format"),
    ("png", "?steps=3", {}, 400, "steps needs refine=true"),
    ("png", "?refine=true&steps=21", {}, 400, "limit of 20"),
    ("png", "?refine=maybe", {}, 400, "refine"),
    ("png", "", {"Content-Type": "multipart/form-data; boundary=xyz"}, 400, "multipart"),
])
def test_a_bad_request_is_a_4xx_with_one_line_never_a_500_or_a_traceback(
    url: str, lesion_png: bytes, tmp_path: Path, body, query: str, headers: dict, status: int, says: str,
) -> None:
    if body == "png":
        body = lesion_png
    elif body == "cut":
        body = lesion_png[:80]
    elif body == "big":  # 1200 x 1000 = 1.2 M pixels, a small file: refused from its header
        body = png_bytes(np.zeros((1000, 1200), np.uint8))
    elif body == "dicom":
        body = b"\x00" * 128 + b"DICM" + b"\x00" * 200
    r = requests.post(f"{url}/explain{query}", data=body, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in r.text


def test_multipart_and_raw_body_and_png_format_give_the_same_mask(url: str, lesion_png: bytes) -> None:
    raw = requests.post(f"{url}/explain", data=lesion_png, timeout=60).json()
    part = requests.post(f"{url}/explain", files={"file": ("scan 01.png", lesion_png, "image/png")}, timeout=60).json()
    png = requests.post(f"{url}/explain?format=png", data=lesion_png, timeout=60)
    assert png.headers["content-type"] == "image/png"
    verdict = json.loads(png.headers["x-medcam-verdict"])
    assert part["image"] == "scan 01" and part["source"] == "scan 01.png"
    assert raw["source_sha256"] == part["source_sha256"] == verdict["source_sha256"]
    assert np.array_equal(_mask(raw), _mask(part))
    assert np.array_equal(_mask(raw), np.asarray(Image.open(io.BytesIO(png.content))))
    assert raw["p_kept"] == part["p_kept"] == verdict["p_kept"] and raw["steps"] == 0


def test_a_12_bit_image_in_a_16_bit_png_gets_the_clis_window_and_the_clis_answer(url: str, tmp_path: Path) -> None:
    from rich.console import Console

    from medcam_fast.cli.jobs import explain_inputs
    from medcam_fast.cli.serve import compare_records

    grey = make_lesions(1, size=64, seed=32).images[0]
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    scan = tmp_path / "ct12.png"  # a 12-bit scan as 16-bit PNGs store it: 0..4095, the top 4 bits unused
    Image.fromarray((grey.astype(np.uint16) * 16).astype(np.uint16)).save(scan)
    quiet = Console(file=io.StringIO())
    assert explain_inputs([str(scan)], classifier=DEMO_DIR / "classifier", explainer=DEMO_DIR / "explainer",
                          out=tmp_path / "cli", steps=0, formats="png,json", threads=1, console=quiet,
                          err_console=quiet) == 0
    cli = json.loads((tmp_path / "cli" / "ct12.json").read_text(encoding="utf-8"))
    cli_mask = np.asarray(Image.open(tmp_path / "cli" / "ct12_mask.png")) > 0
    served = requests.post(f"{url}/explain", data=scan.read_bytes(), timeout=60).json()
    diff = compare_records(served, cli, _mask(served) > 0, cli_mask)
    assert diff["mismatched_keys"] == [] and diff["mask_pixels_differ"] == 0, diff
    # the load_image reading (÷ 65535) would have shown the classifier a nearly black image
    dark = requests.post(f"{url}/explain", data=png_bytes((grey // 16).astype(np.uint8)), timeout=60).json()
    assert abs(dark["p_original"] - served["p_original"]) > 1e-3 or dark["target"] != served["target"]


def test_another_target_is_explained_when_asked(url: str, lesion_png: bytes) -> None:
    decision = requests.post(f"{url}/explain", data=lesion_png, timeout=60).json()
    other = 1 - decision["predicted"]
    asked = requests.post(f"{url}/explain?target={other}&refine=true&steps=2", data=lesion_png, timeout=60).json()
    assert asked["target"] == other and asked["predicted"] == decision["predicted"] and asked["steps"] == 2


def test_concurrent_requests_are_answered_in_shared_batches(url: str) -> None:
    bodies = [png_bytes(img) for img in make_lesions(24, size=64, seed=32).images]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: requests.post(f"{url}/explain", data=b, timeout=60), bodies))
    assert all(a.status_code == 200 for a in answers)
    assert max(int(a.headers["x-medcam-batch"]) for a in answers) > 1


def test_metadata_names_classes_hashes_versions_and_limits(url: str) -> None:
    from medcam_fast.classifiers.bundle import load_classifier
    from medcam_fast.explainer.bundle import load_explainer

    meta = requests.get(f"{url}/metadata", timeout=30).json()
    clf, ex = load_classifier(DEMO_DIR / "classifier"), load_explainer(DEMO_DIR / "explainer")
    assert meta["classes"] == list(clf.classes)
    assert meta["classifier_sha256"] == clf.sha256 and meta["explainer_sha256"] == ex.sha256
    assert {"medcam_fast", "onnxruntime", "ray"} <= set(meta["versions"])
    assert meta["limits"]["max_body_bytes"] == LIMIT_BYTES and meta["refine"]["max_steps"] == 20
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}


def test_openapi_documents_the_explain_endpoint_its_query_and_its_bodies(url: str) -> None:
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    op = spec["paths"]["/explain"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"target", "refine", "steps", "format"}
    assert {"multipart/form-data", "image/png"} <= set(op["requestBody"]["content"])
    assert {"200", "400", "413", "415", "504"} <= set(op["responses"])
    assert "/healthz" in spec["paths"] and "/metadata" in spec["paths"]


def test_an_explainer_without_its_onnx_graph_is_refused_before_ray_starts(tmp_path: Path) -> None:
    folder = tmp_path / "explainer"
    shutil.copytree(DEMO_DIR / "explainer", folder)
    (folder / "explainer.onnx").unlink()
    with pytest.raises(MedCamError) as e:
        resolve_config(ServeConfig(str(DEMO_DIR / "classifier"), str(folder)))
    assert "explainer.onnx" in str(e.value) and "\n" not in str(e.value)
