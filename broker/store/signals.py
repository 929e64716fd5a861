"""Signals to every broker process: PostgreSQL NOTIFY, sent in the transaction that decides.

An end decided in any process (a grant ended or its expiry moved, a sign-in session ended, a
principal disabled, a policy version put in force) is told to every replica by ``send``, called
from the store function that writes it (``grants.end``, ``grants.extend``, ``sessions.revoke``,
``sessions.revoke_for_principal``, ``principals.disable``, ``policy_versions.insert``): so no
path that writes the change can forget to tell, whichever process runs it (a replica, an
``access-broker`` command). PostgreSQL delivers a NOTIFY exactly when its transaction commits,
and never one of a transaction rolled back. On SQLite nothing is sent: one machine, the replicas'
poll is enough.

``listen`` opens the connection a replica listens on (``events.listen.SignalListener``): one of
its own, not a pooled one, bounded as the pool's are (connect timeout, keepalives, the server's
statement timeout) plus a deadline on every answer; ``ping`` tells a live one from a dead one.

A payload carries ids, a reason word and an expiry only, never a secret, in compact JSON
(``{"k":"grant.ended","id":"g-…","r":"revoked"}``); one longer than ``PAYLOAD_LIMIT`` bytes
(PostgreSQL refuses 8000) is a bug, refused before it is sent.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa

from access.broker.store.engine import DatabaseTimeouts, connect_params

__all__ = [
    "CHANNEL",
    "GRANT_ENDED",
    "GRANT_EXTENDED",
    "KINDS",
    "PAYLOAD_LIMIT",
    "POLICY_VERSION",
    "PRINCIPAL_LOCKED",
    "SESSION_ENDED",
    "Signal",
    "listen",
    "ping",
    "send",
]

CHANNEL = "access_broker"
PAYLOAD_LIMIT = 7999  # bytes: PostgreSQL's NOTIFY refuses a payload of 8000 or more

GRANT_ENDED = "grant.ended"
GRANT_EXTENDED = "grant.extended"
SESSION_ENDED = "session.ended"
PRINCIPAL_LOCKED = "principal.locked"
POLICY_VERSION = "policy.version"
KINDS = frozenset({GRANT_ENDED, GRANT_EXTENDED, SESSION_ENDED, PRINCIPAL_LOCKED, POLICY_VERSION})

_REASON_LENGTH = 64  # reasons are words ("revoked", "sessions revoked"), never free text


@dataclass(frozen=True)
class Signal:
    """One change told to the replicas: its ``kind``, the id it is about, why, the new expiry."""

    kind: str
    id: str
    reason: str | None = None
    expires_at: datetime | None = None

    def encode(self) -> str:
        """The NOTIFY payload.

        Raises:
            ValueError: an unknown kind, or a payload past ``PAYLOAD_LIMIT`` bytes.
        """
        if self.kind not in KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}")
        body: dict[str, str] = {"k": self.kind, "id": self.id}
        if self.reason is not None:
            body["r"] = self.reason[:_REASON_LENGTH]
        if self.expires_at is not None:
            body["e"] = self.expires_at.isoformat()
        payload = json.dumps(body, separators=(",", ":"))
        if len(payload.encode()) > PAYLOAD_LIMIT:
            raise ValueError(f"a {self.kind} signal of {len(payload.encode())} bytes is too long")
        return payload

    @classmethod
    def decode(cls, payload: str) -> Signal:
        """The signal a payload carries.

        Raises:
            ValueError: not a payload ``encode`` makes (another program's NOTIFY on the channel, a
                newer broker's kind); the listener logs it and goes on.
        """
        if len(payload) > PAYLOAD_LIMIT:
            raise ValueError("payload too long")
        try:
            body = json.loads(payload)
            kind, ident = body["k"], body["id"]
            reason, expiry = body.get("r"), body.get("e")
            expires_at = datetime.fromisoformat(expiry) if expiry is not None else None
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a broker signal: {exc}") from exc
        if kind not in KINDS or not isinstance(ident, str) or not isinstance(reason, str | None):
            raise ValueError(f"not a broker signal of a known kind: {str(kind)[:40]!r}")
        return cls(kind, ident, reason, expires_at)


def send(conn: sa.Connection, signal: Signal) -> None:
    """Tell every replica ``signal`` when the caller's transaction commits (PostgreSQL only).

    Raises:
        ValueError: the signal cannot be encoded (a bug).
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    if conn.dialect.name != "postgresql":
        return
    payload = signal.encode()
    conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


async def listen(url: str, timeouts: DatabaseTimeouts) -> psycopg.AsyncConnection[Any]:
    """A new connection to the PostgreSQL of ``url``, listening on ``CHANNEL`` (autocommit).

    Raises:
        psycopg.Error, OSError, TimeoutError: it could not connect, or did not answer in time.
    """
    params = connect_params(url, timeouts)
    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    try:
        await asyncio.wait_for(conn.execute(f"LISTEN {CHANNEL}"), timeouts.answer)
    except BaseException:
        await conn.close()
        raise
    return conn


async def ping(conn: psycopg.AsyncConnection[Any], deadline: float) -> None:
    """Ask the listening connection for an answer within ``deadline`` seconds (notifications that
    come meanwhile wait for the next ``notifies``).

    Raises:
        psycopg.Error, TimeoutError: the connection is dead or the server did not answer.
    """
    await asyncio.wait_for(conn.execute("SELECT 1"), deadline)
