"""The ``access`` command's typer app: the root options, the help's epilog, the command group.

Data goes to stdout, messages and errors to stderr; ``-o json`` on every command that prints
data; ``NO_COLOR`` is honoured; nothing prompts when stdin is not a terminal. Building it imports
typer and nothing heavy: each command loads its own module (``access.cli.group``). The console
script's entry point is ``access.cli.main``, which imports this module only when it is needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from access.cli.context import Globals
from access.cli.group import AccessGroup
from access.cli.render import Output
from access.cli.version import version_line
from access.shared.clihelp import examples

__all__ = ["app"]

EXAMPLES = examples(
    "access login --broker https://access.example.com",
    "access services",
    "access exec payments-db -t 1h -r INC-123 -- psql",
    "access grants -o json",
)

EPILOG = (
    EXAMPLES
    + """

Exit codes:
  0 ok
  1 error
  2 usage: a bad flag, TTL or name
  3 needs login: run `access login`
  4 denied: policy or a person said no
  5 pending: waiting on an approval
  6 expired: the device code or the grant ran out
  7 unavailable: the broker is unreachable or refused to act
  8 not found: no such service or grant
  9 timed out: `access login` waited --timeout and nobody approved
  126 `access exec`: the program cannot be run (no grant asked for)
  127 `access exec`: no such program (no grant asked for)

Environment: ACCESS_BROKER_URL, ACCESS_CA_FILE, ACCESS_TOKEN (overrides stored tokens),
ACCESS_CLIENT_ID with ACCESS_CLIENT_SECRET or ACCESS_CLIENT_SECRET_FILE (sign in as a service
account: see docs/cli.md, "Pipelines"), NO_COLOR."""
)

app = typer.Typer(
    name="access",
    cls=AccessGroup,
    help="Just-in-time, scoped, audited access to production services.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            envvar="ACCESS_BROKER_URL",
            metavar="URL",
            help="Broker URL (default: the one you last logged in to)",
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            "--ca-file",
            envvar="ACCESS_CA_FILE",
            metavar="FILE",
            help="PEM CA bundle that signed the broker's certificate",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow plain http:// to a non-loopback broker: tokens travel unencrypted"
        ),
    ] = False,
    output: Annotated[
        Output | None,
        typer.Option(
            "--output",
            "-o",
            help="text for people, json for scripts (the command's own -o wins)",
            case_sensitive=False,
        ),
    ] = None,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit"),
    ] = None,
) -> None:
    """Just-in-time, scoped, audited access to production services."""
    # Keep what a caller injected as the root object (see access.cli.context.Globals).
    injected = ctx.obj if isinstance(ctx.obj, Globals) else Globals()
    ctx.obj = replace(
        injected, broker=broker or None, ca_file=ca_file or None, insecure=insecure, output=output
    )
