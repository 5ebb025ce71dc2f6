"""Silencing the progress bars of the peer packages while they run inside ``evaluate``.

``grad-cam``'s Score-CAM (and its ablation CAMs) draw a ``tqdm`` bar per image — about forty over an
evaluation, on stderr, between the lines of the evaluation's own progress. :func:`quiet_progress_bars`
disables every ``tqdm`` bar created while it is active (``disable=True`` forced in ``tqdm.tqdm.__init__``,
which the ``tqdm.auto`` and ``tqdm.std`` bars share) and restores ``tqdm`` afterwards; it also sets
``TQDM_DISABLE=1`` for the duration, for a package that imports ``tqdm`` for the first time inside it
(``tqdm`` reads that variable when it is imported). Without ``tqdm`` installed it does nothing. The
caller's own progress (the CLI's rich bar) is untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["quiet_progress_bars"]


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """While active, every ``tqdm`` progress bar is created disabled (see the module docstring)."""
    previous_env = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        try:
            import tqdm as tqdm_module  # type: ignore[import-untyped, no-redef]
        except ImportError:
            tqdm_module = None
    cls = getattr(tqdm_module, "tqdm", None)
    original = getattr(cls, "__init__", None)

    def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)  # type: ignore[misc]

    if cls is not None:
        cls.__init__ = silent_init
    try:
        yield
    finally:
        if cls is not None:
            cls.__init__ = original
        if previous_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous_env
