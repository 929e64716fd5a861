"""What the PostgreSQL and MySQL provisioners share: names, tags, the admin login, waits.

An identity's name is ``access_<principal slug>_<6 random>`` (at most 30 characters, so it fits
MySQL 8's 32-character user names as well as PostgreSQL's 63 bytes); the prefix ``access_`` is how
``ours()`` recognises it and how ``end()`` refuses to drop anything that is not ours. The tag
names the grant and the broker replica: ``access grant=<grant id> broker=<broker id>``.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from access.broker.errors import TargetUnreachable

from .base import IdentitySpec

__all__ = [
    "PREFIX",
    "AdminLogin",
    "ProvisionFailed",
    "check_spec",
    "check_token",
    "is_ours",
    "make_name",
    "new_password",
    "parse_tag",
    "tag",
    "wait_until",
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


def make_name(principal: str) -> str:
    """``access_<slug>_<random>``: the slug is the principal lower-cased, runs of anything but
    ``[a-z0-9]`` folded to ``_``, cut to 16 characters; the random part is 6 of ``[a-z0-9]``."""
    slug = re.sub(r"[^a-z0-9]+", "_", principal.lower()).strip("_")[:SLUG_MAX].strip("_") or "user"
    return PREFIX + slug + "_" + "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(6))


def is_ours(name: str) -> bool:
    """Whether ``name`` has the shape of a name ``make_name`` gives (nothing else is ever dropped)."""
    return _NAME.fullmatch(name) is not None


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


def tag(grant_id: str, broker_id: str) -> str:
    return f"access grant={grant_id} broker={broker_id}"


def parse_tag(text: str | None) -> tuple[str | None, str | None]:
    """``(grant id, broker id)`` from a tag, ``(None, None)`` when it is missing or not ours."""
    found = _TAG.fullmatch(text or "")
    return (found.group(1), found.group(2)) if found else (None, None)


def wait_until(done: Callable[[], bool], *, within: float, step: float = 0.02) -> bool:
    """Poll ``done`` until it is true or ``within`` seconds have passed; the last poll's answer."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
