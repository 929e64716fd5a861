"""How both programs' ``--help`` reads, and their completion: one place for ``access`` and ``access-broker``.

- :func:`examples` writes the "Examples:" section every command's help ends with (as gh's do).
- :func:`tidy` names every value in help the way argparse and gh do (``--ttl TTL``, ``--output
  text|json``), never by Python type (``<str>``, ``<bool>``): a flag shows no value at all, an
  argument shows its NAME.
- :class:`HelpfulGroup` is the root group of both programs: it tidies every command it holds,
  answers a mistyped command with "Did you mean", and serves shell completion requests.
- :func:`completion_script` is what ``PROG completion bash|zsh|fish`` prints.
- :func:`tidy` also gives every parameter a quick coercion (:class:`_QuickCoercion`): typer
  checks each value, given or not, with a pydantic ``TypeAdapter`` it builds on first use,
  which imports pydantic and builds a validator per parameter (a third of ``access grants``'s
  start); a string, a flag, a choice or an absent value needs none of that.

Imports typer only (loaded anyway by both programs); no rich, so ``access``'s startup stays cheap.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import cached_property
from typing import Any

import typer
from typer._click.exceptions import UsageError  # typer vendors click; this is click's UsageError
from typer.core import TyperArgument, TyperGroup, TyperOption

try:  # typer >= 0.25 coerces values through these (its private API: without it, nothing to do)
    from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
    from typer._param_types import coerce_cli_choice
except ImportError:  # pragma: no cover - an older typer: click's own types, no pydantic
    RuntimeParam = None  # type: ignore[assignment,misc]

__all__ = [
    "HELP_NAMES",
    "HelpfulGroup",
    "Shell",
    "close_matches",
    "completion_script",
    "completion_var",
    "examples",
    "reflow",
    "tidy",
]

HELP_NAMES = ["-h", "--help"]


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def examples(*lines: str) -> str:
    """An "Examples:" help section: each line a command line (shown after ``$``) or a ``# comment``."""
    shown = [f"  {line}" if line.startswith("#") else f"  $ {line}" for line in lines]
    # typer reads help as rich markup: escape "[" so [OPTIONS]-like text prints as it is. The
    # leading newline keeps typer's dedent from eating the two-space indent of the lines.
    return "\nExamples:\n" + "\n".join(shown).replace("[", "\\[")


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """The candidates ``word`` is most likely a typo of (best first; at most three)."""
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def _value_name(option: TyperOption) -> str:
    """``--ca-file`` takes CA_FILE (argparse's rule); a choice lists its values."""
    choices = getattr(option.type_descriptor, "choices", None)
    if option.type_descriptor.is_choice and choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in choices)
    longest = max(option.opts, key=len)
    return longest.lstrip("-").upper().replace("-", "_")


class _NamedArgument(TyperArgument):
    """An argument shown by its NAME alone: typer would add its Python type (``<str>``)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _QuickCoercion(RuntimeParam):
        """typer's coercion of one parameter, without pydantic for the values that need none.

        A string for a ``str``, a bool for a ``bool``, one of a choice's values (typer's own
        matching: :func:`coerce_cli_choice`) are returned as typer's adapter would return them;
        an absent value never gets here (``RuntimeParam.coerce``). Anything else (a number, a
        path, a list, a value that is not one of the choices) goes to typer's own coercion,
        built on first use, so its checks and its error messages are typer's.
        """

        descriptor: TypeDescriptor

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            if self.parameter_info.parser is None and self.descriptor.file_annotation is None:
                if (kind is str and type(value) is str) or (kind is bool and type(value) is bool):
                    return value
                if isinstance(kind, type) and issubclass(kind, Enum) and isinstance(value, str | Enum):
                    sensitive = self.parameter_info.case_sensitive
                    try:
                        return coerce_cli_choice(
                            value, choices=tuple(kind), case_sensitive=sensitive, ctx=ctx
                        )
                    except ValueError:
                        pass  # typer's own coercion words the error
            return self._typers._coerce_value(value, param=param, ctx=ctx)

        @cached_property
        def _typers(self) -> RuntimeParam:
            """typer's own coercion of this parameter (its pydantic adapter), built once."""
            return build_runtime_param(self.descriptor)


def _quick(param: Any) -> None:
    descriptor = getattr(param, "type_descriptor", None)
    if RuntimeParam is None or not isinstance(descriptor, TypeDescriptor):
        return
    if hasattr(param, "_runtime_param"):
        param._runtime_param = _QuickCoercion(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, descriptor=descriptor
        )


def _tidy_param(param: Any) -> None:
    _quick(param)
    if isinstance(param, TyperArgument):
        if param.metavar is None:
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "") if param.name else None
        param.__class__ = _NamedArgument
    elif isinstance(param, TyperOption) and param.metavar is None:
        param.metavar = "" if param.is_flag else _value_name(param)


def reflow(text: str) -> str:
    """Join each paragraph's lines into one, so the help formatter wraps it to the terminal.

    typer keeps a docstring's line breaks, so a paragraph wrapped at 100 columns in the source
    prints as ragged half-lines at 80. Paragraphs with indented or bulleted lines keep theirs.
    """
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p
        if any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in p.splitlines())
        else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


def tidy(command: Any) -> None:
    """Name the values of ``command`` (and of its subcommands) as argparse does; flags show none;
    reflow its help paragraphs (see ``reflow``)."""
    if command.help:
        command.help = reflow(command.help)
    if command.epilog:
        command.epilog = reflow(command.epilog)
    help_option = command.get_help_option(typer.Context(command, help_option_names=HELP_NAMES))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        _tidy_param(param)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)


def completion_var(prog_name: str) -> str:
    """The environment variable a completion script sets when it asks ``prog_name`` for words."""
    return f"_{prog_name}_COMPLETE".replace("-", "_").upper()


def completion_script(prog_name: str, shell: Shell) -> str:
    """The script that makes ``shell`` complete ``prog_name``'s commands and options."""
    # typer's own completion classes and scripts (its --show-completion uses them): the scripts
    # and the answers to them must come from the same classes.
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    return get_completion_script(
        prog_name=prog_name, complete_var=completion_var(prog_name), shell=str(shell)
    )


class HelpfulGroup(TyperGroup):
    """A root group whose commands read alike in help, that suggests commands, and completes."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.context_settings.setdefault("help_option_names", HELP_NAMES)
        self.suggest_commands = False  # ours below also knows commands that load on first use
        tidy(self)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:  # "No such command 'grnts'."
            if exc.message.startswith("No such command") and args:
                matches = close_matches(args[0], self.list_commands(ctx))
                if matches:
                    exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise

    def _main_shell_completion(
        self, ctx_args: MutableMapping[str, Any], prog_name: str, complete_var: str | None = None
    ) -> None:
        # The words come from typer's completion classes: the same ones completion_script uses.
        if os.environ.get(complete_var or completion_var(prog_name)):
            from typer._completion_classes import completion_init

            completion_init()
        super()._main_shell_completion(ctx_args, prog_name, complete_var)
