"""The refusal: is a lock in force on what a caller is about to give access to? One check, which
every path that gives access calls inside its own transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa

from access.broker.errors import Locked
from access.broker.store import locks as store
from access.broker.store.locks import LockRecord
from access.broker.store.pipeline import Pipeline

__all__ = [
    "check",
    "covering",
    "covering_each",
    "describe",
    "locked_error",
    "target_name",
    "unlock_command",
    "when",
]


def _targets(user: str | None, service: str | None, grant_id: str | None) -> list[tuple[str, str]]:
    given = (("user", user), ("service", service), ("grant", grant_id))
    return [(kind, value) for kind, value in given if value]


def covering(
    conn: sa.Connection, now: datetime, *, user: str | None, service: str | None, grant_id: str | None
) -> LockRecord | None:
    """The lock in force at ``now`` on the user, the service or the grant (None: none is), the
    user's first, then the service's, then the grant's; the oldest of each.

    Holds the three targets (shared) until the caller's transaction ends, so a lock being put on
    one of them meanwhile waits for this transaction (and then ends what it gave), or this one
    waits for the lock's and sees it: call it before the transaction's first ledger append.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    targets = _targets(user, service, grant_id)
    store.hold(conn, targets, exclusive=False)
    found = store.covering(conn, now, targets)
    order = {kind: rank for rank, (kind, _) in enumerate(targets)}
    return min(found, key=lambda lock: order[lock.kind], default=None)


def covering_each(
    pipeline: Pipeline, now: datetime, asks: Sequence[tuple[str, str]]
) -> Callable[[], list[LockRecord | None]]:
    """``covering`` for several (user, service) pairs (a batch of grant requests), held and read
    in one statement each for all of them, queued on ``pipeline`` (its caller may queue the
    ledger's lock after them, the order every writer takes them in): to call once it has run,
    for each pair, the lock in force on its user, else on its service, or None. Queue it before
    the transaction's first ledger append, as ``covering``.

    Raises (the pipeline, when it runs):
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    targets = list(
        dict.fromkeys(target for user, service in asks for target in _targets(user, service, None))
    )
    store.hold_queued(pipeline, targets, exclusive=False)
    found = store.covering_queued(pipeline, now, targets)

    def each() -> list[LockRecord | None]:
        oldest: dict[tuple[str, str], LockRecord] = {}
        for lock in found():  # oldest first
            oldest.setdefault((lock.kind, lock.value), lock)
        return [oldest.get(("user", user)) or oldest.get(("service", service)) for user, service in asks]

    return each


def check(
    conn: sa.Connection, now: datetime, *, user: str | None, service: str | None, grant_id: str | None
) -> None:
    """Refuse if a lock is in force at ``now`` on the user (a principal's name), the service or
    the grant; pass None for what does not apply. Changes nothing, audits nothing: the caller
    records its refusal (a ``grant.deny``, a ``connection.refuse``) as it records any other.

    Raises:
        Locked: a lock is in force (the message names who locked what, since when, until when
            and why; ``lock_id`` the lock).
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    lock = covering(conn, now, user=user, service=service, grant_id=grant_id)
    if lock is not None:
        raise locked_error(lock)


def target_name(kind: str, value: str) -> str:
    """``user alice``, ``service svc-payments``, ``grant g-…``: a lock's target in words."""
    return f"{kind} {value}"


def when(moment: datetime) -> str:
    """A moment for people: ``2026-12-02 06:30:00 UTC`` (the broker's clock)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(lock: LockRecord) -> str:
    """``user alice is locked by admin:root since …, until … (lock l-…): why``."""
    until = f"until {when(lock.until)}" if lock.until is not None else "until an admin unlocks it"
    why = f": {lock.reason}" if lock.reason else " (no reason given)"
    return (
        f"{target_name(lock.kind, lock.value)} is locked by {lock.created_by} since "
        f"{when(lock.created_at)}, {until} (lock {lock.id}){why}"
    )


def unlock_command(kind: str, value: str) -> str:
    return f"access-broker unlock --{kind} {value}"


def locked_error(lock: LockRecord) -> Locked:
    """The refusal a lock makes, with the remedy."""
    return Locked(
        describe(lock),
        hint=f"ask an administrator to lift it (`{unlock_command(lock.kind, lock.value)}`)",
        lock_id=lock.id,
    )
