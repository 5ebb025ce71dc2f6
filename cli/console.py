"""The CLI's consoles and its one error printer. rich lives in ``cli/`` only.

Every message that carries user text (a path, a class name, an exception's cause) is escaped before rich
renders it: a file named ``x[/]y.png`` or ``[red]a.png`` prints as it is, instead of crashing the printer
or losing its brackets.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "print_error", "escape"]

#: Standard output: tables and "wrote …" lines.
console = Console()
#: Standard error, never wrapped: one error, one line, whatever the terminal's width.
err_console = Console(stderr=True, soft_wrap=True)


def print_error(message: object, label: str = "error", on: Console | None = None) -> None:
    """``label: message`` on one line of stderr (``message`` escaped)."""
    (on or err_console).print(f"[bold red]{label}:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
