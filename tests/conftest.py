"""Shared fixtures: a small lesion classifier trained once per test session (seconds on 2 cores)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

DATA_DIR = Path(os.environ.get("MEDCAM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

torch.set_num_threads(1)  # predictable on a shared 2-core machine

#: ``make test-peers`` sets it: in the peers' environment (grad-cam, captum, scikit-image, timm, torchvision) a
#: test marked ``peers`` that skips, or a test module skipped while it is collected (a module-level
#: ``importorskip``), is a failure — a peer that stopped importing cannot pass as "skipped". Elsewhere (``.venv``)
#: those tests skip as usual.
REQUIRE_PEERS = os.environ.get("MEDCAM_REQUIRE_PEERS") == "1"
#: ``make test-scale`` sets it: the same for tests marked ``scale`` (Ray: ``serve``, ``explain --engine ray``).
REQUIRE_SCALE = os.environ.get("MEDCAM_REQUIRE_SCALE") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    for marker, required in (("peers", REQUIRE_PEERS), ("scale", REQUIRE_SCALE)):
        if required and report.skipped and item.get_closest_marker(marker) is not None:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"MEDCAM_REQUIRE_{marker.upper()}=1, but this {marker} test was skipped: {reason}"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    required = REQUIRE_PEERS or (REQUIRE_SCALE and "/scale/" in str(getattr(collector, "path", "")))
    if required and report.skipped and isinstance(collector, pytest.Module):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"MEDCAM_REQUIRE_{'PEERS' if REQUIRE_PEERS else 'SCALE'}=1, but this test module was skipped: {reason}"
    return None


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_data() -> pytest.MarkDecorator:
    """Skip a test when the shared data folder is absent (it is present on every developer machine and CI)."""
    return pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"shared data not found at {DATA_DIR}")


@pytest.fixture(scope="session")
def lesion_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 (width 8) trained on 32-px procedural lesions, saved as a classifier bundle."""
    from medcam_fast.classifiers.bundle import save_classifier
    from medcam_fast.classifiers.training import TrainConfig, train_classifier
    from medcam_fast.data.lesions import make_lesions

    train = make_lesions(800, size=32, seed=1)
    val = make_lesions(200, size=32, seed=2)
    bundle = train_classifier(train, val, None, TrainConfig(arch="resnet18", width=8, epochs=6, batch_size=32, lr=3e-3))
    assert bundle.metrics["val_accuracy"] > 0.85, bundle.metrics
    return save_classifier(bundle, tmp_path_factory.mktemp("lesion-classifier"))


@pytest.fixture(scope="session")
def lesion_bundle(lesion_bundle_dir: Path):
    from medcam_fast.classifiers.bundle import load_classifier

    return load_classifier(lesion_bundle_dir)


@pytest.fixture(scope="session")
def lesion_problem(lesion_bundle):
    """The composite-loss problem of four generated lesion images (class 1, 32 px) on the session's classifier,
    blur baseline, one robustness draw."""
    import numpy as np

    from medcam_fast.data.lesions import make_lesions
    from medcam_fast.method.losses import LossWeights
    from medcam_fast.method.objective import Objective
    from medcam_fast.types import BaselineKind

    ds = make_lesions(40, size=32, seed=77)
    x = torch.from_numpy(lesion_bundle.preprocess(ds.images[np.flatnonzero(ds.labels == 1)[:4]]))
    return Objective.build(lesion_bundle.frozen(), x, None, baseline=BaselineKind.BLUR,
                           weights=LossWeights(draws=1), tau=1.0)


@pytest.fixture(scope="session")
def tiny_explainer_dir(lesion_bundle, tmp_path_factory) -> Path:
    """A tiny decoder explainer (one amortized step) of the session's classifier, saved with its combined
    ONNX graph in the bundle (so recorded in its seal)."""
    from medcam_fast.data.lesions import make_lesions
    from medcam_fast.explainer.bundle import save_explainer
    from medcam_fast.explainer.meta import MetaConfig, meta_train
    from medcam_fast.export.onnx_export import export_combined

    ex = meta_train(lesion_bundle, make_lesions(8, size=32, seed=9).images,
                    MetaConfig(inner_steps=0, outer_steps=1, meta_batch=4, width=4, depth=2))
    folder = tmp_path_factory.mktemp("explainer")
    save_explainer(ex, folder)
    export_combined(ex, lesion_bundle.model, folder / "explainer.onnx")
    return folder
