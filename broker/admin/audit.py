"""``access-broker audit``: verify the ledger, write and export checkpoints, export entries.

Exit codes of ``audit verify``: 0 the ledger is intact; 1 it is not (the first bad entry is
named); 2 bad usage (e.g. an unreadable checkpoints file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from access.broker.admin.common import DatabaseUrl, DataDir, admin_broker, check_output, fail, say
from access.shared.clihelp import examples

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="Verify and export the tamper-evident audit ledger.",
    epilog=examples("access-broker audit verify", "access-broker audit export --since 7d > ledger.jsonl"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Output = Annotated[str, typer.Option("-o", "--output", help="text or json")]
OutFile = Annotated[Path | None, typer.Option("--file", "-f", help="Write to this file (default: stdout)")]


@audit_app.command(
    epilog=examples(
        "access-broker audit verify",
        "access-broker audit verify --checkpoints offsite/checkpoints.jsonl -o json",
    )
)
def verify(
    checkpoints: Annotated[
        Path | None,
        typer.Option("--checkpoints", help="Also check against checkpoints exported earlier (JSON lines)"),
    ] = None,
    output: Output = "text",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Check every entry's hash, the chain and every signed checkpoint; exit 1 naming the first bad entry."""
    from access.broker.audit.checkpoints import audit_public_keys, load_checkpoints_file, verify_ledger

    check_output(output)
    external = None
    if checkpoints is not None:
        try:
            external = load_checkpoints_file(checkpoints)
        except (OSError, ValueError) as exc:
            raise fail(f"cannot use {checkpoints}: {exc}", code=2) from exc
    with admin_broker(data_dir, database_url) as broker:
        result = verify_ledger(broker.engine, audit_public_keys(broker), external)
    if output == "json":
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        for warning in result.warnings:
            say(f"warning: {warning}", err=True)
        if result.ok:
            say(result.summary())
            if result.unsigned_tail:
                typer.echo(
                    f"note: the last {result.unsigned_tail} entries are not covered by a checkpoint yet "
                    "(run `access-broker audit checkpoint`)",
                    err=True,
                )
        else:
            for problem in result.problems:
                say(f"error: {problem.message}", err=True)
            typer.echo(
                f"ledger FAILED verification: {len(result.problems)} problem(s) in {result.entries} entries",
                err=True,
            )
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command(epilog=examples("access-broker audit checkpoint"))
def checkpoint(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Sign and store a checkpoint of the ledger now."""
    from access.broker.audit.checkpoints import write_checkpoint

    with admin_broker(data_dir, database_url) as broker:
        made = write_checkpoint(broker)
    if made is None:
        typer.echo("nothing new since the last checkpoint", err=True)
    else:
        typer.echo(f"checkpoint at seq {made.seq} (head {made.head_hash[:16]}…), key {made.key_id}", err=True)


@audit_app.command(
    "export-checkpoints",
    epilog=examples(
        "access-broker audit export-checkpoints -f offsite/checkpoints.jsonl",
        "access-broker audit export-checkpoints | ssh vault 'cat >> checkpoints.jsonl'",
    ),
)
def export_checkpoints(
    out: OutFile = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print every signed checkpoint as JSON lines (with the public key), to keep outside the database."""
    from access.broker.audit.checkpoints import export_checkpoints as export

    with admin_broker(data_dir, database_url) as broker, broker.engine.connect() as conn:
        lines = list(export(conn, broker.audit_key))
    _write_lines(lines, out)
    typer.echo(f"{len(lines)} checkpoint(s) exported", err=True)


@audit_app.command(
    "export",
    epilog=examples(
        "access-broker audit export --since 1d -f today.jsonl",
        "access-broker audit export --since 2026-01-01T00:00 | jq -r .action",
    ),
)
def export_entries(
    since: Annotated[
        str | None, typer.Option(help="Only entries this recent: 1h, 7d, or an ISO-8601 time")
    ] = None,
    out: OutFile = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print ledger entries, oldest first, as JSON lines (with their hashes)."""
    from access.broker.audit.checkpoints import export_entries as export
    from access.broker.audit.search import parse_since

    with admin_broker(data_dir, database_url) as broker:
        start = parse_since(since, broker.clock.now())  # a bad --since is InvalidRequest: exit 2
        with broker.engine.connect() as conn:
            _write_lines(export(conn, start), out)


def _write_lines(lines: Any, out: Path | None) -> None:
    if out is None:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    with out.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
