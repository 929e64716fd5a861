"""``access audit``: read the ledger, for those whose policy allows it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from access.cli import render
from access.cli.context import OutputOption, client
from access.cli.errors import UsageError
from access.cli.render import Output
from access.shared.durations import format_instant
from access.shared.models import AuditEntry

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

    # A statement batch's rows are for ``--queries``; here its first/count say which they are.
    return " ".join(
        f"{render.name(k)}={shown(k, v)}"
        for k, v in details.items()
        if not (k == "statements" and isinstance(v, list))
    )


STATEMENTS_ACTION = "connection.statements"


def _statements(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    """The statements of ``connection.statements`` entries, oldest first, each once (a batch
    written again after a COMMIT that timed out repeats its rows: same connection and ``n``).

    A batch's ``statements[i]`` is ``[µs after its at, kind, text(, name)]``, statement ``first + i``.
    """
    from datetime import datetime, timedelta

    seen: set[tuple[str, int]] = set()
    rows: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: e.seq):
        details = entry.details
        batch, first = details.get("statements"), details.get("first")
        if not isinstance(batch, list) or not isinstance(first, int):
            continue
        try:
            start = datetime.fromisoformat(str(details.get("at")))
        except ValueError:
            start = entry.at
        connection = str(details.get("connection", ""))
        for index, item in enumerate(batch):
            if not isinstance(item, list) or len(item) < 3 or not isinstance(item[0], int):
                continue
            key = (connection, first + index)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "at": start + timedelta(microseconds=item[0]),
                    "actor": entry.actor,
                    "grant": str(details.get("grant", "")),
                    "service": str(details.get("service", "")),
                    "connection": connection,
                    "n": first + index,
                    "kind": str(item[1]),
                    "text": str(item[2]),
                    "name": str(item[3]) if len(item) > 3 else None,
                }
            )
    return rows


def _show_statements(entries: list[AuditEntry], limit: int, output: Output) -> None:
    rows = _statements(entries)[-limit:]
    if output is Output.json:
        render.json_out([{**row, "at": format_instant(row["at"])} for row in rows])
        return
    if not rows:
        render.message("No statements match.")
        return
    render.table(
        ["TIME", "CONNECTION", "KIND", "STATEMENT"],
        [
            [
                render.when(row["at"]),
                row["connection"],
                row["kind"] if row["name"] is None else f"{row['kind']} {row['name']}",
                row["text"],
            ]
            for row in rows
        ],
        keep_whole=["TIME", "CONNECTION"],
        free_text=["TIME", "STATEMENT"],
    )


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
    grant: Annotated[
        str | None, typer.Option("--grant", help="Only entries about this grant (g-...)")
    ] = None,
    queries: Annotated[
        bool,
        typer.Option(
            "--queries", help="Show the statements the connections relayed (of --grant), one per line"
        ),
    ] = False,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", min=1, max=1000, help="At most this many entries (statements)"),
    ] = 100,
    output: OutputOption = Output.text,
) -> None:
    """Show audit ledger entries, newest last (needs policy permission to read the audit log)."""
    if since is not None:
        _check_since(since)
    if queries:
        # Each batch entry holds at least one statement: ``limit`` batches hold ``limit`` statements.
        batches = client(ctx).audit(
            service=service, actor=actor, since=since, limit=limit, grant=grant, action=STATEMENTS_ACTION
        )
        _show_statements(batches, limit, output)
        return
    # The broker sends the newest ``limit`` entries newest first; shown as a log reads: newest last.
    entries = sorted(
        client(ctx).audit(service=service, actor=actor, since=since, limit=limit, grant=grant),
        key=lambda e: e.seq,
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
