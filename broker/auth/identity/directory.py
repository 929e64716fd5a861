"""What applies to every principal whatever its identity source: listing, disabling, enabling,
and ending everything a principal holds (offboarding).

Three ways to take access away, from the mildest:

* ``end_sign_ins`` (a password reset uses it): every sign-in session ends (refresh tokens, access
  tokens, inbox cookies, and the live tunnels opened with them), and device logins not yet
  exchanged are denied; grants stay, for the person to use after signing in again.
* ``revoke_sessions``: that, and every active grant revoked and every pending request
  cancelled; the principal stays enabled and may sign in again.
* ``disable_principal``: that, and no sign-in at all until ``enable_principal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Conflict, InvalidRequest, NotFound
from access.broker.events.bus import Event, GrantEnded, PrincipalLocked, SessionEnded
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.runtime import Broker
from access.broker.store import device_codes, principals, sessions, web_sessions
from access.broker.store.principals import SERVICE_ACCOUNT, USER, PrincipalRecord

__all__ = [
    "SESSIONS_REVOKED",
    "EndedSignIns",
    "Revoked",
    "disable_principal",
    "enable_principal",
    "end_sign_ins",
    "find_principal",
    "find_upstream",
    "link_upstream",
    "list_principals",
    "revoke_sessions",
]

# The grants' ended reason for ``revoke_sessions`` (the tunnel closes as "signed out", 4013).
SESSIONS_REVOKED = "sessions revoked"
_KIND_WORDS = {USER: "user", SERVICE_ACCOUNT: "service account"}
_KIND_COMMANDS = {USER: "users", SERVICE_ACCOUNT: "service-accounts"}


@dataclass(frozen=True)
class EndedSignIns:
    """What ``end_sign_ins`` ended: the sessions (their ids), of them the inbox's browser
    sign-ins, and device logins signed in to but not exchanged yet."""

    session_ids: tuple[str, ...]
    inbox_sessions: int
    device_logins: int

    def details(self) -> dict[str, object]:
        return {
            "sessions_revoked": len(self.session_ids),
            "inbox_sessions_revoked": self.inbox_sessions,
            "device_logins_denied": self.device_logins,
        }

    def events(self, reason: str) -> list[Event]:
        return [SessionEnded(session_id, reason) for session_id in self.session_ids]


@dataclass(frozen=True)
class Revoked:
    """What ``revoke_sessions`` ended."""

    principal: PrincipalRecord
    sign_ins: EndedSignIns
    grants_revoked: tuple[str, ...]
    requests_cancelled: tuple[str, ...]


def list_principals(broker: Broker) -> list[PrincipalRecord]:
    """All users and service accounts, by name.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return principals.all_by_name(conn)


def find_principal(conn: sa.Connection, name: str, kind: str | None = None) -> PrincipalRecord:
    """The principal named ``name``, of ``kind`` if given (None: either).

    Raises:
        NotFound: no principal has this name.
        InvalidRequest: it is of the other kind (the hint names the command for it).
    """
    principal = principals.by_name(conn, name)
    if principal is None:
        command = _KIND_COMMANDS.get(kind or USER, "users")
        raise NotFound(
            f"no {_KIND_WORDS.get(kind or '', 'user or service account')} named {name[:80]!r}",
            hint=f"see `access-broker {command} list`",
        )
    if kind is not None and principal.kind != kind:
        raise InvalidRequest(
            f"{name!r} is a {_KIND_WORDS[principal.kind]}, not a {_KIND_WORDS[kind]}",
            hint=f"use `access-broker {_KIND_COMMANDS[principal.kind]} ...`",
        )
    return principal


def _issuer(broker: Broker, provider: str) -> str:
    found = broker.settings.oidc_provider(provider)
    if found is None:
        known = ", ".join(p.name for p in broker.settings.oidc_providers) or "none is configured"
        raise NotFound(
            f"no OIDC provider named {provider[:40]!r} ({known})", hint="see ACCESS_BROKER_OIDC_PROVIDERS"
        )
    return found.issuer


def find_upstream(broker: Broker, provider: str, subject: str) -> PrincipalRecord:
    """The user that ``provider`` (a configured upstream provider's name) knows as ``subject``.

    Raises:
        NotFound: no such provider, or nobody signed in from it with this subject yet.
        Unavailable: the database could not be reached.
    """
    issuer = _issuer(broker, provider)
    with broker.transaction() as conn:
        found = principals.by_upstream(conn, issuer, subject)
    if found is None:
        raise NotFound(
            f"no user is linked to subject {subject[:80]!r} of {provider}",
            hint="`access-broker users list -o json` shows each user's subject",
        )
    return found


def link_upstream(broker: Broker, name: str, provider: str, subject: str, actor: str) -> PrincipalRecord:
    """Link the existing user ``name`` to ``subject`` at ``provider``: their next sign-in there
    signs in as this user (whose groups then become the provider's), audited ``user.link``.

    For a person who had a password user before the provider was configured: an upstream
    sign-in never takes over a user of the same name by itself.

    Raises:
        NotFound: no such user or provider.
        InvalidRequest: ``name`` is a service account.
        Conflict: another user is linked to this subject, or this user to another one.
        Unavailable: the database could not be reached; nothing changed.
    """
    issuer = _issuer(broker, provider)
    if not subject or len(subject) > 255:
        raise InvalidRequest("give the subject (the ID token's sub) of at most 255 characters")
    with broker.transaction() as conn:
        user = find_principal(conn, name, USER)
        other = principals.by_upstream(conn, issuer, subject)
        if other is not None:
            raise Conflict(f"{other.name!r} is already linked to this subject of {provider}")
        if user.subject is not None:
            raise Conflict(f"{name!r} is already linked to an upstream subject")
        principals.set_upstream(conn, user.id, issuer, subject)
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_LINK,
            target=f"principal:{user.name}",
            details={"provider": provider, "subject": subject},
        )
    return user


def end_sign_ins(conn: sa.Connection, broker: Broker, principal_id: str, reason: str) -> EndedSignIns:
    """Inside the caller's transaction: revoke every live session of a principal (``reason`` is
    the sessions' ``revoked_reason``) and deny its device logins not exchanged yet. Nothing is
    published: the caller publishes ``EndedSignIns.events`` after its commit.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    now = broker.clock.now()
    ids = sessions.revoke_for_principal(conn, principal_id, now, reason)
    return EndedSignIns(
        session_ids=tuple(ids),
        inbox_sessions=web_sessions.count_for_sessions(conn, ids),
        device_logins=device_codes.deny_open_for_principal(conn, principal_id, now),
    )


def _publish(broker: Broker, events: list[Event]) -> None:
    for event in events:
        broker.events.publish(event)


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
        principal = find_principal(conn, name)
        if principal.disabled:
            raise Conflict(f"{name!r} is already disabled")
        principals.disable(conn, principal.id, broker.clock.now())
        signed_in = end_sign_ins(conn, broker, principal.id, "principal_disabled")
        ended = end_grants_for_principal(conn, broker, principal.id, "locked", actor).ids
        action = Action.USER_DISABLE if principal.kind == USER else Action.SERVICE_ACCOUNT_DISABLE
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=action,
            target=f"principal:{principal.name}",
            details={"sessions_revoked": len(signed_in.session_ids), "grants_ended": ended},
        )
        notify(
            conn,
            broker,
            Notice.ACCESS_LOCKED,
            actor=actor,
            details={"target": f"{principal.kind}:{principal.name}", "grants_ended": ended},
        )
    _publish(broker, [PrincipalLocked(principal.id), *(GrantEnded(g, "locked") for g in ended)])
    return ended


def enable_principal(broker: Broker, name: str, actor: str, kind: str) -> PrincipalRecord:
    """Enable a disabled user or service account of ``kind`` again, audited.

    Nothing of before comes back: its sessions were revoked when it was disabled (and any that
    are somehow still live are revoked now, with device logins not yet exchanged), so it must
    sign in again; its grants stay ended.

    Raises:
        NotFound: no principal has this name.
        InvalidRequest: it is of the other kind.
        Conflict: it is not disabled.
        Unavailable: the database could not be reached; nothing changed.
    """
    with broker.transaction() as conn:
        principal = find_principal(conn, name, kind)
        if not principal.disabled or not principals.enable(conn, principal.id):
            raise Conflict(
                f"{name!r} is not disabled: there is nothing to enable",
                hint=f"`access-broker {_KIND_COMMANDS[kind]} list` shows who is",
            )
        signed_in = end_sign_ins(conn, broker, principal.id, "principal_disabled")
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_ENABLE if kind == USER else Action.SERVICE_ACCOUNT_ENABLE,
            target=f"principal:{principal.name}",
            details={"sessions_revoked": len(signed_in.session_ids)},
        )
    _publish(broker, signed_in.events("principal_disabled"))
    return principal


def revoke_sessions(broker: Broker, name: str, actor: str, kind: str) -> Revoked:
    """Offboard a user or service account of ``kind`` at once, and leave it enabled.

    In one transaction: every sign-in session is revoked (refresh tokens refused, access tokens
    refused at their next use since they carry the session id, inbox cookies signed out),
    device logins not yet exchanged are denied, every active grant is revoked and every pending
    request cancelled (reason ``sessions revoked``, each audited with its ``grant.ended`` outbox
    row), and ``user.revoke_sessions`` (or ``service_account.revoke_sessions``) is audited with
    the counts. After commit the ends are published, so this process's tunnels are cut at once;
    other replicas' ``TunnelWatch`` reads the ended grants and sessions within a poll.

    Raises:
        NotFound: no principal has this name.
        InvalidRequest: it is of the other kind.
        Unavailable: the database could not be reached; nothing changed.
    """
    from access.broker.grants import end_grants_for_principal  # as in disable_principal

    with broker.transaction() as conn:
        principal = find_principal(conn, name, kind)
        signed_in = end_sign_ins(conn, broker, principal.id, "sessions_revoked")
        ended = end_grants_for_principal(conn, broker, principal.id, SESSIONS_REVOKED, actor)
        details = {
            **signed_in.details(),
            "grants_revoked": list(ended.revoked),
            "requests_cancelled": list(ended.cancelled),
        }
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_REVOKE_SESSIONS if kind == USER else Action.SERVICE_ACCOUNT_REVOKE_SESSIONS,
            target=f"principal:{principal.name}",
            details=details,
        )
    # The grants first: a tunnel cut by its grant's end says why in its own words.
    grant_events: list[Event] = [GrantEnded(g, SESSIONS_REVOKED) for g in ended.ids]
    _publish(broker, [*grant_events, *signed_in.events("sessions_revoked")])
    return Revoked(principal, signed_in, ended.revoked, ended.cancelled)
