"""Every action the ledger records, in one enumeration (docs/audit.md lists them; a test keeps both equal).

An entry's ``action`` is one of these values and nothing else: ``ledger.append`` and
``ledger.record`` take an :class:`Action`, so a new kind of entry starts here, with its line in
docs/audit.md. The values are stored as they are and covered by the hash chain: never rename one.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["WHILE_UNSAFE", "Action"]


class Action(StrEnum):
    # Sign-in (auth/): the device flow, password checks, tokens and sessions.
    DEVICE_REQUEST = "device.request"
    DEVICE_APPROVE = "device.approve"
    DEVICE_DENY = "device.deny"
    LOGIN_SUCCESS = "login.success"
    LOGIN_FAILURE = "login.failure"
    LOGOUT = "logout"
    TOKEN_ISSUE = "token.issue"
    TOKEN_REFRESH = "token.refresh"
    TOKEN_REFRESH_REUSE = "token.refresh_reuse"
    TOKEN_REVOKE = "token.revoke"
    # An upstream OIDC provider refused the refresh token of a session (auth/upstream): it ended.
    TOKEN_UPSTREAM_REFUSE = "token.upstream_refuse"
    # A CI system's identity token exchanged for a service account's token (RFC 8693), or refused.
    TOKEN_EXCHANGE = "token.exchange"
    TOKEN_EXCHANGE_REFUSE = "token.exchange_refuse"
    # The directory (auth/identity): users and service accounts.
    USER_CREATE = "user.create"
    # A person signed in with an upstream OIDC provider for the first time and became a user.
    USER_PROVISION = "user.provision"
    # An existing user linked by an administrator to a person at an upstream provider.
    USER_LINK = "user.link"
    USER_DISABLE = "user.disable"
    USER_ENABLE = "user.enable"
    USER_SET_PASSWORD = "user.set_password"
    # TOTP (auth/identity/totp): a secret made, confirmed by a first code, turned off or reset.
    USER_TOTP_ENROL = "user.totp_enrol"
    USER_TOTP_CONFIRM = "user.totp_confirm"
    USER_TOTP_DISABLE = "user.totp_disable"
    # Offboarding: every session, grant and request of the principal ended; it stays enabled.
    USER_REVOKE_SESSIONS = "user.revoke_sessions"
    SERVICE_ACCOUNT_CREATE = "service_account.create"
    SERVICE_ACCOUNT_DISABLE = "service_account.disable"
    SERVICE_ACCOUNT_ENABLE = "service_account.enable"
    SERVICE_ACCOUNT_REVOKE_SESSIONS = "service_account.revoke_sessions"
    # Grants (grants/): the request, the policy's decision, an extension, and the end.
    GRANT_REQUEST = "grant.request"
    GRANT_PENDING = "grant.pending"
    GRANT_APPROVE = "grant.approve"
    GRANT_REJECT = "grant.reject"
    GRANT_ISSUE = "grant.issue"
    # A grant issued through a break-glass rule: written beside its grant.issue, for review.
    GRANT_BREAK_GLASS = "grant.break_glass"
    GRANT_DENY = "grant.deny"
    GRANT_REVOKE = "grant.revoke"
    GRANT_EXPIRED = "grant.expired"
    # More time for an active grant, under its rule's maximum (grants/extend): old and new expiry.
    GRANT_EXTEND = "grant.extend"
    GRANT_CONNECTION_DETAILS = "grant.connection_details"
    # The tunnel (tunnel/): each channel's connection to the target.
    CONNECTION_OPEN = "connection.open"
    CONNECTION_CLOSE = "connection.close"
    CONNECTION_REFUSE = "connection.refuse"
    # The ledger itself (admin/): its append-only guards were found missing and put back.
    LEDGER_GUARDS_RESTORE = "ledger.guards_restore"
    # Keys (admin/keys): stored secrets sealed again with the current token key after a rotation.
    KEYS_RESEAL = "keys.reseal"
    # The statement log (audit/statements): a batch of the statements one channel relayed.
    CONNECTION_STATEMENTS = "connection.statements"
    # Per-grant identities on targets (identities/): made, dropped at the grant's end, reconciled.
    IDENTITY_CREATE = "identity.create"
    IDENTITY_DROP = "identity.drop"
    IDENTITY_RECONCILE = "identity.reconcile"
    # Notifications (notifications/): a webhook delivery given up on after its attempts.
    NOTIFICATION_FAILED = "notification.failed"
    # The policy (rollout/): a new version put in force, or a file refused (the old one stays).
    POLICY_RELOAD = "policy.reload"
    POLICY_REFUSE = "policy.refuse"
    # Locks (locks/): the kill switch put on a user, a service or a grant, and lifted.
    ACCESS_LOCK = "access.lock"
    ACCESS_UNLOCK = "access.unlock"


# While the ledger is unsafe (``ledger.set_unsafe``) only these are recorded, and so only these
# actions happen: ends and refusals, which take access away. Whatever gives access waits.
WHILE_UNSAFE = frozenset(
    {
        Action.DEVICE_DENY,
        Action.LOGIN_FAILURE,
        Action.LOGOUT,
        Action.TOKEN_REFRESH_REUSE,
        Action.TOKEN_REVOKE,
        Action.TOKEN_UPSTREAM_REFUSE,
        Action.TOKEN_EXCHANGE_REFUSE,
        Action.USER_DISABLE,
        Action.SERVICE_ACCOUNT_DISABLE,
        # Offboarding takes everything away. Enabling and setting a password give, and wait.
        Action.USER_REVOKE_SESSIONS,
        Action.SERVICE_ACCOUNT_REVOKE_SESSIONS,
        Action.GRANT_DENY,
        Action.GRANT_REJECT,
        Action.GRANT_REVOKE,
        Action.GRANT_EXPIRED,
        Action.CONNECTION_CLOSE,
        Action.CONNECTION_REFUSE,
        Action.LEDGER_GUARDS_RESTORE,
        # What a channel already relayed: a record of access that happened, like its close.
        Action.CONNECTION_STATEMENTS,
        Action.IDENTITY_DROP,
        Action.IDENTITY_RECONCILE,
        # A record that a notice was lost: it gives no access, and waiting would only repeat it.
        Action.NOTIFICATION_FAILED,
        # A refused policy changes nothing: the one in force stays.
        Action.POLICY_REFUSE,
        # A lock takes access away (its grants' ends are GRANT_REVOKE); unlocking gives it back.
        Action.ACCESS_LOCK,
    }
)
