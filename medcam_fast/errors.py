"""Error types and the exit codes the CLI maps them to.

Every error a user can cause carries the offending path (when there is one) and a one-line cause, so the
CLI can print ``error: <path>: <cause>`` without a traceback.
"""

from __future__ import annotations

import re
from os import PathLike

__all__ = ["MedCamError", "UsageError", "DataError", "ModelError", "EXIT_CODES", "one_line"]


class MedCamError(Exception):
    """Base class of every error medcam-fast raises on purpose.

    Args:
        cause: one line saying what is wrong.
        path: the file or folder concerned, if any.
    """

    exit_code: int = 1

    def __init__(self, cause: str, path: str | PathLike[str] | None = None) -> None:
        self.cause = cause
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


class UsageError(MedCamError):
    """A command-line or API argument is wrong (exit code 2)."""

    exit_code = 2


class DataError(MedCamError):
    """An input image or data set cannot be read or is invalid (exit code 3)."""

    exit_code = 3


class ModelError(MedCamError):
    """A classifier or explainer cannot be loaded, or the pair does not match (exit code 4)."""

    exit_code = 4


#: Exit codes of the ``medcam-fast`` command, documented in ``--help`` and the README.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it)",
    2: "usage error (bad option or argument)",
    3: "data error (an input image or data set cannot be read, or an output cannot be written: disk full)",
    4: "model error (a classifier or explainer cannot be loaded, or they do not match)",
    5: "some inputs of a batch failed (the others were written)",
    130: "interrupted",
}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(e: BaseException, limit: int = 300, typed: bool = False) -> str:
    """An exception's message on one line for a user-facing error: terminal colours removed, white space
    squeezed, at most ``limit`` characters; ``typed`` prefixes the exception's type name. A message-less
    exception gives its type name."""
    text = " ".join(_ANSI.sub("", str(e)).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if typed else text
