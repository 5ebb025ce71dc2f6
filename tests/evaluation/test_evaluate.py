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
                 refine_steps=3, fit_steps=8, curve_steps=8, road_n=None, batch_size=4)


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
    from medcam_fast.evaluation.harness import pick_images

    ds = report[1]["datasets"]["lesions"]
    sel = pick_images(lesions, CFG.n, CFG.seed)
    assert sel.evidence_class == 1
    with torch.no_grad():
        pred = lesion_bundle.frozen().logits(torch.from_numpy(lesion_bundle.preprocess(sel.images))).argmax(1)
    expected = int(((torch.from_numpy(sel.labels) == 1) & (pred == 1)).sum())
    assert ds["localization_n"] == expected and ds["evidence_class"] == "lesion"
    for r in ds["methods"].values():
        assert len(r["per_image"]["iou"]) == expected
        assert len(r["per_image"]["fills"]["blur"]["keep"]["0.1"]) == CFG.n
    assert f"on the {expected} images of class 'lesion'" in (report[0] / "report.md").read_text()


def test_the_first_guess_reads_the_classifier_so_randomizing_it_changes_the_map(report):
    ds = report[1]["datasets"]["lesions"]
    assert ds["methods"]["first-guess"]["sanity"]["final"] < 0.99  # the decoder reads the classifier's features
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
    r = runner.invoke(app, ["evaluate", "--classifier", str(lesion_bundle_dir), "--data", "lesions",
                            "--methods", "fit", "--fills", "zero,sand", "--out", str(out / "x")])
    assert r.exit_code == 2 and "unknown fill 'sand'" in r.output and "noisy-linear" in r.output


def test_cli_fills_and_sanity_options_reach_the_config(monkeypatch, lesion_bundle_dir, tmp_path):
    from medcam_fast.cli import jobs
    from medcam_fast.cli.main import app

    seen = {}
    monkeypatch.setattr(jobs, "evaluate_job", lambda data, out, cfg, **kw: seen.setdefault("cfg", cfg))
    r = CliRunner().invoke(app, ["evaluate", "--classifier", str(lesion_bundle_dir), "--data", "lesions",
                                 "--methods", "fit", "--fills", "mean, noisy-linear", "--fc-subsets", "16",
                                 "--monotonicity-groups", "8", "--sanity-n", "40", "--sanity-stages", "5",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    from medcam_fast.evaluation.fills import Fill

    cfg = seen["cfg"]
    assert cfg.fills == (Fill.MEAN, Fill.NOISY_LINEAR) and cfg.fc_subsets == 16 and cfg.monotonicity_groups == 8
    assert (cfg.sanity_n, cfg.sanity_stages, cfg.road_n) == (40, 5, None)
    defaults = EvalConfig()  # the full protocol
    assert (defaults.n, defaults.rise_masks, defaults.extremal_steps, defaults.sanity_n, defaults.sanity_stages,
            defaults.road_n) == (64, 4000, 300, 32, 4, None)
    assert defaults.fills == (Fill.ZERO, Fill.MEAN, Fill.BLUR, Fill.NOISY_LINEAR)


@pytest.mark.peers
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
    ours = ds["methods"]["first-guess"]
    assert set(ds["paired"]) == {"best_peer", "random", "own_area"}
    best = ds["paired"]["best_peer"]
    titles = {c["column"] for c in best["comparisons"]}
    assert {"keep 10% [zero]", "insertion AUC [mean]", "top-k IoU"} <= titles
    for column, path, higher in (("insertion AUC [mean]", ("fills", "mean", "insertion_auc"), True),
                                 ("deletion AUC [zero]", ("fills", "zero", "deletion_auc"), False),
                                 ("top-k IoU", ("iou",), True)):
        c = next(c for c in best["comparisons"] if c["column"] == column)

        def dig(node, path=path):
            for part in path:
                node = node[part]
            return node

        peers = {m: dig(ds["methods"][m]) for m in ("rise", "extremal")}
        assert c["theirs"] == (max if higher else min)(peers, key=peers.__getitem__) and c["ours"] == "first-guess"
        mine, theirs = dig(ours["per_image"]), dig(ds["methods"][c["theirs"]]["per_image"])
        assert c["n"] == len(mine) and c["low"] <= c["mean"] <= c["high"]
        sign = 1 if higher else -1  # Δ > 0 always favours medcam-fast
        assert c["mean"] == pytest.approx(sign * (dig(ours) - peers[c["theirs"]]), abs=1e-5)
        assert c["wins"] == sum(sign * (a - b) > 0 for a, b in zip(mine, theirs, strict=True))
    assert "Image by image against the best peer" in (tmp_path / "report.md").read_text()
    # a cache written before the fills were named is scored again from its maps, not recomputed
    cached = tmp_path / "datasets" / "lesions" / "rise.json"
    saved = json.loads(cached.read_text())
    rise = json.loads(json.dumps(saved["result"]))
    for stale in ("per_image", "scored_with", "fills"):
        del saved["result"][stale]
    cached.write_text(json.dumps(saved))
    labels: list[str] = []
    again = evaluate_suite(spec, cfg, tmp_path, resume=True, progress=labels.append).results["datasets"]["lesions"]
    assert labels == ["lesions: first-guess reused", "lesions: rise reused", "lesions: extremal reused"]
    assert again["methods"]["rise"]["per_image"] == rise["per_image"]
    assert again["paired"] == ds["paired"]


def test_every_map_is_scored_under_every_fill_and_the_headline_leaves_out_the_home_ground(report):
    ds = report[1]["datasets"]["lesions"]
    usable = ["zero", "mean", "blur"] + ([] if available_peers()["road"] else ["noisy-linear"])
    assert ds["fills"] == usable and ds["baseline"] == "blur"
    if available_peers()["road"]:  # no grad-cam: the imputation is skipped with the install command
        assert INSTALL_HINT in ds["fills_skipped"]["noisy-linear"]
    # medcam-fast is trained against the blur: the headline is what nobody was trained on
    assert ds["headline_fills"] == ["zero", "mean"]
    for m, r in ds["methods"].items():
        assert r["trained_fill"] == ("blur" if m in ("first-guess", "refined", "fit") else None)
        assert list(r["fills"]) == usable
        for f in ("zero", "mean", "blur"):
            scores = r["fills"][f]
            assert set(scores["preservation"]) == {"0.05", "0.1", "0.2", "0.3"}
            for key in ("faithfulness_correlation", "monotonicity"):
                v = scores[key]
                assert v is None or -1.0 <= v <= 1.0
                assert len(r["per_image"]["fills"][f][key]) == CFG.n
        # the columns of the report before the fills were named: preservation with the baseline, deletion with
        # black, insertion with the blur
        assert r["preservation"] == r["fills"]["blur"]["preservation"]
        assert r["deletion_auc"] == r["fills"]["zero"]["deletion_auc"]
        assert r["insertion_auc"] == r["fills"]["blur"]["insertion_auc"]


def test_controls_random_map_fill_alone_and_a_blob_of_each_masks_area(report, lesion_bundle, lesions):
    from medcam_fast.evaluation.harness import pick_images
    from medcam_fast.method.masking import make_baseline

    ds = report[1]["datasets"]["lesions"]
    controls = ds["controls"]
    rnd = controls["random"]
    assert rnd["label"] == "random map (control)" and "sanity" not in rnd
    assert set(rnd["fills"]) == set(ds["fills"]) and rnd["trained_fill"] is None  # scored like a method
    assert len(rnd["per_image"]["fills"]["mean"]["faithfulness_correlation"]) == CFG.n
    x = torch.from_numpy(lesion_bundle.preprocess(pick_images(lesions, CFG.n, CFG.seed).images))
    clf = lesion_bundle.frozen()
    with torch.no_grad():
        target = clf.logits(x).argmax(1)
        for f in ("zero", "mean", "blur"):
            b = make_baseline(x, f, lesion_bundle.preprocess.mean, lesion_bundle.preprocess.std)
            p = torch.softmax(clf.logits(b), 1).gather(1, target[:, None])[:, 0]
            assert controls["fill_alone"][f]["per_image"] == pytest.approx(p.tolist(), abs=1e-6)
    for m in ("first-guess", "refined", "fit"):
        table = controls["own_area"][m]
        area = ds["methods"][m]["fills"]["zero"]["binary"]["area"]  # the masks' mean area: 32×32 px
        assert len(table["counts"]) == CFG.n and sum(table["counts"]) / (CFG.n * 32 * 32) == pytest.approx(area)
        others = {"first-guess", "refined", "fit", "random", "blob", "self"} - {m}
        if "gradcam" in ds["methods"]:
            others.add("gradcam")
        assert set(table["rows"]) == others
        for row in table["rows"].values():
            assert set(row["means"]) == set(ds["fills"])


def test_at_the_own_area_every_other_map_keeps_exactly_the_masks_pixel_count(report, lesion_bundle, lesions):
    from medcam_fast.evaluation.harness import pick_images
    from medcam_fast.evaluation.metrics import binary_evidence, top_count_mask
    from medcam_fast.method.masking import make_baseline

    out, res = report[0], report[1]
    table = res["datasets"]["lesions"]["controls"]["own_area"]["refined"]
    x = torch.from_numpy(lesion_bundle.preprocess(pick_images(lesions, CFG.n, CFG.seed).images))
    clf = lesion_bundle.frozen()
    with torch.no_grad():
        target = clf.logits(x).argmax(1)
    with np.load(out / "datasets" / "lesions" / "fit.npz") as z:
        fit_map = torch.from_numpy(z["saliency"])
    chosen = top_count_mask(fit_map, torch.tensor(table["counts"]))
    assert chosen.flatten(1).sum(1).tolist() == table["counts"]
    zero = make_baseline(x, "zero", lesion_bundle.preprocess.mean, lesion_bundle.preprocess.std)
    ev = binary_evidence(clf.logits, x, chosen, target, zero)
    assert table["rows"]["fit"]["per_image"]["zero"]["p_kept"] == pytest.approx(ev["p_kept"].tolist(), abs=1e-5)
    assert table["rows"]["fit"]["per_image"]["zero"]["p_removed"] == pytest.approx(ev["p_removed"].tolist(), abs=1e-5)


def test_each_table_is_one_holm_family_and_the_report_marks_the_survivors(report):
    from medcam_fast.evaluation.metrics import holm

    out, res = report[0], report[1]
    ds = res["datasets"]["lesions"]
    families = [ds["paired"]["best_peer"], ds["paired"]["random"], *ds["paired"]["own_area"].values()]
    assert (ds["paired"]["best_peer"]["m"] > 0) == ("gradcam" in ds["methods"])  # the only peer of the run
    for fam in families:
        assert fam["m"] == len(fam["comparisons"]) and fam["alpha"] == 0.05
        corrected = holm([c["p_value"] for c in fam["comparisons"]])
        assert [c["p_holm"] for c in fam["comparisons"]] == pytest.approx(corrected.adjusted)
        assert [c["holm"] for c in fam["comparisons"]] == corrected.reject
        for c in fam["comparisons"]:
            assert c["p_value"] <= c["p_holm"] <= 1 and 2 / 2 ** c["n"] <= c["p_value"] + 1e-12
    text = (out / "report.md").read_text()
    assert f"{ds['paired']['random']['m']} comparisons, Holm-corrected as one family" in text
    assert "†" in text or not any(c["holm"] for fam in families for c in fam["comparisons"])


def test_the_sanity_check_reports_both_conventions_and_ssim_where_scikit_image_is(report):
    out, res = report[0], report[1]
    ds = res["datasets"]["lesions"]
    for r in ds["methods"].values():
        for stage in r["sanity"]["stages"]:
            assert {"spearman", "spearman_abs", "ssim"} <= set(stage)
            assert stage["spearman_abs"] is None or -1 <= stage["spearman_abs"] <= 1
        assert r["sanity"]["final_abs"] == r["sanity"]["stages"][-1]["spearman_abs"]
        assert r["sanity"]["n"] == CFG.sanity_n
    try:
        import skimage  # noqa: F401
    except ImportError:
        assert ds["sanity_ssim"] and INSTALL_HINT in ds["sanity_ssim"]
        assert all(s["ssim"] is None for r in ds["methods"].values() for s in r["sanity"]["stages"])
    else:
        assert ds["sanity_ssim"] is None
        for r in ds["methods"].values():
            for stage in r["sanity"]["stages"]:
                assert -1 <= stage["ssim"] <= 1
                if stage["spearman"] == pytest.approx(1.0) and not stage["undefined"]:  # the same maps
                    assert stage["ssim"] == pytest.approx(1.0, abs=1e-6)
    text = (out / "report.md").read_text()
    assert "ρ / ρ abs / SSIM" in text and "ρ full random, abs" in text


def test_the_binary_masks_readability_is_reported(report):
    ds = report[1]["datasets"]["lesions"]
    assert ds["strides"] and all(2 <= s <= 16 for s in ds["strides"])
    for m in ("first-guess", "refined", "fit"):
        read = ds["methods"][m]["readability"]
        assert read["strides"] == ds["strides"] and len(read["per_image"]["pieces"]) == CFG.n
        assert read["lattice_flagged"] is None or 0 <= read["lattice_flagged"] <= 1
    assert "readability" not in ds["methods"].get("gradcam", {})
    assert "Binary masks: verdict and readability" in (report[0] / "report.md").read_text()


def test_a_change_of_the_sanity_settings_reruns_only_the_sanity_check(report, lesion_bundle_dir, explainer_dir,
                                                                      lesions, tmp_path):
    import shutil

    shutil.copytree(report[0], tmp_path / "run")
    labels: list[str] = []
    spec = [("lesions", lesion_bundle_dir, explainer_dir, lesions)]
    before = report[1]["datasets"]["lesions"]["methods"]["fit"]
    again = evaluate_suite(spec, CFG.with_(methods=("fit",), sanity_stages=1), tmp_path / "run", resume=True,
                           progress=labels.append).results["datasets"]["lesions"]["methods"]["fit"]
    assert labels == ["lesions: fit reused", "lesions: fit sanity"]
    assert len(again["sanity"]["stages"]) == 1 and again["per_image"] == before["per_image"]


def test_the_report_header_states_where_the_settings_are_below_the_full_protocol(report):
    text = (report[0] / "report.md").read_text()
    assert "**Reduced settings**" in text and "n 6 (full: 64)" in text and "sanity stages 2 (full: 4)" in text
    assert "### Headline" in text and "keep 10% [zero]" in text and "*control: random map*" in text
    assert "*control: fill alone (nothing kept)*" in text and "*control: random blob" in text


@pytest.mark.peers
def test_with_the_peers_every_fill_runs_and_road_covers_every_image(report):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("skimage")
    ds = report[1]["datasets"]["lesions"]
    assert ds["fills"] == ["zero", "mean", "blur", "noisy-linear"] and not ds["fills_skipped"]
    assert ds["road_n"] == ds["n"] == CFG.n
    grad_cam = ds["methods"]["gradcam"]
    assert grad_cam["trained_fill"] is None and len(grad_cam["per_image"]["road"]["combined"]) == CFG.n
    for r in ds["methods"].values():
        assert set(r["fills"]["noisy-linear"]["preservation"]) == {"0.05", "0.1", "0.2", "0.3"}
        assert all(s["ssim"] is not None for s in r["sanity"]["stages"])
    verdict = ds["methods"]["refined"]["fills"]["noisy-linear"]["binary"]
    assert 0 <= verdict["p_kept"] <= 1 and 0 <= verdict["p_removed"] <= 1
    assert "ROAD combined [noisy-linear]" in (report[0] / "report.md").read_text()


def test_medcam_fast_maps_are_the_mask_logits_a_user_gets_from_medcam(lesion_bundle, lesion_bundle_dir, explainer_dir,
                                                                     lesions, tmp_path):
    from medcam_fast.evaluation.harness import pick_images
    from medcam_fast.explain import MedCAM
    from medcam_fast.method.fit import FitConfig
    from medcam_fast.method.refine import RefineConfig

    cfg = CFG.with_(methods=("first-guess", "refined", "fit"), sanity_n=0, road_n=0, n=4)
    evaluate_suite([("lesions", lesion_bundle_dir, explainer_dir, lesions)], cfg, tmp_path)
    x = torch.from_numpy(lesion_bundle.preprocess(pick_images(lesions, cfg.n, cfg.seed).images))
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
    assert ds["explainer"] is None and 0 <= ds["methods"]["fit"]["binary"]["area"] <= 1
    assert np.isfinite(ds["methods"]["fit"]["binary"]["p_kept"])
    with pytest.raises(UsageError, match="--explainer"):
        evaluate_suite([("lesions", lesion_bundle_dir, None, lesions)], cfg.with_(methods=("refined",)), tmp_path)


def test_the_readmes_glance_tables_state_the_first_headline_fill_and_the_results_own_numbers(report):
    from medcam_fast.evaluation.report import best_peer_glance_rows, binary_glance_rows, glance_table

    ds = report[1]["datasets"]["lesions"]
    fill = ds["headline_fills"][0]  # zero: no method was trained against it
    table = glance_table(ds, (0.05, 0.1, 0.2, 0.3)).splitlines()
    assert f"keep 10% [{fill}] ↑" in table[0] and "[blur]" not in table[0]
    refined = next(line for line in table if line.startswith("| medcam-fast refined |"))
    cells = [c.strip("* ") for c in refined.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(ds["methods"]["refined"]["fills"][fill]["preservation"]["0.1"], abs=5e-4)
    assert any(line.startswith("| *control: random map* |") for line in table)
    rows = {r[1]: r for r in binary_glance_rows(ds)}
    assert set(rows) == {ds["methods"][m]["label"] for m in ds["controls"]["own_area"]}
    b = ds["methods"]["refined"]["fills"][fill]["binary"]
    assert rows["medcam-fast refined"][5] == f"{b['p_kept']:.3f} / {b['p_removed']:.3f}"
    paired = best_peer_glance_rows(ds, "refined", ("keep 10%",))
    if available_peers()["gradcam"] is None:
        assert paired and all(r[2].startswith("keep 10%") and r[1] == "medcam-fast refined" for r in paired)
    else:  # without peers there is no best peer, and no comparison is invented
        assert paired == []


def test_mask_logits_are_read_as_nonnegative_relevance_in_the_same_order_and_peers_maps_as_they_are():
    from medcam_fast.evaluation.harness import _relevance

    u = torch.linspace(-80, 80, 4001)[torch.randperm(4001, generator=torch.Generator().manual_seed(0))]
    r = _relevance("refined", u)
    assert (r >= 0).all() and torch.equal(torch.argsort(r), torch.argsort(u))  # every order-based score unchanged
    sure_out, evidence = _relevance("first-guess", torch.tensor([-10.0, 2.0]))
    assert abs(evidence) > abs(sure_out)  # |u| would have ranked the surely-outside pixel first
    ig = torch.tensor([-3.0, 1.0])
    assert torch.equal(_relevance("ig", ig), ig)


def test_runs_of_separate_data_sets_merge_into_one_report_and_other_settings_are_refused(report, tmp_path):
    from conftest import load_script

    script = load_script("merge_evaluations")
    results = json.loads((report[0] / "results.json").read_text())
    other = {**results, "datasets": {"again": {**results["datasets"]["lesions"], "name": "again"}}}
    (tmp_path / "a.json").write_text(json.dumps(results))
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert script.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m"),
                        "--order", "again,lesions"]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert list(merged["datasets"]) == ["again", "lesions"] and merged["config"] == results["config"]
    text = (tmp_path / "m" / "report.md").read_text()
    assert text.index("## again") < text.index("## lesions")
    (tmp_path / "c.json").write_text(json.dumps({**other, "config": {**results["config"], "n": 7}}))
    assert script.main([str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
