"""`medcam-fast bench`: each benchmark on tiny inputs — its result schema, that it measures through MedCAM,
that its medians are medians of the samples it keeps and that its ratios are positive and finite."""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medcam_fast import make_lesions
from medcam_fast.errors import UsageError
from medcam_fast.evaluation import baselines
from medcam_fast.evaluation.bench import (
    BenchSet,
    bench_per_image,
    bench_quality,
    bench_speed,
    per_image_markdown,
    quality_markdown,
    speed_markdown,
)
from medcam_fast.explain import MedCAM
from medcam_fast.explainer.bundle import save_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train
from medcam_fast.method.fit import FitConfig
from medcam_fast.method.losses import LossWeights
from medcam_fast.types import InnerMode

VERDICT = {"p_original", "p_kept", "p_removed", "area", "loss"}
TINY = MetaConfig(inner_steps=0, outer_steps=2, meta_batch=2, width=4, depth=2)


@pytest.fixture(scope="module")
def models(lesion_bundle, lesion_bundle_dir, tmp_path_factory) -> Path:
    """``models/lesions/{classifier,explainer,unet}``: an amortized U-Net explainer in ``unet`` and a
    logits-MAML decoder in ``explainer``, both tiny."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(lesion_bundle_dir, root / "lesions" / "classifier")
    images = make_lesions(8, size=32, seed=5).images
    unet = TINY.with_(architecture="unet", inner_mode=InnerMode.WEIGHTS, first_order=False)
    save_explainer(meta_train(lesion_bundle, images, unet), root / "lesions" / "unet")
    maml = TINY.with_(inner_steps=1, inner_mode=InnerMode.LOGITS, first_order=True)
    save_explainer(meta_train(lesion_bundle, images, maml), root / "lesions" / "explainer")
    return root


@pytest.fixture(scope="module")
def sets():
    return {"lesions": make_lesions(10, size=32, seed=7)}


def _under(models: Path, sets) -> dict[str, BenchSet]:
    """The ``models/<name>/`` convention for each set."""
    return {name: BenchSet.under(models, name, images) for name, images in sets.items()}


def _is_median(value: float, samples: list[float]) -> bool:
    return bool(samples) and value == statistics.median(samples)


def _positive_finite(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_per_image_bench_reports_the_fits_verdict_as_medcam_gives_it(models, sets, tmp_path):
    res = bench_per_image(_under(models, sets), n=6, steps=3, batch_size=2, out_dir=tmp_path)
    assert set(res) == {"config", "n", "machine", "datasets"} and res["config"]["steps"] == 3 and res["n"] == 6
    row = res["datasets"]["lesions"]
    assert set(row) == VERDICT | {"drop", "seconds_per_image_median", "seconds_samples", "accuracy_on_these",
                                  "classifier_test_accuracy", "pass"}
    assert all(0.0 <= row[k] <= 1.0 for k in ("p_original", "p_kept", "p_removed", "area", "accuracy_on_these"))
    assert row["drop"] == pytest.approx(row["p_original"] - row["p_removed"])
    assert len(row["seconds_samples"]) == 6 and all(_positive_finite(s) for s in row["seconds_samples"])
    assert _is_median(row["seconds_per_image_median"], row["seconds_samples"])
    assert row["pass"] == {"p_kept>=p_original": row["p_kept"] >= row["p_original"], "area<=0.25": row["area"] <= 0.25,
                           "drop>=0.3": row["drop"] >= 0.3}
    # the numbers are those a user gets from MedCAM without an explainer (the fit is seeded, images independent)
    x = torch.from_numpy(MedCAM(models / "lesions" / "classifier").preprocess(sets["lesions"].images[:6]))
    user = MedCAM(models / "lesions" / "classifier", fit_config=FitConfig(steps=3))
    expected = [user(x[s : s + 2]) for s in (0, 2, 4)]
    assert row["p_kept"] == pytest.approx(float(np.concatenate([e.p_kept for e in expected]).mean()), abs=1e-6)
    assert row["area"] == pytest.approx(float(np.concatenate([e.area for e in expected]).mean()), abs=1e-6)
    assert "| lesions |" in (tmp_path / "per_image.md").read_text() == per_image_markdown(res)
    assert (tmp_path / "per_image.json").is_file()


def test_quality_bench_has_a_curve_per_explainer_and_mode_and_one_for_the_fit(models, sets, tmp_path):
    lines: list[str] = []
    res = bench_quality(_under(models, sets), n=4, ks=(0, 2), fit_steps=(1, 3), modes=("logits", "weights"), weights_ks=(0, 1),
                        batch_size=2, progress=lines.append, out_dir=tmp_path)
    r = res["datasets"]["lesions"]
    curves = r["curves"]
    # the weights loop adapts a U-Net only: the decoder has no weights curve
    assert set(curves) == {"maml-logits+logits", "amortized+logits", "amortized+weights", "per-image fit"}
    assert [p["steps"] for p in curves["amortized+logits"]] == [0, 2]
    assert [p["steps"] for p in curves["amortized+weights"]] == [0, 1]
    assert [p["steps"] for p in curves["per-image fit"]] == [1, 3]
    for pts in curves.values():
        for p in pts:
            assert set(p) == VERDICT | {"seconds_per_image", "seconds_samples", "steps"}
            assert all(0.0 <= p[k] <= 1.0 for k in ("p_original", "p_kept", "p_removed", "area"))
            assert len(p["seconds_samples"]) == 4 and _is_median(p["seconds_per_image"], p["seconds_samples"])
            assert _positive_finite(p["seconds_per_image"]) and math.isfinite(p["loss"])
    # K = 0 is the first guess whatever the mode: the weights curve reuses the logits curve's point
    assert {**curves["amortized+weights"][0], "steps": 0} == curves["amortized+logits"][0]
    oc = r["other_class"]
    assert set(oc) == {"steps", "mode", "p_original", "p_kept", "raised_fraction"} and oc["mode"] == "logits"
    assert 0.0 <= oc["raised_fraction"] <= 1.0 and set(r["explainer_training"]) == {"amortized", "maml-logits"}
    assert len(lines) == 2 + 2 + 1 + 2  # each measured (explainer, mode, K) and fit point, K=0 weights reused
    text = quality_markdown(res)
    assert text == (tmp_path / "quality_lesions.md").read_text() and "speed-up vs fit-3" in text
    speedups = [float(cell.strip()[:-1]) for line in text.splitlines() if line.startswith("| ")
                and not line.startswith("| method") for cell in [line.split("|")[-2]]]
    assert speedups and all(math.isfinite(v) and v > 0 for v in speedups)
    with open(tmp_path / "quality_lesions.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_timed_call_is_an_explainers_first(models, sets, monkeypatch):
    """Each explainer's (and the fit's) first call was timed: its lazy set-up (an ONNX session's first run,
    first kernels) made K = 0 or 1 the slowest point and the plotted curve loop back. Now every MedCAM the
    benchmarks build is called once before any timed call: no first call happens inside a timed one."""
    from medcam_fast.evaluation import bench

    timing = [False]
    first_calls: list[bool] = []  # for each MedCAM: was its first call timed?
    real = bench.explain_in_chunks

    def timed(*args, **kwargs):
        timing[0] = True
        try:
            return real(*args, **kwargs)
        finally:
            timing[0] = False

    class Recorded(MedCAM):
        def __call__(self, *args, **kwargs):
            if not getattr(self, "_called", False):
                self._called = True
                first_calls.append(timing[0])
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(bench, "MedCAM", Recorded)
    monkeypatch.setattr(bench, "explain_in_chunks", timed)
    bench_quality(_under(models, sets), n=4, ks=(0, 1), fit_steps=(1,), modes=("logits",), batch_size=2)
    assert len(first_calls) == 4 and not any(first_calls)  # two explainers' curves, the fit, the other class
    first_calls.clear()
    bench_per_image(_under(models, sets), n=4, steps=1, batch_size=2)
    assert first_calls == [False]


def test_quality_bench_refuses_explainers_trained_on_another_loss(models, sets, lesion_bundle, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(models, root)
    other = meta_train(lesion_bundle, make_lesions(4, size=32, seed=5).images,
                       TINY.with_(weights=LossWeights(area=0.5)))
    shutil.rmtree(root / "lesions" / "unet")
    save_explainer(other, root / "lesions" / "unet")
    with pytest.raises(UsageError, match="not comparable"):
        bench_quality(_under(root, sets), n=2, ks=(0,), fit_steps=(1,), modes=("logits",), batch_size=2)


def _fake_grad_cam(monkeypatch):
    """Grad-CAM's registry entry replaced by a cheap map, and reported as installed."""

    def fake(classifier, x, target, baseline, settings):
        return classifier.logits(x)[:, :1, None].expand(-1, *x.shape[-2:]).detach()

    monkeypatch.setitem(baselines.METHODS, "gradcam", baselines.MethodSpec("gradcam", "Grad-CAM", fake, "grad-cam"))
    real = baselines.available_peers
    monkeypatch.setattr(baselines, "available_peers", lambda: {**real(), "gradcam": None})


@pytest.mark.parametrize("with_grad_cam", [True, False])
def test_speed_bench_rows_are_medians_of_their_samples_with_ratios_to_grad_cam(monkeypatch, tmp_path, with_grad_cam):
    if with_grad_cam:
        _fake_grad_cam(monkeypatch)
    elif baselines.available_peers()["gradcam"] is None:
        pytest.skip("grad-cam is installed here: the real one is timed in the other case's place")
    threads = torch.get_num_threads()
    lines: list[str] = []
    res = bench_speed(models=(("resnet18", (32,)), ("timm:no_such_model", (32,))), batches=(1, 2),
                      refine_steps=(1,), fit_steps=6, fit_measured_steps=2, repeats=3, unet=with_grad_cam,
                      progress=lines.append, out_dir=tmp_path)
    assert torch.get_num_threads() == threads  # the one-thread setting is undone
    assert set(res) == {"machine", "repeats", "row_budget_s", "rows", "models", "summary", "notes", "targets",
                        "grad_cam"} and res["repeats"] == 3
    assert [m["classifier"] for m in res["models"]] == ["resnet18 (built-in)"]
    assert res["models"][0]["decoder"]["cam_tap"] == "layer4"
    assert res["notes"][0].startswith("timm:no_such_model at 32 px skipped")  # timm missing or no such model
    methods = {b: [r["method"] for r in res["rows"] if r["batch"] == b] for b in (1, 2)}
    base = ["decoder first guess (torch)", "decoder first guess, all classes (torch)",
            "decoder graph, all classes + verdict (onnx)", *(["u-net first guess (onnx, 0.1)"] if with_grad_cam else []),
            "first guess + 1 steps"]
    cam = ["grad-cam"] if with_grad_cam else []
    assert methods == {1: [*base, "per-image fit 6 steps", *cam], 2: [*base, *cam]}
    for r in res["rows"]:
        assert set(r) == {"classifier", "size", "batch", "method", "seconds_per_image", "seconds_samples",
                          "ratio_to_grad_cam"}
        assert 1 <= len(r["seconds_samples"]) <= 3 and all(_positive_finite(s) for s in r["seconds_samples"])
        assert r["seconds_per_image"] == pytest.approx(statistics.median(r["seconds_samples"]) / r["batch"])
        if with_grad_cam:
            ref = next(g for g in res["rows"] if g["batch"] == r["batch"] and g["method"] == "grad-cam")
            assert _positive_finite(r["ratio_to_grad_cam"])
            assert r["ratio_to_grad_cam"] == pytest.approx(r["seconds_per_image"] / ref["seconds_per_image"])
        else:
            assert r["ratio_to_grad_cam"] is None
    sec = {(r["batch"], r["method"]): r["seconds_per_image"] for r in res["rows"]}
    (summary,) = res["summary"]
    assert summary["all_to_one_class"]["2"] == pytest.approx(sec[2, base[1]] / sec[2, base[0]])
    assert summary["fit_speedup"]["1"] == pytest.approx(sec[1, "per-image fit 6 steps"] / sec[1, "first guess + 1 steps"])
    if with_grad_cam:
        assert summary["first_guess_to_grad_cam"]["1"] == pytest.approx(sec[1, base[0]] / sec[1, "grad-cam"])
    else:
        assert summary["first_guess_to_grad_cam"] == {"1": None, "2": None}
    assert res["grad_cam"] == "installed" if with_grad_cam else res["grad_cam"].startswith("not installed")
    assert (tmp_path / "speed.md").read_text() == speed_markdown(res)
    assert any(line.startswith("resnet18 (built-in) 32px batch 2: first guess + 1 steps") for line in lines)


def test_speed_bench_caps_a_rows_repeats_at_its_budget():
    from medcam_fast.evaluation.bench import _times

    calls: list[int] = []
    slow = _times(lambda: (calls.append(1), time.sleep(0.02)), 10, budget=0.01)
    assert len(slow) == 1 and len(calls) == 1  # a warm-up over the budget is the only sample
    calls.clear()
    capped = _times(lambda: (calls.append(1), time.sleep(0.01)), 10, scale=2.0, budget=0.035)
    assert 1 <= len(capped) <= 3 and len(calls) == len(capped) + 1 and all(t >= 0.02 for t in capped)
