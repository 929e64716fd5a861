"""The events a webhook can be told about: their names are part of the webhook contract."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RESERVED", "Notice"]


class Notice(StrEnum):
    """An event's name, as sent in ``event`` and ``X-Access-Event``. Never rename one."""

    # A request waits for review (pending; ``details``: reviewers, review_expires_at).
    GRANT_REQUESTED = "grant.requested"
    # A grant became active: issued by the policy at once, or once its approvals are complete.
    GRANT_ISSUED = "grant.issued"
    # A reviewer approved a pending request (``details``: reviewer, comment, missing: what the
    # tally still needs, "" when this approval completed it and ``grant.issued`` follows).
    GRANT_APPROVED = "grant.approved"
    # A request was refused: by the policy, or by a reviewer (``details``: why; reviewer, reason).
    GRANT_DENIED = "grant.denied"
    GRANT_EXPIRED = "grant.expired"
    # Its owner gave an active grant more time (``details``: ``old_expires_at``, ``expires_at``).
    GRANT_EXTENDED = "grant.extended"
    # Ended early: ``access revoke``, a lock-out (``details.why``: revoked, locked, identity_failed).
    GRANT_REVOKED = "grant.revoked"
    # A principal was disabled (``access-broker users disable``), or ``access-broker lock`` put a
    # lock on a user, a service or a grant (``details``: target, grants_ended; a lock's lock_id,
    # reason, until).
    ACCESS_LOCKED = "access.locked"
    # ``access-broker unlock`` lifted a lock (``details``: target, lock_ids, reason).
    ACCESS_UNLOCKED = "access.unlocked"
    # A grant issued through a break-glass rule (beside its grant.issued), for review after the fact.
    BREAK_GLASS = "grant.break_glass"


# Defined now, emitted by work not built yet: endpoints may subscribe (none at the moment).
RESERVED: frozenset[Notice] = frozenset()
