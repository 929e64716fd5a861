"""The root command group: commands load on first use, and CLI errors are caught here, once.

Every subcommand lives in a module that is imported only when that command runs (or its
``--help`` is shown), so ``access whoami`` never imports the tunnel, and ``access --help``
imports no command module at all: the listing uses the one-line summaries below. A command
whose module is missing from this installation fails with a clear error instead of breaking
the whole CLI.

Each command's help ends with its examples (below, beside its summary), names values as
argparse does (access.shared.clihelp), and accepts the global options after its name too:
``access grants -o json --broker URL`` is ``access -o json --broker URL grants``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.core import TyperCommand

from access.cli import render
from access.cli.errors import CliError, UsageError
from access.shared.clihelp import HelpfulGroup, examples, tidy

__all__ = ["COMMANDS", "EXEC_CONTEXT", "AccessCommand", "AccessGroup", "LazyCommand", "load_command"]

# `access exec SERVICE [options] -- COMMAND ARGS...`: after `--` everything goes to COMMAND,
# and its own options (psql -c ...) are never taken for ours.
EXEC_CONTEXT: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass(frozen=True)
class LazyCommand:
    module: str
    attr: str
    summary: str
    context_settings: dict[str, Any] = field(default_factory=dict)
    examples: tuple[str, ...] = ()
    usage: str | None = None  # the usage line after the command's name, when typer's would mislead
    global_options: bool = True  # False: the command talks to no broker (--broker would be ignored)


_AUTH, _GRANTS, _APPROVALS, _TUNNEL = (
    "access.cli.commands.auth",
    "access.cli.commands.grants",
    "access.cli.commands.approvals",
    "access.cli.commands.tunnel",
)

# The command index, in the order `access --help` lists it.
COMMANDS: dict[str, LazyCommand] = {
    "login": LazyCommand(
        _AUTH,
        "login",
        "Sign in (device flow, or --client-id for service accounts).",
        examples=(
            "access login --broker https://access.example.com",
            "# a pipeline, as a service account:",
            "access login --client-id ci-deploy --client-secret-file /run/secrets/access",
        ),
    ),
    "logout": LazyCommand(
        _AUTH, "logout", "Sign out on the broker and delete the local tokens.", examples=("access logout",)
    ),
    "whoami": LazyCommand(
        _AUTH,
        "whoami",
        "Show who you are signed in as, and your groups.",
        examples=("access whoami", "access whoami -o json"),
    ),
    "status": LazyCommand(
        _AUTH,
        "status",
        "Show every broker profile: who, session end, active grants.",
        examples=(
            "access status",
            "access status -o json",
            "access status --broker https://access.example.com",
        ),
    ),
    "services": LazyCommand(
        _GRANTS,
        "services",
        "List services you may request: kind, scopes, max TTL.",
        examples=("access services", "access services -o json"),
    ),
    "request": LazyCommand(
        _GRANTS,
        "request",
        "Ask for a time-limited grant on a service.",
        examples=(
            "access request payments-db -s read -t 1h -r INC-123",
            "access request payments-db -s write -t 15m -r 'CHG-42 schema fix' -o json",
        ),
    ),
    "grants": LazyCommand(
        _GRANTS,
        "grants",
        "List your grants with state and time left.",
        examples=("access grants", "access grants --all -o json", "access grants --pending"),
    ),
    "revoke": LazyCommand(
        _GRANTS,
        "revoke",
        "End a grant now; live connections are cut.",
        examples=("access revoke g-3f9c2a71d04be886",),
    ),
    "approve": LazyCommand(
        _APPROVALS,
        "approve",
        "Approve a request that waits for your review.",
        examples=("access grants --pending", "access approve g-3f9c2a71d04be886 -c 'INC-123 checked'"),
    ),
    "deny": LazyCommand(
        _APPROVALS,
        "deny",
        "Deny a request that waits for your review.",
        examples=("access deny g-3f9c2a71d04be886 -r 'not during the freeze'",),
    ),
    "wait": LazyCommand(
        _APPROVALS,
        "wait",
        "Wait for your pending request to be reviewed.",
        examples=(
            "access request payments-db -s write -r CHG-42 --no-wait -o json",
            "access wait g-3f9c2a71d04be886",
        ),
    ),
    "connect": LazyCommand(
        _TUNNEL,
        "connect",
        "Forward a local port to a service through the broker.",
        examples=(
            "access connect payments-db -s read -t 1h -r INC-123",
            "access connect cache -p 6380 &",
            "# scripts: one JSON line with the address, then it keeps running",
            "access connect payments-db -o json | head -1",
        ),
    ),
    "exec": LazyCommand(
        _TUNNEL,
        "exec_command",
        "Run a command with a tunnel to a service (-- CMD ARGS).",
        EXEC_CONTEXT,
        examples=(
            "access exec payments-db -r INC-123 -- psql -c 'select 1'",
            "access exec cache -s write -t 10m -- redis-cli ping",
        ),
        usage="[OPTIONS] SERVICE -- COMMAND...",
    ),
    "env": LazyCommand(
        _TUNNEL,
        "env",
        "Print a service's connection variables as exports.",
        examples=("access connect payments-db &", 'eval "$(access env payments-db)"; psql'),
    ),
    "kubeconfig": LazyCommand(
        _TUNNEL,
        "kubeconfig",
        "Print a kubeconfig for a running connect (kubernetes).",
        examples=(
            "access connect prod-cluster --scope operate &",
            "access kubeconfig prod-cluster --scope operate -f ~/.kube/access-prod",
            "KUBECONFIG=~/.kube/access-prod k9s",
        ),
        global_options=False,
    ),
    "audit": LazyCommand(
        "access.cli.commands.audit",
        "audit",
        "Show audit ledger entries (if policy lets you).",
        examples=(
            "access audit --since 1h",
            "access audit --service payments-db --actor alice -n 20",
            "access audit --since 2026-01-31T09:00 -o json",
        ),
    ),
    "demo": LazyCommand(
        "access.cli.demo",
        "demo",
        "Run the whole loop against a throwaway broker.",
        examples=("access demo", "access demo --keep"),
        global_options=False,
    ),
    "completion": LazyCommand(
        "access.cli.commands.completion",
        "completion",
        "Print a shell completion script (bash, zsh or fish).",
        examples=(
            "source <(access completion bash)        # in ~/.bashrc",
            'access completion zsh > "${fpath[1]}/_access"',
            "access completion fish > ~/.config/fish/completions/access.fish",
        ),
        global_options=False,
    ),
}


class AccessCommand(TyperCommand):
    """A subcommand: a usage line that may be spelled out, and the root's ``-o`` as its default."""

    usage: str | None = None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.usage] if self.usage else super().collect_usage_pieces(ctx)

    def invoke(self, ctx: Any) -> Any:
        from typer._click.core import ParameterSource

        from access.cli.context import globals_of

        wanted = globals_of(ctx).output
        if wanted is not None:
            if "output" not in ctx.params:
                raise UsageError(
                    f"`access {ctx.info_name}` has no -o/--output", f"run `access {ctx.info_name}` without it"
                )
            if ctx.get_parameter_source("output") in (ParameterSource.DEFAULT, None):
                ctx.params["output"] = wanted  # `access -o json grants`; `grants -o text` still wins
        return super().invoke(ctx)


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
    single.command(
        name,
        cls=AccessCommand,
        context_settings=dict(spec.context_settings) or None,
        epilog=examples(*spec.examples) if spec.examples else None,
    )(function)
    command: AccessCommand = typer.main.get_command(single)  # type: ignore[assignment]
    command.usage = spec.usage
    if spec.global_options:
        from access.cli.context import global_options

        taken = {opt for param in command.params for opt in param.opts}
        command.params.extend(global_options(taken))
    tidy(command)
    return command


class AccessGroup(HelpfulGroup):
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
