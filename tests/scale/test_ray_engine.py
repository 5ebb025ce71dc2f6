"""``medcam-fast explain --engine ray``: one local Ray instance (2 logical CPUs) for the module. Claims: the Ray
engine writes what the local engine writes, byte for byte; an actor killed mid-run leaves every image
written once and nothing partial; resume and unreadable inputs behave as locally."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

ray = pytest.importorskip("ray", reason="needs the [scale] extra (Ray)")

from medcam_fast import make_lesions  # noqa: E402
from medcam_fast.cli.jobs import explain_inputs  # noqa: E402
from medcam_fast.cli.ray_cluster import init_ray  # noqa: E402

pytestmark = [pytest.mark.scale, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: The run's own bookkeeping, which differs between any two runs (hashes of JSON files that hold timings).
_BOOKKEEPING = {"manifest.json", "summary.csv", "summary.json", ".medcam-fast.lock"}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> None:
    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for i, img in enumerate(make_lesions(20, size=64, seed=41).images):
        Image.fromarray(img).save(folder / f"lesion_{i:03d}.png")
    return folder


def _run(inputs: list[str], out: Path, **options) -> int:
    quiet = Console(file=io.StringIO())
    return explain_inputs(inputs, classifier=None, out=out, threads=1, console=quiet, err_console=quiet, **options)


def _outputs(folder: Path) -> dict[str, object]:
    """Every output file's content (a JSON record without its timing), by name."""
    files: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.name in _BOOKKEEPING:
            continue
        if p.suffix == ".json":
            record = json.loads(p.read_text(encoding="utf-8"))
            record.pop("seconds")
            files[p.name] = record
        else:
            files[p.name] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def local_k3(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    assert _run([str(inputs)], out, steps=3, batch_size=4) == 0
    return out


def test_the_ray_engine_writes_the_local_engines_files_byte_for_byte(inputs: Path, local_k3: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "ray"
    assert _run([str(inputs)], out, steps=3, batch_size=3, engine="ray", workers=2) == 0  # other batches
    local, distributed = _outputs(local_k3), _outputs(out)
    assert len(local) == 20 * 5 and local.keys() == distributed.keys()
    assert [k for k in local if local[k] != distributed[k]] == [], _differences(local, distributed)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["images"]) == sorted(p.stem for p in inputs.glob("*.png"))
    assert all(manifest["files"][name] for name in distributed)  # every file listed with its hash


def test_smoothing_reaches_the_actors_and_their_records(inputs: Path, tmp_path: Path) -> None:
    four = [str(p) for p in sorted(inputs.glob("*.png"))[:4]]
    assert _run(four, tmp_path / "local", steps=3, smooth=1.0, batch_size=4) == 0
    assert _run(four, tmp_path / "ray", steps=3, smooth=1.0, batch_size=2, engine="ray", workers=2) == 0
    local, distributed = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert local == distributed
    assert [r["smooth"] for name, r in distributed.items() if name.endswith(".json")] == [1.0] * 4


def test_an_actor_killed_mid_run_leaves_every_image_written_once_and_nothing_partial(
    inputs: Path, local_k3: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "ray"
    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.setdefault(
        "code", _run([str(inputs)], out, steps=3, batch_size=2, engine="ray", workers=2)))
    run.start()
    killed, recorded_then = None, None
    deadline = time.monotonic() + 300
    while run.is_alive() and time.monotonic() < deadline:
        manifest = out / "manifest.json"
        recorded = len(json.loads(manifest.read_text(encoding="utf-8"))["images"]) if manifest.exists() else 0
        actors = _actor_pids()
        if killed is None and recorded >= 2 and actors:
            os.kill(actors[0], signal.SIGKILL)
            killed, recorded_then = actors[0], recorded
        time.sleep(0.02)
    run.join(timeout=300)
    assert killed is not None and recorded_then is not None and recorded_then < 20, "the actor was not killed mid-run"
    assert result.get("code") == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["images"]) == 20  # each image recorded once
    assert _outputs(out) == _outputs(local_k3)  # every file whole, and as the local engine writes it
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def _actor_pids() -> list[int]:
    """Processes of this run's actor pool (Ray titles them ``ray::MapWorker(MapBatches(ExplainActor))…``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"MapBatches(ExplainActor)" in cmdline:
                pids.append(int(entry))
    return pids


def test_resume_skips_what_the_ray_engine_finished_and_an_unreadable_file_fails_alone(
    inputs: Path, tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(inputs.glob("*.png"))[:6]:
        (folder / p.name).write_bytes(p.read_bytes())
    whole = sorted(inputs.glob("*.png"))[7].read_bytes()
    (folder / "broken.png").write_bytes(whole[:100])  # its header reads, its pixels do not: fails in an actor
    out = tmp_path / "out"
    assert _run([str(folder)], out, steps=0, batch_size=4, engine="ray", workers=2) == 5
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    assert len(first) == 6
    assert _run([str(folder)], out, steps=0, batch_size=4, engine="ray", workers=2, resume=True) == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.png")} == first  # nothing redone
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["images"]) == 6 and [f["image"] for f in summary["failures"]] == ["broken"]


def _differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """The first differing file, and which of its record's fields differ (for the failure message)."""
    for name in a:
        if a[name] != b[name]:
            x, y = a[name], b[name]
            if isinstance(x, dict) and isinstance(y, dict):
                return [name, *(f"{k}: {x.get(k)!r} != {y.get(k)!r}" for k in x.keys() | y.keys() if x.get(k) != y.get(k))]
            return [name]
    return []
