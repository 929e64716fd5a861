"""Why the broker ended a tunnel, as the WebSocket close code and reason it sends.

The codes are ``shared.wsframe``'s ``CLOSE_EXPIRED`` (4010), ``CLOSE_REVOKED`` (4011),
``CLOSE_LOCKED`` (4012) and ``CLOSE_SIGNED_OUT`` (4013, the sign-in session behind the tunnel
ended: logout, refresh-token reuse, revoke), defined there beside the other close codes of the compiled frame
layer; this module is the one table of what each means. The broker closes with
:func:`grant_ended_close`; the CLI reads the close back with :func:`ended_why`. None of this is
on the per-frame path: it runs once, when a tunnel ends.
"""

from __future__ import annotations

from typing import Final

from access.shared.wsframe import (
    CLOSE_EXPIRED,
    CLOSE_LOCKED,
    CLOSE_REVOKED,
    CLOSE_SIGNED_OUT,
    GRANT_ENDED_CODES,
)

__all__ = ["GRANT_ENDED_CLOSE", "GRANT_ENDED_CODES", "ended_why", "grant_ended_close"]

# why -> (close code, reason with the grant id in it). Unknown whys are treated as "revoked":
# the grant is over either way, and "revoked" claims nothing about time or the account.
GRANT_ENDED_CLOSE: Final[dict[str, tuple[int, str]]] = {
    "expired": (CLOSE_EXPIRED, "grant {grant} expired"),
    "revoked": (CLOSE_REVOKED, "grant {grant} was revoked"),
    # A reloaded policy no longer allows the grant: revoked, in words that say by what.
    "policy": (CLOSE_REVOKED, "grant {grant} ended: the policy no longer allows it"),
    # Its owner was disabled, or `access-broker lock` covers the user, the service or the grant.
    "locked": (CLOSE_LOCKED, "grant {grant} ended: an administrator locked access"),
    "signed out": (CLOSE_SIGNED_OUT, "grant {grant} ended: its sign-in session ended; run `access login`"),
    # `access-broker users revoke-sessions`: every session and grant of the person ended at once.
    "sessions revoked": (
        CLOSE_SIGNED_OUT,
        "grant {grant} ended: an administrator ended your sign-in sessions; run `access login`",
    ),
    # The session's lifetime ran out: the same code (the person must sign in again), its own words.
    "session expired": (
        CLOSE_SIGNED_OUT,
        "grant {grant} ended: its sign-in session expired; run `access login`",
    ),
}
_WHY_BY_CODE: Final[dict[int, str]] = {
    code: why
    for why, (code, _) in GRANT_ENDED_CLOSE.items()
    if why not in ("session expired", "sessions revoked", "policy")
}


def grant_ended_close(why: str, grant_id: str) -> tuple[int, str]:
    """The close code and reason for grant ``grant_id`` ended because ``why``.

    ``why``: expired, revoked, locked, signed out (the sign-in session behind the tunnel ended)
    or session expired (its lifetime ran out; 4013 as signed out).
    """
    code, reason = GRANT_ENDED_CLOSE.get(why, GRANT_ENDED_CLOSE["revoked"])
    return code, reason.format(grant=grant_id)


def ended_why(code: int) -> str | None:
    """``expired`` / ``revoked`` / ``locked`` / ``signed out`` for a tunnel-ended close code, else None."""
    return _WHY_BY_CODE.get(code)
