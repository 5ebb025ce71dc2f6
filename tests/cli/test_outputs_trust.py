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
