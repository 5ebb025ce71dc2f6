"""What explain writes can be trusted and read: user text never becomes markup or a spreadsheet formula,
files get the user's umask, and the output folder's write check never follows a planted link."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcam_fast._io import atomic_write_bytes
from medcam_fast.cli.writers import spreadsheet_safe, write_summary


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a child process: what a user's terminal shows, stderr included."""
    return subprocess.run([sys.executable, "-m", "medcam_fast.cli.main", "explain", *args, "--threads", "1"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["x[/]y.png", "[red]a.png", "[bold]b[/bold].png"])
def test_a_file_name_with_markup_is_printed_as_it_is(tmp_path, name):
    bad = tmp_path / name  # "x[/]y.png" is the file "]y.png" in the folder "x["
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("not an image")
    r = _explain(str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(bad) in r.stderr


def test_the_summary_table_shows_markup_names_literally(tmp_path):
    img = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(img).save(folder / "[red]scan.png")
    r = _explain(str(folder), "--out", str(tmp_path / "out"), "--steps", "0")
    assert r.returncode == 0, r.stderr
    assert "[red]" in r.stdout  # rich would have swallowed it as a style


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_formula_like_cells_become_text(cell):
    assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("scan.png") == "scan.png"


def test_summary_csv_never_holds_a_formula(tmp_path):
    write_summary(tmp_path, [{"image": "=1+1", "p_kept": 0.9}, {"image": "ok", "p_kept": -1.0}], {})
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["image"] == "'=1+1" and rows[1]["image"] == "ok" and rows[1]["p_kept"] == "-1.0"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_the_write_check_never_follows_a_planted_link(tmp_path):
    """The old probe wrote to the predictable `.medcam-write-test-<pid>`: a link planted there made a run
    truncate whatever it pointed to. The check now creates a fresh name exclusively."""
    from medcam_fast.cli.jobs import _writable_folder

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        (out / f".medcam-write-test-{pid}").symlink_to(victim)
    _writable_folder(out)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == []


# ------------------------------------------------------------------------------------ nothing lost

def _pngs(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


def _records(out: Path) -> dict[str, dict]:
    import json

    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")
            if p.name not in ("summary.json", "manifest.json")}


def test_equal_stems_never_share_outputs_and_each_record_names_its_source(tmp_path):
    """a-1.png, a.jpg and a.png once gave stems a-1, a, a-1: one explanation was overwritten."""
    import hashlib

    files = _pngs(tmp_path / "in", ["a-1.png", "a.jpg", "a.png", "sub/a.png", "B.png", "b.png", "summary.png",
                                    "manifest.png"])
    r = _explain(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--steps", "0")
    assert r.returncode == 0, r.stderr
    recs = _records(tmp_path / "out")
    assert len(recs) == len(files) and sorted(r["source"] for r in recs.values()) == sorted(map(str, files))
    for rec in recs.values():
        assert rec["source_sha256"] == hashlib.sha256(Path(rec["source"]).read_bytes()).hexdigest()
    assert "a-1" in recs  # a unique stem keeps its name
    assert not {"summary", "manifest"} & set(recs)  # the run's own names are never an image's
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        assert len({row["image"] for row in csv.DictReader(f)}) == len(files)


def test_a_name_at_the_file_system_limit_is_capped(tmp_path):
    long = "x" * 245 + ".png"  # 249 characters, legal; its outputs would not be
    _pngs(tmp_path / "in", [long])
    r = _explain(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--steps", "0")
    assert r.returncode == 0, r.stderr
    (stem,) = _records(tmp_path / "out")
    assert len(stem) <= 100 and stem.startswith("x" * 80)


def test_resume_and_overwrite_never_replace_a_file_medcam_fast_did_not_write(tmp_path):
    _pngs(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_mask.png").write_bytes(b"the user's own file")
    for flag in ("--resume", "--overwrite"):
        r = _explain(str(tmp_path / "in"), "--out", str(out), "--steps", "0", flag)
        assert r.returncode == 2 and "a_mask.png" in r.stderr and "not written by medcam-fast" in r.stderr
        assert (out / "a_mask.png").read_bytes() == b"the user's own file"


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    from medcam_fast.cli.runfolder import RunFolder

    _pngs(tmp_path / "in", ["a.png"])
    with RunFolder(tmp_path / "out"):  # a run in progress
        r = _explain(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--steps", "0")
    assert r.returncode == 2 and "another medcam-fast run" in r.stderr
    assert not (tmp_path / "out" / "a.json").exists()
    r = _explain(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--steps", "0")
    assert r.returncode == 0, r.stderr  # the lock dies with its holder


def test_the_summary_after_resume_describes_the_whole_run(tmp_path):
    _pngs(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert _explain(str(tmp_path / "in"), "--out", str(out), "--steps", "0").returncode == 0
    first = (out / "a_mask.png").read_bytes()
    _pngs(tmp_path / "in", ["c.png", "d.png"], seed=1)
    r = _explain(str(tmp_path / "in"), "--out", str(out), "--steps", "0", "--resume")
    assert r.returncode == 0, r.stderr
    assert "2 explained, 2 skipped" in " ".join(r.stdout.split())
    with open(out / "summary.csv", newline="") as f:
        assert sorted(row["image"] for row in csv.DictReader(f)) == ["a", "b", "c", "d"]
    assert (out / "a_mask.png").read_bytes() == first
    (out / "b_mask.png").write_bytes(b"damaged")  # a listed file whose hash no longer matches is redone
    r = _explain(str(tmp_path / "in"), "--out", str(out), "--steps", "0", "--resume")
    assert "1 explained, 3 skipped" in " ".join(r.stdout.split())


def test_images_are_decoded_batch_by_batch_not_all_before_the_first(tmp_path, monkeypatch):
    """Ten 7000x7000 PNGs reached 2.7 GB because every input was decoded and held before the first was
    explained; now only headers are read up front and each batch decodes its own images."""
    from typer.testing import CliRunner

    import medcam_fast.cli.jobs as jobs
    from medcam_fast.cli.main import app
    from medcam_fast.explain import MedCAM

    _pngs(tmp_path / "in", [f"i{k}.png" for k in range(5)])
    events: list[str] = []
    decode, call = jobs.decode, MedCAM.__call__  # every input file goes through data.images.decode
    monkeypatch.setattr(jobs, "decode", lambda *a, **k: (events.append("decode"), decode(*a, **k))[1])
    monkeypatch.setattr(MedCAM, "__call__", lambda self, x, **k: (events.append(f"explain {len(x)}"),
                                                                  call(self, x, **k))[1])
    r = CliRunner().invoke(app, ["explain", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--steps", "0",
                                 "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert events == ["decode", "decode", "explain 2", "decode", "decode", "explain 2", "decode", "explain 1"]


def test_an_image_that_fails_to_decode_mid_run_is_reported_and_the_rest_written(tmp_path):
    files = _pngs(tmp_path / "in", ["a.png", "b.png", "c.png"])
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # a valid header, truncated pixels: found only when decoded
    r = _explain(str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--steps", "0", "--batch-size", "1")
    assert r.returncode == 5 and "b.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(_records(tmp_path / "o")) == ["a", "c"]
    r = _explain(str(files[1]), "--out", str(tmp_path / "o2"), "--steps", "0")
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()


def test_a_full_disk_stops_with_one_line_keeps_what_is_whole_and_resume_goes_on(tmp_path):
    """A file-size limit (EFBIG, as a full disk gives ENOSPC) crashed with a traceback and no summary."""
    import resource
    import signal

    files = _pngs(tmp_path / "in", [f"i{k}.png" for k in range(6)])
    out = tmp_path / "out"

    def small_files() -> None:  # in the child: writes past 3 kB fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # the manifest outgrows it after a batch or two

    r = subprocess.run([sys.executable, "-m", "medcam_fast.cli.main", "explain", str(tmp_path / "in"), "--out",
                        str(out), "--steps", "0", "--batch-size", "2", "--threads", "1", "--format", "json"],
                       capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write the outputs" in errors[0] and "Traceback" not in r.stderr
    assert not list(out.glob(".*.tmp"))  # nothing half-written
    assert 0 < len(_records(out)) < len(files)  # the first batches are whole
    r = _explain(str(tmp_path / "in"), "--out", str(out), "--steps", "0", "--resume", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert sorted(_records(out)) == sorted(p.stem for p in files)


def test_the_same_image_gets_the_same_mask_and_numbers_at_any_batch_size(tmp_path):
    """Robustness draws came from one generator per batch, so a mask depended on its batch neighbours; each
    image now draws from its own (seeded by its pixels). Then float32 rounding of batched kernels, which Adam's
    first steps (about lr·sign(g)) turned into flipped pixels where a gradient is ~0, still moved 10 of 49,152
    pixels between batch sizes 1 and 12; MedCAM now computes in chunks of a fixed size whatever --batch-size
    is: masks, soft masks and every number of the records are identical at batch sizes 1, 7 and 32."""
    from medcam_fast import make_lesions

    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(make_lesions(12, size=64, seed=4).images):
        Image.fromarray(img).save(folder / f"l{i:02d}.png")
    runs = {}
    for batch in ("1", "7", "32"):
        out = tmp_path / f"o{batch}"
        r = _explain(str(folder), "--out", str(out), "--steps", "5", "--batch-size", batch, "--format", "png,npy,json")
        assert r.returncode == 0, r.stderr
        runs[batch] = out
    masks = sorted(runs["1"].glob("*_mask.png"))
    assert len(masks) == 12
    for batch in ("7", "32"):
        for p in sorted(runs["1"].iterdir()):
            if p.suffix in (".png", ".npy"):
                assert (runs[batch] / p.name).read_bytes() == p.read_bytes(), (batch, p.name)
        alone, batched = _records(runs["1"]), _records(runs[batch])
        assert sorted(alone) == sorted(batched)
        for stem, rec in alone.items():
            for key in ("p_original", "p_kept", "p_removed", "area", "loss", "predicted", "target"):
                assert batched[stem][key] == rec[key], (batch, stem, key)


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill explain once part of the run is written, resume it, and compare with a run never interrupted:
    every image file identical byte for byte, every record equal but for its timing."""
    import json
    import signal
    import time

    from medcam_fast import make_lesions

    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(make_lesions(48, size=64, seed=8).images):
        Image.fromarray(img).save(folder / f"l{i:02d}.png")
    args = [sys.executable, "-m", "medcam_fast.cli.main", "explain", str(folder), "--steps", "0", "--batch-size",
            "2", "--threads", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert subprocess.run([*args, "--out", str(whole)], capture_output=True, timeout=300).returncode == 0
    proc = subprocess.Popen([*args, "--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cut.glob("*_mask.png"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list(cut.glob("*_mask.png"))) < 48, "the run finished before it could be killed"
    (cut / ".l47_mask.png.abcd1234.tmp").write_bytes(b"half")  # as a kill mid-write leaves
    r = subprocess.run([*args, "--out", str(cut), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not list(cut.glob(".*.tmp"))
    for p in sorted(whole.iterdir()):
        if p.suffix in (".png", ".npy"):
            assert (cut / p.name).read_bytes() == p.read_bytes(), p.name
    for stem, rec in _records(whole).items():
        other = _records(cut)[stem]
        assert {k: v for k, v in rec.items() if k != "seconds"} == {k: v for k, v in other.items() if k != "seconds"}
    rows = json.loads((cut / "summary.json").read_text())["images"]
    assert sorted(row["image"] for row in rows) == sorted(_records(whole))


def test_the_summary_table_says_how_many_images_kept_their_first_guess():
    from medcam_fast.cli.jobs import _summary_table

    base = {"predicted_name": "lesion", "target_name": "lesion", "p_original": 0.9, "p_kept": 0.9, "p_removed": 0.1,
            "area": 0.1, "seconds": 0.1, "steps": 10}
    rows = [{**base, "image": "a", "refined": True}, {**base, "image": "b", "refined": False},
            {**base, "image": "c", "refined": True}, {**base, "image": "d"}]  # d: a resumed run's old record
    assert _summary_table(rows, "t").caption.startswith("1 of 3 kept their first guess")
    assert _summary_table([r for r in rows if r["image"] != "b"], "t").caption is None
    zero = [{**r, "steps": 0, "refined": False} for r in rows]  # no steps: every mask is a first guess, nothing kept
    assert _summary_table(zero, "t").caption is None
