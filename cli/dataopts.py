"""The options the data commands share, each defined once: ``--data-dir`` and ``--threads``, and the label
table's ``--labels``, ``--label-column``, ``--file-column``, ``--group-column``.

``train-classifier``, ``meta-train``, ``evaluate``, ``bench per-image`` and ``bench quality`` declare these four
parameters with the defaults below (one definition, so their names and help read alike) and turn them into a
:class:`~medcam_fast.data.labelled.LabelTable` with :func:`label_table`. With a table, ``--data`` is the folder of
its files; the commands after ``train-classifier`` read the same patient-grouped split from the seed and image
size the classifier bundle records (:func:`medcam_fast.cli.jobs.classifier_splits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..data.labelled import LabelTable
from ..errors import UsageError

__all__ = ["DATA_DIR", "THREADS", "LABELS", "LABEL_COLUMN", "FILE_COLUMN", "GROUP_COLUMN", "label_table"]

#: ``--data-dir``: where the shared data sets are (``MEDCAM_DATA_DIR``).
DATA_DIR: Any = typer.Option(None, "--data-dir", envvar="MEDCAM_DATA_DIR", help="Folder of the shared .npz data sets.")
#: ``--threads``: torch's CPU threads.
THREADS: Any = typer.Option(None, "--threads", min=1, help="CPU threads for torch.")

#: ``--labels``: the CSV table.
LABELS: Any = typer.Option(None, "--labels", help="A CSV table naming files of the --data folder (DICOM, NIfTI "
                           "or images) and their labels; the split is grouped by --group-column.")
#: ``--label-column``.
LABEL_COLUMN: Any = typer.Option(None, "--label-column", help="With --labels: the column of labels (e.g. "
                                 "Contrast).")
#: ``--file-column``.
FILE_COLUMN: Any = typer.Option(None, "--file-column", help="With --labels: the column of file names (e.g. "
                                "dicom_name).")
#: ``--group-column``.
GROUP_COLUMN: Any = typer.Option(None, "--group-column", help="With --labels: the table column, or else the "
                                 "DICOM attribute, that groups images (e.g. PatientID); no group straddles the "
                                 "train/val/test split (default: each file its own group).")


def label_table(labels: Path | None, label_column: str | None, file_column: str | None,
                group_column: str | None) -> LabelTable | None:
    """The :class:`LabelTable` the four options name, or None without ``--labels``.

    Raises:
        UsageError: ``--labels`` without ``--label-column`` and ``--file-column``, or a column option without
            ``--labels``.
    """
    if labels is None:
        if any(v is not None for v in (label_column, file_column, group_column)):
            raise UsageError("--label-column, --file-column and --group-column need --labels")
        return None
    if label_column is None or file_column is None:
        raise UsageError("--labels needs --label-column and --file-column", labels)
    return LabelTable(Path(labels), label_column, file_column, group_column)
