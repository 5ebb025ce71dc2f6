"""The CLI's consoles and its one error printer. rich lives in ``cli/`` only.

Every message that carries user text (a path, a class name, an exception's cause) is escaped before rich
renders it: a file named ``x[/]y.png`` or ``[red]a.png`` prints as it is, instead of crashing the printer
or losing its brackets.

Output that goes to a pipe or a file (a CI log, ``| tee``) is not cut to a terminal's width: without a
terminal and without ``COLUMNS``, the consoles are :data:`LOG_WIDTH` wide, so tables keep each name on one
line and progress lines are whole (rich would otherwise assume 80 columns and fold or cut with "…").
"""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions
from rich.markup import escape

__all__ = ["console", "err_console", "print_error", "escape", "LogConsole", "LOG_WIDTH"]

#: The width of a console that writes to no terminal (and has no ``COLUMNS``): wide enough that no table or
#: line of this CLI is folded or cut. Tables still take only the width they need.
LOG_WIDTH = 1000


class LogConsole(Console):
    """A rich console that is :data:`LOG_WIDTH` wide when it writes to no terminal and ``COLUMNS`` is unset
    (decided at each print: a test runner or a redirect may swap the stream), and the terminal's width
    otherwise."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(LOG_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


#: Standard output: tables and "wrote …" lines.
console = LogConsole()
#: Standard error, never wrapped: one error, one line, whatever the terminal's width.
err_console = LogConsole(stderr=True, soft_wrap=True)


def print_error(message: object, label: str = "error", on: Console | None = None) -> None:
    """``label: message`` on one line of stderr (``message`` escaped)."""
    (on or err_console).print(f"[bold red]{label}:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
