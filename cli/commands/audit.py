"""``access audit``: read the ledger, for those whose policy allows it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import UsageError
from access.cli.render import Output

__all__ = ["audit"]


# Detail values that are free text (a requester's reason, why a connection ended); the rest are
# identifiers (client ids, hosts, session ids) and show as printable ASCII only.
_FREE_TEXT = frozenset({"reason", "why", "outcome"})


def _details(details: dict[str, Any]) -> str:
    """``key=value`` pairs, each already escaped for the terminal (the DETAILS column is free text)."""

    def shown(key: str, value: Any) -> str:
        if not isinstance(value, str):
            return json.dumps(value)  # ensure_ascii: printable ASCII, controls as \u escapes
        return render.text(value) if key in _FREE_TEXT else render.name(value)

    return " ".join(f"{render.name(k)}={shown(k, v)}" for k, v in details.items())


def _check_since(since: str) -> None:
    """``--since`` is a duration back from now (``1h``) or an ISO-8601 time; the broker reads both."""
    from datetime import UTC, datetime

    from access.shared.durations import SinceError, parse_since

    try:
        bound = parse_since(since, datetime.now(UTC))
    except SinceError:
        bound = None
    if bound is None:  # blank is "no bound" to the broker, but as a flag value it is a mistake
        raise UsageError(
            f"--since {since!r} is neither a duration nor a time",
            "write it like 1h, 30m, 2d or 2026-01-31T09:00",
        )


def audit(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option("--service", help="Only entries about this service")] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only entries by this user or service account")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only entries since then: 1h, 30m, or an ISO-8601 time")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many entries")
    ] = 100,
    output: OutputOption = Output.text,
) -> None:
    """Show audit ledger entries, newest last (needs policy permission to read the audit log)."""
    if since is not None:
        _check_since(since)
    # The broker sends the newest ``limit`` entries newest first; shown as a log reads: newest last.
    entries = sorted(
        client(ctx).audit(service=service, actor=actor, since=since, limit=limit), key=lambda e: e.seq
    )
    if output is Output.json:
        render.json_out(entries)
        return
    if not entries:
        render.message("No audit entries match.")
        return
    render.table(
        ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"],
        [[str(e.seq), render.when(e.at), e.actor, e.action, e.target, _details(e.details)] for e in entries],
        keep_whole=["SEQ", "TIME", "ACTION"],
        free_text=["TIME", "DETAILS"],
    )
