"""What every command shares: the global options, ``-o/--output``, and the broker client they make.

Commands (ours and the tunnel's) call :func:`client` with their ``typer.Context``; it
resolves the broker from ``--broker``/``ACCESS_BROKER_URL``, else the last login's. Importing
this module stays cheap: httpx and pydantic load inside :func:`client`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from access.cli import render
from access.cli.render import Output

if TYPE_CHECKING:
    from access.cli.client import BrokerClient

__all__ = ["Globals", "Output", "OutputOption", "client", "globals_of"]

OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", help="text for people, json for scripts", case_sensitive=False),
]


@dataclass
class Globals:
    broker: str | None = None
    ca_file: str | None = None
    insecure: bool = False


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
        broker or options.broker, ca_file or options.ca_file, insecure or options.insecure, notify=render.note
    )
    ctx.call_on_close(made.close)
    return made
