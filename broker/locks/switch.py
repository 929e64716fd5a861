"""The kill switch itself: put a lock on a user, a service or a grant, lift it, list locks.

Putting a lock ends, in ONE transaction with the lock's row and its audit entries, every active
grant it covers (``lifecycle.apply(REVOKE, reason="locked")``, so each gets its ``grant.revoke``,
its ``grant.revoked`` notice and its ``grant.ended`` outbox row: every replica's tunnel watcher
cuts its live connections within ``ACCESS_BROKER_GRANT_WATCH_INTERVAL``). Admin commands run
this against the database directly; nothing here keeps state in the process.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Conflict, InvalidRequest, NotFound
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent, grant_target
from access.broker.locks.guard import describe, target_name, unlock_command, when
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.runtime import Broker
from access.broker.store import grants as grant_store
from access.broker.store import locks as store
from access.broker.store import principals
from access.broker.store.grants import GrantRecord
from access.broker.store.locks import KINDS, LockRecord
from access.shared.durations import DurationError, format_instant, parse_duration
from access.shared.models import MAX_REASON_LENGTH
from access.shared.names import NAME_RULE, is_dns_label

__all__ = ["Locking", "lift_lock", "list_locks", "lock_view", "parse_until", "put_lock"]


@dataclass(frozen=True)
class Locking:
    """What ``put_lock`` did: the lock, and the grants it ended."""

    lock: LockRecord
    ended: list[str]


def parse_until(text: str, now: datetime) -> datetime:
    """``--until``: a duration from ``now`` (``2h``) or an ISO-8601 time (UTC if it has no zone).

    Raises:
        InvalidRequest: neither, or not after ``now``.
    """
    try:
        until = now + parse_duration(text)
    except DurationError:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"--until {text[:40]!r} is neither a duration nor a time",
                hint="write it like 2h, 1d or 2026-12-02T18:00:00Z",
            ) from None
        until = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    _check_until(until, now)
    return until


def _check_until(until: datetime | None, now: datetime) -> None:
    if until is not None and until <= now:
        raise InvalidRequest(
            f"--until {when(until)} is not in the future (the broker's clock says {when(now)})",
            hint="give a later time, or a duration such as 2h",
        )


def _check_target(kind: str, value: str) -> None:
    if kind not in KINDS:
        raise InvalidRequest(f"cannot lock a {kind[:20]!r}: lock a user, a service or a grant")
    if kind == "service" and not is_dns_label(value):
        raise InvalidRequest(f"bad service name {value[:63]!r}: {NAME_RULE}")
    if kind == "grant" and (not value.startswith("g-") or len(value) > 40):
        raise InvalidRequest(f"bad grant id {value[:40]!r}", hint="grant ids look like g-1f2e3d4c5b6a7980")
    if not 0 < len(value) <= 64 or not value.isprintable():
        raise InvalidRequest(f"bad {kind} name {value[:64]!r}")


def _check_reason(reason: str | None) -> str | None:
    if reason is None or not reason.strip():
        return None
    if len(reason) > MAX_REASON_LENGTH or not reason.isprintable():
        raise InvalidRequest(f"the reason must be one line of printable text, at most {MAX_REASON_LENGTH}")
    return reason.strip()


def _plain_target(kind: str, value: str) -> str:
    """The ledger target of a lock on a user or a service (as ``user.disable``'s, ``grant.*``'s)."""
    return f"{'principal' if kind == 'user' else kind}:{value}"


def _covered(conn: sa.Connection, kind: str, value: str, now: datetime) -> tuple[str, list[GrantRecord]]:
    """The ledger target of a lock on (kind, value), and what it covers: the usable grants, and
    the requests still waiting for review (a reviewer could otherwise approve one after the lock
    is lifted, as if nothing had happened).

    Raises:
        NotFound: no user or service account of that name, or no such grant.
    """
    if kind == "user":
        principal = principals.by_name(conn, value)
        if principal is None:
            raise NotFound(
                f"no user or service account named {value!r}", hint="see `access-broker users list`"
            )
        return _plain_target(kind, value), grant_store.live(conn, now, principal_id=principal.id)
    if kind == "service":
        return _plain_target(kind, value), grant_store.live(conn, now, service=value)
    grant = grant_store.get(conn, value)
    if grant is None:
        raise NotFound(f"no grant {value!r}", hint="see `access grants --all` (as an audit reader)")
    usable = grant.state in ("active", "pending") and grant.expires_at > now
    return grant_target(grant.service, grant.id), [grant] if usable else []


def put_lock(
    broker: Broker,
    kind: str,
    value: str,
    *,
    actor: str,
    reason: str | None = None,
    until: datetime | None = None,
) -> Locking:
    """Lock a user (a user's or service account's name), a service or a grant: end every active
    grant it covers and refuse new access until ``until`` (None: until unlocked).

    A target already locked is refused (locks do not stack): lift the lock first to lock it again
    with other terms. Audited ``access.lock`` (then one ``grant.revoke`` per grant, ``reason:
    locked``), told to webhooks as ``access.locked``; ``GrantEnded`` is published after commit.

    Raises:
        InvalidRequest: bad target, reason, or an ``until`` not in the future (nothing changed).
        NotFound: no such user or grant (nothing changed).
        Conflict: the target is locked already (nothing changed).
        Unavailable: the database could not be reached; nothing changed.
    """
    _check_target(kind, value)
    reason = _check_reason(reason)
    now = broker.clock.now()
    _check_until(until, now)
    with lifecycle.transaction(broker) as tx:
        # First: the requests that check this target wait for us, or we wait for them.
        store.hold(tx.conn, [(kind, value)], exclusive=True)
        target, grants = _covered(tx.conn, kind, value, now)
        existing = store.in_force_on(tx.conn, kind, value, now)
        if existing:
            raise Conflict(
                f"{describe(existing[0])}; nothing was changed",
                hint=f"to lock it with other terms, lift it first (`{unlock_command(kind, value)}`)",
            )
        lock = LockRecord(
            id="l-" + secrets.token_hex(8),
            kind=kind,
            value=value,
            reason=reason,
            created_by=actor[:64],
            created_at=now,
            until=until,
        )
        store.insert(tx.conn, lock)
        ended = [
            grant.id
            for grant in grants
            if lifecycle.apply(
                tx,
                grant,
                GrantEvent.REVOKE,
                actor=actor,
                now=now,
                reason="locked",
                details={
                    "grant_id": grant.id,
                    "reason": "locked",
                    "subject": grant.subject,
                    "scope": grant.scope,
                    "lock_id": lock.id,
                },
            )
        ]
        terms = {
            "lock_id": lock.id,
            "reason": reason,
            "until": None if until is None else ledger.format_time(until),
        }
        ledger.append(
            tx.conn,
            broker.clock,
            actor=actor,
            action=Action.ACCESS_LOCK,
            target=target,
            details={"kind": kind, "value": value, **terms, "grants_ended": ended},
        )
        notify(
            tx.conn,
            broker,
            Notice.ACCESS_LOCKED,
            actor=actor,
            details={"target": f"{kind}:{value}", **terms, "grants_ended": ended},
        )
    return Locking(lock, ended)


def lift_lock(
    broker: Broker, kind: str, value: str, *, actor: str, reason: str | None = None
) -> list[LockRecord]:
    """Lift the lock in force on (kind, value) now, before its ``until``; return it (as it was).

    The grants it ended stay ended; new requests are allowed again. Audited ``access.unlock``,
    told to webhooks as ``access.unlocked``.

    Raises:
        InvalidRequest: bad target or reason (nothing changed).
        NotFound: no lock is in force on it (none, lifted, or past its ``until``).
        Unavailable: the database could not be reached; nothing changed.
    """
    _check_target(kind, value)
    reason = _check_reason(reason)
    now = broker.clock.now()
    with broker.transaction() as conn:
        store.hold(conn, [(kind, value)], exclusive=True)
        found = store.in_force_on(conn, kind, value, now)
        if not found:
            raise NotFound(
                f"{target_name(kind, value)} is not locked: nothing to unlock",
                hint="`access-broker locks --all` lists past locks too",
            )
        ids = [lock.id for lock in found]
        store.lift(conn, ids, now=now, by=actor)
        grant = grant_store.get(conn, value) if kind == "grant" else None
        target = grant_target(grant.service, grant.id) if grant else _plain_target(kind, value)
        details = {"kind": kind, "value": value, "lock_ids": ids, "reason": reason}
        ledger.append(
            conn, broker.clock, actor=actor, action=Action.ACCESS_UNLOCK, target=target, details=details
        )
        told = {"target": f"{kind}:{value}", "lock_ids": ids, "reason": reason}
        notify(conn, broker, Notice.ACCESS_UNLOCKED, actor=actor, details=told)
    return found


def list_locks(broker: Broker, *, include_ended: bool = False) -> list[LockRecord]:
    """Locks newest first: those in force now, or (``include_ended``) lifted and expired ones too.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return store.listed(conn, broker.clock.now(), include_ended=include_ended)


def lock_view(lock: LockRecord, now: datetime) -> dict[str, Any]:
    """A lock as ``-o json`` shows it, with its ``state`` at ``now``: active, lifted or expired."""
    state = "lifted" if lock.lifted_at is not None else "active" if lock.in_force(now) else "expired"

    def instant(moment: datetime | None) -> str | None:
        return None if moment is None else format_instant(moment)

    return {
        "id": lock.id,
        "kind": lock.kind,
        "value": lock.value,
        "state": state,
        "reason": lock.reason,
        "created_by": lock.created_by,
        "created_at": instant(lock.created_at),
        "until": instant(lock.until),
        "lifted_at": instant(lock.lifted_at),
        "lifted_by": lock.lifted_by,
    }
