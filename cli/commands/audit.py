"""``access audit``: read the ledger, for those whose policy allows it."""

from __future__ import annotations

import json
import sys
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
FOLLOW_PAGE = 1000  # entries per request while following (the broker's ceiling)
# Seconds the broker may hold a follow request open: under the client's 10 s read timeout.
FOLLOW_WAIT = 8


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
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep printing new entries as they are written (JSON lines in a pipe)"),
    ] = False,
    since_seq: Annotated[
        int | None,
        typer.Option(
            "--since-seq",
            min=0,
            help="Start after this seq (the last one you have): every entry since, oldest first",
        ),
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Show audit ledger entries, newest last (needs policy permission to read the audit log)."""
    if since is not None:
        _check_since(since)
    if follow or since_seq is not None:
        if queries:
            raise UsageError("--queries cannot be followed", "leave out --follow and --since-seq")
        filters = {"service": service, "actor": actor, "since": since, "grant": grant}
        try:
            _stream(ctx, filters, limit, since_seq, follow, output)
        except KeyboardInterrupt:  # Ctrl-C is how a follow ends
            raise typer.Exit(0) from None
        return
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


def _stream(
    ctx: typer.Context,
    filters: dict[str, str | None],
    limit: int,
    since_seq: int | None,
    follow: bool,
    output: Output,
) -> None:
    """Entries after ``since_seq`` (or the newest ``limit``, then those after the ledger's head),
    oldest first, one line each; with ``follow``, then new ones as they come, until Ctrl-C.
    JSON lines for ``-o json`` or when stdout is no terminal: each has ``seq``, to resume from."""
    broker = client(ctx)
    as_json = output is Output.json or not sys.stdout.isatty()
    cursor = since_seq or 0
    if since_seq is None:
        # The page's last_seq is the head read before its search: following from there may
        # repeat an entry written meanwhile (skipped below), never miss one.
        page = broker.audit_page(filters, limit=limit)
        for entry in sorted(page.entries, key=lambda e: e.seq):
            _show_one(entry, as_json)
        cursor = max([page.last_seq or 0, *(e.seq for e in page.entries)])
    while True:
        wait = FOLLOW_WAIT if follow else 0
        page = broker.audit_page(filters, limit=FOLLOW_PAGE, after_seq=cursor, wait=wait)
        for entry in page.entries:
            if entry.seq > cursor:
                _show_one(entry, as_json)
        cursor = max([cursor, page.last_seq or 0, *(e.seq for e in page.entries)])
        if not follow and len(page.entries) < FOLLOW_PAGE:
            return


def _show_one(entry: AuditEntry, as_json: bool) -> None:
    if as_json:
        render.json_line(entry)
        return
    render.log_line(
        [
            str(entry.seq),
            render.when(entry.at),
            entry.actor,
            entry.action,
            entry.target,
            _details(entry.details),
        ],
        free_text=[1, 5],
    )
