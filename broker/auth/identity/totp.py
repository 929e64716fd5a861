"""TOTP (RFC 6238) for the embedded directory's users: the second factor of a password sign-in.

Life of an enrolment::

    none --begin_enrolment--> pending --confirm_enrolment (a first correct code)--> in force
      ^                          |                                                   |
      +------- disable (a current code) / reset (an administrator) ------------------+

A pending secret changes nothing: sign-in ignores it until a first code proves the person's
authenticator has it (a mistyped or unscanned secret cannot lock anyone out). Once in force,
every password sign-in of the user (device page, inbox) needs a current code too.

Codes: 6 digits, 30-second steps, SHA-1 (what every authenticator app does by default). A code
of the step before or after the current one is accepted too (clock drift, RFC 6238 section 5.2),
each step's code at most once: the last step accepted is stored, and only a later step counts
(a code seen over a shoulder or replayed from a log is refused). Codes are compared in constant
time. Wrong codes count against the same allowances as wrong passwords (``auth.password``).

The base32 secret is sealed in ``principals.totp_secret`` (``identities.sealing``, a key of its
own from the token signing key, the principal id as associated data): a copy of the table holds
no usable secret. Rotating the signing key makes every secret unreadable, which fails closed:
those users cannot sign in until ``access-broker users totp-reset``.

Neither a secret nor a code ever reaches the ledger.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import pyotp
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.identity.directory import EndedSignIns, end_sign_ins, find_principal
from access.broker.auth.password import PasswordAttempt
from access.broker.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from access.broker.identities.sealing import Sealer
from access.broker.keys import key_id
from access.broker.runtime import Broker
from access.broker.store import principals
from access.broker.store.principals import USER, PrincipalRecord

__all__ = [
    "DIGITS",
    "STEP_SECONDS",
    "WRONG_CODE",
    "Enrolment",
    "begin_enrolment",
    "check_sign_in",
    "confirm_enrolment",
    "disable",
    "is_enabled",
    "issuer",
    "pending_enrolment",
    "reset",
    "second_factor",
    "users_with_totp",
]

STEP_SECONDS = 30
DIGITS = 6
_DRIFT_STEPS = 1  # the steps either side of now that are accepted too
_SEAL_INFO = b"access identities: totp v1"
WRONG_CODE = "That one-time code is not right. Type the code your authenticator app shows now."


@dataclass(frozen=True)
class Enrolment:
    """A new secret for the person's authenticator: shown once (QR code and text), never logged."""

    secret: str  # base32
    uri: str  # otpauth://totp/...


def _sealer(broker: Broker) -> Sealer:
    return Sealer(broker.token_ring, _SEAL_INFO)


def issuer(broker: Broker) -> str:
    """The name authenticator apps show beside the account: ``access (<broker host>)``."""
    return f"access ({urlsplit(broker.base_url).hostname or 'broker'})"


def _normalise(code: str) -> str | None:
    """The 6 digits of ``code`` as typed (spaces allowed: "123 456"), or None."""
    digits = code[:32].replace(" ", "").replace("-", "")
    return digits if len(digits) == DIGITS and digits.isascii() and digits.isdigit() else None


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step within the drift window whose code is ``code`` (constant-time compare)."""
    typed = _normalise(code)
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now.timestamp()) // STEP_SECONDS
    if typed is None:
        return None
    found = None
    for step in range(current - _DRIFT_STEPS, current + _DRIFT_STEPS + 1):
        # Every candidate is compared (no early exit), so timing says nothing about which matched.
        if hmac.compare_digest(totp.generate_otp(step), typed):
            found = step
    return found


def _open(conn: sa.Connection, broker: Broker, principal_id: str, state: principals.TotpState) -> str | None:
    """The secret; one an older key of the ring sealed is sealed again with the current key."""
    sealer = _sealer(broker)
    opened, by_older = sealer.open_bytes_with(principal_id, state.sealed_secret)
    if opened is None:
        return None
    if by_older:
        resealed = sealer.seal_bytes(principal_id, opened)
        principals.totp_reseal(conn, principal_id, state.sealed_secret, resealed)
    return opened.decode(errors="replace")


def reseal_all(broker: Broker, *, actor: str) -> tuple[int, int]:
    """Seal again with the current token key every TOTP secret an older key of the ring sealed
    (``access-broker keys reseal``, before that key leaves ``previous_signing_key_files``).
    Returns ``(resealed, unreadable)``: the second counts secrets no key of the ring opens
    (their people must enrol again, ``users totp-reset``).

    Raises:
        Unavailable: the database could not be reached.
    """
    sealer = _sealer(broker)
    resealed = unreadable = 0
    with broker.transaction() as conn:
        for principal_id, sealed in principals.totp_sealed(conn):
            opened, by_older = sealer.open_bytes_with(principal_id, sealed)
            if opened is None:
                unreadable += 1
            elif by_older and principals.totp_reseal(
                conn, principal_id, sealed, sealer.seal_bytes(principal_id, opened)
            ):
                resealed += 1
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.KEYS_RESEAL,
            target="keys:token",
            details={"resealed": resealed, "unreadable": unreadable, "key_id": key_id(broker.token_key)},
        )
    return resealed, unreadable


def _accept(
    conn: sa.Connection, broker: Broker, principal_id: str, state: principals.TotpState, code: str
) -> bool:
    """Whether ``code`` is right now for the stored secret and its step is later than the last
    one accepted; if so that step is recorded (so the same code is refused next time)."""
    secret = _open(conn, broker, principal_id, state)
    if secret is None:  # no key of the ring opens it: fail closed (an administrator resets it)
        return False
    step = _matching_step(secret, code, broker.clock.now())
    if step is None or (state.last_step is not None and step <= state.last_step):
        return False
    return principals.totp_accept_step(conn, principal_id, step)


def is_enabled(conn: sa.Connection, principal_id: str) -> bool:
    """Whether the principal's TOTP is in force (a sign-in needs a code)."""
    state = principals.totp_state(conn, principal_id)
    return state is not None and state.confirmed_at is not None


def check_sign_in(
    conn: sa.Connection, broker: Broker, user: PrincipalRecord, code: str
) -> tuple[bool, datetime | None]:
    """Inside the sign-in's transaction, after the password was right: ``(ok, mfa_at)``.

    A user without TOTP in force: ``(True, None)`` whatever ``code`` is (the sign-in has no second
    factor). With it: ``(True, now)`` for a current, unused code, else ``(False, None)``; the
    caller counts and audits the failure (reason ``totp``).
    """
    state = principals.totp_state(conn, user.id)
    if state is None or state.confirmed_at is None:
        return True, None
    if _accept(conn, broker, user.id, state, code):
        return True, broker.clock.now()
    return False, None


def second_factor(
    conn: sa.Connection, broker: Broker, user: PrincipalRecord | None, reason: str, otp: str
) -> tuple[PrincipalRecord | None, str, datetime | None]:
    """Inside the sign-in's transaction, after ``PasswordAttempt.verify`` gave ``(user, reason)``:
    the same, or ``(None, "totp", None)`` when the user has TOTP in force and ``otp`` is not a
    current, unused code; the third value is when the sign-in presented a second factor (now,
    or None when it did not)."""
    if user is None:
        return None, reason, None
    ok, mfa_at = check_sign_in(conn, broker, user, otp)
    return (user, reason, mfa_at) if ok else (None, "totp", None)


def users_with_totp(broker: Broker) -> set[str]:
    """The ids of the principals whose one-time codes are in force (``users list``).

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return principals.totp_users(conn)


def _user(conn: sa.Connection, name: str) -> PrincipalRecord:
    try:
        return find_principal(conn, name, USER)
    except InvalidRequest as exc:
        raise InvalidRequest(
            f"{name!r} is a service account: one-time codes are for people",
            hint="service accounts sign in with a client secret or a CI identity token",
        ) from exc


def begin_enrolment(broker: Broker, name: str, *, actor: str) -> Enrolment:
    """Make a new TOTP secret for the user ``name``, pending until ``confirm_enrolment``
    (replacing a pending one). Audited ``user.totp_enrol`` (``by``: ``self`` when ``actor`` is the
    user, else ``admin``; never the secret).

    Raises:
        Conflict: TOTP is already in force: turn it off (with a current code) or reset it first.
        NotFound: no user has this name.
        InvalidRequest: ``name`` is a service account.
        Unavailable: the database could not be reached; nothing changed.
    """
    secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, as RFC 4226 recommends
    with broker.transaction() as conn:
        user = _user(conn, name)
        if is_enabled(conn, user.id):
            raise Conflict(
                f"{user.name} already has one-time codes turned on",
                hint="turn them off on /inbox/mfa with a current code, or ask an administrator to run "
                "`access-broker users totp-reset`",
            )
        principals.totp_set_pending(conn, user.id, _sealer(broker).seal(user.id, secret))
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_TOTP_ENROL,
            target=f"principal:{user.name}",
            details={"by": "self" if actor == user.name else "admin"},
        )
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=user.name, issuer_name=issuer(broker)
    )
    return Enrolment(secret=secret, uri=uri)


def pending_enrolment(broker: Broker, name: str) -> Enrolment | None:
    """The user's pending (not yet confirmed) enrolment, to show its QR code again; None when
    there is none or it is already in force.

    Raises:
        NotFound: no user has this name.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        user = _user(conn, name)
        state = principals.totp_state(conn, user.id)
    if state is None or state.confirmed_at is not None:
        return None
    secret = _sealer(broker).open(user.id, state.sealed_secret)
    if secret is None:
        return None
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=user.name, issuer_name=issuer(broker)
    )
    return Enrolment(secret=secret, uri=uri)


def _checked_code(
    broker: Broker, name: str, code: str, client_ip: str, method: str, *, confirmed: bool
) -> PrincipalRecord:
    """Check ``code`` against the user's secret (pending when not ``confirmed``, else in force)
    under the password allowances; a wrong one is counted and audited ``login.failure`` (reason
    ``totp``)."""
    attempt = PasswordAttempt(broker, name, client_ip, method)
    ok = False
    with broker.transaction() as conn:
        attempt.check_limits(conn)
        user = _user(conn, name)
        state = principals.totp_state(conn, user.id)
        if state is None or (state.confirmed_at is not None) != confirmed:
            raise InvalidRequest(
                "There is no enrolment to confirm: start again."
                if not confirmed
                else "One-time codes are not turned on for this account.",
                hint=None,
            )
        ok = _accept(conn, broker, user.id, state, code)
        if ok and not confirmed:
            principals.totp_confirm(conn, user.id, broker.clock.now())
            ledger.append(
                conn,
                broker.clock,
                actor=user.name,
                action=Action.USER_TOTP_CONFIRM,
                target=f"principal:{user.name}",
                details={"ip": client_ip[:64]},
            )
        elif ok:
            principals.totp_clear(conn, user.id)
            ledger.append(
                conn,
                broker.clock,
                actor=user.name,
                action=Action.USER_TOTP_DISABLE,
                target=f"principal:{user.name}",
                details={"by": "self", "ip": client_ip[:64]},
            )
        else:
            attempt.record_failure(conn, "totp")
    if not ok:
        raise Unauthenticated(WRONG_CODE, hint=None)
    return user


def confirm_enrolment(broker: Broker, name: str, code: str, client_ip: str) -> None:
    """Put the user's pending TOTP secret in force with a first correct ``code``; audited
    ``user.totp_confirm``. From now on every password sign-in of theirs needs a code.

    Raises:
        Unauthenticated: a wrong code (counted like a wrong password, audited ``login.failure``).
        RateLimited: too many failed sign-ins for this name from this IP, or from this IP.
        InvalidRequest: no pending enrolment (none begun, or already in force).
        NotFound: no user has this name.
        Unavailable: the database could not be reached.
    """
    _checked_code(broker, name, code, client_ip, "totp_confirm", confirmed=False)


def disable(broker: Broker, name: str, code: str, client_ip: str) -> None:
    """The user turns their TOTP off, proving it with a current ``code``; audited
    ``user.totp_disable`` (``by: self``). Their sessions stay.

    Raises:
        Unauthenticated: a wrong code (counted like a wrong password, audited ``login.failure``).
        RateLimited: too many failed sign-ins for this name from this IP, or from this IP.
        InvalidRequest: TOTP is not in force for them.
        NotFound: no user has this name.
        Unavailable: the database could not be reached.
    """
    _checked_code(broker, name, code, client_ip, "totp_disable", confirmed=True)


def reset(broker: Broker, name: str, *, actor: str, keep_sessions: bool = False) -> EndedSignIns | None:
    """An administrator removes the user's TOTP (a lost phone), pending or in force; audited
    ``user.totp_disable`` (``by: admin``, ``reason: reset``). Their next sign-in needs only the
    password, and they may enrol again.

    Unless ``keep_sessions`` every sign-in of theirs ends (reason ``totp_reset``), as a password
    reset does: a phone that is lost may be in someone's hands, and a reset is also the remedy
    after a compromise. Returns what ended (None when kept).

    Raises:
        NotFound: no user has this name, or it has no TOTP to reset.
        InvalidRequest: ``name`` is a service account.
        Unavailable: the database could not be reached; nothing changed.
    """
    with broker.transaction() as conn:
        user = _user(conn, name)
        if not principals.totp_clear(conn, user.id):
            raise NotFound(f"{user.name} has no one-time codes set up", hint="nothing to reset")
        ended = None if keep_sessions else end_sign_ins(conn, broker, user.id, "totp_reset")
        details: dict[str, object] = {"by": "admin", "reason": "reset", "sessions_kept": keep_sessions}
        if ended is not None:
            details.update(ended.details())
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_TOTP_DISABLE,
            target=f"principal:{user.name}",
            details=details,
        )
    for event in [] if ended is None else ended.events("totp_reset"):
        broker.events.publish(event)
    return ended
