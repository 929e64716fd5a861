"""Redis ACL users have no connection limit of their own (PostgreSQL has CONNECTION LIMIT, MySQL
MAX_USER_CONNECTIONS): the broker keeps the policy's ``connection_limit`` for a dynamic Redis
service's grant, counted across replicas, and refuses the next channel with a clear OPEN_FAIL."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import pytest

from access.broker import grants
from access.broker.auth import tokens
from access.broker.auth.principal import AuthContext
from access.broker.errors import RateLimited
from access.broker.grants import grant_target
from access.broker.runtime import Broker
from access.broker.tunnel.closes import pending_for
from access.shared.muxframe import OPEN_FAIL, OPEN_OK
from tests.broker.conftest import add_user, audit_rows, login
from tests.broker.tunnel import test_protocol
from tests.broker.tunnel.test_limits import _answers, _opens
from tests.broker.tunnel.test_protocol import (
    Setup,
    run,
    setup,  # noqa: F401 (the fixtures, used by name)
    upgrade,
    wrap_app,  # noqa: F401
)

from .conftest import Place, issue

LIMIT = 2


def limited(place: Place, limit: int = LIMIT) -> dict[str, Any]:
    policy = place.policy()
    for svc in policy["services"]:
        svc["credentials"]["connection_limit"] = limit
    return policy


def replicas(
    make_broker: Callable[..., Broker], leftovers: Callable[[Broker], None], pg_url: str, place: Place
) -> tuple[Broker, Broker, AuthContext]:
    """Two broker objects on one PostgreSQL store (two replicas), and alice signed in."""
    one = make_broker(db_url=pg_url, policy=limited(place))
    two = make_broker(db_url=pg_url, policy=limited(place))
    leftovers(one)
    ctx = tokens.authenticate(one, login(one, add_user(one, "alice")).access_token)
    return one, two, ctx


def _open(broker: Broker, ctx: AuthContext, grant_id: str, connection_id: str) -> None:
    grants.open_connection(broker, ctx, grant_id, connection_id=connection_id, client="192.0.2.9")


def test_a_redis_grant_gets_at_most_its_limit_of_connections_across_replicas(
    make_broker: Callable[..., Broker], leftovers: Callable[[Broker], None], pg_url: str, place: Place
) -> None:
    one, two, alice = replicas(make_broker, leftovers, pg_url, place)
    grant = issue(one, alice, "svc-rd")
    _open(one, alice, grant.id, "c-1")
    _open(two, alice, grant.id, "c-2")  # the other replica's count includes the first's
    with pytest.raises(RateLimited) as refused:
        _open(one, alice, grant.id, "c-3")
    assert refused.value.message == (
        f"grant {grant.id} already has 2 connections open to svc-rd, the most its identity may"
        " have (the service's connection_limit)"
    )
    assert "close one of them" in (refused.value.hint or "")
    assert len(audit_rows(one, "connection.open")) == 2  # the refused one wrote nothing

    other = issue(one, alice, "svc-rd")  # per grant (each has its own identity), not per user
    _open(two, alice, other.id, "c-4")
    # One connection closes (its connection.close written): its place is free again.
    closes = pending_for(one)
    closes.add("c-1", "alice", grant_target("svc-rd", grant.id), {"why": "client closed"})
    assert closes.flush() == 1
    _open(two, alice, grant.id, "c-5")
    # PostgreSQL and MySQL keep the limit themselves, on the identity: the broker does not count.
    pg = issue(one, alice, "svc-pg")
    for n in range(LIMIT + 1):
        _open(one, alice, pg.id, f"p-{n}")


def test_replicas_opening_at_once_cannot_both_take_the_last_place(
    make_broker: Callable[..., Broker], leftovers: Callable[[Broker], None], pg_url: str, place: Place
) -> None:
    one, two, alice = replicas(make_broker, leftovers, pg_url, place)
    grant = issue(one, alice, "svc-rd")
    tries = 8
    start = Barrier(tries)

    def attempt(n: int) -> bool:
        start.wait(timeout=10)
        try:
            _open(one if n % 2 else two, alice, grant.id, f"c-{n}")
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(tries) as pool:
        opened = list(pool.map(attempt, range(tries)))
    assert sum(opened) == LIMIT, opened


@pytest.fixture
def stream_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """The tunnel tests' svc-stream is a dynamic Redis service on the shared Redis (limit 2)."""
    credentials = {
        "mode": "dynamic",
        "admin": {"user": "default"},
        "connection_limit": LIMIT,
        "scopes": {"read": {"acl": ["+@read", "+@connection", "~access:limit:*"]}},
    }
    return test_protocol.stream_as_redis(monkeypatch, credentials=credentials)


def test_a_channel_past_the_limit_gets_open_fail_saying_so(
    setup: Setup,  # noqa: F811
    leftovers: Callable[[Broker], None],
) -> None:
    leftovers(setup.broker)
    grant_id = setup.grant(service="svc-stream")

    async def main() -> tuple[dict[int, Any], dict[int, Any]]:
        reader, writer, head = await upgrade(setup, grant_id)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(_opens(1, 2))
        first = await _answers(reader, {1, 2})
        writer.write(_opens(3))
        third = await _answers(reader, {3})
        writer.close()
        return first, third

    first, third = run(main())
    assert [first[1][0], first[2][0], third[3][0]] == [OPEN_OK, OPEN_OK, OPEN_FAIL]
    error = json.loads(third[3][3])["error"]
    assert error["code"] == "rate_limited"
    assert f"already has {LIMIT} connections open to svc-stream" in error["message"]
    refusals = audit_rows(setup.broker, "connection.refuse")
    assert [(r["actor"], r["details"]["why"]) for r in refusals] == [("alice", "rate_limited")]
