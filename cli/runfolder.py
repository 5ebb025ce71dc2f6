"""The output folder of an ``explain`` run: names that cannot collide, an exclusive lock, a manifest.

Nothing a user put in ``--out`` is lost:

* **Names.** Each image's outputs are named after its file stem, capped at :data:`MAX_STEM` characters;
  stems that repeat (compared case-insensitively, as macOS and Windows file systems do) or that had to be
  cut get ``-`` and 8 hex digits of the sha1 of the source's path, so two inputs never share an output name
  and no suffix can equal another input's real name (the old ``-1`` suffix could). ``summary`` and
  ``manifest`` are the run's own names: an image called ``summary.png`` is tagged too.
* **Lock.** ``.medcam-fast.lock`` is held with ``flock`` for the run's life; a second run into the same
  folder is refused at once (exit 2) instead of both reporting success while one overwrites the other.
* **Manifest.** ``manifest.json`` lists every file medcam-fast wrote there, with its sha256, and the record
  of every explained image; a batch's files are listed (without a hash) before they are written, so a run
  killed mid-batch leaves nothing unlisted. ``--resume`` skips an image only when all its files are listed with matching
  hashes; ``--resume`` and ``--overwrite`` replace only listed files, and any other file in the way is an
  error naming it. The summary is built from the manifest, so after a resume it describes the whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .._io import atomic_write_json, sha256_file
from ..errors import UsageError

__all__ = ["MAX_STEM", "output_stems", "RunFolder"]

#: Longest output stem; with the longest suffix (``_overlay.png``) a name stays far below 255 bytes.
MAX_STEM = 100
_MANIFEST = "manifest.json"
_LOCK = ".medcam-fast.lock"
_FORMAT = "medcam-fast-run/1"
#: An atomic write's temporary file (``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``).
_TMP = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
#: Endings of the files a run writes.
_OWN_SUFFIXES = ("_mask.png", "_soft.png", "_overlay.png", "_soft.npy", ".json", "summary.csv", "_seg.dcm",
                 "_mask.nii.gz", "_soft.nii.gz")
#: Stems the run's own files use.
_RESERVED = frozenset({"summary", "manifest"})


def _tag(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def output_stems(stems: Sequence[str], sources: Sequence[str]) -> list[str]:
    """Distinct output stems for inputs with file stems ``stems`` read from ``sources`` (their paths).

    A stem longer than :data:`MAX_STEM` is cut; a stem that was cut, that another input shares (ignoring
    case) or that the run's own files use (``summary``, ``manifest``) becomes ``stem-<sha1(source)[:8]>``.
    """
    cut = [s[: MAX_STEM - 9] if len(s) > MAX_STEM else s for s in stems]
    count: dict[str, int] = {}
    for s in cut:
        count[s.casefold()] = count.get(s.casefold(), 0) + 1
    out = [f"{c}-{_tag(src)}" if count[c.casefold()] > 1 or c != s or c.casefold() in _RESERVED else c
           for s, c, src in zip(stems, cut, sources, strict=True)]
    if len({o.casefold() for o in out}) != len(out):  # a real name equal to a tagged one: tag everything
        out = [f"{c}-{_tag(src)}" for c, src in zip(cut, sources, strict=True)]
    return out


class RunFolder:
    """``--out`` for the life of one run (a context manager: takes the lock, releases it on exit).

    Args:
        out: the output folder (created if needed).
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._fd: int | None = None
        self._created = False
        self.files: dict[str, str] = {}
        self.images: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> RunFolder:
        self._created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write to the output folder: {e.strerror or e}", self.out) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError("another medcam-fast run is writing to this folder; wait for it or choose another "
                             "--out", self.out) from None
        self._fd = fd
        self._load()
        self.sweep()
        return self

    def sweep(self) -> None:
        """Remove the temporary files of writes a killed run (or a killed worker of this one, ``--engine ray``)
        left behind (``.NAME.XXXXXXXX.tmp`` of an atomic write of one of the run's own files): the lock says no
        other run is writing."""
        for tmp in self.out.glob(".*.tmp"):
            m = _TMP.fullmatch(tmp.name)
            if m and m.group(1).endswith(_OWN_SUFFIXES) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
            if self._created and not self.files:  # nothing written: leave no empty folder behind
                (self.out / _LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.out.rmdir()

    def _load(self) -> None:
        path = self.out / _MANIFEST
        if not path.is_file():
            return
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format is not {_FORMAT!r}")
            self.files = {str(k): str(v) for k, v in meta["files"].items()}
            self.images = {str(k): dict(v) for k, v in meta["images"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"the run manifest cannot be read ({e}); choose another --out", path) from None

    def _intact(self, path: Path) -> bool:
        return (path.name in self.files and path.is_file() and not path.is_symlink()
                and sha256_file(path) == self.files[path.name])

    def plan(self, stem: str, paths: Mapping[str, Path], *, overwrite: bool, resume: bool) -> bool:
        """Whether image ``stem`` must be explained (False: ``resume`` and its outputs are complete).

        Raises:
            UsageError: a file in the way that medcam-fast did not write (named), or existing outputs without
                ``overwrite`` or ``resume``.
        """
        present = [p for p in paths.values() if p.exists() or p.is_symlink()]
        foreign = [p for p in present if p.name not in self.files]
        if foreign:
            raise UsageError(f"{foreign[0].name} is in the way and was not written by medcam-fast; move it or "
                             "choose another --out", self.out)
        if not present:
            return True
        if resume and stem in self.images and all(self._intact(p) for p in paths.values()):
            return False
        if overwrite or resume:
            return True
        raise UsageError(f"outputs for {stem} already exist; pass --overwrite or --resume", self.out)

    def intend(self, paths: Iterable[Path]) -> None:
        """List files about to be written, without a hash yet (saved at once): if the run is killed before
        :meth:`record`, they are still known as this tool's, and ``--resume`` writes them again."""
        for p in paths:
            self.files.setdefault(p.name, "")
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.out / _MANIFEST, {"format": _FORMAT, "files": self.files, "images": self.images})

    def record(self, written: Mapping[str, Mapping[str, Path]], rows: Mapping[str, dict[str, Any]]) -> None:
        """Add a batch's files (stem → kind → path) and records (stem → row) to the manifest, atomically."""
        for paths in written.values():
            for p in paths.values():
                self.files[p.name] = sha256_file(p)
        self.images.update(rows)
        self._save()

    def rows(self, stems: Sequence[str]) -> list[dict[str, Any]]:
        """The records of ``stems`` that the manifest holds, in that order: the whole run, resumed or not."""
        return [self.images[s] for s in stems if s in self.images]
