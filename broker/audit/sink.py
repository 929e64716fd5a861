"""The audit sink: the ledger POSTed, in order, as NDJSON batches to a receiver (a SIEM's HTTP
input, Vector's ``http_server`` source, Fluent Bit's ``http`` input).

The ledger itself is the queue: nothing is copied per entry. ``AuditSinkLoop`` reads the entries
after the cursor (``audit_sink_cursor``, in the database), POSTs up to
``ACCESS_BROKER_AUDIT_SINK_BATCH`` of them as JSON lines (those of ``audit export``, with
``seq`` and the hashes) with the bearer token read now from its file or variable, and moves the
cursor only after a 2xx. Anything else (a refusal, a timeout, a redirect) raises ``SinkFailed``:
the cursor stays, and the loop tries the same entries again after a doubling backoff (up to a
minute). So an entry is never dropped and never skipped; it may be sent twice (the broker stopped
after the POST, before the cursor moved; two replicas raced), and its ``seq`` is what a receiver
drops repeats by. Error texts never carry the URL or the token.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from typing import TYPE_CHECKING

import httpx

from access.broker.audit.checkpoints import entry_line
from access.broker.errors import Unavailable
from access.broker.loops import Loop
from access.broker.store import audit as store

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["SINK", "AuditSinkLoop", "SinkFailed", "ship"]

SINK = "default"  # the cursor's name: one sink per broker for now
_BATCHES_PER_TICK = 20  # then the next tick: other loops get the database too
_TIMEOUT = 20.0  # seconds one POST may take in all
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class SinkFailed(Unavailable):
    """The receiver did not take the batch (this time): the same entries go again later."""


def _token(broker: Broker) -> str | None:
    """The bearer token, read now; None when none is configured.

    Raises:
        SinkFailed: the file or variable is missing or empty, or the file is open to others.
    """
    settings = broker.settings
    if settings.audit_sink_token_env is not None:
        name = settings.audit_sink_token_env
        if not _ENV_NAME.fullmatch(name):
            raise SinkFailed("ACCESS_BROKER_AUDIT_SINK_TOKEN_ENV must be an environment variable's name")
        value = os.environ.get(name, "").strip()
        source = f"environment variable {name}"
    elif settings.audit_sink_token_file is not None:
        path = settings.audit_sink_token_file
        source = f"token file {path}"
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SinkFailed(f"audit sink: cannot read {source}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SinkFailed(f"audit sink: {source} is open to others: chmod 600 it")
    else:
        return None
    if not value:
        raise SinkFailed(f"audit sink: {source} is empty")
    return value


def ship(broker: Broker) -> int:
    """Send the next batch after the cursor and move the cursor past it; the entries sent (0
    when there were none).

    Raises:
        SinkFailed: the receiver did not take it, or the token cannot be read; nothing moved.
        Unavailable: the database could not be reached.
    """
    url = broker.settings.audit_sink_url
    if url is None:
        return 0
    with broker.transaction() as conn:
        cursor = store.sink_cursor(conn, SINK)
        rows = store.entries_after(conn, cursor, broker.settings.audit_sink_batch)
    if not rows:
        return 0
    body = "".join(entry_line(row) + "\n" for row in rows).encode("utf-8")
    headers = {"Content-Type": "application/x-ndjson", "User-Agent": "access-broker"}
    token = _token(broker)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        status = asyncio.run(_post(url, body, headers))
    except (TimeoutError, httpx.TimeoutException):
        raise SinkFailed(f"audit sink: no answer within {_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        text = str(exc).replace(url, "<url>")  # httpx may name the URL, which may carry a key
        raise SinkFailed(f"audit sink: {type(exc).__name__}: {text}") from None
    if not 200 <= status < 300:
        raise SinkFailed(f"audit sink answered {status} for entries {rows[0].seq} to {rows[-1].seq}")
    with broker.transaction() as conn:
        store.move_sink_cursor(conn, SINK, cursor, rows[-1].seq, broker.clock.now())
    return len(rows)


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    # The whole exchange is bounded (httpx's timeouts are per step); the answer's body is not read.
    async with (
        asyncio.timeout(_TIMEOUT),
        httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False) as client,
        client.stream("POST", url, content=body, headers=headers) as response,
    ):
        return response.status_code


class AuditSinkLoop(Loop):
    """Every ``audit_sink_interval`` seconds: ship batches until none is full (at most
    ``_BATCHES_PER_TICK``); a failure backs off, doubling, up to a minute."""

    name = "audit sink"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, broker.settings.audit_sink_interval, max_backoff=60.0)

    async def tick(self) -> None:
        """Raises: SinkFailed, Unavailable (see ``ship``)."""
        for _ in range(_BATCHES_PER_TICK):
            sent = await asyncio.to_thread(ship, self.broker)
            if sent < self.broker.settings.audit_sink_batch:
                return
