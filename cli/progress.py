"""Progress of a meta-training run that reads in a terminal and in a log alike: on a terminal a live bar; in a
pipe or a file (a CI log, ``| tee``) whole lines — one every :data:`LOG_EVERY` seconds and one at the end —
that are never cut to a width.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .console import escape

__all__ = ["StepProgress", "step_info", "LOG_EVERY"]

#: Seconds between two progress lines of a phase in a log (a terminal shows a live bar instead).
LOG_EVERY = 30.0

_TERMS = ("act", "kl", "ce", "area", "nec")


def step_info(log: dict[str, float]) -> str:
    """One outer step's losses: the first guess's (``zero-step``), after K steps when there are some, and
    the composite loss's terms; for learned steps (no ``zero``), the loss after each of them (``loss1`` …)."""
    if "zero" not in log:
        return " ".join(f"{k}={v:.3f}" for k, v in log.items() if k.startswith("loss") or k == "independence")
    terms = " ".join(f"{k}={log[k]:.3f}" for k in _TERMS if k in log)
    k = f" K-step={log['adapted']:.3f}" if "adapted" in log else ""
    return f"zero-step={log['zero']:.3f}{k} {terms}".rstrip()


class StepProgress:
    """Progress of one meta-training run (or phase), against its steps or its time budget.

    On a terminal: a rich bar with the latest losses. Elsewhere: a plain line ``LABEL: step N, S s[ of B s],
    losses`` at most every ``every`` seconds and once at the end, so a log shows progress while it runs and
    no line is cut.

    Args:
        console: where to print.
        label: what runs (e.g. ``"meta-train amortized (1/2)"``).
        total_steps: the run's outer steps (the bar's length when there is no time budget).
        budget_seconds: the run's training-time budget, if any (then the bar follows the time).
        every: seconds between two lines in a log.
    """

    def __init__(self, console: Console, label: str, *, total_steps: int | None = None,
                 budget_seconds: float | None = None, every: float = LOG_EVERY) -> None:
        self.console, self.label, self.every = console, label, every
        self.total_steps, self.budget = total_steps, budget_seconds
        self.live = console.is_terminal
        self._last_line = time.monotonic()
        self._last: tuple[int, dict[str, float]] | None = None
        self._bar: Progress | None = None

    def __enter__(self) -> StepProgress:
        if self.live:
            self._bar = Progress(TextColumn(f"[bold]{escape(self.label)}"), BarColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
            self._bar.__enter__()
            total = self.budget if self.budget is not None else self.total_steps
            self._task = self._bar.add_task(self.label, total=total, info="")
        return self

    def _line(self, step: int, log: dict[str, float]) -> str:
        seconds = log.get("seconds", 0.0)
        of = f" of {self.budget:.0f} s" if self.budget is not None else ""
        steps = f"/{self.total_steps}" if self.total_steps is not None and self.budget is None else ""
        return f"{self.label}: step {step}{steps}, {seconds:.0f} s{of}, {step_info(log)}"

    def update(self, step: int, log: dict[str, float]) -> None:
        """After an outer step: its number and logged values (``log["seconds"]``: training time so far)."""
        self._last = (step, log)
        if self._bar is not None:
            done = min(log.get("seconds", 0.0), self.budget) if self.budget is not None else step
            self._bar.update(self._task, completed=done, info=f"step {step} {escape(step_info(log))}")
        elif time.monotonic() - self._last_line >= self.every:
            self._last_line = time.monotonic()
            self.console.print(escape(self._line(step, log)), soft_wrap=True, highlight=False)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)
        elif self._last is not None and kind is None:
            self.console.print(escape(self._line(*self._last)), soft_wrap=True, highlight=False)
