"""The identity a grant gets on a target, and what every target's provisioner does with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = ["Identity", "IdentitySpec", "OurIdentity", "Provisioner"]


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """What the policy says a grant's identity may do on the target.

    ``privileges``: PostgreSQL roles to be a member of; MySQL GRANT clauses such as
    ``SELECT ON payments.*``; Redis ACL rules such as ``+@read`` and ``~payments:*``.
    """

    grant_id: str
    principal: str
    scope: str
    expires_at: datetime
    privileges: tuple[str, ...]
    connection_limit: int = 10


@dataclass(frozen=True, slots=True)
class Identity:
    """A made identity: its name on the target and the password only the broker knows."""

    name: str
    password: str = field(repr=False)
    grant_id: str


@dataclass(frozen=True, slots=True)
class OurIdentity:
    """An identity found on the target that carries our tag (for reconciliation)."""

    name: str
    grant_id: str | None
    broker_id: str | None


class Provisioner(Protocol):
    """One target's identities. Every method is idempotent, so a retry after a crash is safe."""

    def identity_name(self, spec: IdentitySpec) -> str:
        """A random name recognisable as ours: ``access_<principal>_<random>``."""

    def create(self, spec: IdentitySpec) -> Identity:
        """Make the identity with the spec's privileges (raises on a refusal by the target)."""

    def end(self, name: str) -> None:
        """Lock its login, end its live sessions, hand over what it owns, drop it."""

    def extend(self, name: str, expires_at: datetime) -> None:
        """Move the identity's own expiry on the target to ``expires_at`` when that is later (an
        extended grant; never earlier, so extensions applied in any order end at the latest).
        Live sessions are untouched. An absent identity, or one being ended: nothing to do."""

    def ours(self) -> list[OurIdentity]:
        """Every identity of ours on the target, with the grant and broker its tag names."""
