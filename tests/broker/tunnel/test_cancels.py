"""PostgreSQL cancel keys shared through the store (``tunnel.cancels``), on SQLite and PostgreSQL.

Replicas are broker objects on one database with one token signing key, as real replicas are;
each has its own in-process map. What matters: a key is found by another replica only with its
exact secret, only opens as the grant and pid it was written for, is gone once its channel ends
or its process stops or dies, and nothing in the database gives the secrets away.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store.tables import cancel_keys
from access.broker.tunnel import cancels
from access.broker.tunnel.closes import close_lost, heartbeat, stop_instance

GRANT = "g-cancel-1"
ENTRY = cancels.CancelEntry(GRANT, (4242, 0xDEADBEEF), (777, 0x12345678), "127.0.0.1", 5432)


@pytest.fixture
def replicas(make_broker: Callable[..., Broker], db_url: str) -> tuple[Broker, Broker]:
    first = make_broker(db_url=db_url)
    second = make_broker(db_url=db_url, signing_key_file=first.settings.resolved_signing_key_file)
    return first, second


def _rows(broker: Broker) -> list[Any]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(cancel_keys)).all())


def test_another_replica_finds_a_key_only_with_its_exact_secret(replicas: tuple[Broker, Broker]) -> None:
    first, second = replicas
    assert cancels.shared_for(first).record(ENTRY)
    assert cancels.shared_for(second).find(ENTRY.client_key) == ENTRY
    pid, secret = ENTRY.client_key
    for wrong in ((pid, secret ^ 1), (pid, 0), (pid + 1, secret)):
        assert cancels.shared_for(second).find(wrong) is None
    # Its own process's channels are known in its own map (or have ended): never from the store.
    assert cancels.shared_for(first).find(ENTRY.client_key) is None


def test_the_decision_forwards_only_for_the_same_grant_and_target() -> None:
    assert cancels.decide(ENTRY, GRANT, "127.0.0.1", 5432) == cancels.FORWARDED
    assert cancels.decide(ENTRY, "g-other", "127.0.0.1", 5432) == "refused: the key is another grant's"
    assert cancels.decide(ENTRY, GRANT, "127.0.0.1", 5433).startswith("refused: the key's connection")
    assert cancels.decide(None, GRANT, "127.0.0.1", 5432) == "refused: no live connection has that key"


def test_the_store_holds_no_secret_in_clear_and_an_edited_row_does_not_open(
    replicas: tuple[Broker, Broker], make_broker: Callable[..., Broker], db_url: str
) -> None:
    first, second = replicas
    assert cancels.shared_for(first).record(ENTRY)
    [row] = _rows(first)
    issued, target = struct.pack("!II", *ENTRY.client_key), struct.pack("!II", *ENTRY.target_key)
    assert issued not in row.secret_mac and target not in row.target_key and len(row.secret_mac) == 32
    # A broker with another token signing key (not a replica) cannot use the row.
    stranger = make_broker(db_url=db_url)
    assert cancels.shared_for(stranger).find(ENTRY.client_key) is None
    for edit in ({"grant_id": "g-other"}, {"port": 5433}, {"host": "10.0.0.9"}):  # someone edits the row
        with first.transaction() as conn:
            conn.execute(cancel_keys.update().values(**edit))
        assert cancels.shared_for(second).find(ENTRY.client_key) is None, edit  # sealed for what it was
        with first.transaction() as conn:
            conn.execute(cancel_keys.update().values(grant_id=GRANT, host=ENTRY.host, port=ENTRY.port))
    assert cancels.shared_for(second).find(ENTRY.client_key) == ENTRY


def test_a_pid_another_replica_holds_is_not_shared_twice(replicas: tuple[Broker, Broker]) -> None:
    first, second = replicas
    assert cancels.shared_for(first).record(ENTRY)
    other = cancels.CancelEntry("g-2", (ENTRY.client_key[0], 1), (1, 1), "127.0.0.1", 5432)
    assert not cancels.shared_for(second).record(other)
    assert cancels.shared_for(first).find(other.client_key) is None
    assert cancels.shared_for(second).find(ENTRY.client_key) == ENTRY  # the first one stands


def test_remember_then_forget_at_once_leaves_no_row(replicas: tuple[Broker, Broker]) -> None:
    first, second = replicas

    async def main() -> None:
        written = cancels.remember(first, ENTRY)
        assert written is not None
        assert cancels.cancels_for(first).find(ENTRY.client_key) == ENTRY  # the fast path, at once
        cancels.forget(first, ENTRY.client_key, written)  # before the write is done, likely
        assert cancels.cancels_for(first).find(ENTRY.client_key) is None
        assert await asyncio.wait_for(written, 10)
        deadline = time.monotonic() + 10
        while _rows(first):  # the delete runs in a worker thread once the write is done
            assert time.monotonic() < deadline, "the cancel key's row was not deleted"
            await asyncio.sleep(0.02)  # a bounded poll of the database, not a synchronisation

    asyncio.run(main())
    assert cancels.shared_for(second).find(ENTRY.client_key) is None


def test_lookup_tries_this_process_then_the_store(replicas: tuple[Broker, Broker]) -> None:
    first, second = replicas

    async def main() -> tuple[Any, Any, Any]:
        written = cancels.remember(first, ENTRY)
        assert written is not None and await written
        here = await cancels.lookup(first, ENTRY.client_key)
        there = await cancels.lookup(second, ENTRY.client_key)
        wrong = await cancels.lookup(second, (ENTRY.client_key[0], 7))
        return here, there, wrong

    assert asyncio.run(main()) == (ENTRY, ENTRY, None)


def test_a_stopped_process_takes_its_keys_and_a_dead_ones_go_after_the_lease(
    replicas: tuple[Broker, Broker], fake_clock: FakeClock
) -> None:
    first, second = replicas
    for broker in replicas:
        heartbeat(broker)
    assert cancels.shared_for(first).record(ENTRY)
    later = cancels.CancelEntry(GRANT, (99, 1), (2, 2), "127.0.0.1", 5432)
    assert cancels.shared_for(second).record(later)
    close_lost(first)
    assert len(_rows(first)) == 2  # both alive: nothing goes
    fake_clock.advance(timedelta(seconds=first.settings.instance_lease + 1))
    heartbeat(second)  # `first` died: no heartbeat since
    close_lost(second)
    assert [row.pid for row in _rows(second)] == [99]
    stop_instance(second, time.monotonic() + 5)
    assert _rows(second) == []
