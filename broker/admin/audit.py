"""``access-broker audit``: verify the ledger, write and export checkpoints, export entries.

Exit codes of ``audit verify``: 0 the ledger is intact; 1 it is not (the first bad entry is
named); 2 bad usage (e.g. an unreadable checkpoints file).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

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
        "access-broker audit export --follow --since-seq 41200 | vector --config vector.toml",
    ),
)
def export_entries(
    since: Annotated[
        str | None, typer.Option(help="Only entries this recent: 1h, 7d, or an ISO-8601 time")
    ] = None,
    since_seq: Annotated[
        int, typer.Option("--since-seq", min=0, help="Only entries after this seq (the last one you have)")
    ] = 0,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Then keep printing new entries as they are written, until stopped"),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, max=60, help="With --follow: seconds between looks at the ledger")
    ] = 1.0,
    out: OutFile = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print ledger entries, oldest first, as JSON lines (with their hashes and seq, to resume from)."""
    from access.broker.audit.checkpoints import export_entries as export
    from access.broker.audit.checkpoints import follow_entries
    from access.broker.audit.search import parse_since

    with admin_broker(data_dir, database_url) as broker:
        start = parse_since(since, broker.clock.now())  # a bad --since is InvalidRequest: exit 2
        if follow:
            stop = threading.Event()
            with _stopped_by_signals(stop):
                _write_lines(follow_entries(broker.engine, since_seq, stop, start, interval), out, each=True)
            return
        with broker.engine.connect() as conn:
            _write_lines(export(conn, start, since_seq), out)


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the follow ends after the line it is writing, exit 0)."""

    def handle(signum: int, frame: object) -> None:
        stop.set()

    before = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _write_lines(lines: Iterable[str], out: Path | None, *, each: bool = False) -> None:
    """``lines`` to ``out`` (appended, for a follow: a restarted one resumes it) or stdout;
    ``each``: flushed line by line (a follow's reader sees every entry as it comes)."""
    with nullcontext(sys.stdout) if out is None else out.open("a" if each else "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
            if each:
                fh.flush()
        fh.flush()
