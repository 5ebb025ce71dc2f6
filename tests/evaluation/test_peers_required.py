"""``make test-peers`` runs the peers' tests with MEDCAM_REQUIRE_PEERS=1: there a skip is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPPING = '''
import pytest

@pytest.mark.peers
def test_needs_a_missing_peer():
    pytest.importorskip("no_such_peer_package")

def test_unmarked_skip():
    pytest.skip("not a peer")
'''

MODULE_SKIPPING = '''
import pytest

no_such = pytest.importorskip("no_such_peer_package")

def test_never_collected():
    pass
'''


def _run(folder: Path, require: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MEDCAM_REQUIRE_PEERS"}
    if require:
        env["MEDCAM_REQUIRE_PEERS"] = "1"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "markers=peers: x",
                        "--continue-on-collection-errors", str(folder)], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=120)
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_skipped_peers_test_or_module_fails_only_when_the_peers_are_required(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module_skipping.py").write_text(MODULE_SKIPPING)
    relaxed = _run(tmp_path, require=False)
    assert "3 skipped" in relaxed and "failed" not in relaxed and "error" not in relaxed, relaxed
    strict = _run(tmp_path, require=True)
    # the marked test fails and the module is a collection error (pytest stops there unless told to go on);
    # a skip without the marker (e.g. no CUDA device) stays a skip
    assert "1 failed" in strict and "1 skipped" in strict and "1 error" in strict, strict
