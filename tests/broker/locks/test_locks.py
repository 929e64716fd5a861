"""Locks on SQLite and PostgreSQL: what a lock ends, what it refuses, how it lifts, and its record."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker import grants, locks
from access.broker.clock import FakeClock
from access.broker.errors import Conflict, Forbidden, InvalidRequest, Locked, NotFound
from access.broker.events.bus import Event, GrantEnded
from access.broker.locks.switch import lift_lock, list_locks, lock_view, parse_until, put_lock
from access.broker.runtime import Broker
from access.broker.store import grants as grant_store
from access.broker.store import locks as lock_store
from access.broker.store.locks import LockRecord
from access.broker.store.tables import audit_log, outbox
from access.shared.errors import ExitCode
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import add_user, login
from tests.broker.grants.test_grants import add_principal, ledger

ADMIN = "admin:root"


def req(service: str = "svc-payments") -> GrantRequest:
    return GrantRequest(service=service, scope="read", ttl="30m", reason="INC-1")


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


@pytest.fixture
def clock(broker: Broker) -> FakeClock:
    assert isinstance(broker.clock, FakeClock)
    return broker.clock


def actions(broker: Broker) -> list[str]:
    return [action for _, action, _ in ledger(broker)]


def entries(broker: Broker, action: str) -> list[dict[str, Any]]:
    return [details for _, name, details in ledger(broker) if name == action]


def state(broker: Broker, grant_id: str) -> str:
    with broker.transaction() as conn:
        record = grant_store.get(conn, grant_id)
    assert record is not None
    return record.state


def test_locking_a_user_ends_their_grants_at_once_with_the_lock(broker: Broker) -> None:
    alice, bob = add_principal(broker, "alice"), add_principal(broker, "bob")
    mine = [grants.request_grant(broker, alice, req()).id for _ in range(2)]
    theirs = grants.request_grant(broker, bob, req()).id
    seen: list[Event] = []
    broker.events.subscribe(seen.append)

    done = put_lock(broker, "user", "alice", actor=ADMIN, reason="INC-42 laptop stolen")

    assert sorted(done.ended) == sorted(mine)
    assert [state(broker, g) for g in mine] == ["revoked", "revoked"] and state(broker, theirs) == "active"
    revokes = entries(broker, "grant.revoke")
    assert {(r["grant_id"], r["reason"], r["lock_id"]) for r in revokes} == {
        (g, "locked", done.lock.id) for g in mine
    }
    [entry] = entries(broker, "access.lock")
    assert entry == {
        "kind": "user",
        "value": "alice",
        "lock_id": done.lock.id,
        "reason": "INC-42 laptop stolen",
        "until": None,
        "grants_ended": done.ended,
    }
    with broker.transaction() as conn:
        target = conn.execute(
            sa.select(audit_log.c.target).where(audit_log.c.action == "access.lock")
        ).scalar()
        ends = conn.execute(sa.select(outbox.c.payload).where(outbox.c.kind == "grant.ended")).scalars().all()
    assert target == "principal:alice"
    # The cross-process signal every replica's tunnel watcher acts on, written with the lock.
    assert sorted(p["grant_id"] for p in ends) == sorted(mine)
    assert {e.grant_id for e in seen if isinstance(e, GrantEnded)} == set(mine)


def test_a_locked_user_is_refused_saying_who_when_until_and_why(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    lock = put_lock(
        broker, "user", "alice", actor=ADMIN, reason="INC-42", until=clock.now() + timedelta(hours=2)
    ).lock
    before = len(ledger(broker))

    with pytest.raises(Locked) as caught:
        grants.request_grant(broker, alice, req())

    error = caught.value
    assert isinstance(error, Forbidden) and error.status == 403 and error.body()["error"]["code"] == "locked"
    since, until = (
        clock.now().strftime("%Y-%m-%d %H:%M:%S UTC"),
        (clock.now() + timedelta(hours=2)).strftime("%H:%M:%S"),
    )
    assert error.message.startswith(f"user alice is locked by admin:root since {since}, until ")
    assert until in error.message and error.message.endswith(f"(lock {lock.id}): INC-42")
    assert error.hint == "ask an administrator to lift it (`access-broker unlock --user alice`)"
    assert error.lock_id == lock.id
    # Audited as a denial, with the lock's id; no usable grant, nothing else written.
    assert actions(broker)[before:] == ["grant.request", "grant.deny"]
    assert entries(broker, "grant.deny")[-1]["lock_id"] == lock.id
    [denied] = grants.list_grants(broker, alice, include_ended=True)
    assert denied.state == GrantState.DENIED
    with broker.transaction() as conn:
        assert grant_store.get(conn, denied.id).ended_by == "lock"  # type: ignore[union-attr]


def test_a_service_lock_refuses_everyone_on_that_service_only(broker: Broker) -> None:
    alice, bob = add_principal(broker, "alice"), add_principal(broker, "bob", groups=("sre",))
    ended = grants.request_grant(broker, alice, req()).id
    put_lock(broker, "service", "svc-payments", actor=ADMIN)
    assert state(broker, ended) == "revoked"
    for who in (alice, bob):
        with pytest.raises(
            Locked, match=r"^service svc-payments is locked by admin:root .*\(no reason given\)$"
        ):
            grants.request_grant(broker, who, req())
    [entry] = entries(broker, "access.lock")
    assert entry["kind"] == "service" and entry["grants_ended"] == [ended]


def test_a_grant_lock_ends_that_grant_only_and_new_requests_pass(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    first, second = (grants.request_grant(broker, alice, req()).id for _ in range(2))
    done = put_lock(broker, "grant", first, actor=ADMIN, reason="odd queries")
    assert done.ended == [first] and state(broker, second) == "active"
    assert grants.request_grant(broker, alice, req()).state == GrantState.ACTIVE
    with broker.transaction() as conn:
        target = conn.execute(
            sa.select(audit_log.c.target).where(audit_log.c.action == "access.lock")
        ).scalar()
    assert target == f"service:svc-payments/{first}"  # found by `access audit --service svc-payments`


def test_until_lifts_the_lock_by_itself(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    lock = put_lock(broker, "user", "alice", actor=ADMIN, until=parse_until("10m", clock.now())).lock
    clock.advance(timedelta(minutes=10) - timedelta(microseconds=1))
    with pytest.raises(Locked):
        grants.request_grant(broker, alice, req())
    clock.advance(timedelta(microseconds=1))  # at ``until`` exactly: lifted
    assert grants.request_grant(broker, alice, req()).state == GrantState.ACTIVE
    assert list_locks(broker) == []
    [listed] = list_locks(broker, include_ended=True)
    assert lock_view(listed, clock.now())["state"] == "expired" and listed.id == lock.id
    with pytest.raises(NotFound, match="user alice is not locked: nothing to unlock"):
        lift_lock(broker, "user", "alice", actor=ADMIN)
    # Expired, so the user may be locked again.
    assert put_lock(broker, "user", "alice", actor=ADMIN).lock.id != lock.id


def test_unlock_lifts_it_early_and_the_ended_grants_stay_ended(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    ended = grants.request_grant(broker, alice, req()).id
    lock = put_lock(broker, "user", "alice", actor=ADMIN, until=clock.now() + timedelta(days=1)).lock
    clock.advance(timedelta(minutes=1))
    [lifted] = lift_lock(broker, "user", "alice", actor="admin:ops", reason="false alarm")
    assert lifted.id == lock.id
    assert state(broker, ended) == "revoked"
    assert grants.request_grant(broker, alice, req()).state == GrantState.ACTIVE
    assert entries(broker, "access.unlock") == [
        {"kind": "user", "value": "alice", "lock_ids": [lock.id], "reason": "false alarm"}
    ]
    [row] = list_locks(broker, include_ended=True)
    view = lock_view(row, clock.now())
    assert (view["state"], view["lifted_by"], view["lifted_at"]) == (
        "lifted",
        "admin:ops",
        clock.now().isoformat().replace("+00:00", "Z"),
    )
    with pytest.raises(NotFound, match="not locked"):
        lift_lock(broker, "user", "alice", actor=ADMIN)


def test_locking_twice_is_refused_and_changes_nothing(broker: Broker) -> None:
    add_principal(broker, "alice")
    first = put_lock(broker, "user", "alice", actor=ADMIN, reason="one").lock
    before = ledger(broker)
    with pytest.raises(Conflict) as caught:
        put_lock(broker, "user", "alice", actor="admin:other", reason="two")
    assert "user alice is locked by admin:root since" in caught.value.message
    assert caught.value.message.endswith(f"(lock {first.id}): one; nothing was changed")
    assert (
        caught.value.hint
        == "to lock it with other terms, lift it first (`access-broker unlock --user alice`)"
    )
    assert ledger(broker) == before and [lock.id for lock in list_locks(broker, include_ended=True)] == [
        first.id
    ]


@pytest.mark.parametrize(
    ("kind", "value", "kwargs", "error", "message"),
    [
        ("user", "nobody", {}, NotFound, "no user or service account named 'nobody'"),
        ("grant", "g-0000000000000000", {}, NotFound, "no grant 'g-0000000000000000'"),
        ("grant", "x-1", {}, InvalidRequest, "bad grant id 'x-1'"),
        ("service", "Bad_Name", {}, InvalidRequest, "bad service name 'Bad_Name'"),
        ("team", "sre", {}, InvalidRequest, "cannot lock a 'team'"),
        ("user", "alice", {"reason": "two\nlines"}, InvalidRequest, "one line of printable text"),
        (
            "user",
            "alice",
            {"until": datetime(2020, 1, 1, tzinfo=UTC)},
            InvalidRequest,
            "is not in the future",
        ),
    ],
)
def test_bad_locks_change_nothing(
    broker: Broker, kind: str, value: str, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    add_principal(broker, "alice")
    with pytest.raises(error, match=message):
        put_lock(broker, kind, value, actor=ADMIN, **kwargs)
    assert ledger(broker) == [] and list_locks(broker, include_ended=True) == []


def test_parse_until(clock: FakeClock) -> None:
    now = clock.now()
    assert parse_until("2h", now) == now + timedelta(hours=2)
    later = (now + timedelta(days=1)).replace(microsecond=0)
    assert parse_until(later.isoformat().replace("+00:00", "Z"), now) == later
    assert parse_until(later.replace(tzinfo=None).isoformat(), now) == later  # no zone: UTC
    with pytest.raises(InvalidRequest, match="neither a duration nor a time"):
        parse_until("tomorrow", now)
    with pytest.raises(InvalidRequest, match="not in the future"):
        parse_until((now - timedelta(seconds=1)).isoformat(), now)


def test_check_is_the_one_question_other_code_asks(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    with broker.transaction() as conn:
        locks.check(conn, clock.now(), user="alice", service="svc-payments", grant_id=grant.id)  # none
    lock = put_lock(broker, "grant", grant.id, actor=ADMIN).lock
    with broker.transaction() as conn:
        locks.check(conn, clock.now(), user="alice", service="svc-payments", grant_id=None)  # not these
        with pytest.raises(Locked, match=f"^grant {grant.id} is locked") as caught:
            locks.check(conn, clock.now(), user="alice", service="svc-payments", grant_id=grant.id)
        assert caught.value.lock_id == lock.id
        # Several locks: the user's is named first.
        lock_store.insert(conn, LockRecord("l-user", "user", "alice", None, ADMIN, clock.now()))
        assert locks.covering(conn, clock.now(), user="alice", service=None, grant_id=grant.id).id == "l-user"  # type: ignore[union-attr]


def test_tunnels_are_refused_for_a_grant_a_lock_covers(broker: Broker, clock: FakeClock) -> None:
    # Belt and braces: a lock row whose grants were not ended (as if written by hand) still
    # refuses the tunnel and each new channel.
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    with broker.transaction() as conn:
        lock_store.insert(conn, LockRecord("l-svc", "service", "svc-payments", "maint", ADMIN, clock.now()))
    with pytest.raises(Locked, match="service svc-payments is locked"):
        grants.open_for_tunnel(broker, alice, grant.id)


def test_the_admin_commands(tmp_path: Path, sqlite_url: str) -> None:
    from access.broker.admin.main import app

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app, [*args, "--data-dir", str(tmp_path / "d"), "--database-url", sqlite_url]
        )
        return result.exit_code, result.stdout, result.stderr

    added = CliRunner().invoke(
        app,
        [
            "users",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
            str(tmp_path / "d"),
            "--database-url",
            sqlite_url,
        ],
        input="correct horse battery\n",
    )
    assert added.exit_code == 0, added.stderr
    code, _, err = run("lock", "--user", "alice", "--reason", "INC-7", "--until", "2h")
    assert code == 0 and "locked user alice (l-" in err and "0 active grant(s) ended" in err, err
    code, _, err = run("lock", "--user", "alice")
    assert (
        code == ExitCode.ERROR
        and "error: user alice is locked by admin:" in err
        and "hint: to lock it" in err
    )
    code, out, _ = run("locks", "-o", "json")
    [view] = json.loads(out)
    assert (view["kind"], view["value"], view["state"], view["reason"]) == (
        "user",
        "alice",
        "active",
        "INC-7",
    )
    assert view["created_by"].startswith("admin:") and view["until"].endswith("Z")
    code, out, _ = run("locks")
    assert code == 0 and "user:alice" in out and "INC-7" in out and "active" in out
    code, _, err = run("lock", "--service", "svc-payments", "--user", "alice")
    assert code == ExitCode.USAGE and "exactly one of --user, --service or --grant" in err
    code, _, err = run("lock", "--service", "svc-payments", "--until", "yesterday")
    assert code == ExitCode.USAGE and "neither a duration nor a time" in err
    code, _, err = run("unlock", "--user", "alice")
    assert code == 0 and "unlocked user alice (lifted l-" in err
    code, _, err = run("unlock", "--user", "alice")
    assert code == ExitCode.NOT_FOUND and "user alice is not locked" in err
    code, out, err = run("locks")
    assert code == 0 and out == "" and "no locks in force" in err
    code, out, _ = run("locks", "--all", "-o", "json")
    assert [v["state"] for v in json.loads(out)] == ["lifted"]


@pytest.mark.anyio
async def test_the_route_answers_403_locked(make_broker: Callable[..., Broker]) -> None:
    from access.broker.app import create_app

    broker = make_broker()
    tokens = login(broker, add_user(broker, "alice", ("sre",)))
    put_lock(broker, "user", "alice", actor=ADMIN, reason="INC-9")
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url="https://broker.test") as http:
        answer = await http.post(
            "/v1/grants",
            json={"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-1"},
            headers={"authorization": f"Bearer {tokens.access_token}"},
        )
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert (
        error["code"] == "locked" and "INC-9" in error["message"] and "access-broker unlock" in error["hint"]
    )


def test_webhooks_hear_of_the_lock_and_the_unlock(make_broker: Callable[..., Broker], tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s" * 32)
    secret.chmod(0o600)
    hook = {"name": "ops", "url": "http://127.0.0.1:9/", "secret_file": str(secret)}
    broker = make_broker(webhooks=[hook])
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    lock = put_lock(broker, "user", "alice", actor=ADMIN, reason="INC-3").lock
    lift_lock(broker, "user", "alice", actor=ADMIN)
    with broker.transaction() as conn:
        payloads = (
            conn.execute(sa.select(outbox.c.payload).where(outbox.c.kind == "webhook.deliver"))
            .scalars()
            .all()
        )
    told = [(p["notice"]["event"], p["notice"]["details"]) for p in payloads]
    assert told[1:] == [
        ("grant.revoked", {"why": "locked"}),
        (
            "access.locked",
            {
                "target": "user:alice",
                "lock_id": lock.id,
                "reason": "INC-3",
                "until": None,
                "grants_ended": [grant.id],
            },
        ),
        ("access.unlocked", {"target": "user:alice", "lock_ids": [lock.id], "reason": None}),
    ]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_lock_waits_for_a_request_that_checked_before_it_and_ends_what_it_gave(
    broker: Broker, clock: FakeClock
) -> None:
    # READ COMMITTED alone would let the lock's sweep miss a grant whose request checked for
    # locks before the lock committed; the targets' advisory locks make the lock wait for it.
    alice = add_principal(broker, "alice")
    issued = grants.request_grant(broker, alice, req())
    with broker.transaction() as conn:
        record = grant_store.get(conn, issued.id)
    assert record is not None
    fresh = type(record)(**{**record.__dict__, "id": "g-racing"})
    done: list[Any] = []
    with broker.transaction() as conn:
        assert locks.covering(conn, clock.now(), user="alice", service="svc-payments", grant_id=None) is None
        grant_store.insert(conn, fresh)  # what the request issues, not committed yet
        worker = threading.Thread(target=lambda: done.append(put_lock(broker, "user", "alice", actor=ADMIN)))
        worker.start()
        _wait_until_blocked(broker)
    worker.join(timeout=10)
    assert not worker.is_alive() and sorted(done[0].ended) == sorted([issued.id, "g-racing"])


def _wait_until_blocked(broker: Broker) -> None:
    """Until another backend waits on an advisory lock (bounded)."""
    import time

    deadline = time.monotonic() + 5
    query = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    while time.monotonic() < deadline:
        with broker.engine.connect() as probe:
            if probe.execute(query).scalar():
                return
        time.sleep(0.01)
    raise AssertionError("the lock did not wait for the request's transaction")


def test_a_lock_also_ends_what_waits_for_review(make_broker: Callable[..., Broker], db_url: str) -> None:
    """A request waiting for reviewers under a user or service lock is ended with it (reason
    locked): lifting the lock later does not leave it to be approved as if nothing happened."""
    from tests.conftest import REVIEWED_POLICY

    broker = make_broker(db_url=db_url, policy=REVIEWED_POLICY)
    dev = add_principal(broker, "dev", groups=("dev",))
    ask = GrantRequest(service="svc-payments", scope="write", ttl="10m", reason="CHG-1")
    for kind, value in (("user", "dev"), ("service", "svc-payments"), ("grant", None)):
        waiting = grants.request_grant(broker, dev, ask)
        assert waiting.state == GrantState.PENDING
        done = put_lock(broker, kind, value or waiting.id, actor=ADMIN, reason="INC-9")
        assert done.ended == [waiting.id] and state(broker, waiting.id) == "revoked"
        with broker.transaction() as conn:
            record = grant_store.get(conn, waiting.id)
        assert record is not None and record.ended_reason == "locked"
        lift_lock(broker, kind, value or waiting.id, actor=ADMIN)
