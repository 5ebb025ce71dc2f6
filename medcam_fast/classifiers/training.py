"""Training the built-in classifiers: a small deterministic CPU loop that keeps the best validation epoch.

:class:`TrainConfig` owns every default; progress is reported through a callback, so the library prints
nothing (the CLI draws a progress bar with it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import Config
from ..errors import UsageError
from .architectures import ARCHITECTURES, build_classifier
from .frozen import ClassifierBundle
from .weights import state_sha256

if TYPE_CHECKING:
    from ..data.images import ImageSet
    from ..data.preprocess import Preprocess

__all__ = ["TrainConfig", "train_classifier", "EpochCallback", "class_rates", "useless_warning"]

#: ``callback(epoch, epochs, {"loss": training loss, "val_accuracy": …})`` after each epoch.
EpochCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig(Config):
    """Settings of :func:`train_classifier`.

    Args:
        arch: ``"resnet18"`` or ``"vit"``.
        epochs: passes over the training set.
        batch_size: images per optimization step.
        lr: peak learning rate.
        width: architecture width (see :func:`~.architectures.build_classifier`); None for its default.
        seed: seeds the initialization, the shuffling and the augmentation.
        augment: apply flips / shifts / brightness jitter to training batches.
    """

    arch: str = "resnet18"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    width: int | None = None
    seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UsageError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise UsageError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise UsageError(f"batch_size must be an integer ≥ 2, got {self.batch_size!r}")
        if not self.lr > 0:
            raise UsageError(f"lr must be positive, got {self.lr!r}")


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Light, vectorized augmentation of a normalized batch ``[B, C, H, W]``.

    Random horizontal flips (p = ½), shifts of up to ``max(1, min(H, W) // 16)`` pixels (replicate padding
    and a random crop per image) and a brightness / contrast jitter of ±0.1 (in normalized units).

    Args:
        x: the batch.
        g: the random generator (seeded: augmentation is deterministic).
    """
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, min(h, w) // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1)  # B, H+2p, W+2p, C
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # B, H, 1
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # B, 1, W
    crops = padded[torch.arange(b)[:, None, None], rows, cols]  # B, H, W, C
    x = crops.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    scale = 1 + 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    shift = 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    return x * scale + shift


def class_rates(predicted: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy beside what a useless classifier scores on the same images.

    ``accuracy = mean(ŷ = y)``; ``balanced_accuracy = mean_c recall_c`` over the classes present in ``labels``
    (``recall_c`` = share of class ``c``'s images predicted as ``c``; a constant answer scores ``1/C``);
    ``majority_rate = max_c n_c / n``, the accuracy of always answering the most frequent class of these
    images. A classifier whose accuracy is not above ``majority_rate`` has learned nothing an explanation
    could show.

    Args:
        predicted: predicted classes ``[N]``.
        labels: true classes ``[N]`` (N ≥ 1).
        num_classes: the number of classes.
    """
    counts = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
    present = counts > 0
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "balanced_accuracy": float((hits[present] / counts[present]).mean()),
        "majority_rate": float(counts.max() / counts.sum()),
    }


def useless_warning(metrics: dict[str, float | int | None | list[str]], split: str) -> str | None:
    """The warning for a classifier not better than always answering the majority class on ``split``
    (``"test"`` or ``"val"``), from its ``{split}_accuracy`` and ``{split}_majority_rate``; None otherwise."""
    acc, majority = metrics.get(f"{split}_accuracy"), metrics.get(f"{split}_majority_rate")
    if not isinstance(acc, float) or not isinstance(majority, float) or acc > majority:
        return None
    return (f"{split} accuracy {acc:.3f} is not above the majority-class rate {majority:.3f}: the classifier "
            "does no better than always answering the most frequent class, and an explanation of it explains "
            "nothing (balanced accuracy "
            f"{metrics.get(f'{split}_balanced_accuracy', float('nan')):.3f})")


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes of ``model`` (eval mode) for ``x``."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``x``, ``y`` in eval mode.

    Args:
        model: the classifier.
        x: normalized images.
        y: labels.
        batch_size: images per forward pass.
    """
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    n = max(1, len(x))
    return correct / n, loss / n


def _as_tensors(
    images: ImageSet, preprocess: Preprocess, num_classes: int, what: str
) -> tuple[Tensor, Tensor]:
    """Preprocessed images and labels of an :class:`~medcam_fast.data.images.ImageSet` as tensors.

    Raises:
        UsageError: empty set, or labels outside ``0 … num_classes-1``.
    """
    if len(images) == 0:
        raise UsageError(f"the {what} set is empty")
    x = torch.from_numpy(np.ascontiguousarray(preprocess(images.images), dtype=np.float32))
    y = torch.from_numpy(np.asarray(images.labels, dtype=np.int64))
    if len(y) != len(x):
        raise UsageError(f"the {what} set has {len(x)} images but {len(y)} labels")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise UsageError(f"the {what} set has labels outside 0…{num_classes - 1}")
    return x, y


def train_classifier(
    train: ImageSet,
    val: ImageSet,
    test: ImageSet | None = None,
    config: TrainConfig = TrainConfig(),
    callback: EpochCallback | None = None,
) -> ClassifierBundle:
    """Train a built-in classifier on the CPU (or wherever torch runs) and keep its best validation epoch.

    Preprocessing is fitted on the training images (:meth:`Preprocess.fit`); optimization is AdamW
    (weight decay 0.01) with a one-cycle schedule (20 % warm-up, cosine decay), cross-entropy with label
    smoothing 0.05, weighted by inverse class frequency when the largest class has ≥ 1.5× the images of the
    smallest. The weights of the epoch with the best validation accuracy (ties: lower validation loss) are
    kept. The run is deterministic for a given seed and thread count on the CPU (another thread count splits
    float sums differently and trains another classifier; the count is recorded in the metrics); the
    caller's global RNG state is restored afterwards. The number of threads is left to the caller
    (``torch.set_num_threads``).

    Args:
        train: training images and labels.
        val: validation images (same classes), used to pick the best epoch.
        test: optional test images, evaluated once with the kept weights.
        config: architecture and optimization settings.
        callback: called after each epoch with ``(epoch, epochs, {"loss", "val_accuracy"})`` (progress).

    Returns:
        A ``source="builtin"`` bundle with metrics ``val_accuracy``, ``test_accuracy`` (None without a test
        set), each split's ``*_balanced_accuracy`` and ``*_majority_rate`` (:func:`class_rates`), ``epochs``,
        ``best_epoch``, ``seconds``, ``n_train``, ``threads`` (torch's intra-op threads: float sums, and so
        the trained weights, depend on it — the same seed at another thread count trains another
        classifier) and ``warnings`` (:func:`useless_warning` on the test split, else the validation split).

    Raises:
        UsageError: invalid arguments, empty sets, mismatched classes or labels out of range.
    """
    from ..data.preprocess import Preprocess

    arch, epochs, batch_size, lr = config.arch, config.epochs, config.batch_size, config.lr
    width, seed, augment = config.width, config.seed, config.augment
    classes = list(train.classes)
    for other, what in ((val, "validation"), (test, "test")):
        if other is not None and list(other.classes) != classes:
            raise UsageError(f"the {what} set's classes {list(other.classes)} differ from the training set's")
    start = time.perf_counter()
    preprocess = Preprocess.fit(train.images)
    k = len(classes)
    x_train, y_train = _as_tensors(train, preprocess, k, "training")
    x_val, y_val = _as_tensors(val, preprocess, k, "validation")
    n = len(x_train)
    counts = torch.bincount(y_train, minlength=k).clamp_min(1).float()
    weight = None
    if counts.max() >= 1.5 * counts.min():
        weight = counts.sum() / (k * counts)
    image_size = int(max(preprocess.size))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(arch, preprocess.channels, k, image_size, width)
        g = torch.Generator().manual_seed(seed)
        bs = min(batch_size, n)
        steps_per_epoch = max(1, n // bs)  # the last partial batch is dropped
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
        )
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)
        best: tuple[float, float] = (-1.0, math.inf)
        best_state = {kk: v.clone() for kk, v in model.state_dict().items()}
        best_epoch = 0

        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=g)
            total, seen = 0.0, 0
            for s in range(steps_per_epoch):
                idx = order[s * bs : (s + 1) * bs]
                xb, yb = x_train[idx], y_train[idx]
                if augment:
                    xb = _augment(xb, g)
                loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            acc, vloss = _evaluate(model, x_val, y_val)
            if acc > best[0] or (acc == best[0] and vloss < best[1]):
                best = (acc, vloss)
                best_state = {kk: v.detach().clone() for kk, v in model.state_dict().items()}
                best_epoch = epoch + 1
            if callback is not None:
                callback(epoch + 1, epochs, {"loss": total / max(1, seen), "val_accuracy": acc})
        model.load_state_dict(best_state)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        rates = {"val": class_rates(_predict(model, x_val), y_val, k)}
        test_acc = None
        if test is not None:
            x_test, y_test = _as_tensors(test, preprocess, k, "test")
            rates["test"] = class_rates(_predict(model, x_test), y_test, k)
            test_acc = rates["test"]["accuracy"]
    metrics: dict[str, float | int | None | list[str]] = {
        "val_accuracy": best[0],
        "test_accuracy": test_acc,
        **{f"{s}_{key}": v[key] for s, v in rates.items() for key in ("balanced_accuracy", "majority_rate")},
        "epochs": epochs,
        "best_epoch": best_epoch,
        "seconds": round(time.perf_counter() - start, 3),
        "n_train": n,
        "threads": torch.get_num_threads(),
    }
    warning = useless_warning(metrics, "test" if test is not None else "val")
    metrics["warnings"] = [warning] if warning else []
    config = dict(model.config)
    return ClassifierBundle(model, preprocess, classes, arch, config, metrics, state_sha256(model), "builtin")
