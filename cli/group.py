"""The root command group: commands load on first use, and CLI errors are caught here, once.

Every subcommand lives in a module that is imported only when that command runs (or its
``--help`` is shown), so ``access whoami`` never imports the tunnel, and ``access --help``
imports no command module at all: the listing uses the one-line summaries below. A command
whose module is missing from this installation fails with a clear error instead of breaking
the whole CLI.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from access.cli import render
from access.cli.errors import CliError

__all__ = ["COMMANDS", "EXEC_CONTEXT", "AccessGroup", "LazyCommand", "load_command"]

# `access exec SERVICE [options] -- COMMAND ARGS...`: after `--` everything goes to COMMAND,
# and its own options (psql -c ...) are never taken for ours.
EXEC_CONTEXT: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass(frozen=True)
class LazyCommand:
    module: str
    attr: str
    summary: str
    context_settings: dict[str, Any] = field(default_factory=dict)


_AUTH, _GRANTS, _TUNNEL = (
    "access.cli.commands.auth",
    "access.cli.commands.grants",
    "access.cli.commands.tunnel",
)

# The command index, in the order `access --help` lists it.
COMMANDS: dict[str, LazyCommand] = {
    "login": LazyCommand(_AUTH, "login", "Sign in (device flow, or --client-id for service accounts)."),
    "logout": LazyCommand(_AUTH, "logout", "Sign out on the broker and delete the local tokens."),
    "whoami": LazyCommand(_AUTH, "whoami", "Show who you are signed in as, and your groups."),
    "status": LazyCommand(_AUTH, "status", "Show every broker profile: who, session end, active grants."),
    "services": LazyCommand(_GRANTS, "services", "List services you may request: kind, scopes, max TTL."),
    "request": LazyCommand(_GRANTS, "request", "Ask for a time-limited grant on a service."),
    "grants": LazyCommand(_GRANTS, "grants", "List your grants with state and time left."),
    "revoke": LazyCommand(_GRANTS, "revoke", "End a grant now; live connections are cut."),
    "connect": LazyCommand(_TUNNEL, "connect", "Forward a local port to a service through the broker."),
    "exec": LazyCommand(
        _TUNNEL, "exec_command", "Run a command with a tunnel to a service (-- CMD ARGS).", EXEC_CONTEXT
    ),
    "env": LazyCommand(_TUNNEL, "env", "Print a service's connection variables as exports."),
    "audit": LazyCommand(
        "access.cli.commands.audit", "audit", "Show audit ledger entries (if policy lets you)."
    ),
    "demo": LazyCommand("access.cli.demo", "demo", "Run the whole loop against a throwaway broker."),
}


def _unavailable(name: str, spec: LazyCommand, reason: str) -> TyperCommand:
    def missing() -> None:
        raise CliError(
            f"`access {name}` is not available in this installation ({reason})",
            "reinstall access: pip install --force-reinstall access-jit",
        )

    return TyperCommand(name=name, callback=missing, help=spec.summary, context_settings=dict(EXEC_CONTEXT))


def load_command(name: str, spec: LazyCommand) -> Any:
    """Import ``spec.module`` and build the click command for ``spec.attr``."""
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not spec.module.startswith(exc.name):
            raise  # the module exists but one of its imports is missing: a real bug, show it
        return _unavailable(name, spec, f"{spec.module} is missing")
    function = getattr(module, spec.attr, None)
    if function is None:
        return _unavailable(name, spec, f"{spec.module} has no {spec.attr}")
    single = typer.Typer(add_completion=False)
    single.command(name, context_settings=dict(spec.context_settings) or None)(function)
    return typer.main.get_command(single)


class AccessGroup(TyperGroup):
    """Lazy subcommands, and the one place a :class:`CliError` becomes a message and an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in COMMANDS if name not in own)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in COMMANDS:
            return command
        # For listings only: a stand-in with the summary; resolve_command loads the real one.
        return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name].summary, callback=None)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in COMMANDS and args[0] not in self.commands:
            self.commands[args[0]] = load_command(args[0], COMMANDS[args[0]])
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            render.error(exc)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            render.message("interrupted")
            raise typer.Exit(130) from None
