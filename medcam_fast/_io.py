"""Small file helpers: atomic writes and hashing. Nothing here imports torch.

Files are created beside their target with ``mkstemp`` (``O_CREAT | O_EXCL``: a planted symlink is never
followed) and get the permissions the user's umask gives a new file (``mkstemp`` alone would leave 0600,
so colleagues could not read the results), then replace the target in one ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ModelError

__all__ = ["SEAL_KEY", "seal", "check_seal", "new_file_mode", "atomic_write", "atomic_write_bytes", "atomic_write_json", "sha256_file"]


_UMASK_LOCK = threading.Lock()


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (``0o666 & ~umask``)."""
    with _UMASK_LOCK:  # reading the umask means setting it: keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, then ``os.replace``.

    A crash or interruption leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: The key of a bundle's JSON that holds the hash of everything else in it.
SEAL_KEY = "content_sha256"


def _content_sha256(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != SEAL_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` plus :data:`SEAL_KEY`: the sha256 of its canonical JSON (sorted keys, no spaces) without that
    key. A bundle's JSON records the sha256 of its weights (and ONNX file), so the seal covers every file."""
    return {**{k: v for k, v in meta.items() if k != SEAL_KEY}, SEAL_KEY: _content_sha256(meta)}


def check_seal(meta: Mapping[str, Any], path: Path, allow_unsealed: bool = False) -> bool:
    """Check the seal of a bundle's JSON ``meta`` read from ``path``; returns whether it was sealed.

    Raises:
        ModelError: the seal does not match (the file was edited after it was written), or there is none
            and ``allow_unsealed`` is False.
    """
    recorded = meta.get(SEAL_KEY)
    if not recorded:
        if allow_unsealed:
            return False
        raise ModelError(f"{path.name} carries no content hash (written by medcam-fast 0.1.0, or edited): "
                         "reseal it with `medcam-fast seal` after checking it, or allow unsealed bundles", path)
    if recorded != _content_sha256(meta):
        raise ModelError(f"{path.name} was changed after it was written (content hash mismatch): its classes, "
                         "preprocessing or other facts no longer match what was trained", path)
    return True
