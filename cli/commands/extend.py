"""``access extend``: more time for an active grant, under its rule's maximum; live connections stay.

A module of its own (not ``commands.grants``) so that the grant commands and this one can change
apart; it shows the grant as ``access request`` does.
"""

from __future__ import annotations

from typing import Annotated

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import UsageError
from access.cli.render import Output

__all__ = ["extend"]


def extend(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="Grant id (see `access grants`)", metavar="GRANT_ID")],
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl",
            "-t",
            help="The time left you want, counted from now (the grant then ends at now + TTL), e.g. 15m",
        ),
    ],
    output: OutputOption = Output.text,
) -> None:
    """Give an active grant of yours more time; connections through it stay open.

    TTL counts from now: the grant ends TTL from now, which must be later than it ends already (an
    extension never shortens a grant; `access revoke` ends one early). The grant stays under the
    rule that gave it: the rule must still allow it, and its whole lifetime, from when it started
    to the new end, must be within the rule's maximum TTL (`access services` shows it). Past that
    maximum, request a new grant (which, for a rule that needs approval, needs approval again).
    Only the grant's owner can extend it; an ended or expired grant cannot be.
    """
    from access.shared.durations import DurationError, format_duration, parse_duration

    try:
        parse_duration(ttl)
    except DurationError as exc:
        raise UsageError(str(exc), "write the TTL like 45s, 15m or 1h30m (counted from now)") from exc
    grant = client(ctx).extend(grant_id, ttl)
    render.grant_details(grant, output)
    render.message(
        f"Extended grant {render.name(grant.id)}: {format_duration(grant.seconds_left)} left, until "
        f"{render.when(grant.expires_at)}. Connections through it stay open."
    )
