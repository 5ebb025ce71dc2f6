"""A folder of image files (DICOM, NIfTI, PNG…) with a label table, and a split that keeps groups together.

:func:`load_labelled` reads a CSV table whose rows name files of a folder (``file_column``) and their labels
(``label_column``); each file is decoded through :func:`medcam_fast.data.images.decode` (its own window for
DICOM), converted to 8-bit grey or RGB and resized (Pillow bilinear) to ``size``. Classes are the label
column's distinct values in sorted order (``False`` < ``True``). The group of each image (``group_column``) is
the table's column of that name, or else the DICOM attribute with that keyword (``PatientID``) read from the
file. :func:`grouped_split` splits by group, so no patient has images in two splits. numpy and Pillow only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from .images import ImageSet, _fit_image, _to_uint8, decode
from .medical import SourceKind, read_dicom_header, sniff_kind
from .preprocess import PathLike

__all__ = ["LabelTable", "DEFAULT_LABELLED_SIZE", "SPLIT_FRACTIONS", "load_labelled", "grouped_split", "load_unlabelled"]

#: The side images of a labelled folder are resized to when none is given.
DEFAULT_LABELLED_SIZE = 128

#: Target fractions of images in the train, val and test splits.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class LabelTable:
    """Where the labels of a folder of files are.

    Args:
        path: the CSV file (UTF-8, a header row).
        label_column: the column holding each file's label.
        file_column: the column holding each file's name, relative to the data folder.
        group_column: the column (or, when the table has none of that name, the DICOM keyword) grouping the
            images, e.g. ``PatientID``; None for no grouping (each image its own group).
    """

    path: Path
    label_column: str
    file_column: str
    group_column: str | None = None


def _read_table(table: LabelTable) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(table.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise DataError("label table not found", table.path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the label table: {e}", table.path) from None
    for column in (table.label_column, table.file_column):
        if column not in header:
            raise UsageError(f"the label table has no column {column!r} (columns: {', '.join(header)})", table.path)
    if not rows:
        raise DataError("the label table has no rows", table.path)
    return header, rows


def load_labelled(folder: PathLike, table: LabelTable, size: int = DEFAULT_LABELLED_SIZE,
                  ) -> tuple[ImageSet, np.ndarray]:
    """The images a label table names, their labels, and their groups.

    Args:
        folder: the folder the table's file names are relative to.
        table: where the labels (and groups) are.
        size: the side (pixels) every image is resized to.

    Returns:
        ``(images, groups)``: an :class:`ImageSet` (uint8, grey when every file is grey, else RGB) and a string
        array of each image's group.

    Raises:
        DataError: a missing or unreadable file, an empty label, a group attribute the file lacks.
        UsageError: a column the table lacks.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError("no such folder (the files of the label table)", root)
    header, rows = _read_table(table)
    group_in_table = table.group_column is not None and table.group_column in header
    raw, names, groups = [], [], []
    for k, row in enumerate(rows):
        name = (row.get(table.file_column) or "").strip()
        label = (row.get(table.label_column) or "").strip()
        if not name or not label:
            raise DataError(f"row {k + 2} has no {table.file_column if not name else table.label_column}", table.path)
        path = root / name
        if not path.is_file():
            raise DataError(f"the label table names {name!r} (row {k + 2}), which is not in the folder", path)
        decoded = decode(path)
        raw.append(_to_uint8(decoded.pixels))
        names.append(label)
        if table.group_column is None:
            groups.append(name)
        elif group_in_table:
            groups.append((row.get(table.group_column) or "").strip() or name)
        else:
            if sniff_kind(path) is not SourceKind.DICOM:
                raise UsageError(f"the label table has no column {table.group_column!r} and {name} is not DICOM",
                                 table.path)
            value = getattr(read_dicom_header(path), table.group_column, None)
            if value in (None, ""):
                raise DataError(f"no DICOM attribute {table.group_column} to group by", path)
            groups.append(str(value))
    classes = sorted(set(names))
    channels = 3 if any(x.ndim == 3 for x in raw) else 1
    images = np.stack([_fit_image(x, (size, size), channels) for x in raw])
    labels = np.asarray([classes.index(n) for n in names], dtype=np.int64)
    return ImageSet(images=images, labels=labels, classes=classes, name=root.resolve().name), np.asarray(groups)


def grouped_split(labels: np.ndarray, groups: np.ndarray, seed: int = 0,
                  fractions: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Split image indices into train/val/test so that every group lies in one split only.

    Groups are shuffled (``seed``), then taken largest first, each going to the split furthest below its
    target count (``fractions`` of the images; :data:`SPLIT_FRACTIONS` by default), a split that still lacks
    one of the group's classes (and not yet full) counting as further below. Sizes therefore match the fractions to within one
    group.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 index arrays.

    Raises:
        DataError: fewer groups than splits.
    """
    fractions = dict(SPLIT_FRACTIONS if fractions is None else fractions)
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    names = np.unique(groups)
    if len(names) < len(fractions):
        raise DataError(f"{len(names)} groups cannot fill {len(fractions)} splits without sharing a group")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    members = {g: np.flatnonzero(groups == g) for g in order}
    order.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
    target = {s: f * len(labels) for s, f in fractions.items()}
    taken: dict[str, list[int]] = {s: [] for s in fractions}
    seen: dict[str, set[int]] = {s: set() for s in fractions}
    for g in order:
        idx = members[g]
        new = set(labels[idx].tolist())

        def need(s: str, idx: np.ndarray = idx, new: set[int] = new) -> tuple[float, float]:
            deficit = (target[s] - len(taken[s])) / max(target[s], 1e-9)
            return (deficit + (0.5 if new - seen[s] and deficit > 0 else 0.0), -len(taken[s]))

        split = max(fractions, key=need)
        taken[split].extend(idx.tolist())
        seen[split] |= new
    return {s: np.asarray(sorted(v), dtype=np.int64) for s, v in taken.items()}


def load_unlabelled(folder: PathLike) -> ImageSet:
    """Every image file of a folder without class subfolders (DICOM, NIfTI — the middle slice — or images),
    decoded with its own window, as one unlabelled set (class ``unlabelled``): what meta-training needs, which
    reads images only. Images are 8-bit, grey unless one is RGB, resized (Pillow bilinear) to the first one's size.

    Raises:
        DataError: no image files, or one that cannot be read.
    """
    from .images import _load_any, list_images

    files = list_images(folder)
    raw = [_to_uint8(_load_any(f)) for f in files]
    channels = 3 if any(x.ndim == 3 for x in raw) else 1
    size = (int(raw[0].shape[0]), int(raw[0].shape[1]))
    images = np.stack([_fit_image(x, size, channels) for x in raw])
    return ImageSet(images=images, labels=np.zeros(len(raw), dtype=np.int64), classes=["unlabelled"],
                    name=Path(folder).resolve().name)
