"""What applies to every principal whatever its identity source: listing and disabling."""

from __future__ import annotations

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Conflict, NotFound
from access.broker.events.bus import GrantEnded, PrincipalLocked
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.runtime import Broker
from access.broker.store import principals, sessions
from access.broker.store.principals import USER, PrincipalRecord

__all__ = ["disable_principal", "list_principals"]


def list_principals(broker: Broker) -> list[PrincipalRecord]:
    """All users and service accounts, by name.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return principals.all_by_name(conn)


def disable_principal(broker: Broker, name: str, actor: str) -> list[str]:
    """Disable a user or service account: revoke its sessions and end its active grants.

    Everything happens in one transaction with its audit entries (and the ``access.locked``
    notice, with a ``grant.revoked`` one per grant, for webhooks); after commit the broker
    publishes ``PrincipalLocked`` and one ``GrantEnded(grant_id, "locked")`` per ended grant,
    so live tunnels close. Returns the ids of the ended grants.

    Raises:
        NotFound: no principal has this name.
        Conflict: it is already disabled.
        Unavailable: the database could not be reached; nothing changed.
    """
    # Imported here: grants is another room that imports auth, and is written separately;
    # importing it when first needed keeps identity importable on its own.
    from access.broker.grants import end_grants_for_principal

    with broker.transaction() as conn:
        principal = principals.by_name(conn, name)
        if principal is None:
            raise NotFound(
                f"no user or service account named {name[:80]!r}", hint="see `access-broker users list`"
            )
        if principal.disabled:
            raise Conflict(f"{name!r} is already disabled")
        now = broker.clock.now()
        principals.disable(conn, principal.id, now)
        revoked = sessions.revoke_for_principal(conn, principal.id, broker.clock.now(), "principal_disabled")
        ended = end_grants_for_principal(conn, broker, principal.id, "locked", actor)
        action = Action.USER_DISABLE if principal.kind == USER else Action.SERVICE_ACCOUNT_DISABLE
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=action,
            target=f"principal:{principal.name}",
            details={"sessions_revoked": revoked, "grants_ended": list(ended)},
        )
        notify(
            conn,
            broker,
            Notice.ACCESS_LOCKED,
            actor=actor,
            details={"target": f"{principal.kind}:{principal.name}", "grants_ended": list(ended)},
        )
    broker.events.publish(PrincipalLocked(principal.id))
    for grant_id in ended:
        broker.events.publish(GrantEnded(grant_id, "locked"))
    return list(ended)
