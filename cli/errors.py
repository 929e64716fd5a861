"""The CLI's exception tree. ``main`` catches :class:`CliError` once, prints it, and exits.

::

    CliError                 (1 error; base: message, hint, exit_code, request_id)
    ├── UsageError           (2) bad input: a flag, a TTL, a file with loose permissions
    ├── NeedsLogin           (3) no token, or it expired or was revoked: run `access login`
    ├── Denied               (4) policy or a person said no
    ├── Pending              (5) waiting on something (device approval, reviewers)
    ├── Expired              (6) the device code or the grant ran out
    ├── Unavailable          (7) the broker refused to act (it fails closed)
    │   └── BrokerUnreachable    (7) no answer from the broker: names the URL tried
    ├── NotFound             (8) no such service, grant or user
    ├── TimedOut             (9) `access login` waited --timeout and nobody approved the code
    ├── NotExecutable        (126) `access exec`'s program is there but cannot be run
    ├── CommandNotFound      (127) `access exec`'s program is not there (nor on PATH)
    └── tunnel.HandshakeRefused  (1) the broker refused a tunnel upgrade (its JSON error and HTTP
                                 status); the listener reports it and stays up, so it does not
                                 normally reach ``main``

Outside the tree: ``shared.errors.SharedError`` (bad durations, ``--since`` values), which the
commands turn into ``UsageError`` with a remedy, and ``shared.wsframe.ProtocolError``, which the
tunnel turns into a close frame.

Exit codes come from ``access.shared.errors.ExitCode``, the table the broker uses too, and
broker JSON errors are mapped by their wire code (:func:`from_wire`). This module is imported
at startup, so it must stay free of heavy imports.
"""

from __future__ import annotations

from typing import ClassVar

from access.shared.errors import ExitCode, exit_code_for

__all__ = [
    "BrokerUnreachable",
    "CliError",
    "CommandNotFound",
    "Denied",
    "Expired",
    "NeedsLogin",
    "NotExecutable",
    "NotFound",
    "Pending",
    "TimedOut",
    "Unavailable",
    "UsageError",
    "from_wire",
]

LOGIN_HINT = "run `access login`"


class CliError(Exception):
    """Something the user should read: what went wrong (``message``) and what to do (``hint``)."""

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR
    default_hint: ClassVar[str | None] = None

    def __init__(
        self, message: str, hint: str | None = None, *, code: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.code = code  # the broker's wire code, when the error came from the broker
        # The broker's id for the request that was answered with this error (its X-Request-Id
        # header), shown so that the operator can find it in the broker's log.
        self.request_id = request_id


class UsageError(CliError):
    exit_code = ExitCode.USAGE


class NeedsLogin(CliError):
    exit_code = ExitCode.NEEDS_LOGIN
    default_hint = LOGIN_HINT


class Denied(CliError):
    exit_code = ExitCode.DENIED


class Pending(CliError):
    exit_code = ExitCode.PENDING


class Expired(CliError):
    exit_code = ExitCode.EXPIRED


class Unavailable(CliError):
    exit_code = ExitCode.UNAVAILABLE
    default_hint = "try again shortly; if it persists, tell the broker's operator"


class BrokerUnreachable(Unavailable):
    """No answer from the broker at ``url``: the message names the URL so a typo is visible."""

    def __init__(self, url: str, reason: str, hint: str | None = None) -> None:
        super().__init__(
            f"cannot reach the broker at {url}: {reason}",
            hint or "check the URL (--broker or ACCESS_BROKER_URL) and that the broker is running",
        )
        self.url = url


class NotFound(CliError):
    exit_code = ExitCode.NOT_FOUND


class TimedOut(CliError):
    exit_code = ExitCode.TIMED_OUT


class NotExecutable(CliError):
    exit_code = ExitCode.NOT_EXECUTABLE


class CommandNotFound(CliError):
    exit_code = ExitCode.COMMAND_NOT_FOUND


_BY_EXIT: dict[ExitCode, type[CliError]] = {
    ExitCode.USAGE: UsageError,
    ExitCode.NEEDS_LOGIN: NeedsLogin,
    ExitCode.DENIED: Denied,
    ExitCode.PENDING: Pending,
    ExitCode.EXPIRED: Expired,
    ExitCode.UNAVAILABLE: Unavailable,
    ExitCode.NOT_FOUND: NotFound,
}


def from_wire(code: str, message: str, hint: str | None = None) -> CliError:
    """The CLI error for a broker error body ``{"error": {"code", "message", "hint"}}``."""
    cls = _BY_EXIT.get(exit_code_for(code), CliError)
    return cls(message, hint, code=code)
