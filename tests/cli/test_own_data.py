"""A new user's own data set, end to end (issue 17): every command takes the data by its path, one
``meta-train`` command runs the shipped recipe, classes have names, and what the CLI prints reads whole in a
log or a pipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medcam_fast.cli.main import app
from medcam_fast.data.lesions import make_lesions
from medcam_fast.data.medmnist import load_npz
from medcam_fast.errors import DataError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
NAMES = ["clear", "lesion"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The command in a child process with its output piped and no COLUMNS: what a CI log or ``| tee`` gets."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TERMINAL_WIDTH")}
    return subprocess.run([sys.executable, "-m", "medcam_fast.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _own_npz(path: Path, n: int = 60, key: str = "class_names") -> Path:
    """A flat .npz of n 32-px lesion images whose classes are named by ``key``."""
    d = make_lesions(n, size=32, seed=3)
    np.savez(path, images=d.images, labels=d.labels, **{key: np.array(NAMES)})
    return path


def _ok(r) -> None:
    code = r.returncode if hasattr(r, "returncode") else r.exit_code
    assert code == 0, (getattr(r, "stdout", "") or "") + (getattr(r, "stderr", "") or "") + (getattr(r, "output", "") or "")


def test_a_new_users_npz_goes_through_every_command_by_its_path(tmp_path):
    """train → one meta-train → export → explain → bench per-image and quality → evaluate, each given the .npz
    path and the bundles' folders (nothing under models/<stem>/ by convention)."""
    data = _own_npz(tmp_path / "fundus.npz")
    clf, ex = tmp_path / "bundles" / "classifier", tmp_path / "bundles" / "explainer"
    _ok(runner.invoke(app, ["train-classifier", "--data", str(data), "--out", str(clf), "--epochs", "2",
                            "--width", "4", "--batch-size", "16", "--threads", "1"]))
    assert json.loads((clf / "classifier.json").read_text())["classes"] == NAMES

    # one command: the recipe and its comparison, progress lines whole in a pipe
    r = _cli("meta-train", "--classifier", str(clf), "--data", str(data), "--out", str(ex), "--minutes", "0.02",
             "--outer-steps", "3", "--meta-batch", "2", "--width", "4", "--comparison", "--threads", "1")
    _ok(r)
    for phase in ("amortized (1/3)", "maml (2/3)", "comparison (3/3)"):
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"meta-train {phase}: step"))
        assert re.search(r"zero-step=\S+ .*act=\S+ kl=\S+ ce=\S+ area=\S+ nec=\d+\.\d{3}$", line), line
    assert "…" not in r.stdout
    facts = json.loads((ex / "explainer.json").read_text())["training"]
    assert facts["method"] == "maml-logits+init" and facts["recipe"]["minutes"] == 0.02
    assert json.loads((tmp_path / "bundles" / "amortized" / "explainer.json").read_text())["training"]["method"] == \
        "amortized"
    assert not (ex / "checkpoint.json").exists()  # checkpoints stay in the phases' folder
    assert (tmp_path / "bundles" / "explainer-phases" / "maml" / "checkpoint.json").is_file()

    _ok(runner.invoke(app, ["export", "--explainer", str(ex), "--combined", str(clf)]))

    out = tmp_path / "explained"
    _ok(runner.invoke(app, ["explain", str(data), "--classifier", str(clf), "--explainer", str(ex), "--steps", "1",
                            "--out", str(out), "--threads", "1"]))
    records = json.loads((out / "summary.json").read_text())["images"]
    assert len(records) == len(load_npz(data, "test")) and {r["predicted_name"] for r in records} <= set(NAMES)

    bench = tmp_path / "bench"
    _ok(runner.invoke(app, ["bench", "per-image", "--data", str(data), "--classifier", str(clf), "--n", "2",
                            "--steps", "1", "--batch-size", "2", "--out", str(bench), "--threads", "1"]))
    assert set(json.loads((bench / "per_image.json").read_text())["datasets"]) == {"fundus"}
    _ok(runner.invoke(app, ["bench", "quality", "--data", str(data), "--classifier", str(clf), "--explainer", str(ex),
                            "--n", "2", "--ks", "0,1", "--fit-steps", "1", "--modes", "logits", "--batch-size", "2",
                            "--out", str(bench), "--threads", "1"]))
    curves = json.loads((bench / "quality_fundus.json").read_text())["datasets"]["fundus"]["curves"]
    assert set(curves) == {"maml-logits+init+logits", "amortized+logits", "per-image fit"}  # the comparison too

    ev = tmp_path / "evaluate"
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--classifier", str(clf), "--explainer", str(ex),
                            "--n", "100", "--methods", "first-guess,refined", "--fills", "zero,blur", "--sanity-n", "0",
                            "--road-n", "0", "--refine-steps", "1", "--out", str(ev), "--threads", "1"])
    _ok(r)
    res = json.loads((ev / "results.json").read_text())["datasets"]["fundus"]
    # p(original) is the classifier's probability of the explained class: what explain reported, image by image
    assert res["p_original_per_image"] == pytest.approx([r["p_original"] for r in records], abs=1e-5)
    assert res["p_original"] == pytest.approx(np.mean([r["p_original"] for r in records]), abs=1e-5)
    report = (ev / "report.md").read_text()
    assert f"p(original) — the explained class's probability on the unchanged image, what p_kept is read against — " \
           f"{res['p_original']:.3f}" in report
    assert re.search(r"\| mask \| area \| p_original \| p_kept / p_removed \[zero\]", report)
    assert f"{res['p_original']:.3f} / " in r.output  # the console table's verdict column starts with it
    assert len([x for x in r.output.splitlines() if x.startswith("evaluate ")]) == 1  # our one progress line


@pytest.mark.peers
def test_evaluate_shows_its_own_progress_and_no_peers_bars(tmp_path, lesion_bundle_dir):
    """Score-CAM drew a tqdm bar per image (about forty over an evaluation) between evaluate's own lines."""
    pytest.importorskip("pytorch_grad_cam")
    data = _own_npz(tmp_path / "own.npz", 30)
    r = _cli("evaluate", "--classifier", str(lesion_bundle_dir), "--data", str(data), "--n", "3", "--methods",
             "scorecam", "--fills", "zero", "--sanity-n", "0", "--road-n", "0", "--out", str(tmp_path / "e"),
             "--threads", "1")
    _ok(r)
    assert "Score-CAM" in r.stdout and "it/s" not in r.stderr + r.stdout and "%|" not in r.stderr + r.stdout
    assert len([x for x in r.stdout.splitlines() if x.startswith("evaluate ")]) == 1


@pytest.mark.peers
def test_quiet_progress_bars_silence_tqdm_inside_and_restore_it_after(monkeypatch):
    import io

    from medcam_fast.evaluation.quiet import quiet_progress_bars

    tqdm = pytest.importorskip("tqdm")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    inside, after = io.StringIO(), io.StringIO()
    with quiet_progress_bars():
        assert os.environ["TQDM_DISABLE"] == "1"
        for _ in tqdm.tqdm(range(3), file=inside):
            pass
    for _ in tqdm.tqdm(range(3), file=after):
        pass
    assert inside.getvalue() == "" and "3/3" in after.getvalue() and "TQDM_DISABLE" not in os.environ


def test_a_class_per_folder_tree_trains_with_its_folders_names_or_the_classes_option(tmp_path):
    tree = tmp_path / "tree"
    d = make_lesions(40, size=32, seed=5)
    for i, (img, y) in enumerate(zip(d.images, d.labels, strict=True)):
        folder = tree / ("b-no-lesion" if y == 0 else "a-lesion")  # sorted: a-lesion is class 0
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    base = ["train-classifier", "--data", str(tree), "--epochs", "1", "--width", "4", "--threads", "1"]
    _ok(runner.invoke(app, [*base, "--out", str(tmp_path / "c1")]))
    assert json.loads((tmp_path / "c1" / "classifier.json").read_text())["classes"] == ["a-lesion", "b-no-lesion"]
    _ok(runner.invoke(app, [*base, "--out", str(tmp_path / "c2"), "--classes", "lesion, no lesion"]))
    assert json.loads((tmp_path / "c2" / "classifier.json").read_text())["classes"] == ["lesion", "no lesion"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "c3"), "--classes", "a,b,c"])
    assert r.exit_code == 2 and "--classes names 3 classes, the data has 2 (a-lesion, b-no-lesion)" in r.output
    assert not (tmp_path / "c3").exists()


@pytest.mark.parametrize("key", ["classes", "class_names"])
def test_an_npz_names_its_classes_by_either_key(tmp_path, key):
    assert load_npz(_own_npz(tmp_path / "a.npz", 10, key), "all").classes == NAMES
    raw = np.array([n.encode() for n in NAMES])  # bytes decode as UTF-8
    np.savez(tmp_path / "b.npz", images=np.zeros((10, 4, 4), np.uint8), labels=np.arange(10) % 2, **{key: raw})
    assert load_npz(tmp_path / "b.npz", "all").classes == NAMES


def test_npz_class_names_are_strings_in_agreement_and_never_a_pickle(tmp_path):
    imgs, labels = np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2
    np.savez(tmp_path / "both.npz", images=imgs, labels=labels, classes=np.array(NAMES),
             class_names=np.array(NAMES[::-1]))
    with pytest.raises(DataError, match="disagree"):
        load_npz(tmp_path / "both.npz", "all")
    np.savez(tmp_path / "numbers.npz", images=imgs, labels=labels, class_names=np.array([3, 4]))
    with pytest.raises(DataError, match="must be an array of strings"):
        load_npz(tmp_path / "numbers.npz", "all")
    np.savez(tmp_path / "twice.npz", images=imgs, labels=labels, classes=np.array(["a", "a"]))
    with pytest.raises(DataError, match="names a class twice"):
        load_npz(tmp_path / "twice.npz", "all")
    marker = tmp_path / "pickle-ran"

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    np.savez(tmp_path / "pickled.npz", images=imgs, labels=labels,
             classes=np.array([Evil(), Evil()], dtype=object))
    with pytest.raises(DataError):
        load_npz(tmp_path / "pickled.npz", "all")
    assert not marker.exists()


def test_training_warns_when_the_classifier_is_no_better_than_the_majority_class(tmp_path):
    """Identical images can only get one answer: its accuracy is at most the majority-class rate. The warning
    goes to the console and into classifier.json, beside the majority rate, the balanced accuracy and the
    thread count that trained it."""
    labels = np.array([0] * 45 + [1] * 15)  # test split: 9 and 3
    np.savez(tmp_path / "flat.npz", images=np.full((60, 16, 16), 128, np.uint8), labels=labels)
    r = runner.invoke(app, ["train-classifier", "--data", str(tmp_path / "flat.npz"), "--out", str(tmp_path / "c"),
                            "--epochs", "1", "--width", "4", "--threads", "1"])
    _ok(r)
    m = json.loads((tmp_path / "c" / "classifier.json").read_text())["metrics"]
    assert m["test_majority_rate"] == 0.75 and m["test_accuracy"] in (0.75, 0.25)
    assert m["test_balanced_accuracy"] == pytest.approx(0.5) and m["threads"] == 1
    assert len(m["warnings"]) == 1 and "not above the majority-class rate 0.750" in m["warnings"][0]
    assert "warning: test accuracy" in r.output and "(majority class 0.750, balanced 0.500)" in r.output


def test_class_rates_know_the_majority_and_balanced_answers():
    from medcam_fast.classifiers.training import class_rates, useless_warning

    y = torch.tensor([0, 0, 0, 1, 2])
    constant = class_rates(torch.zeros(5, dtype=torch.long), y, 3)
    assert constant == {"accuracy": 0.6, "balanced_accuracy": pytest.approx(1 / 3), "majority_rate": 0.6}
    assert class_rates(y, y, 3) == {"accuracy": 1.0, "balanced_accuracy": 1.0, "majority_rate": 0.6}
    assert useless_warning({"test_accuracy": 0.6, "test_majority_rate": 0.6}, "test") is not None
    assert useless_warning({"test_accuracy": 0.8, "test_majority_rate": 0.6}, "test") is None


def test_bench_names_the_bundles_a_data_path_lacks(tmp_path):
    """`bench quality --datasets own.npz` blamed '…/own.npz/classifier: no classifier.json here'."""
    data = _own_npz(tmp_path / "own.npz", 10)
    r = runner.invoke(app, ["bench", "quality", "--datasets", str(data), "--models", str(tmp_path / "models")])
    assert r.exit_code == 4 and "pass --classifier (and --explainer)" in r.output
    assert str(tmp_path / "models" / "own" / "classifier") in r.output
    r = runner.invoke(app, ["bench", "per-image", "--data", str(data), "--datasets", "breast"])
    assert r.exit_code == 2 and "give one of them" in r.output


def _help_commands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        out.append([name])
        out += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return out


#: Options whose value is one or several of a fixed set, and the set their help must list.
def _choices() -> dict[tuple[str, str], tuple[str, ...]]:
    from medcam_fast.classifiers.architectures import ARCHITECTURES
    from medcam_fast.cli.writers import FORMATS
    from medcam_fast.evaluation.bench import QUALITY_FOLDERS
    from medcam_fast.evaluation.fills import Fill
    from medcam_fast.evaluation.harness import ALL_METHODS

    return {("evaluate", "--methods"): ALL_METHODS, ("evaluate", "--fills"): tuple(f.value for f in Fill),
            ("train-classifier", "--arch"): ARCHITECTURES, ("explain", "--format"): FORMATS,
            ("explain", "--split"): ("train", "val", "test", "all"), ("bench quality", "--modes"): ("logits", "weights"),
            ("bench quality", "--explainers"): QUALITY_FOLDERS}


def test_every_help_is_whole_in_a_pipe_and_lists_every_choice():
    """Piped, with COLUMNS unset: no "…", every option on the page with a help text of its own, no empty
    placeholder, and every choice-valued option's choices named."""
    import typer.core
    import typer.main

    group = typer.main.get_command(app)
    commands = _help_commands()
    procs = {tuple(c): subprocess.Popen([sys.executable, "-m", "medcam_fast.cli.main", *c, "--help"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                        env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
             for c in [[], *commands]}
    choices = _choices()
    for cmd, proc in procs.items():
        text, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and not err, err
        assert "…" not in text and "╭" not in text, (cmd, text)  # plain text, nothing cut
        assert not re.search(r"\(\s*\)|\[\s*\]| \.(\s|$)|default: \)|: \.", text), (cmd, text)
        node = group
        for part in cmd:
            node = node.commands[part]
        for param in node.params:
            if not isinstance(param, typer.core.TyperOption):  # typer ≥ 0.29 vendors click: its own classes
                continue
            name = param.opts[0]
            line = next((x for x in text.splitlines() if x.strip().startswith((name + " ", name + ",")) or x.strip() == name), None)
            assert line is not None, (cmd, name)
            assert param.help and param.help.strip(), (cmd, name)  # a help text of its own
            assert "[" not in param.help, (cmd, name)  # on a terminal rich would read "[...]" as a tag: gone
            assert re.sub(r"\s+", " ", param.help.strip())[:60] in re.sub(r"\s+", " ", text), (cmd, name)
            if param.type_descriptor.is_choice:
                assert all(str(getattr(c, "value", c)) in text for c in param.type_descriptor.choices), (cmd, name)
            for c in choices.get((" ".join(cmd), name), ()):
                assert c in param.help, (cmd, name, c)
    from medcam_fast.cli.main import _QUALITY_FOLDERS, EVALUATE_METHODS
    from medcam_fast.evaluation.bench import QUALITY_FOLDERS
    from medcam_fast.evaluation.harness import ALL_METHODS

    assert EVALUATE_METHODS == ALL_METHODS and _QUALITY_FOLDERS == QUALITY_FOLDERS


def test_the_explain_table_keeps_a_long_name_on_one_line_in_a_pipe(tmp_path):
    stem = "patient_000123_left_eye_fundus_photograph_2026-11-29"
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_lesions(1, size=64, seed=2).images[0]).save(folder / f"{stem}.png")
    r = _cli("explain", str(folder), "--no-refine", "--out", str(tmp_path / "o"), "--threads", "1")
    _ok(r)
    row = [x for x in r.stdout.splitlines() if stem in x]
    assert len(row) == 1 and re.search(r"\d\.\d{3} .*\d\.\d{2}", row[0]), r.stdout  # the whole row on one line


def test_the_recipe_resumes_to_the_explainer_an_uninterrupted_run_makes(tmp_path, lesion_bundle_dir):
    """A recipe stopped after its amortized phase (its MAML phase's folder removed) continues with --resume:
    the finished phase is loaded, not rerun, and the result equals a run never stopped."""
    from safetensors.numpy import load_file

    data = _own_npz(tmp_path / "own.npz", 40)
    base = ["meta-train", "--classifier", str(lesion_bundle_dir), "--data", str(data), "--outer-steps", "2",
            "--meta-batch", "2", "--width", "4", "--threads", "1"]
    _ok(runner.invoke(app, [*base, "--out", str(tmp_path / "whole" / "explainer")]))
    stopped = tmp_path / "stopped" / "explainer"
    _ok(runner.invoke(app, [*base, "--out", str(stopped)]))
    phases = tmp_path / "stopped" / "explainer-phases"
    amortized_before = (phases / "amortized" / "weights.safetensors").read_bytes()
    for f in (phases / "maml").iterdir():
        f.unlink()
    r = runner.invoke(app, [*base, "--out", str(stopped)])
    assert r.exit_code == 2 and "--resume" in r.output  # nothing replaced unasked
    r = runner.invoke(app, [*base, "--out", str(stopped), "--resume"])
    _ok(r)
    assert "amortized: amortized, finished earlier, loaded" in r.output
    assert (phases / "amortized" / "weights.safetensors").read_bytes() == amortized_before
    a = load_file(str(stopped / "weights.safetensors"))
    b = load_file(str(tmp_path / "whole" / "explainer" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_recipes_phases_are_the_two_commands_make_explainers_ran():
    """Before one command, `make explainers` ran `--inner-steps 0 --outer-steps 100000 --minutes 5`, then
    `--inner-steps 10 --outer-lr 1e-3 --outer-steps 100000 --minutes 5 --init <amortized>`."""
    from medcam_fast.explainer.meta import MetaConfig
    from medcam_fast.explainer.recipe import AMORTIZED, COMPARISON, MAML, RecipeConfig

    recipe, meta = RecipeConfig(), MetaConfig()
    assert recipe.phases() == [AMORTIZED, MAML] and recipe.phases(comparison=True) == [AMORTIZED, MAML, COMPARISON]
    assert recipe.meta_config(AMORTIZED, meta) == MetaConfig(inner_steps=0, outer_steps=100000)
    assert recipe.meta_config(MAML, meta) == MetaConfig(inner_steps=10, outer_lr=1e-3, outer_steps=100000)
    assert recipe.meta_config(COMPARISON, meta) == recipe.meta_config(AMORTIZED, meta)
    assert [recipe.seconds(p) for p in (AMORTIZED, MAML, COMPARISON)] == [300.0, 300.0, 600.0]
    quick = RecipeConfig(minutes=2, amortized_share=0.25, phase_steps=3)
    assert [quick.seconds(p) for p in (AMORTIZED, MAML, COMPARISON)] == [30.0, 90.0, 120.0]
    assert quick.meta_config(COMPARISON, meta).outer_steps == 6 and quick.meta_config(MAML, meta).outer_steps == 3
    assert RecipeConfig(amortized_share=1.0).phases() == [AMORTIZED]


def test_the_comparison_repeats_the_amortized_phase_step_for_step_then_goes_on(tmp_path, lesion_bundle):
    from medcam_fast.explainer.meta import MetaConfig
    from medcam_fast.explainer.recipe import RecipeConfig, train_recipe

    images = make_lesions(8, size=32, seed=4).images
    result = train_recipe(lesion_bundle, images, MetaConfig(meta_batch=2, width=4, inner_steps=1),
                          RecipeConfig(minutes=5, phase_steps=2), tmp_path / "work", comparison=True)
    history = {p: json.loads((tmp_path / "work" / p / "checkpoint.json").read_text())["history"]
               for p in ("amortized", "comparison")}
    assert len(history["amortized"]) == 2 and len(history["comparison"]) == 4
    for a, b in zip(history["amortized"], history["comparison"][:2], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert result.comparison is not None and result.comparison.training["steps_done"] == 4
    assert result.explainer.training["method"] == "maml-logits+init"


def test_make_explainers_runs_one_meta_train_of_ten_minutes_per_set():
    r = subprocess.run(["make", "-n", "--no-print-directory", "explainers", "EXPLAINER_SETS=breast"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    script = r.stdout.replace("\\\n", " ")
    assert script.count("meta-train") == 1 and "--minutes 10 " in script and "--init" not in script
    assert "export --explainer" in script


def _dicom_folder(folder: Path, patients: int = 8, per_patient: int = 3, size: int = 32) -> Path:
    """``patients`` × ``per_patient`` small CT-like DICOM files (int16 stored values, rescale to HU, a soft-tissue
    window in each header) and ``labels.csv`` (file, contrast, patient): a contrast slice has a bright 3000 HU
    vessel in the middle, a plain one soft tissue only. Each patient has slices of both classes."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = ["file,contrast,patient"]
    for p in range(patients):
        for s in range(per_patient):
            contrast = (p + s) % 2 == 1
            hu = rng.normal(40, 15, (size, size))
            if contrast:
                c = size // 2 + int(rng.integers(-6, 7))
                hu[c - 3:c + 3, c - 3:c + 3] = 300
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientID = "CT", f"P{p:02d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (generate_uid() for _ in range(3))
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
            ds.PixelData = (hu + 1024).round().astype(np.int16).tobytes()
            name = f"p{p}_s{s}.dcm"
            ds.save_as(folder / name, enforce_file_format=True)
            rows.append(f"{name},{'yes' if contrast else 'no'},P{p:02d}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_a_dicom_folder_with_a_label_table_goes_through_every_command_on_the_classifiers_own_split(tmp_path):
    """train → one meta-train → export → explain → bench per-image → evaluate, each given the DICOM folder and
    the same four label-table options: meta-train, bench and evaluate read the patient-grouped split that
    train-classifier made (its seed, here 3, and image size from the bundle), so what bench and evaluate score
    is the test split of patients the classifier never saw."""
    from medcam_fast.classifiers.bundle import load_classifier
    from medcam_fast.cli.jobs import classifier_splits
    from medcam_fast.data.labelled import LabelTable, grouped_split, load_labelled

    data = _dicom_folder(tmp_path / "scans")
    table = ["--labels", str(data / "labels.csv"), "--label-column", "contrast", "--file-column", "file",
             "--group-column", "patient"]
    clf, ex = tmp_path / "bundles" / "classifier", tmp_path / "bundles" / "explainer"
    _ok(runner.invoke(app, ["train-classifier", "--data", str(data), *table, "--image-size", "32", "--seed", "3",
                            "--out", str(clf), "--epochs", "2", "--width", "4", "--batch-size", "8",
                            "--threads", "1"]))
    split = json.loads((clf / "classifier.json").read_text())["metrics"]["split"]
    assert split["seed"] == 3 and split["file_column"] == "file" and split["image_size"] == 32
    assert split["train_groups"] + split["val_groups"] + split["test_groups"] == 8

    # the loader every later command uses gives back train-classifier's split, not seed 0's
    bundle = load_classifier(clf)
    lt = LabelTable(data / "labels.csv", "contrast", "file", "patient")
    sets = classifier_splits(data, None, bundle, lt)
    full, groups = load_labelled(data, lt, 32)
    parts = grouped_split(full.labels, groups, seed=3)
    assert set(groups[parts["test"]]) != set(groups[grouped_split(full.labels, groups, seed=0)["test"]])  # seed 0: other patients
    np.testing.assert_array_equal(sets["test"].images, full.images[parts["test"]])
    assert not set(groups[parts["test"]]) & set(groups[parts["train"]])
    assert len(sets["test"]) == split["test_images"]

    _ok(_cli("meta-train", "--classifier", str(clf), "--data", str(data), *table, "--out", str(ex), "--minutes",
             "0.05", "--outer-steps", "2", "--meta-batch", "2", "--width", "4", "--threads", "1"))
    assert json.loads((ex / "explainer.json").read_text())["training"]["method"] == "maml-logits+init"
    _ok(runner.invoke(app, ["export", "--explainer", str(ex), "--combined", str(clf)]))

    out = tmp_path / "explained"
    _ok(runner.invoke(app, ["explain", str(data), "--classifier", str(clf), "--explainer", str(ex), "--steps", "1",
                            "--format", "png,json", "--out", str(out), "--threads", "1"]))
    assert len(json.loads((out / "summary.json").read_text())["images"]) == 24  # every slice; the CSV is no image

    bench = tmp_path / "bench"
    _ok(runner.invoke(app, ["bench", "per-image", "--data", str(data), *table, "--classifier", str(clf), "--n", "100",
                            "--steps", "1", "--batch-size", "4", "--out", str(bench), "--threads", "1"]))
    assert set(json.loads((bench / "per_image.json").read_text())["datasets"]) == {"scans"}

    ev = tmp_path / "evaluate"
    _ok(runner.invoke(app, ["evaluate", "--data", str(data), *table, "--classifier", str(clf), "--explainer", str(ex),
                            "--n", "100", "--methods", "first-guess,refined", "--fills", "zero", "--sanity-n", "0",
                            "--road-n", "0", "--refine-steps", "1", "--out", str(ev), "--threads", "1"]))
    scored = json.loads((ev / "results.json").read_text())["datasets"]["scans"]["p_original_per_image"]
    with torch.no_grad():  # p(original) of every image of the classifier's test split: those, no others
        p = bundle.frozen().logits(torch.from_numpy(bundle.preprocess(sets["test"].images))).softmax(1).amax(1)
    assert sorted(scored) == pytest.approx(sorted(p.tolist()), abs=1e-5)

    # without the table the same folder is unlabelled images: evaluate says so rather than scoring a wrong split
    r = runner.invoke(app, ["evaluate", "--data", str(data), "--label-column", "contrast", "--classifier", str(clf),
                            "--out", str(tmp_path / "e2")])
    assert r.exit_code == 2 and "need --labels" in r.output
