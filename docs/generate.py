"""Regenerate docs/cli-reference.md from the commands' own --help (run by `nox -s docs`).

tests/test_docs.py fails when the file is out of date, so the reference cannot drift.

The help is rendered in this process (typer's CliRunner), not by running the console scripts:
one interpreter instead of one per command page, so the docs test takes about a second. What
a terminal would change is pinned: 100 columns, no colour, no terminal.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent

# The console scripts (pyproject.toml [project.scripts]) and the typer app each one runs.
PROGRAMS = {"access": "access.cli.main", "access-broker": "access.broker.admin.main"}
HELP_ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "FORCE_COLOR": None}


@functools.cache
def _command(program: str) -> Any:
    """The click command of ``program``'s typer app, built once (typer rebuilds it per call)."""
    import typer.main

    return typer.main.get_command(importlib.import_module(PROGRAMS[program]).app)


@functools.cache
def _page(program: str, args: tuple[str, ...]) -> str:
    """``program ARGS --help`` as the console script prints it, right-trimmed line by line.

    Raises:
        RuntimeError: the help did not exit with status 0.
    """
    import typer.rich_utils
    from typer.testing import CliRunner

    # typer reads _TYPER_FORCE_DISABLE_TERMINAL / FORCE_COLOR once, at import: pin the result.
    forced = typer.rich_utils.FORCE_TERMINAL
    typer.rich_utils.FORCE_TERMINAL = False
    try:
        # CliRunner's isolation swaps stdout and the environment; main() runs the built command
        # (CliRunner.invoke would rebuild it from the typer app on every call).
        with CliRunner().isolation(env=HELP_ENV) as (stdout, stderr, _):
            status = _command(program).main([*args, "--help"], prog_name=program, standalone_mode=False)
            text = stdout.getvalue().decode()
            errors = stderr.getvalue().decode()
    finally:
        typer.rich_utils.FORCE_TERMINAL = forced
    if status not in (0, None):
        raise RuntimeError(f"`{program} {' '.join(args)} --help` exited {status}: {errors}")
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _help(program: str, args: list[str]) -> str:
    return _page(program, tuple(args))


def _subcommands(program: str, args: list[str]) -> list[str]:
    """Command names listed in the "Commands" panel of a group's help."""
    names: list[str] = []
    in_panel = False
    for line in _help(program, args).splitlines():
        stripped = line.strip()
        if stripped.startswith("╭") and " Commands " in stripped:
            in_panel = True
        elif in_panel and stripped.startswith("╰"):
            break
        elif in_panel and (match := re.match(r"│ ([a-z][a-z-]*) ", stripped)):
            names.append(match.group(1))
    return names


def render() -> str:
    parts = [
        "# CLI reference",
        "",
        "Generated from `--help` by `python docs/generate.py` (`nox -s docs`); do not edit by hand.",
        "",
    ]
    for program in ("access", "access-broker"):
        queue: list[list[str]] = [[]]
        while queue:
            args = queue.pop(0)
            title = " ".join([program, *args])
            parts += [f"## `{title}`", "", "```text", _help(program, args), "```", ""]
            for name in _subcommands(program, args):
                queue.append([*args, name])
    return "\n".join(parts)


def main() -> None:
    (ROOT / "cli-reference.md").write_text(render())
    print(f"wrote {ROOT / 'cli-reference.md'}")


if __name__ == "__main__":
    main()
