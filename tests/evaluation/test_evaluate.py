"""`medcam-fast evaluate`: the report over medcam-fast's methods and the peers, resume, and its CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medcam_fast.data.lesions import make_lesions
from medcam_fast.evaluation._peers import INSTALL_HINT
from medcam_fast.evaluation.baselines import available_peers
from medcam_fast.evaluation.harness import EvalConfig, evaluate_suite
from medcam_fast.evaluation.report import write_report
from medcam_fast.explainer.bundle import save_explainer
from medcam_fast.explainer.meta import MetaConfig, meta_train

CFG = EvalConfig(methods=("first-guess", "refined", "fit", "gradcam"), n=6, sanity_n=2, sanity_stages=2,
                 refine_steps=3, fit_steps=8, curve_steps=8, road_n=2, batch_size=4)


@pytest.fixture(scope="module")
def explainer_dir(lesion_bundle, tmp_path_factory) -> Path:
    images = make_lesions(24, size=32, seed=5).images
    ex = meta_train(lesion_bundle, images, MetaConfig(inner_steps=0, outer_steps=4, meta_batch=4, width=4, depth=2))
    return save_explainer(ex, tmp_path_factory.mktemp("explainer"))


@pytest.fixture(scope="module")
def lesions():
    return make_lesions(12, size=48, seed=11)  # not the classifier's 32 px: masks must follow the resize


@pytest.fixture(scope="module")
def report(lesion_bundle_dir, explainer_dir, lesions, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    labels: list[str] = []
    ev = evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)], CFG, out, progress=labels.append)
    written = {p.name for p in out.rglob("*") if p.is_file()}
    write_report(ev, out)
    return out, ev.results, labels, written


def test_measuring_writes_only_its_cache_and_the_report_is_written_separately(report):
    out, _, _, written = report
    assert written and all(name.endswith((".json", ".npz")) and name != "results.json" for name in written)
    assert not {"report.md", "results.json", "grid_lesions.png"} & written
    assert (out / "report.md").is_file() and (out / "results.json").is_file()


def test_every_method_is_scored_with_the_same_metrics(report):
    out, res, _, _ = report
    ds = res["datasets"]["lesions"]
    assert ds["n"] == 6 and ds["localization"]
    for m in ("first-guess", "refined", "fit"):
        r = ds["methods"][m]
        assert set(r["preservation"]) == {"0.05", "0.1", "0.2", "0.3"}
        for v in [*r["preservation"].values(), r["deletion_auc"], r["insertion_auc"], r["pointing"], r["iou"]]:
            assert 0.0 <= v <= 1.0
        assert set(r["binary"]) == {"p_kept", "p_removed", "area"}
        assert 0.0 < r["binary"]["area"] < 1.0 and 0.0 <= r["binary"]["p_kept"] <= 1.0
        assert r["seconds_per_image"] > 0 and len(r["sanity"]["stages"]) == 2
        assert len(r["deletion_curve"]) == CFG.curve_steps + 1
    assert ds["methods"]["first-guess"]["runtime"] == "torch"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["datasets"]["lesions"]["methods"]["fit"]["iou"] == ds["methods"]["fit"]["iou"]


def test_localization_is_scored_only_where_the_mask_is_the_evidence_for_the_explained_class(report, lesion_bundle,
                                                                                           lesions):
    from medcam_fast.evaluation.harness import _pick

    ds = report[1]["datasets"]["lesions"]
    sel = _pick(lesions, CFG.n, CFG.seed)
    assert sel.evidence_class == 1
    with torch.no_grad():
        pred = lesion_bundle.frozen().logits(torch.from_numpy(lesion_bundle.preprocess(sel.images))).argmax(1)
    expected = int(((torch.from_numpy(sel.labels) == 1) & (pred == 1)).sum())
    assert ds["localization_n"] == expected and ds["evidence_class"] == "lesion"
    for r in ds["methods"].values():
        assert len(r["per_image"]["iou"]) == expected and len(r["per_image"]["keep"]["0.1"]) == CFG.n
    assert f"on the {expected} images of class 'lesion'" in (report[0] / "report.md").read_text()


def test_the_first_guess_ignores_the_classifier_so_randomizing_it_changes_nothing(report):
    ds = report[1]["datasets"]["lesions"]
    assert all(s["spearman"] == pytest.approx(1.0) for s in ds["methods"]["first-guess"]["sanity"]["stages"])
    assert ds["methods"]["fit"]["sanity"]["final"] < 0.99  # the fit does look at the (randomized) classifier


def test_a_missing_peer_is_reported_skipped_with_the_install_command_never_as_zeros(report):
    out, res, _, _ = report
    ds = res["datasets"]["lesions"]
    if available_peers()["gradcam"] is None:
        r = ds["methods"]["gradcam"]
        assert r["label"] == "Grad-CAM" and np.isfinite(r["insertion_auc"]) and "road" in r
    else:
        assert "gradcam" not in ds["methods"] and INSTALL_HINT in ds["skipped"]["gradcam"]
        text = (out / "report.md").read_text()
        assert "Skipped: gradcam" in text and INSTALL_HINT in text


def test_report_has_a_row_per_method_and_the_figures(report):
    out, res, _, _ = report
    text = (out / "report.md").read_text()
    for r in res["datasets"]["lesions"]["methods"].values():
        assert f"| {r['label']} |" in text
    from PIL import Image

    for name in ("grid_lesions.png", "metrics_lesions.png"):
        with Image.open(out / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_resume_reuses_finished_methods_and_recomputes_changed_settings(report, lesion_bundle_dir, explainer_dir,
                                                                          lesions):
    out, res, _, _ = report
    labels: list[str] = []
    again = evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)], CFG.with_(methods=("fit",)), out,
                           resume=True, progress=labels.append).results
    assert labels == ["lesions: fit reused"]
    assert again["datasets"]["lesions"]["methods"]["fit"] == res["datasets"]["lesions"]["methods"]["fit"]
    labels.clear()
    evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)],
                   CFG.with_(methods=("first-guess",), sanity_n=0, n=4), out, resume=True, progress=labels.append)
    assert labels == ["lesions: first-guess"]


def test_cli_refuses_to_replace_a_report_and_rejects_unknown_methods(report, lesion_bundle_dir, explainer_dir):
    from medcam_fast.cli.main import app

    out = report[0]
    runner = CliRunner()
    before = (out / "results.json").read_bytes()
    r = runner.invoke(app, ["evaluate", "--classifier", str(lesion_bundle_dir), "--explainer", str(explainer_dir),
                            "--data", "lesions", "--out", str(out), "--n", "2"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "results.json").read_bytes() == before
    r = runner.invoke(app, ["evaluate", "--classifier", str(lesion_bundle_dir), "--data", "lesions",
                            "--methods", "gradcam,magic", "--out", str(out / "x")])
    assert r.exit_code == 2 and "unknown method 'magic'" in r.output


def test_resume_adds_road_to_methods_computed_without_grad_cam(lesion_bundle_dir, explainer_dir, lesions, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    spec = [("lesions", lesion_bundle_dir, explainer_dir, lesions)]
    cfg = CFG.with_(methods=("first-guess",), sanity_n=0, road_n=0)
    first = evaluate_suite(spec, cfg, tmp_path).results
    assert "road" not in first["datasets"]["lesions"]["methods"]["first-guess"]
    labels: list[str] = []
    again = evaluate_suite(spec, cfg.with_(road_n=2), tmp_path, resume=True, progress=labels.append).results
    assert labels == ["lesions: first-guess reused"]
    road = again["datasets"]["lesions"]["methods"]["first-guess"]["road"]
    assert set(road) == {"morf", "lerf", "combined"} and all(np.isfinite(v) for v in road.values())


def test_resume_reruns_only_the_methods_a_change_touches(lesion_bundle, lesion_bundle_dir, lesions, tmp_path):
    images = make_lesions(24, size=32, seed=5).images
    cfg = MetaConfig(inner_steps=0, outer_steps=2, meta_batch=4, width=4, depth=2)
    ex_a = save_explainer(meta_train(lesion_bundle, images, cfg), tmp_path / "a")
    ex_b = save_explainer(meta_train(lesion_bundle, images, cfg.with_(seed=1)), tmp_path / "b")
    run = CFG.with_(methods=("first-guess", "refined", "fit"), sanity_n=0, road_n=0, n=4)
    out = tmp_path / "report"
    evaluate_suite([("lesions", lesion_bundle_dir, ex_a, lesions)], run, out)
    labels: list[str] = []
    evaluate_suite([("lesions", lesion_bundle_dir, ex_b, lesions)], run, out, resume=True, progress=labels.append)
    assert labels == ["lesions: first-guess", "lesions: refined", "lesions: fit reused"]  # same loss weights
    labels.clear()
    evaluate_suite([("lesions", lesion_bundle_dir, ex_b, lesions)], run.with_(refine_steps=1), out, resume=True,
                   progress=labels.append)
    assert labels == ["lesions: first-guess reused", "lesions: refined", "lesions: fit reused"]


def test_paired_comparison_against_the_best_peer_and_rescoring_of_old_caches(lesion_bundle_dir, explainer_dir, lesions,
                                                                               tmp_path):
    spec = [("lesions", lesion_bundle_dir, explainer_dir, lesions)]
    cfg = CFG.with_(methods=("first-guess", "rise", "extremal"), sanity_n=0, road_n=0, rise_masks=40,
                    extremal_steps=4)
    ev = evaluate_suite(spec, cfg, tmp_path)
    write_report(ev, tmp_path)
    ds = ev.results["datasets"]["lesions"]
    ours, rise = ds["methods"]["first-guess"], ds["methods"]["rise"]
    assert set(ds["paired"]) == {"keep/0.1", "insertion_auc", "iou"}
    for path, mean_key in (("insertion_auc", "insertion_auc"), ("iou", "iou")):
        p = ds["paired"][path]
        best = max(("rise", "extremal"), key=lambda m: ds["methods"][m][mean_key])
        assert p["against"] == best
        d = p["methods"]["first-guess"]
        assert d["n"] == (ds["localization_n"] if path == "iou" else 6) and d["low"] <= d["mean"] <= d["high"]
        assert d["mean"] == pytest.approx(ours[mean_key] - ds["methods"][best][mean_key], abs=1e-5)
        assert d["wins"] == sum(a > b for a, b in zip(ours["per_image"][path], ds["methods"][best]["per_image"][path],
                                                       strict=True))
    assert len(rise["per_image"]["keep"]["0.1"]) == 6
    assert "Δ vs" in (tmp_path / "report.md").read_text()
    # a cache written before per-image scores were kept is scored again from its maps, not recomputed
    cached = tmp_path / "datasets" / "lesions" / "rise.json"
    saved = json.loads(cached.read_text())
    del saved["result"]["per_image"]
    cached.write_text(json.dumps(saved))
    labels: list[str] = []
    again = evaluate_suite(spec, cfg, tmp_path, resume=True, progress=labels.append).results["datasets"]["lesions"]
    assert labels == ["lesions: first-guess reused", "lesions: rise reused", "lesions: extremal reused"]
    assert again["methods"]["rise"]["per_image"] == rise["per_image"]
    assert again["paired"] == ds["paired"]


def test_medcam_fast_maps_are_the_mask_logits_a_user_gets_from_medcam(lesion_bundle, lesion_bundle_dir, explainer_dir,
                                                                     lesions, tmp_path):
    from medcam_fast.evaluation.harness import _pick
    from medcam_fast.explain import MedCAM
    from medcam_fast.method.fit import FitConfig
    from medcam_fast.method.refine import RefineConfig

    cfg = CFG.with_(methods=("first-guess", "refined", "fit"), sanity_n=0, road_n=0, n=4)
    evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)], cfg, tmp_path)
    x = torch.from_numpy(lesion_bundle.preprocess(_pick(lesions, cfg.n, cfg.seed).images))
    user = MedCAM(lesion_bundle_dir, explainer_dir, refine_config=RefineConfig(steps=cfg.refine_steps, seed=cfg.seed))
    first, refined = user(x, refine_steps=0), user(x)
    fit = MedCAM(lesion_bundle_dir, fit_config=FitConfig(steps=cfg.fit_steps, seed=cfg.seed, weights=user.settings.weights,
                                                         baseline=user.settings.baseline))(x)
    for method, ex in (("first-guess", first), ("refined", refined), ("fit", fit)):
        with np.load(tmp_path / "datasets" / "lesions" / f"{method}.npz") as z:
            assert np.allclose(z["saliency"], ex.logits, atol=1e-5), method
            assert np.array_equal(z["binary"], ex.binary), method
    assert not np.allclose(first.logits, refined.logits)  # refinement did move the first guess


def test_every_peer_runs_through_the_registry_with_the_run_settings(monkeypatch, lesion_bundle_dir, explainer_dir,
                                                                    lesions, tmp_path):
    from medcam_fast.evaluation import baselines
    from medcam_fast.evaluation.baselines import MethodSpec

    seen = []

    def fake(classifier, x, target, baseline, settings):
        seen.append((x.shape[0], settings))
        return x.mean(1)

    for name in ("rise", "extremal"):
        monkeypatch.setitem(baselines.METHODS, name, MethodSpec(name, name.upper(), fake,
                                                                settings=baselines.METHODS[name].settings))
    cfg = CFG.with_(methods=("rise", "extremal"), sanity_n=0, road_n=0, n=6, batch_size=4, rise_masks=7,
                    extremal_steps=5, seed=2)
    ds = evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)], cfg, tmp_path).results
    assert [n for n, _ in seen] == [4, 2, 4, 2]  # every peer in chunks of batch_size, the same way
    assert {s for _, s in seen} == {baselines.PeerSettings(rise_masks=7, extremal_steps=5, seed=2)}
    assert ds["datasets"]["lesions"]["methods"]["rise"]["label"] == "RISE"


def test_the_fit_needs_no_explainer_but_the_first_guess_does(lesion_bundle_dir, lesions, tmp_path):
    from medcam_fast.errors import UsageError

    cfg = CFG.with_(methods=("fit",), sanity_n=0, road_n=0, n=2)
    ds = evaluate_suite([("lesions", lesion_bundle_dir, None, lesions)], cfg, tmp_path).results["datasets"]["lesions"]
    assert ds["explainer"] is None and ds["methods"]["fit"]["binary"]["area"] > 0
    with pytest.raises(UsageError, match="--explainer"):
        evaluate_suite([("lesions", lesion_bundle_dir, None, lesions)], cfg.with_(methods=("refined",)), tmp_path)
