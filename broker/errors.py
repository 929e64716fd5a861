"""The broker's exception tree. Every error a request can meet is one of these.

::

    BrokerError                      (500 internal; base)
    ├── InvalidRequest               (400) bad input: it changed nothing
    │   ├── PayloadTooLarge          (413)
    │   ├── HeadTimeout              (408) a request head that did not arrive in time
    │   └── HeadTooLarge             (431) a request head over the limit
    ├── Unauthenticated              (401) no, expired, forged or revoked token
    ├── Forbidden                    (403) authenticated but not allowed (e.g. audit read)
    │   ├── GrantDenied              (403) policy said no
    │   ├── Locked                   (403, code ``locked``) an admin's lock covers the user, the
    │                                service or the grant (``access.broker.locks``)
    │   └── MfaRequired              (403, code ``mfa_required``) the policy asks for a sign-in
    │                                with a second factor more recent than the caller's
    ├── NotFound                     (404) unknown service, grant, user, endpoint
    ├── Conflict                     (409) already exists / already ended
    ├── Expired                      (410) the grant or code ran out
    ├── RateLimited                  (429)
    ├── Unavailable                  (503) the database or ledger is down: we fail closed
    │   └── LedgerUnsafe             (503) the ledger's guards are gone or it fails verification
    ├── TargetUnreachable            (502) the service behind a tunnel did not answer
    │   └── ProvisionFailed          (502) a target refused or failed a per-grant identity step;
    │                                defined in ``provision/common.py`` beside the provisioners
    ├── Misconfigured                (no HTTP) ``serve`` refuses to start: a file, the listen
    │                                address or the replica identity (``broker/startup.py``)
    └── OAuthError                   (400, 401 invalid_client, or as given) an RFC 6749 error from
                                     /oauth/*, rendered ``{"error", "error_description"}``;
                                     defined in ``auth/tokens.py`` beside the tokens it is about

The HTTP status and exit code come from ``access.shared.errors``; one handler in
``broker/app.py`` renders them. Any other exception reaching ``app.py`` is a bug: ``CatchAll``
answers ``500 {"error": {"code": "internal", ...}}`` and logs the traceback, never its text.

Outside the tree, on purpose (mapped at the boundary, ``raise X(...) from exc``):

    policy.model.PolicyError         (ValueError) a policy file that does not load: pure code with
                                     no HTTP in it; ``access-broker policy`` prints it, startup stops
    policy.model.UnknownService      (LookupError) } lookups in a loaded policy; grants.requests
    policy.model.UnknownScope        (LookupError) } maps them to NotFound / InvalidRequest
    shared.errors.SharedError        parse errors of the shared modules (durations, ``since``,
                                     HTTP heads); services map them to InvalidRequest
    shared.wsframe.ProtocolError     a tunnel peer broke the protocol: a close frame, not HTTP
"""

from __future__ import annotations

from datetime import timedelta

from access.shared.errors import ErrorCode, http_status_for

__all__ = [
    "BrokerError",
    "Conflict",
    "Expired",
    "Forbidden",
    "GrantDenied",
    "HeadTimeout",
    "HeadTooLarge",
    "InvalidRequest",
    "LedgerUnsafe",
    "Locked",
    "MfaRequired",
    "Misconfigured",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "TargetUnreachable",
    "Unauthenticated",
    "Unavailable",
    "database_unavailable",
    "outcome_unknown",
]


class BrokerError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def status(self) -> int:
        return http_status_for(self.code)

    def body(self) -> dict[str, object]:
        detail: dict[str, object] = {"code": str(self.code), "message": self.message}
        if self.hint:
            detail["hint"] = self.hint
        return {"error": detail}


class InvalidRequest(BrokerError):
    code = ErrorCode.INVALID_REQUEST


class PayloadTooLarge(InvalidRequest):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class HeadTooLarge(InvalidRequest):
    """Answered by the HTTP layer itself (``server.py``, ``tunnel/protocol.py``), never by a route."""

    @property
    def status(self) -> int:
        return 431


class HeadTimeout(InvalidRequest):
    @property
    def status(self) -> int:
        return 408


class Unauthenticated(BrokerError):
    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, message: str = "not signed in", *, hint: str | None = "run `access login`") -> None:
        super().__init__(message, hint=hint)


class Forbidden(BrokerError):
    code = ErrorCode.FORBIDDEN


class GrantDenied(Forbidden):
    code = ErrorCode.DENIED


class Locked(Forbidden):
    """A lock (``access-broker lock``) is in force on the user, the service or the grant: the
    message says who locked it, since when, until when and why; the hint how to get it lifted.
    ``lock_id`` names the lock (``access-broker locks``)."""

    code = ErrorCode.LOCKED

    def __init__(self, message: str, *, hint: str | None = None, lock_id: str) -> None:
        super().__init__(message, hint=hint)
        self.lock_id = lock_id


class MfaRequired(Forbidden):
    """The policy asks for a sign-in with a second factor within ``window`` (a rule's ``mfa:``
    for requesting, an approval's for approving) and the caller's sign-in had none, or an older
    one. ``access login --mfa`` (step-up) and asking again is the remedy, so the CLI exits 3."""

    code = ErrorCode.MFA_REQUIRED

    def __init__(self, message: str, *, hint: str | None = None, window: timedelta) -> None:
        super().__init__(message, hint=hint)
        self.window = window

    def body(self) -> dict[str, object]:
        # ``max_age`` in seconds, as RFC 9470 (step-up authentication) names the same thing.
        body = super().body()
        detail = body["error"]
        assert isinstance(detail, dict)
        detail["max_age"] = int(self.window.total_seconds())
        return body


class NotFound(BrokerError):
    code = ErrorCode.NOT_FOUND


class Conflict(BrokerError):
    code = ErrorCode.CONFLICT


class Expired(BrokerError):
    code = ErrorCode.EXPIRED


class RateLimited(BrokerError):
    code = ErrorCode.RATE_LIMITED


class Unavailable(BrokerError):
    code = ErrorCode.UNAVAILABLE


def database_unavailable() -> Unavailable:
    """The database failed before anything was committed: nothing was changed."""
    return Unavailable(
        "the broker's database is unavailable, so nothing was changed",
        hint="try again in a few seconds; operators: check the database",
    )


def outcome_unknown() -> Unavailable:
    """The database stopped answering during COMMIT: the change may or may not have been made."""
    return Unavailable(
        "the broker's database stopped answering while saving the change, so the outcome is unknown",
        hint="check with `access grants` (or `access audit`) whether it took effect before trying again",
    )


class LedgerUnsafe(Unavailable):
    """The ledger cannot be trusted (append-only guards missing or changed, or the part since the
    last checkpoint fails verification): the broker signs nothing and gives no new access."""


class TargetUnreachable(BrokerError):
    code = ErrorCode.TARGET_UNREACHABLE


class Misconfigured(BrokerError):
    """``access-broker serve`` cannot start as configured; the message names the file, address
    or value, and the hint the setting to change. Raised before serving, never an HTTP answer."""
