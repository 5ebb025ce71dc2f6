"""Click's own usage errors (a bad option value, a missing option, an unknown command) as the CLI's one line.

Typer and click print a three-line usage block (``Usage: …``, ``Try '… --help'``, ``Error: …``) in a style of
their own; issue 14 wants every user mistake as ``error: <option>: <cause>`` on one line and exit 2, the same as
the library's :class:`~medcam_fast.errors.UsageError`. :class:`OneLineErrorsGroup` is the top-level command
class: it catches click's usage errors where they are raised (parsing the top level, resolving and parsing a
subcommand, a command body's ``typer.BadParameter``) and prints one line. ``--help`` and a bare command that
shows its help (click's ``NoArgsIsHelpError``) are left alone.
"""

from __future__ import annotations

from typing import Any

import typer
from typer._click.exceptions import BadParameter, MissingParameter, NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from medcam_fast.cli.console import print_error

__all__ = ["OneLineErrorsGroup", "one_line"]

#: pydantic's range checks (typer's ``min=``/``max=``) as a comparison sign.
_BOUNDS = {"greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("≤", "le"),
           "less_than": ("<", "lt")}

#: The exit code of a usage error (``medcam_fast.errors.EXIT_CODES``).
USAGE_EXIT = 2


def _cause(e: BadParameter) -> str:
    """The cause of a bad option value: ``must be ≥ 1 (got -1)`` for a range check, else click's message."""
    errors = getattr(e.__cause__, "errors", None)  # a pydantic ValidationError from typer's coercion
    if callable(errors):
        try:
            first = errors()[0]
        except Exception:  # noqa: BLE001 — any other shape: fall back to click's message
            first = None
        if first is not None:
            kind = first.get("type")
            got = first.get("input")
            if kind in _BOUNDS:
                sign, key = _BOUNDS[kind]
                return f"must be {sign} {first.get('ctx', {}).get(key)} (got {got})"
            msg = str(first.get("msg", e.message))
            return f"{msg[:1].lower()}{msg[1:]} (got {got})"
    return e.message


def one_line(e: ClickUsageError) -> str:
    """``--option: cause`` for a bad option value, else click's message without its closing full stop."""
    if isinstance(e, BadParameter) and not isinstance(e, MissingParameter):
        hint = e.param_hint if isinstance(e.param_hint, str) else None
        if hint is None and e.param is not None:
            opts = getattr(e.param, "opts", None) or []
            hint = max(opts, key=len) if opts else (e.param.name or "")
        if hint:
            return f"{hint}: {_cause(e)}"
        return _cause(e)
    return e.format_message().rstrip(".")


class OneLineErrorsGroup(TyperGroup):
    """The ``medcam-fast`` group: click's usage errors become ``error: …`` on one line, exit 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise
        except ClickUsageError as e:
            print_error(one_line(e))
            raise typer.Exit(USAGE_EXIT) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except ClickUsageError as e:
            print_error(one_line(e))
            raise typer.Exit(USAGE_EXIT) from None
