"""``access-broker lock``, ``unlock`` and ``locks``: the kill switch, run against the database.

A lock ends at once every active grant of the user, of the service, or the one grant (their
live connections are cut within a second on every replica) and refuses new access until it is
lifted (``unlock``) or its ``--until`` passes. Exit codes: 0 done; 1 already locked; 2 bad
usage; 8 no such user or grant, or nothing to unlock; 7 the database is unavailable.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from access.broker.admin.common import (
    DatabaseUrl,
    DataDir,
    admin_broker,
    check_output,
    fail,
    print_table,
    say,
)
from access.broker.admin.identity import admin_actor
from access.broker.locks.guard import target_name, when
from access.shared import terminal
from access.shared.clihelp import examples

__all__ = ["lock", "locks", "register", "unlock"]

User = Annotated[str | None, typer.Option("--user", help="A user (or service account) by name")]
Service = Annotated[str | None, typer.Option("--service", help="A service of the policy, by name")]
GrantId = Annotated[str | None, typer.Option("--grant", help="One grant, by id (g-…)")]
Output = Annotated[str, typer.Option("-o", "--output", help="text or json")]


def _target(user: str | None, service: str | None, grant: str | None) -> tuple[str, str]:
    given = [
        (kind, value) for kind, value in (("user", user), ("service", service), ("grant", grant)) if value
    ]
    if len(given) != 1:
        raise fail("name exactly one of --user, --service or --grant", code=2)
    return given[0]


def lock(
    user: User = None,
    service: Service = None,
    grant: GrantId = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why: shown to whoever is refused, and audited")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Lift it by itself then: a duration (2h) or an ISO-8601 time (server clock, UTC)"
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Lock a user, a service or a grant: end its active grants now (live connections are cut
    within a second) and refuse new requests until unlocked or --until passes."""
    from access.broker.locks.switch import parse_until, put_lock

    kind, value = _target(user, service, grant)
    with admin_broker(data_dir, database_url) as broker:
        ends = parse_until(until, broker.clock.now()) if until else None
        done = put_lock(broker, kind, value, actor=admin_actor(), reason=reason, until=ends)
        unknown = kind == "service" and broker.policy.services and value not in broker.policy.services
    shown = terminal.name(target_name(kind, value))
    lasts = f"until {when(ends)}" if ends else "until unlocked"
    say(
        f"locked {shown} ({terminal.name(done.lock.id)}, {lasts}): {len(done.ended)} active grant(s) ended",
        err=True,
    )
    if unknown:
        say(f"warning: {shown} is not in the policy this command loaded: check the name", err=True)


def unlock(
    user: User = None,
    service: Service = None,
    grant: GrantId = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why it is lifted (audited)")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Lift the lock on a user, a service or a grant before its --until. The grants it ended stay
    ended; new requests are allowed again."""
    from access.broker.locks.switch import lift_lock

    kind, value = _target(user, service, grant)
    with admin_broker(data_dir, database_url) as broker:
        lifted = lift_lock(broker, kind, value, actor=admin_actor(), reason=reason)
    ids = ", ".join(terminal.name(lock.id) for lock in lifted)
    say(f"unlocked {terminal.name(target_name(kind, value))} (lifted {ids})", err=True)


def locks(
    all_: Annotated[bool, typer.Option("--all", help="Include lifted and expired locks")] = False,
    output: Output = "text",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List the locks in force (newest first; --all: lifted and expired ones too)."""
    from access.broker.locks.switch import list_locks, lock_view

    check_output(output)
    with admin_broker(data_dir, database_url) as broker:
        found = list_locks(broker, include_ended=all_)
        now = broker.clock.now()
    views = [lock_view(lock, now) for lock in found]
    if output == "json":
        typer.echo(json.dumps(views, indent=2))
        return
    if not views:
        typer.echo("no locks in force" if not all_ else "no locks yet", err=True)
        return
    rows: list[tuple[str, ...]] = [("ID", "TARGET", "STATE", "BY", "SINCE", "UNTIL", "REASON")]
    for lock, view in zip(found, views, strict=True):
        until = when(lock.until) if lock.until else "-"
        rows.append(
            (
                lock.id,
                f"{lock.kind}:{lock.value}",
                view["state"],
                lock.created_by,
                when(lock.created_at),
                until,
                lock.reason or "-",
            )
        )
    print_table(rows, free=frozenset({6}))


def register(app: typer.Typer) -> None:
    """Add ``lock``, ``unlock`` and ``locks`` to ``access-broker``."""
    app.command(
        "lock",
        epilog=examples(
            'access-broker lock --user alice --reason "INC-42: laptop stolen"',
            "access-broker lock --service svc-payments --until 2h --reason maintenance",
            "access-broker lock --grant g-1f2e3d4c5b6a7980",
        ),
    )(lock)
    app.command(
        "unlock",
        epilog=examples("access-broker unlock --user alice", "access-broker unlock --service svc-payments"),
    )(unlock)
    app.command("locks", epilog=examples("access-broker locks", "access-broker locks --all -o json"))(locks)
