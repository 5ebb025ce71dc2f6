"""Meta-training killed with SIGKILL mid-run resumes from its last checkpoint to the same result as an
uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from medcam_fast.data.lesions import make_lesions

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _cmd(classifier: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medcam_fast.cli.main", "meta-train", "--classifier", str(classifier),
            "--data", str(data), "--out", str(out), "--one-phase", "--inner-steps", "2", "--first-order", "--outer-steps", "16",
            "--meta-batch", "8", "--width", "4", "--checkpoint-every", "2", "--threads", "1", *extra]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, lesion_bundle_dir):
    ds = make_lesions(40, size=32, seed=4)
    data = tmp_path / "lesions.npz"
    np.savez(data, images=ds.images, labels=ds.labels)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(lesion_bundle_dir, data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads((killed / "checkpoint.json").read_text())["step"]
        except (OSError, ValueError):
            step = 0
        if step >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "meta-training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= step < 16 and not (killed / "explainer.json").exists()

    subprocess.run(_cmd(lesion_bundle_dir, data, killed, "--resume"), env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run(_cmd(lesion_bundle_dir, data, whole), env=env, check=True, capture_output=True)
    a = load_file(str(killed / "weights.safetensors"))
    b = load_file(str(whole / "weights.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
