"""The README's first lines and its Python API example, executed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_lines_give_the_demo_and_test_commands():
    head = README.read_text(encoding="utf-8").splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_api_example_runs():
    from medcam_fast._assets import DEMO_DIR

    if not (DEMO_DIR / "explainer" / "explainer.json").exists():
        pytest.fail("the shipped demo explainer is missing: run `make demo-bundle`")
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its API example"
    exec(compile(m.group(1), str(README), "exec"), {})
