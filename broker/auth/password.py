"""A username and password typed on one of the broker's pages, with the limits against guessing.

The device page (``auth.device``) and the approvals inbox (``auth.websessions``) sign people in
the same way: the allowances are checked before the slow argon2 verification, a failure counts
against (username, IP) and against the IP (any name, a higher allowance) and is audited as
``login.failure`` (a name that matches no account as its ``tags.unknown_name``, never as
typed), a success as ``login.success``. ``method`` says which page it was on in the ledger.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import ratelimit, tags
from access.broker.auth.identity import check_password
from access.broker.runtime import Broker
from access.broker.store.principals import PrincipalRecord

__all__ = ["MFA_UNAVAILABLE", "MFA_UNAVAILABLE_HINT", "WRONG_SIGN_IN", "PasswordAttempt"]

# One message for every failure (wrong name, password or one-time code, a disabled account):
# it says nothing about which, nor whether the account has a second factor.
WRONG_SIGN_IN = "Wrong username, password or one-time code."
MFA_UNAVAILABLE = (
    "This sign-in asks for a second factor (access login --mfa) and your account has no "
    "one-time codes set up."
)
MFA_UNAVAILABLE_HINT = (
    "set them up on the approvals inbox's page /inbox/mfa (sign in there with your password), "
    "or ask an administrator; then run `access login --mfa` again"
)


class PasswordAttempt:
    """One sign-in attempt by ``username`` from ``client_ip`` on the page named ``method``."""

    def __init__(self, broker: Broker, username: str, client_ip: str, method: str) -> None:
        self.broker = broker
        self.username = username.strip()
        self.client_ip = client_ip[:64]
        self.method = method
        self._password_key = ratelimit.PASSWORD_FAILURES.key(broker, self.username.lower(), self.client_ip)
        self._per_address = ratelimit.login_failures_per_address(broker)
        self._address_key = self._per_address.key(broker, self.client_ip)

    def check_limits(self, conn: sa.Connection) -> None:
        """Refuse before any password is checked when this address or (name, address) is used up.

        Raises:
            RateLimited: too many failed logins from this IP, or for this name from this IP.
        """
        ratelimit.check(conn, self.broker.clock, self._per_address, self._address_key)
        ratelimit.check(conn, self.broker.clock, ratelimit.PASSWORD_FAILURES, self._password_key)

    def verify(self, password: str) -> tuple[PrincipalRecord | None, str]:
        """``check_password``: call it outside any transaction (argon2 is slow; it holds no lock).

        Raises:
            Unavailable: the database could not be reached.
        """
        return check_password(self.broker, self.username, password)

    def record_failure(
        self, conn: sa.Connection, reason: str, *, counted: bool = True, **details: Any
    ) -> None:
        """Count the failure against both allowances (unless not ``counted``: the credentials
        were right) and audit it (``details`` added to the entry)."""
        clock = self.broker.clock
        if counted:
            ratelimit.hit(conn, clock, ratelimit.PASSWORD_FAILURES, self._password_key)
            ratelimit.hit(conn, clock, self._per_address, self._address_key)
        # A name that matches no account may be a password typed in the wrong field: the
        # ledger keeps only its keyed tag (same name, same tag), never the text.
        name = tags.unknown_name(self.broker, self.username) if reason == "unknown_user" else self.username
        ledger.append(
            conn,
            clock,
            actor=name,
            action=Action.LOGIN_FAILURE,
            target=f"user:{name}",
            details={"method": self.method, "reason": reason, "ip": self.client_ip, **details},
        )

    def record_success(self, conn: sa.Connection, user: PrincipalRecord, **details: Any) -> None:
        """Audit the sign-in of ``user`` (``details`` added to the entry)."""
        ledger.append(
            conn,
            self.broker.clock,
            actor=user.name,
            action=Action.LOGIN_SUCCESS,
            target=f"principal:{user.name}",
            details={"method": self.method, "ip": self.client_ip, **details},
        )
