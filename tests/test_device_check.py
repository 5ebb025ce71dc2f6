"""``scripts/device_check.py``, the prepared GPU check, run on the CPU: it must work before a GPU is lent."""

from __future__ import annotations

import json

from conftest import load_script


def test_on_the_cpu_the_device_check_finds_no_difference_and_names_the_provider_it_used(tmp_path):
    import onnxruntime as ort

    code = load_script("device_check").main(["--out", str(tmp_path), "--device", "cpu", "--models", "resnet18", "--size", "32",
                           "--batches", "1", "--steps", "1", "--repeats", "1"])
    assert code == 0
    record = json.loads((tmp_path / "device_check.json").read_text(encoding="utf-8"))
    assert record["providers"]["used"] in ort.get_available_providers()
    parity = record["models"][0]["parity"]
    assert parity["K=0"]["max_abs_logits"] == 0.0 and parity["K=3"]["binary_agreement"] == 1.0
    onnx = next(v for k, v in parity.items() if k.startswith("onnx"))
    assert onnx["max_abs_p_kept"] < 1e-4  # the graph and torch agree on the verdict
    methods = {t["method"] for t in record["models"][0]["timings"]}
    assert {"first guess (torch)", "first guess + 1 steps"} <= methods
    assert "| K=3 | 0.0 | 1.0 |" in (tmp_path / "device_check.md").read_text(encoding="utf-8")
