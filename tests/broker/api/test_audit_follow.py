"""``GET /v1/audit?after_seq=N&wait=S``: the entries after a seq, oldest first, waiting a bounded
time for new ones (what ``access audit --follow`` asks again and again), through the ASGI app."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.runtime import Broker
from access.shared.models import AuditPage
from tests.broker.conftest import add_user, login

pytestmark = pytest.mark.anyio


def bearer(broker: Broker, name: str, groups: tuple[str, ...]) -> dict[str, str]:
    tokens = login(broker, add_user(broker, name, groups))
    return {"authorization": f"Bearer {tokens.access_token}"}


def record(broker: Broker, target: str) -> int:
    return ledger.record(broker, actor="alice", action=Action.LOGOUT, target=target).seq


async def page(client: httpx.AsyncClient, headers: dict[str, str], **params: object) -> AuditPage:
    response = await client.get("/v1/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return AuditPage.model_validate(response.json())


async def test_after_seq_is_oldest_first_cut_at_the_limit_and_says_where_to_go_on(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    alice = bearer(broker, "alice", ("sre",))
    first = record(broker, "thing:a")
    seqs = [record(broker, f"thing:{i}") for i in range(5)]

    got = await page(client, alice, after_seq=first, limit=3)
    assert [e.seq for e in got.entries] == seqs[:3]
    assert got.last_seq == seqs[2]  # cut at the limit: go on from its last entry
    rest = await page(client, alice, after_seq=got.last_seq, limit=3)
    assert [e.seq for e in rest.entries] == seqs[3:]
    assert rest.last_seq == seqs[-1]  # all there was: the head
    assert (await page(client, alice, after_seq=seqs[-1])).entries == []


async def test_filters_apply_and_skipped_entries_move_the_cursor(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    alice = bearer(broker, "alice", ("sre",))
    record(broker, "service:svc-payments/g-00000000000000a1")
    skipped = record(broker, "service:svc-other/g-00000000000000a2")
    got = await page(client, alice, after_seq=0, service="svc-payments")
    assert [e.target for e in got.entries] == ["service:svc-payments/g-00000000000000a1"]
    nothing = await page(client, alice, after_seq=got.entries[0].seq, service="svc-payments")
    assert nothing.entries == [] and nothing.last_seq == skipped  # not read again next time


async def test_a_waiting_follow_answers_when_an_entry_is_written(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    alice = bearer(broker, "alice", ("sre",))
    head = record(broker, "thing:before")
    started = time.monotonic()
    waiting = asyncio.ensure_future(page(client, alice, after_seq=head, wait=20))
    await asyncio.sleep(0.3)  # let the request start waiting (it would also find the entry at once)
    assert not waiting.done()
    new = await asyncio.to_thread(record, broker, "thing:new")
    got = await asyncio.wait_for(waiting, timeout=15)
    assert [e.seq for e in got.entries] == [new]
    assert time.monotonic() - started < 15  # answered on the entry, not at the end of the wait


async def test_the_wait_is_bounded_and_ends_empty(client: httpx.AsyncClient, broker: Broker) -> None:
    alice = bearer(broker, "alice", ("sre",))
    head = record(broker, "thing:only")
    started = time.monotonic()
    got = await page(client, alice, after_seq=head, wait=1)
    assert got.entries == [] and got.last_seq == head
    assert 0.9 <= time.monotonic() - started < 10
    too_long = await client.get("/v1/audit", params={"after_seq": head, "wait": 26}, headers=alice)
    assert too_long.status_code == 400
    negative = await client.get("/v1/audit", params={"after_seq": -1}, headers=alice)
    assert negative.status_code == 400


async def test_follow_needs_audit_reader(client: httpx.AsyncClient, broker: Broker) -> None:
    robot = bearer(broker, "robot", ("ci",))
    response = await client.get("/v1/audit", params={"after_seq": 0, "wait": 5}, headers=robot)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_search_tells_the_head_to_follow_from(client: httpx.AsyncClient, broker: Broker) -> None:
    alice = bearer(broker, "alice", ("sre",))
    record(broker, "thing:x")
    head = record(broker, "thing:y")
    got = await page(client, alice, limit=1)
    assert [e.seq for e in got.entries] == [head] and got.last_seq == head
