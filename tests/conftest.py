"""Shared fixtures: a small lesion classifier trained once per test session (seconds on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_DIR = Path(os.environ.get("MEDCAM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

torch.set_num_threads(1)  # predictable on a shared 2-core machine


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
