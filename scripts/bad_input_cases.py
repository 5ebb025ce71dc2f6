"""Every case of the bad-input corpus with its exit code and message (``benchmarks/results/bad_input_cases.md``).

The corpus is ``tests/cli/test_bad_input.py``; its cases are generated at test time (parametrized tests, files
damaged in ``tmp_path``, the session's ``lesion_bundle_dir`` fixture). Rather than copy the case definitions,
this script runs that module under pytest itself -- same fixtures, same parametrization, same assertions -- and
records every CLI invocation the tests make by wrapping :meth:`typer.testing.CliRunner.invoke`:

* one row per invocation: case id (the pytest node id, ``#n`` when one test makes several invocations, in
  order), the command, the exit code, and the message as printed (the ``error: ...`` lines and any other line
  printed with them; for exit 0 the first ``warning:`` line, if any, and the run's last line), with absolute
  paths shortened to their file names;
* ``--threads 1`` is appended to every invocation of a command that accepts it and does not already pass it
  (the machine is shared); no other argument is changed, so the assertions still decide pass or fail;
* the test's pytest outcome (``passed``/``failed``) is a column, so a row is never reported for a case that
  no longer holds; tests that make no CLI invocation (the Python API case) get one row without an exit code.

Invocations that set up a case (e.g. the ``meta-train`` run that writes the checkpoint a later ``--resume``
finds damaged) are rows too: they are what the test ran, and their exit code (0) is asserted.

    .venv/bin/python scripts/bad_input_cases.py [-k EXPR]

``-k`` is passed to pytest (a subset; the result file then says so). Writes
``benchmarks/results/bad_input_cases.md``; exits 1 if any test failed.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "tests/cli/test_bad_input.py"
RESULT = ROOT / "benchmarks" / "results" / "bad_input_cases.md"

# an absolute path: "/" not preceded by a word character or dot, then path characters (no spaces, quotes, colons)
_PATH = re.compile(r"(?<![\w.])/(?:[^\s:'\"`,()]+/)*[^\s:'\"`,()/]*")


def shorten_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last component (``/tmp/x/pal.png`` -> ``pal.png``).

    A trailing sentence dot is kept out of the name; ``/`` alone (a bare root) is left as it is.
    """

    def last(m: re.Match[str]) -> str:
        path = m.group(0)
        tail = ""
        while path.endswith((".", ";")) and len(path) > 1:  # "... /tmp/a.png." -> keep the full stop outside
            path, tail = path[:-1], path[-1] + tail
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return (name or path) + tail

    return _PATH.sub(last, text)


@dataclass
class Invocation:
    """One ``CliRunner.invoke`` call made by a test."""

    args: list[str]
    exit_code: int
    output: str
    exception: str | None  # the exception type when it was not a clean SystemExit


@dataclass
class Recorder:
    """A pytest plugin recording each test's CLI invocations and its outcome."""

    threads_commands: set[str]
    current: str = ""
    calls: dict[str, list[Invocation]] = field(default_factory=lambda: collections.defaultdict(list))
    outcome: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.current = item.nodeid
        self.order.append(item.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            # a failure in setup or teardown counts as a failure of the case
            if report.nodeid not in self.outcome or report.outcome != "passed":
                self.outcome[report.nodeid] = report.outcome

    def wrap(self, invoke: Any) -> Any:
        recorder = self

        def recording_invoke(runner: Any, app: Any, args: list[str] | None = None, *a: Any, **kw: Any) -> Any:
            args = list(args if args is not None else kw.pop("args", None) or [])
            if args and args[0] in recorder.threads_commands and "--threads" not in args:
                args += ["--threads", "1"]
            result = invoke(runner, app, args, *a, **kw)
            exc = result.exception
            recorder.calls[recorder.current].append(Invocation(
                args, result.exit_code, result.output,
                None if exc is None or isinstance(exc, SystemExit) else type(exc).__name__))
            return result

        return recording_invoke


def _threads_commands() -> set[str]:
    """The CLI's commands that accept ``--threads`` (read from the app, not listed here)."""
    import typer.main

    from medcam_fast.cli.main import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    return {name for name, cmd in commands.items() if any("--threads" in getattr(p, "opts", ()) for p in cmd.params)}


def _message(inv: Invocation) -> str:
    """The case's message: the ``error:`` line(s), then any other line printed with them (``[also printed: ...]``);
    for exit 0 the first ``warning:`` line, if any, and the closing line of the run."""
    lines = [ln.strip() for ln in inv.output.splitlines() if ln.strip()]
    if inv.exit_code == 0:
        picked = [ln for ln in lines if ln.startswith("warning:")][:1]
        text = " ⏎ ".join(picked + [f"(exit 0; last line: {lines[-1]})" if lines else "(exit 0, no output)"])
    else:
        errors = [ln for ln in lines if ln.startswith("error:")]
        others = [ln for ln in lines if not ln.startswith("error:")]
        text = " ⏎ ".join(errors) if errors else "(no 'error:' line)"
        for ln in others:
            text += f"  [also printed: {ln[:120]}{'…' if len(ln) > 120 else ''}]"
    if inv.exception:
        text += f"  [exception: {inv.exception}]"
    return shorten_paths(text)


def _command(args: list[str]) -> str:
    if not args:
        return "(none)"
    if args[0] == "bench" and len(args) > 1:
        return " ".join(args[:2])
    return f"{args[0]} --combined" if "--combined" in args else args[0]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def write_markdown(rec: Recorder, path: Path, selection: str | None, seconds: float) -> dict[str, int]:
    """Write the table; return the count of rows per exit code (``"n/a"`` for tests without an invocation)."""
    rows: list[tuple[str, str, str, str, str]] = []
    for nodeid in rec.order:
        case = nodeid.split("::", 1)[-1]
        outcome = rec.outcome.get(nodeid, "not run")
        calls = rec.calls.get(nodeid, [])
        if not calls:
            rows.append((case, "(Python API)", "n/a", "no CLI invocation; asserts UsageError is raised", outcome))
        for k, inv in enumerate(calls, 1):
            cid = f"{case}#{k}" if len(calls) > 1 else case
            rows.append((cid, _command(inv.args), str(inv.exit_code), _message(inv), outcome))
    per_code = collections.Counter(r[2] for r in rows)
    failed = sorted({r[0].split("#")[0] for r in rows if r[4] != "passed"})
    lines = [
        "# Bad-input corpus: every case, its exit code and message",
        "",
        f"Generated by `scripts/bad_input_cases.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"from `{CORPUS}` ({len(rec.order)} tests, {len(rows)} cases = CLI invocations, {seconds:.0f} s, "
        "`--threads 1` added where a command accepts it)." + (f" Subset: `-k {selection}`." if selection else ""),
        "Messages are the `error:` line(s) as printed, paths shortened to file names, then any other line printed "
        "with them as `[also printed: ...]`; for exit 0 the first `warning:` line and the run's last line. Exit codes: 0 done, 2 usage, 3 data, 4 model.",
        "",
        "Count per exit code: " + ", ".join(f"{code}: {n}" for code, n in sorted(per_code.items())) + ".",
        "Tests failed: " + (", ".join(failed) if failed else "none") + ".",
        "",
        "| # | case | command | exit | message | test |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | `{_md_cell(c)}` | {cmd} | {code} | {_md_cell(msg)} | {out} |"
              for i, (c, cmd, code, msg, out) in enumerate(rows, 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return dict(per_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="selection", default=None, help="pytest -k expression (a subset of cases)")
    parser.add_argument("--out", type=Path, default=RESULT, help="the markdown file to write")
    opts = parser.parse_args(argv)

    import time

    import torch
    from typer.testing import CliRunner

    torch.set_num_threads(1)
    rec = Recorder(_threads_commands())
    original = CliRunner.invoke
    CliRunner.invoke = rec.wrap(original)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        code = pytest.main([str(ROOT / CORPUS), "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                            *(["-k", opts.selection] if opts.selection else [])], plugins=[rec])
    finally:
        CliRunner.invoke = original  # type: ignore[method-assign]
    per_code = write_markdown(rec, opts.out, opts.selection, time.perf_counter() - t0)
    print(f"{opts.out}: {sum(per_code.values())} cases; per exit code {dict(sorted(per_code.items()))}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
