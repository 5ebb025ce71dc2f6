"""MedMNIST-style ``.npz`` files: both layouts, a seeded stratified split, and short data-set names.

:func:`load_npz` reads the official layout (``train_images`` / ``train_labels``, ``val_*``, ``test_*``) or a
flat one (``images``, ``labels``) that :func:`stratified_split` splits 70/10/20 per class from the seed
alone; class names come from the file's ``classes`` key, else the known MedMNIST files' table, else its
``class_names`` key (both: an array of strings in label order; no pickled objects), else ``class_<k>``. :data:`DATASETS` and :func:`resolve_data` map short names (``breast``, ``pneumonia``,
``blood``, ``path``, ``brain``) to files in the shared data folder or ``$MEDCAM_DATA_DIR``. Arrays are read
with ``allow_pickle=False`` and nothing is downloaded; every failure is a
:class:`~medcam_fast.errors.DataError` naming the file. numpy only.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError, one_line
from .images import ImageSet
from .preprocess import PathLike

__all__ = ["DATASETS", "stratified_split", "load_npz", "resolve_data"]


#: Split fractions of a flat (split-less) ``.npz`` set: train, val, test.
_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


_SPLITS = ("train", "val", "test")


#: Class names of the known MedMNIST files, keyed on the file-name prefix.
_CLASS_TABLE: dict[str, list[str]] = {
    "breastmnist": ["malignant", "normal or benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                   "platelet"],
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    # the file's own ``class_names`` key says "notumor": the table, read before that key, keeps "no tumour"
    "brain_tumor_mri4": ["glioma", "meningioma", "no tumour", "pituitary"],
}


#: Short data-set names and the files they stand for (in the shared data folder).
DATASETS: dict[str, str] = {
    "breast": "breastmnist_64.npz",
    "pneumonia": "pneumoniamnist_28.npz",
    "blood": "bloodmnist_pbc800_64.npz",
    "path": "pathmnist_subset1000_28.npz",
    "brain": "brain_tumor_mri4_128.npz",
}


#: Largest uncompressed ``.npz`` member :func:`load_npz` reads (bytes), checked from the zip directory before
#: anything is decompressed: a 2 MB file can hold a 2 GB array of zeros.
NPZ_MAX_BYTES = 2 * 1024**3

#: The keys a file may name its classes with (an array of strings in label order), in the order they are read.
_CLASS_KEYS = ("classes", "class_names")

#: The members a MedMNIST-layout file may use; anything else in the archive is never read.
_NPZ_KEYS = frozenset({"images", "labels", *_CLASS_KEYS, *(f"{s}_{k}" for s in _SPLITS for k in ("images", "labels"))})


def _read_npz(path: Path, max_bytes: int = NPZ_MAX_BYTES) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of an ``.npz`` file that the MedMNIST layouts use (no pickles), and every member's name.

    Only those members are decompressed, each after its uncompressed size (from the zip directory) is
    checked against ``max_bytes``. Any failure is a DataError naming the file.
    """
    if not path.exists():
        raise DataError("file not found", path)
    if path.is_dir():
        raise DataError("is a folder, expected a .npz file", path)
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes), expected a .npz file", path)
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError("a single .npy array, expected a .npz archive", path)
        if not magic.startswith(b"PK"):
            raise DataError("not a .npz file (not a zip archive)", path)
        with zipfile.ZipFile(path) as archive:
            sizes = {i.filename.removesuffix(".npy"): i.file_size for i in archive.infolist()}
        for key in sorted(_NPZ_KEYS & set(sizes)):
            if sizes[key] > max_bytes:
                raise DataError(f"member {key!r} is {sizes[key]} bytes uncompressed, more than the limit of "
                                f"{max_bytes} (max_bytes), refused before decompressing", path)
        with np.load(path, allow_pickle=False) as npz:  # members are read lazily: only the wanted ones are
            return {k: np.asarray(npz[k]) for k in npz.files if k in _NPZ_KEYS}, list(npz.files)
    except DataError:
        raise
    except Exception as e:  # text, truncated, pickled, bad zip or zlib data: all user data problems
        raise DataError(f"not a valid .npz file: {one_line(e)}", path) from None


def _npz_images(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Validate and convert one image array of an ``.npz`` file to uint8 NHW / NHWC."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
        raise DataError(f"'{key}' has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)", path)
    if images.dtype == np.uint8:
        out = images
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise DataError(f"'{key}' contains NaN or infinite values", path)
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' float values lie in [{lo:.4g}, {hi:.4g}], expected [0, 1] or [0, 255]", path)
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.round(images.astype(np.float64) * scale).astype(np.uint8)
    elif images.dtype == np.uint16:
        out = np.round(images.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        lo, hi = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' integer values lie in [{lo}, {hi}], expected [0, 255]", path)
        out = images.astype(np.uint8)
    else:
        raise DataError(f"'{key}' has unsupported type {images.dtype}", path)
    if out.ndim == 4 and out.shape[-1] == 4:
        rgb, alpha = out[..., :3].astype(np.uint16), out[..., 3:].astype(np.uint16)
        out = ((rgb * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _npz_labels(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Validate and flatten one label array of an ``.npz`` file to int64 (N,)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"'{key}' has shape {labels.shape}: only single-label classification (N,) or (N, 1) "
                        "is supported", path)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.all(labels == np.round(labels)):
            raise DataError(f"'{key}' holds non-integer values", path)
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"'{key}' has unsupported type {labels.dtype}, expected integers", path)
    return labels.astype(np.int64)


def _names_in(arrays: dict[str, np.ndarray], key: str, path: Path) -> list[str]:
    """The strings of the ``key`` member (bytes decoded as UTF-8), checked: none empty, none repeated."""
    raw = arrays[key].reshape(-1)
    if raw.dtype.kind == "S":
        names = [b.decode("utf-8", "replace").strip() for b in raw.tolist()]
    elif raw.dtype.kind == "U":
        names = [str(s).strip() for s in raw.tolist()]
    else:
        raise DataError(f"'{key}' must be an array of strings, got type {raw.dtype}", path)
    if any(not n for n in names):
        raise DataError(f"'{key}' holds an empty class name", path)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"'{key}' names a class twice: {repeated[0]!r}", path)
    return names


def _class_names(arrays: dict[str, np.ndarray], name: str, n_needed: int, path: Path) -> list[str]:
    """Class names from the ``classes`` key, else the table of known files, else the ``class_names`` key,
    else ``class_<k>``. A file with both keys must give the same names in both."""
    given = {k: _names_in(arrays, k, path) for k in _CLASS_KEYS if k in arrays}
    if len(given) == 2 and given["classes"] != given["class_names"]:
        raise DataError(f"'classes' {given['classes']} and 'class_names' {given['class_names']} disagree", path)
    if "classes" in given:
        return given["classes"]
    lower = name.lower()
    for prefix, classes in _CLASS_TABLE.items():
        if lower.startswith(prefix):
            return list(classes)
    if "class_names" in given:
        return given["class_names"]
    return [f"class_{k}" for k in range(n_needed)]


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """A seeded stratified 70/10/20 train/val/test split of indices (each split sorted).

    Each class is permuted with its own generator ``default_rng([seed, class])``; the class's test part has
    ``round(0.2 n)`` images, its val part ``round(0.1 n)``, its train part the rest.
    """
    parts: dict[str, list[np.ndarray]] = {s: [] for s in _SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng([int(seed), int(c)]).permutation(idx)
        n = len(perm)
        n_test = int(round(_SPLIT_FRACTIONS[2] * n))
        n_val = min(int(round(_SPLIT_FRACTIONS[1] * n)), n - n_test)
        n_train = n - n_val - n_test
        parts["train"].append(perm[:n_train])
        parts["val"].append(perm[n_train:n_train + n_val])
        parts["test"].append(perm[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}


def load_npz(path: PathLike, split: str = "test", seed: int = 0, max_bytes: int = NPZ_MAX_BYTES) -> ImageSet:
    """Load a MedMNIST-style ``.npz`` file.

    Two layouts are read: the official one (``train_images``, ``train_labels``, ``val_*``, ``test_*``, labels
    (N,) or (N, 1)) and a flat one (``images``, ``labels``), which gets a seeded,
    stratified 70 % / 10 % / 20 % train / val / test split (disjoint, covering every image).

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every image; official splits concatenated in
            train, val, test order).
        seed: seed (>= 0) of the flat layout's split (ignored for the official layout).
        max_bytes: refuse a layout member larger than this uncompressed (checked before decompressing);
            members the layouts do not use are never read.

    Returns:
        an :class:`ImageSet` named after the file (e.g. ``"breastmnist_64"``), classes from the ``classes``
        key, else from the known MedMNIST files' names, else from the ``class_names`` key, else ``class_0`` …
        ``class_{K-1}``. Either key is optional in both layouts: an array of strings in label order.

    Raises:
        DataError: missing or invalid file, neither layout, an unknown or absent split, NaN/Inf pixels,
            mismatched lengths, labels outside [0, number of classes), or a member over ``max_bytes``.
        UsageError: a negative seed.
    """
    path = Path(path)
    if split not in (*_SPLITS, "all"):
        raise DataError(f"unknown split {split!r}: choose train, val, test or all", path)
    if seed < 0:
        raise UsageError(f"the split seed must be >= 0, got {seed}")
    arrays, members = _read_npz(path, max_bytes)
    name = path.name[:-4] if path.name.lower().endswith(".npz") else path.name
    official = [s for s in _SPLITS if f"{s}_images" in arrays and f"{s}_labels" in arrays]
    if official:
        parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in official:
            imgs = _npz_images(arrays[f"{s}_images"], path, f"{s}_images")
            labs = _npz_labels(arrays[f"{s}_labels"], path, f"{s}_labels")
            if len(imgs) != len(labs):
                raise DataError(f"'{s}_images' has {len(imgs)} images but '{s}_labels' {len(labs)} labels", path)
            parts[s] = (imgs, labs)
        all_labels = np.concatenate([labs for _, labs in parts.values()])
    elif "images" in arrays and "labels" in arrays:
        imgs = _npz_images(arrays["images"], path, "images")
        labs = _npz_labels(arrays["labels"], path, "labels")
        if len(imgs) != len(labs):
            raise DataError(f"'images' has {len(imgs)} images but 'labels' {len(labs)} labels", path)
        all_labels = labs
    else:
        found = ", ".join(sorted(members)) or "none"
        raise DataError(f"not a MedMNIST layout: expected train_images/train_labels/… or images/labels, "
                        f"found keys: {found}", path)

    n_needed = int(all_labels.max()) + 1 if all_labels.size else 0
    classes = _class_names(arrays, name, n_needed, path)
    if all_labels.size and (int(all_labels.min()) < 0 or n_needed > len(classes)):
        raise DataError(f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes, found "
                        f"[{int(all_labels.min())}, {n_needed - 1}]", path)

    if official:
        if split == "all":
            imgs = np.concatenate([parts[s][0] for s in official])
            labs = np.concatenate([parts[s][1] for s in official])
        elif split in parts:
            imgs, labs = parts[split]
        else:
            raise DataError(f"no '{split}' split in this file (it has: {', '.join(official)})", path)
    elif split != "all":
        idx = stratified_split(labs, seed)[split]
        imgs, labs = imgs[idx], labs[idx]
    return ImageSet(images=imgs, labels=labs, classes=classes, name=name)


def _repo_root() -> Path:
    """The source tree's root: the parent of this package's folder."""
    return Path(__file__).resolve().parent.parent


def _search_dirs(data_dir: PathLike | None) -> list[Path]:
    """Where short data-set names are looked up: ``data_dir``, else ``$MEDCAM_DATA_DIR``, else the defaults."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("MEDCAM_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    dirs = [Path.cwd() / ".." / "shared" / "data", _repo_root().parent / "shared" / "data"]
    out: list[Path] = []
    for d in dirs:
        if all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def resolve_data(name_or_path: str, data_dir: str | None = None) -> Path:
    """Find a data file from a path or a short name. Nothing is downloaded.

    Args:
        name_or_path: an existing file or folder (returned as is), a short name from :data:`DATASETS`
            (``breast``, ``pneumonia``, ``blood``, ``path``, ``brain``), or a bare file name
            (``"breastmnist_64.npz"``).
        data_dir: the folder to look short names up in; default ``$MEDCAM_DATA_DIR`` when set, else
            ``../shared/data`` relative to the current folder and relative to the source tree's root.

    Raises:
        DataError: not an existing path and not found in the searched folders.
    """
    given = Path(name_or_path).expanduser()
    if given.exists():
        return given
    key = str(name_or_path).strip().lower()
    if key in DATASETS:
        file_name = DATASETS[key]
    elif given.name == str(name_or_path) and given.name:  # a bare file name: search for it too
        file_name = given.name
    else:
        raise DataError("no such file or folder", name_or_path)
    candidates = [file_name] if file_name.endswith(".npz") or given.suffix else [file_name, file_name + ".npz"]
    dirs = _search_dirs(data_dir)
    for d in dirs:
        for cand in candidates:
            p = d / cand
            if p.exists():
                return p
    searched = ", ".join(str(d) for d in dirs)
    names = ", ".join(DATASETS)
    raise DataError(f"not an existing path, and {file_name} is not in {searched} (short names: {names}; "
                    f"pass a data folder or set MEDCAM_DATA_DIR)", name_or_path)
