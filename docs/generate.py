"""Regenerate docs/cli-reference.md from the commands' own --help (run by `nox -s docs`).

tests/test_docs.py fails when the file is out of date, so the reference cannot drift.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def _help(program: str, args: list[str]) -> str:
    env = {
        **os.environ,
        "COLUMNS": "100",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "_TYPER_FORCE_DISABLE_TERMINAL": "1",
    }
    env.pop("FORCE_COLOR", None)
    result = subprocess.run(
        [str(BIN / program), *args, "--help"], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    return "\n".join(line.rstrip() for line in result.stdout.strip().splitlines())


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
