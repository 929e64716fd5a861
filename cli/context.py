"""What every command shares: the global options, ``-o/--output``, and the broker client they make.

Commands (ours and the tunnel's) call :func:`client` with their ``typer.Context``; it
resolves the broker from ``--broker``/``ACCESS_BROKER_URL``, else the last login's. Importing
this module stays cheap: httpx and pydantic load inside :func:`client`.

The seam: :class:`Globals` also carries an optional ``httpx.BaseTransport`` and wall clock,
which every client a command makes uses. Nothing on the command line sets them; a caller that
runs the app itself injects them explicitly as the root context's object, e.g. the tests'
``CliRunner().invoke(app, args, obj=Globals(transport=..., now=...))`` drives every ``access``
command against the broker's ASGI app in-process, on the broker's fake clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from access.cli import render
from access.cli.render import Output

if TYPE_CHECKING:
    import httpx

    from access.cli.client import BrokerClient

__all__ = ["GLOBAL_PANEL", "Globals", "Output", "OutputOption", "client", "global_options", "globals_of"]

OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", help="text for people, json for scripts", case_sensitive=False),
]


@dataclass
class Globals:
    """The root options, plus the injected HTTP transport and clock (None: the real network and time)."""

    broker: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    output: Output | None = None  # `access -o json COMMAND`: the command's -o unless it has its own
    transport: httpx.BaseTransport | None = None
    now: Callable[[], float] | None = None


def globals_of(ctx: typer.Context) -> Globals:
    """The global options, set by the root callback (defaults when a command runs on its own)."""
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, Globals):
        obj = Globals()
        root.obj = obj
    return obj


def client(
    ctx: typer.Context, *, broker: str | None = None, ca_file: str | None = None, insecure: bool = False
) -> BrokerClient:
    """A :class:`BrokerClient` for this invocation; closed when the command ends.

    Raises:
        UsageError: no broker is configured, or its URL is not acceptable.
    """
    from access.cli.client import BrokerClient

    options = globals_of(ctx)
    made = BrokerClient.from_config(
        broker or options.broker,
        ca_file or options.ca_file,
        insecure or options.insecure,
        notify=render.note,
        transport=options.transport,
        now=options.now,
    )
    ctx.call_on_close(made.close)
    return made


# -- the global options, accepted after the command too: `access grants --broker URL` ------------

GLOBAL_PANEL = "Global options"


def _keep(name: str) -> Callable[[typer.Context, Any], None]:
    def keep(ctx: typer.Context, value: Any) -> None:
        if value:  # not given: what the root options (or their environment variables) said stays
            setattr(globals_of(ctx), name, value)

    return keep


def _inherited(flag: str, field: str, text: str, metavar: str | None = None) -> Any:
    return typer.Option(
        flag,
        metavar=metavar,
        help=f"{text} (as before the command)",
        callback=_keep(field),
        expose_value=False,
        rich_help_panel=GLOBAL_PANEL,
    )


def _holder(
    broker: Annotated[str | None, _inherited("--broker", "broker", "Broker URL", "URL")] = None,
    ca_file: Annotated[str | None, _inherited("--ca-file", "ca_file", "PEM CA bundle", "FILE")] = None,
    insecure: Annotated[bool, _inherited("--insecure", "insecure", "Allow plain http://")] = False,
) -> None:
    """Holds the global options that every command accepts after its name too."""


@functools.cache
def _inherited_params() -> tuple[Any, ...]:
    holder = typer.Typer(add_completion=False)
    holder.command()(_holder)
    return tuple(typer.main.get_command(holder).params)


def global_options(taken: set[str]) -> list[Any]:
    """The root's --broker, --ca-file and --insecure for a command, less those it has its own of."""
    return [param for param in _inherited_params() if not taken & set(param.opts)]
