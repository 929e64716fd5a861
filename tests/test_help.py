"""Both programs' help and completion have gh's manners (issue 9, "Help and completion").

Every command of ``access`` and ``access-broker`` (walked from the apps, so a new command is
covered without being listed here) answers ``-h`` with an Examples section, names values as
argparse does and never by Python type, and a flag shows no value at all.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from access.broker.admin.main import app as broker_app
from access.broker.settings import Settings
from access.cli import group
from access.cli.main import app as access_app
from access.shared.clihelp import completion_var

APPS = {"access": access_app, "access-broker": broker_app}
HELP_ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
BIN = Path(sys.executable).parent

# What typer and click print for a value when nobody named it: Python types, click types.
PYTHON_TYPE = re.compile(r"<(str|bool|int|float|path|file|datetime|uuid|list\[.*?\]|\w+ range)>")
CLICK_TYPE = re.compile(r"^(TEXT|INTEGER|BOOLEAN|FLOAT|PATH|FILENAME|UUID|DATETIME)\b")


def _children(program: str, path: tuple[str, ...], command: Any) -> list[tuple[tuple[str, ...], Any]]:
    if program == "access" and not path:
        return [((name,), group.load_command(name, spec)) for name, spec in group.COMMANDS.items()]
    return [((*path, name), sub) for name, sub in getattr(command, "commands", {}).items()]


def _walk() -> list[tuple[str, tuple[str, ...], Any]]:
    found = []
    for program, app in APPS.items():
        queue: list[tuple[tuple[str, ...], Any]] = [((), typer.main.get_command(app))]
        while queue:
            path, command = queue.pop(0)
            found.append((program, path, command))
            queue.extend(_children(program, path, command))
    return found


COMMANDS = _walk()
IDS = [" ".join([program, *path]) for program, path, _ in COMMANDS]


def _help(program: str, *args: str, columns: int = 200) -> str:
    env = {**HELP_ENV, "COLUMNS": str(columns)}
    result = CliRunner().invoke(APPS[program], [*args, "-h"], env=env, prog_name=program)
    assert result.exit_code == 0, (program, args, result.output)
    return result.stdout


def test_the_walk_finds_every_command() -> None:
    assert {"access exec", "access completion", "access-broker serve", "access-broker users add"} <= set(IDS)
    assert {"access-broker completion", "access-broker audit export"} <= set(IDS)


@pytest.mark.parametrize(("program", "path", "command"), COMMANDS, ids=IDS)
def test_every_command_answers_dash_h_with_examples_and_no_python_types(
    program: str, path: tuple[str, ...], command: Any
) -> None:
    text = _help(program, *path)
    assert "Usage: " + " ".join([program, *path]) in text
    examples = text.split("Examples:", 1)
    assert len(examples) == 2, f"no Examples section in `{program} {' '.join(path)} -h`"
    assert f"$ {program}" in examples[1]
    assert not PYTHON_TYPE.search(text), PYTHON_TYPE.search(text)
    ctx = typer.Context(command, info_name=program)
    helper = command.get_help_option(ctx)
    for param in [*command.params, *([helper] if helper else [])]:
        shown = param.display_type_rich(ctx) or ""
        where = f"{program} {' '.join(path)} {param.opts}"
        if getattr(param, "is_flag", False):
            assert shown == "", f"{where}: a flag shows no value, not {shown!r}"
        else:
            assert not PYTHON_TYPE.search(shown) and not CLICK_TYPE.match(shown), f"{where}: {shown!r}"
            assert shown or param.param_type_name == "argument", f"{where} shows no value name"


@pytest.mark.parametrize(("program", "path", "command"), COMMANDS, ids=IDS)
def test_help_prose_wraps_to_the_terminal_not_to_the_source(
    program: str, path: tuple[str, ...], command: Any
) -> None:
    """A docstring paragraph wrapped at 100 columns in the source must not print as ragged
    half-lines ("... a private file" / "deleted" / "afterwards) ...") at 80 columns."""
    text = _help(program, *path, columns=80)
    prose = text.split("\u256d", 1)[0] + text.rsplit("\u256f", 1)[-1]  # before the boxes, after them
    lines = [line.strip() for line in prose.splitlines()]
    for line, after in itertools.pairwise(lines):
        ragged = 0 < len(line) < 50 and after[:1].islower()
        assert not ragged, f"`{program} {' '.join(path)} -h` breaks a sentence: {line!r} / {after!r}"


def test_short_flags_mean_the_same_on_every_command() -> None:
    meaning: dict[str, set[str]] = {}
    for program, _, command in COMMANDS:
        for param in command.params:
            shorts = [o for o in param.opts if not o.startswith("--")]
            longs = [o for o in param.opts if o.startswith("--")]
            for short in shorts:
                meaning.setdefault(f"{program} {short}", set()).update(longs)
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    for name in ("request", "exec", "connect"):
        opts = {o for p in group.load_command(name, group.COMMANDS[name]).params for o in p.opts}
        assert {"-t", "--ttl", "-s", "--scope", "-r", "--reason"} <= opts, name


def test_exec_usage_shows_the_double_dash() -> None:
    assert "Usage: access exec [OPTIONS] SERVICE -- COMMAND..." in _help("access", "exec")


@pytest.mark.parametrize(
    ("program", "args", "suggestion"),
    [
        ("access", ["grnats"], "Did you mean 'grants'?"),
        ("access", ["complition", "bash"], "Did you mean 'completion'?"),
        ("access-broker", ["srve"], "Did you mean 'serve'?"),
        ("access-broker", ["users", "lst"], "Did you mean 'list'?"),
    ],
)
def test_a_mistyped_command_gets_did_you_mean(program: str, args: list[str], suggestion: str) -> None:
    result = CliRunner().invoke(APPS[program], args, env=HELP_ENV, prog_name=program)
    assert result.exit_code == 2
    assert suggestion in result.stderr


def test_serve_help_shows_each_settings_variable_and_default() -> None:
    text = " ".join(_help("access-broker", "serve").split())  # the help's own wrapping undone
    serve = typer.main.get_command(broker_app).commands["serve"]  # type: ignore[attr-defined]
    settings = [p.name for p in serve.params if p.name in Settings.model_fields]
    assert len(settings) >= 9
    for name in settings:
        assert f"[env var: ACCESS_BROKER_{name.upper()}]" in text, name
    for shown in (
        "[default: 8443]",
        "[default: 127.0.0.1]",
        "[default: off]",
        "~/.local/share/access-broker",
    ):
        assert shown in text


@pytest.mark.parametrize("program", sorted(APPS))
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_each_shell(program: str, shell: str) -> None:
    result = CliRunner().invoke(APPS[program], ["completion", shell], prog_name=program)
    assert result.exit_code == 0, result.output
    assert completion_var(program) in result.stdout and program in result.stdout


@pytest.mark.parametrize(
    ("program", "typed", "expected"), [("access", "gra", "grants"), ("access-broker", "ser", "serve")]
)
def test_bash_completes_a_command_name_with_the_script_sourced(
    program: str, typed: str, expected: str
) -> None:
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed for this test"
    script = f"""
source <({program} completion bash)
function=$(complete -p {program} | sed -E 's/.*-F ([^ ]+).*/\\1/')
COMP_WORDS=({program} {typed}); COMP_CWORD=1
"$function" {program}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout.split(), (done.stdout, done.stderr)
