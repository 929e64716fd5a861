"""Locks: the kill switch on a user, a service or a grant (``access-broker lock`` / ``unlock``).

A lock is in force iff it was not lifted and its ``until`` is unset or still ahead (the broker's
clock); an expired lock lifts itself. While one is in force, what it covers gets no new access:

- ``POST /v1/grants`` by a locked user or for a locked service is refused (403 ``locked``),
  recorded as a denial (``grant.deny`` with the ``lock_id``); nothing else changes;
- a tunnel or a channel for a grant a lock covers is refused (``connection.refuse``, why
  ``locked``); the grant was ended when the lock was put on anyway.

**Other code that gives access calls** :func:`check` (approvals, ``access extend``)::

    from access.broker import locks

    locks.check(conn, now, user=record.subject, service=record.service, grant_id=record.id)

inside its own transaction, before its first ledger append (the check holds the targets on
PostgreSQL so a lock being put on meanwhile cannot miss what this transaction gives). It raises
:class:`~access.broker.errors.Locked` (a ``Forbidden``: 403, code ``locked``, CLI exit 4) whose
message names who locked what, since when, until when and why; it changes and audits nothing.
:func:`covering` returns the lock instead of raising, for a caller that records the refusal.

What lives here: ``guard`` (the check, the refusal's words) and ``switch`` (put, lift and list
locks: imported by ``access.broker.admin.locks``, and not from here, since it imports the grant
lifecycle, whose queries import the guard). SQL lives in ``access.broker.store.locks``.

May import: audit, errors, grants.lifecycle (switch only), notifications, runtime, store.
"""

from access.broker.errors import Locked
from access.broker.locks.guard import check, covering, describe

__all__ = ["Locked", "check", "covering", "describe"]
