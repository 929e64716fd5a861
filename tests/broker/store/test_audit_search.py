"""``access audit --grant G`` reads the grant's entries through the index on ``target``, not by
scanning the ledger for targets that end with the grant id, and finds the tunnel's refusals of a
connection to it too (their target is ``grant:G``); a grant the grants table does not hold (a
ledger carried over from elsewhere) is still found, by the scan."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from access.broker import grants
from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import tokens
from access.broker.runtime import Broker
from access.broker.store import audit as store
from access.shared.models import GrantRequest
from tests.broker.conftest import add_user, login


@contextmanager
def _statements(broker: Broker) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the broker's engine runs meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(broker.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(broker.engine, "before_cursor_execute", record)


def _plan(conn: sa.Connection, statement: str, parameters: Any) -> str:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return "\n".join(str(row[-1]) for row in rows)
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: ask what the index allows
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all())


def test_a_grants_entries_are_read_through_the_target_index(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    broker = make_broker(db_url=db_url)
    ctx = tokens.authenticate(broker, login(broker, add_user(broker, "alice", ("sre",))).access_token)
    mine = grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="10m"))
    other = grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="20m"))
    for grant_id in (mine.id, other.id):  # as the tunnel records a connection it refused
        ledger.record(
            broker,
            actor="alice",
            action=Action.CONNECTION_REFUSE,
            target=f"grant:{grant_id}",
            details={"grant": grant_id, "client": "127.0.0.1", "why": "expired"},
        )

    with _statements(broker) as seen, broker.transaction() as conn:
        rows = store.search(conn, service=None, actor=None, start=None, limit=100, grant=mine.id)
    assert [row.action for row in rows] == ["connection.refuse", "grant.issue", "grant.request"]
    assert {row.target for row in rows} == {f"service:svc-payments/{mine.id}", f"grant:{mine.id}"}

    statement, parameters = next((s, p) for s, p in seen if "FROM audit_log" in s)
    with broker.transaction() as conn:
        plan = _plan(conn, statement, parameters)
    if broker.engine.dialect.name == "sqlite":
        assert re.search(r"SEARCH audit_log USING (COVERING )?INDEX \S+ \(target=\?\)", plan), plan
    else:
        assert re.search(r"Index Cond: \(\(?target\)?(::text)? = ANY ", plan), plan


def test_a_grant_the_table_does_not_hold_is_found_by_its_target_suffix(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    broker = make_broker(db_url=db_url)
    for target in ("service:svc-gone/g-carried-over", "grant:g-carried-over", "grant:g-other"):
        ledger.record(
            broker, actor="alice", action=Action.GRANT_REQUEST, target=target, details={"grant_id": "g"}
        )
    with broker.transaction() as conn:
        rows = store.search(conn, service=None, actor=None, start=None, limit=100, grant="g-carried-over")
        after = store.search_after(conn, after=0, upto=10**9, limit=100, grant="g-carried-over")
        none = store.search(conn, service=None, actor=None, start=None, limit=100, grant="g-unknown")
    found = ["grant:g-carried-over", "service:svc-gone/g-carried-over"]
    assert [row.target for row in rows] == found
    assert [row.target for row in after] == found[::-1]
    assert none == []
