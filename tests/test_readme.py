"""The README's first lines and its Python API example, executed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_script

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


def test_the_evaluation_tables_are_what_the_script_prints_from_the_committed_report():
    module = load_script("readme_tables")
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- evaluate-tables:[^>]*-->\n(.*?)<!-- /evaluate-tables -->", text, re.S)
    assert m, "README lost its evaluation tables' markers"
    assert m.group(1).strip() == module.evaluate().strip(), "rerun: python scripts/readme_tables.py evaluate"


@pytest.mark.parametrize("tag, split, smooth", [("explainer-table", "test", 0.0), ("explainer-table-val", "val", 0.0),
                                               ("smooth-table", "test", 1.0)])
def test_the_explainer_tables_are_what_the_script_prints_from_the_committed_results(tag: str, split: str,
                                                                                    smooth: float):
    """It once kept the numbers of explainers that had been replaced while the prose below it described the new
    ones; the validation table is the second reading of the same targets, and must follow the same files, as
    must the table of what smoothed refinement costs."""
    import json

    module = load_script("explainer_quality")
    text = README.read_text(encoding="utf-8")
    flag = ("" if split == "test" else f" --split {split}") + (f" --smooth {smooth:g}" if smooth else "")
    m = re.search(rf"<!-- {tag}: python scripts/explainer_quality.py --sets ([^>]*?){flag} --summary -->\n(.*?)"
                  rf"<!-- /{tag} -->", text, re.S)
    assert m, f"README lost its {tag} markers"
    results = README.parent / "benchmarks" / "results"
    runs = [json.loads((results / f"{module.result_name(s, split)}.json").read_text()) for s in m.group(1).split()]
    table = (module.smoothing_summary(runs, [json.loads((results / f"{module.result_name(s, split, smooth)}.json")
                                                        .read_text()) for s in m.group(1).split()])
             if smooth else module.summary(runs))
    assert m.group(2).strip() == table.strip(), f"rerun: python scripts/explainer_quality.py{flag} --summary"
