"""The shared exception tree, and the error codes on the wire with the HTTP status the broker
sends and the exit code the CLI returns.

Exceptions of ``access.shared`` (pure parsing: each side maps them to its own tree at the edge,
the broker to ``InvalidRequest``, the CLI to ``UsageError``)::

    SharedError                          (base)
    ├── durations.DurationError          (also ValueError) not a duration such as ``30m``
    ├── durations.SinceError             (also ValueError) neither a duration nor an ISO-8601 time
    └── httphead.HeadError               (also ValueError) a malformed HTTP head, or one over its ceiling

    wsframe.ProtocolError                (Exception) a peer broke the WebSocket or mux protocol; it
                                         carries the close code to answer with. Not a SharedError:
                                         wsframe is compiled with mypyc (setup.py), whose native
                                         classes may only derive from built-in exceptions, and it
                                         never leaves the tunnel (``shared.mux`` turns it into a close).

One table serves both sides, so a code can never mean one thing to the broker and
another to the CLI. The broker renders every error as::

    {"error": {"code": "grant_denied", "message": "...", "hint": "..."}}

OAuth endpoints (``/oauth/*``) use RFC 6749's ``{"error": ..., "error_description": ...}``
instead, as OAuth clients expect.

Exit codes of ``access`` (documented in docs/cli.md)::

    0  ok
    1  error            something failed; the message says what
    2  usage            bad input: a flag, a TTL, a service name
    3  needs login      no token, or it expired or was revoked: run `access login`; or the policy
                        asks for a recent second factor: run `access login --mfa`
    4  denied           policy or a person said no, or an admin's lock (``access-broker lock``)
    5  pending          waiting on something (device approval, later: reviewers)
    6  expired          the device code or the grant ran out
    7  unavailable      the broker could not be reached, or refused to act (fail closed)
    8  not found        no such service, grant or user
    9  timed out        `access login`: nobody approved the device code within --timeout
  126  not executable   `access exec`'s program cannot be run (no grant was asked for)
  127  no program       `access exec`'s program is not there or not on PATH (likewise)
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["ErrorCode", "ExitCode", "SharedError", "exit_code_for", "http_status_for"]


class SharedError(Exception):
    """Base of the exceptions raised by ``access.shared``."""


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NEEDS_LOGIN = 3
    DENIED = 4
    PENDING = 5
    EXPIRED = 6
    UNAVAILABLE = 7
    NOT_FOUND = 8
    TIMED_OUT = 9
    # `access exec`'s program, before any grant is asked for: the shells' codes.
    NOT_EXECUTABLE = 126
    COMMAND_NOT_FOUND = 127


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    DENIED = "grant_denied"
    LOCKED = "locked"
    MFA_REQUIRED = "mfa_required"
    PENDING = "pending"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    TARGET_UNREACHABLE = "target_unreachable"
    INTERNAL = "internal"


_TABLE: dict[ErrorCode, tuple[int, ExitCode]] = {
    ErrorCode.INVALID_REQUEST: (400, ExitCode.USAGE),
    ErrorCode.UNAUTHENTICATED: (401, ExitCode.NEEDS_LOGIN),
    ErrorCode.FORBIDDEN: (403, ExitCode.DENIED),
    ErrorCode.DENIED: (403, ExitCode.DENIED),
    ErrorCode.LOCKED: (403, ExitCode.DENIED),
    # Signing in again with a second factor is what it takes: a login matter, not a denial.
    ErrorCode.MFA_REQUIRED: (403, ExitCode.NEEDS_LOGIN),
    ErrorCode.PENDING: (409, ExitCode.PENDING),
    ErrorCode.EXPIRED: (410, ExitCode.EXPIRED),
    ErrorCode.NOT_FOUND: (404, ExitCode.NOT_FOUND),
    ErrorCode.CONFLICT: (409, ExitCode.ERROR),
    ErrorCode.RATE_LIMITED: (429, ExitCode.ERROR),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, ExitCode.USAGE),
    ErrorCode.UNAVAILABLE: (503, ExitCode.UNAVAILABLE),
    ErrorCode.TARGET_UNREACHABLE: (502, ExitCode.UNAVAILABLE),
    ErrorCode.INTERNAL: (500, ExitCode.ERROR),
}


def http_status_for(code: ErrorCode) -> int:
    return _TABLE[code][0]


def exit_code_for(code: str) -> ExitCode:
    """The CLI exit code for a wire error code; unknown codes are plain errors."""
    try:
        return _TABLE[ErrorCode(code)][1]
    except ValueError:
        return ExitCode.ERROR
