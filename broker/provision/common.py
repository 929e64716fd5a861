"""What the PostgreSQL and MySQL provisioners share: names, tags, the admin login, waits.

An identity's name is ``access_<principal slug>_<6 random>`` (at most 30 characters, so it fits
MySQL 8's 32-character user names as well as PostgreSQL's 63 bytes); the prefix ``access_`` is how
``ours()`` recognises it and how ``end()`` refuses to drop anything that is not ours. The tag
names the grant and the broker replica: ``access grant=<grant id> broker=<broker id>``.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from access.broker.errors import Conflict, TargetUnreachable

from .base import IdentitySpec

__all__ = [
    "PREFIX",
    "AdminLogin",
    "ProvisionFailed",
    "being_ended",
    "check_ours",
    "check_spec",
    "check_token",
    "cut_sessions",
    "is_ours",
    "make_name",
    "new_password",
    "parse_tag",
    "tag",
    "wait_until",
    "watchdog",
]

PREFIX = "access_"
SLUG_MAX = 16
_RANDOM_ALPHABET = string.ascii_lowercase + string.digits
_NAME = re.compile(r"access_[a-z0-9_]{1,16}_[a-z0-9]{6}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_TAG = re.compile(r"access grant=(\S{1,64}) broker=(\S{1,64})")


class ProvisionFailed(TargetUnreachable):
    """The target refused or failed a provisioning statement (502): the message names the
    target, the step and the target's own reason; the hint says what the operator can check."""


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """The broker's own admin credential on a target, and the bounds on every admin wait."""

    host: str
    port: int
    user: str
    password: str = field(default="", repr=False)
    database: str | None = None
    connect_timeout: float = 5.0  # seconds to connect and log in
    statement_timeout: float = 10.0  # seconds any one admin statement may run
    # seconds one admin connection may stay open at all: a target that stops answering mid-statement
    # (its own statement timeout cannot reach us then) is cut by a watchdog instead of hanging us
    operation_timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def refused(self, kind: str, exc: Exception) -> ProvisionFailed:
        """The error for an admin login that failed (the driver's text may echo the conninfo: left out)."""
        return ProvisionFailed(
            f"{kind} {self.where} refused the broker's admin login ({type(exc).__name__})",
            hint="check the target is up and the broker's admin credential for it",
        )


def make_name(principal: str) -> str:
    """``access_<slug>_<random>``: the slug is the principal lower-cased, runs of anything but
    ``[a-z0-9]`` folded to ``_``, cut to 16 characters; the random part is 6 of ``[a-z0-9]``."""
    slug = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:SLUG_MAX].strip("_") or "user"
    return PREFIX + slug + "_" + "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(6))


def is_ours(name: str) -> bool:
    """Whether ``name`` has the shape of a name ``make_name`` gives (nothing else is ever dropped)."""
    return _NAME.fullmatch(name) is not None


def check_ours(name: str) -> str:
    """``end`` drops nothing whose name ``make_name`` could not have given (not root, not an app's user)."""
    if not is_ours(name):
        raise ValueError(f"{name!r} is not an identity the broker made; it will not drop it")
    return name


def new_password() -> str:
    return secrets.token_urlsafe(32)


def check_token(what: str, value: str) -> str:
    """Grant and broker ids go into tags and must read back unambiguously: no spaces, ≤ 64 chars."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} {value!r} cannot go in an identity's tag: use [A-Za-z0-9_.:@-], ≤ 64 chars")
    return value


def check_spec(spec: IdentitySpec) -> None:
    check_token("grant id", spec.grant_id)
    if spec.expires_at.tzinfo is None:
        raise ValueError("expires_at must carry a time zone (the broker's clock is UTC)")
    if not 1 <= spec.connection_limit <= 10_000:
        raise ValueError(f"connection_limit {spec.connection_limit} must be between 1 and 10000")


def being_ended(name: str, grant_id: str) -> Conflict:
    """``create`` for a grant whose identity ``end`` has begun on: it will not bring it back."""
    return Conflict(
        f"the identity {name} of grant {grant_id} is being ended",
        hint="a grant that has ended cannot be given an identity again",
    )


def tag(grant_id: str, broker_id: str) -> str:
    return f"access grant={grant_id} broker={broker_id}"


def parse_tag(text: str | None) -> tuple[str | None, str | None]:
    """``(grant id, broker id)`` from a tag, ``(None, None)`` when it is missing or not ours."""
    found = _TAG.fullmatch(text or "")
    return (found.group(1), found.group(2)) if found else (None, None)


SESSIONS_GONE_WITHIN = 5.0  # seconds end() waits for the sessions it ended to exit


def cut_sessions(kill_round: Callable[[], bool], *, kind: str, admin: AdminLogin, name: str) -> None:
    """Run ``kill_round`` (ends every session of ``name`` it finds; True when it found none) until
    no session is left, ``SESSIONS_GONE_WITHIN`` seconds at most, then raise."""
    if not wait_until(kill_round, within=SESSIONS_GONE_WITHIN):
        raise ProvisionFailed(
            f"{kind} {admin.where}: sessions of {name} outlived {SESSIONS_GONE_WITHIN:g} s",
            hint="its login is locked already; `end` again to finish",
        )


@contextmanager
def watchdog(fileno: int, within: float) -> Iterator[None]:
    """Shut the socket ``fileno`` down if the block outlives ``within`` seconds, so a read blocked
    on a silent target fails at once. Works on a duplicate of the descriptor, held until the block
    ends: the watchdog can never hit a descriptor number the system has since given to another."""
    own = socket.socket(fileno=os.dup(fileno))
    lock = threading.Lock()

    def cut() -> None:
        with lock, suppress(OSError):
            if own.fileno() != -1:
                own.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(within, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            own.close()  # our duplicate only: the driver's descriptor is the driver's to close


def wait_until(done: Callable[[], bool], *, within: float, step: float = 0.02) -> bool:
    """Poll ``done`` until it is true or ``within`` seconds have passed; the last poll's answer."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
