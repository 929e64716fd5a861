"""PostgreSQL cancels (psql's Ctrl-C) through the broker: the keys it issued, and what each cancels.

A client only ever sees a BackendKeyData the broker issued (``CancelKeys.issue``), never the
target's. A channel whose first message is a CancelRequest presents one; the broker forwards a
CancelRequest with the TARGET's key only for a live channel of the SAME grant at the same target
address (``decide``), the secret compared in constant time. Anything else is refused.

Two maps hold the keys of the logged-in channels:

- ``CancelKeys`` (``cancels_for``), in this process: the fast path, on the event loop, no I/O.
- The store's ``cancel_keys`` (``SharedKeys``, ``shared_for``), for a cancel that reaches another
  replica than the query's (behind a load balancer a cancel's connection may land on any). Each
  logged-in channel writes its row ONCE, in a worker thread, when its login is done
  (``remember``), and deletes it when it ends (``forget``); nothing touches the database per
  message. The row keeps the issued pid, an HMAC-SHA256 of the issued key (its key derived from
  the token signing key: a copy of the database alone cannot find a secret from its hash, 32
  bits being few), the grant, the target's address, the owning process, and the TARGET's key
  sealed (``identities.sealing``; the associated data is the grant, the pid and the address, so
  a row edited to say otherwise does not open). A process's rows go when it stops, and the ones of a
  process whose lease ran out are deleted by whichever process sees it (``tunnel.closes``).

A cancel that finds no key in this process looks in the store (``lookup``, a worker thread). A
row appears once the login's write is done: a cancel sent in the first milliseconds of a
connection may find nothing on another replica, and is refused then, as an unknown key is.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from access.broker.errors import BrokerError
from access.broker.identities.sealing import Sealer, derive_key
from access.broker.perbroker import PerBroker
from access.broker.store import cancel_keys as store
from access.broker.wire import postgres

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = [
    "FORWARDED",
    "CancelEntry",
    "CancelKeys",
    "SharedKeys",
    "cancels_for",
    "decide",
    "forget",
    "lookup",
    "remember",
    "shared_for",
]

log = logging.getLogger(__name__)

FORWARDED = "forwarded"
_MAC_INFO = b"access cancel keys: issued keys v1"
_SEAL_INFO = b"access cancel keys: target keys v1"
_KEY = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class CancelEntry:
    grant_id: str
    client_key: tuple[int, int]  # what the client was given
    target_key: tuple[int, int]  # what the target gave the broker
    host: str
    port: int


def decide(entry: CancelEntry | None, grant_id: str, host: str, port: int) -> str:
    """What to do with a CancelRequest whose key matched ``entry`` (None: no live channel has
    that key), arriving through a tunnel of ``grant_id`` to ``host:port``: ``FORWARDED``, or
    why it is refused (for the channel's ``connection.close``)."""
    if entry is None:
        return "refused: no live connection has that key"
    if entry.grant_id != grant_id:
        return "refused: the key is another grant's"
    if (entry.host, entry.port) != (host, port):
        return "refused: the key's connection is on another target"
    return FORWARDED


class CancelKeys:
    """The BackendKeyData this broker process issued to clients, and what each one cancels.

    Bounded by the live channels: an entry is added when a channel's login is done and dropped
    when the channel ends.
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, CancelEntry] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def issue(self) -> tuple[int, int]:
        """A fresh (pid, secret) for a client: the pid unused among this process's live ones
        (the store refuses one another replica holds: ``SharedKeys.record``)."""
        while True:
            pid = secrets.randbelow(0x7FFFFFFE) + 1
            if pid not in self._by_pid:
                return pid, secrets.randbits(32)

    def add(self, entry: CancelEntry) -> bool:
        """Register a logged-in channel's key (False: its pid was taken meanwhile, not added)."""
        if entry.client_key[0] in self._by_pid:
            return False
        self._by_pid[entry.client_key[0]] = entry
        return True

    def drop(self, client_key: tuple[int, int]) -> None:
        entry = self._by_pid.get(client_key[0])
        if entry is not None and entry.client_key == client_key:
            del self._by_pid[client_key[0]]

    def find(self, presented: tuple[int, int]) -> CancelEntry | None:
        """The entry whose issued key is ``presented`` (the secret compared in constant time)."""
        entry = self._by_pid.get(presented[0])
        if entry is None or not postgres.cancel_key_matches(entry.client_key, presented):
            return None
        return entry


class SharedKeys:
    """The store's map of issued keys, shared by the replicas (see the module's docstring).

    Every method does database work: call them from a worker thread.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        # The first key makes the MACs; the ring's older ones still check a key issued before a rotation.
        self._mac_keys = [derive_key(key, _MAC_INFO) for key in broker.token_ring]
        self._sealer = Sealer(broker.token_ring, _SEAL_INFO)

    def _mac(self, key: tuple[int, int], mac_key: bytes | None = None) -> bytes:
        return hmac.digest(mac_key or self._mac_keys[0], _KEY.pack(*key), "sha256")

    def _mac_matches(self, stored: bytes, presented: tuple[int, int]) -> bool:
        # Every key is tried (no early exit): the time taken says nothing about which one matched.
        matches = [hmac.compare_digest(stored, self._mac(presented, key)) for key in self._mac_keys]
        return any(matches)

    def record(self, entry: CancelEntry) -> bool:
        """Write ``entry``'s row; False when it could not be (logged): a cancel for that channel
        then works only through this process."""
        pid = entry.client_key[0]
        row = store.CancelRow(
            pid=pid,
            secret_mac=self._mac(entry.client_key),
            grant_id=entry.grant_id,
            host=entry.host,
            port=entry.port,
            target_key=self._sealer.seal_bytes(
                _associated(entry.grant_id, pid, entry.host, entry.port), _KEY.pack(*entry.target_key)
            ),
            instance_id=self.broker.instance_id,
        )
        try:
            with self.broker.transaction() as conn:
                store.add(conn, row, now=self.broker.clock.now())
        except sa.exc.IntegrityError:
            log.warning("a cancel key's pid is taken by another replica: its cancels work only here")
            return False
        except BrokerError as exc:
            log.warning("could not share a cancel key (%s): its cancels work only here", exc.message)
            return False
        return True

    def forget(self, client_key: tuple[int, int]) -> None:
        """Delete the row of this process's channel that was given ``client_key``; a failure is
        logged (the row goes when this process stops or its lease runs out)."""
        try:
            with self.broker.transaction() as conn:
                store.remove(conn, client_key[0], self.broker.instance_id)
        except BrokerError as exc:
            log.warning("could not delete an ended connection's cancel key (%s)", exc.message)

    def find(self, presented: tuple[int, int]) -> CancelEntry | None:
        """The entry whose issued key is ``presented`` (its hash compared in constant time),
        with the target's key unsealed; None when there is none or it does not open.

        Raises:
            Unavailable: the database could not be reached.
        """
        with self.broker.transaction() as conn:
            row = store.find(conn, presented[0])
        if row is None or not self._mac_matches(row.secret_mac, presented):
            return None
        if row.instance_id == self.broker.instance_id:
            return None  # this process's own channel: ``CancelKeys`` knows it, or it has ended
        sealed = self._sealer.open_bytes(
            _associated(row.grant_id, row.pid, row.host, row.port), row.target_key
        )
        if sealed is None or len(sealed) != _KEY.size:
            log.warning("a shared cancel key does not open (another token signing key?): refused")
            return None
        target: tuple[int, int] = _KEY.unpack(sealed)
        return CancelEntry(row.grant_id, presented, target, row.host, row.port)


def _associated(grant_id: str, pid: int, host: str, port: int) -> str:
    """What a sealed target key is bound to: a row edited to say otherwise does not open."""
    return f"{grant_id}:{pid}:{host[:255]}:{port}"


_cancels = PerBroker(lambda _broker: CancelKeys())
_shared = PerBroker(SharedKeys)


def cancels_for(broker: Broker) -> CancelKeys:
    """The cancel keys of ``broker`` (one map per broker object; gone when the broker is)."""
    return _cancels(broker)


def shared_for(broker: Broker) -> SharedKeys:
    """The store's cancel keys, as ``broker`` reads and writes them."""
    return _shared(broker)


def remember(broker: Broker, entry: CancelEntry) -> asyncio.Future[bool] | None:
    """On the event loop, when a channel's login is done: register ``entry`` here, and write it to
    the store in a worker thread. The write's future (for ``forget``); None when the pid was
    taken meanwhile in this process (then nothing is registered: the channel's cancels are
    refused)."""
    if not cancels_for(broker).add(entry):
        return None
    return asyncio.get_running_loop().run_in_executor(None, shared_for(broker).record, entry)


def forget(broker: Broker, client_key: tuple[int, int], written: asyncio.Future[bool] | None) -> None:
    """On the event loop, when the channel that was given ``client_key`` ends: drop it here, and
    its row once ``written`` (``remember``'s write) has written it (never before: a delete that
    ran first would leave the row behind)."""
    cancels_for(broker).drop(client_key)
    if written is None:
        return
    loop = asyncio.get_running_loop()
    shared = shared_for(broker)

    def written_then_forget(done: asyncio.Future[bool]) -> None:
        if not done.cancelled() and done.exception() is None and done.result():
            loop.run_in_executor(None, shared.forget, client_key)

    written.add_done_callback(written_then_forget)


async def lookup(broker: Broker, presented: tuple[int, int]) -> CancelEntry | None:
    """The entry ``presented`` matches: this process's first (no I/O), else the store's (in a
    worker thread; a store that cannot be read finds nothing: the cancel is refused)."""
    entry = cancels_for(broker).find(presented)
    if entry is not None:
        return entry
    try:
        return await asyncio.get_running_loop().run_in_executor(None, shared_for(broker).find, presented)
    except BrokerError as exc:
        log.warning("could not look a cancel key up (%s): refused", exc.message)
    except Exception:
        log.exception("looking a cancel key up failed: refused")
    return None
