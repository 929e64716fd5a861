"""The transition table (pure), and ``apply``: store, audit and outbox in one transaction, the
event only after the commit."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.audit.actions import Action
from access.broker.errors import GrantDenied
from access.broker.events.bus import Event, GrantDecided, GrantEnded
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import TRANSITIONS, GrantEvent, IllegalTransition, next_state
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.broker.store.tables import audit_log, outbox
from access.shared.models import GrantState
from tests.broker.grants.test_grants import add_principal, req

A, X, R, D, P = (
    GrantState.ACTIVE,
    GrantState.EXPIRED,
    GrantState.REVOKED,
    GrantState.DENIED,
    GrantState.PENDING,
)

# from-state, event -> to-state, audit action, ends the grant; None: no such transition.
TABLE: list[tuple[GrantState | None, GrantEvent, tuple[GrantState, Action, bool] | None]] = [
    (None, GrantEvent.ISSUE, (A, Action.GRANT_ISSUE, False)),
    (None, GrantEvent.PARK, (P, Action.GRANT_PENDING, False)),
    (None, GrantEvent.DENY, (D, Action.GRANT_DENY, False)),
    (None, GrantEvent.APPROVE, None),
    (None, GrantEvent.REJECT, None),
    (None, GrantEvent.REVOKE, None),
    (None, GrantEvent.EXPIRE, None),
    (A, GrantEvent.ISSUE, None),
    (A, GrantEvent.PARK, None),
    (A, GrantEvent.DENY, None),
    (A, GrantEvent.APPROVE, None),  # approved twice: the second vote finds it active
    (A, GrantEvent.REJECT, None),
    (A, GrantEvent.REVOKE, (R, Action.GRANT_REVOKE, True)),
    (A, GrantEvent.EXPIRE, (X, Action.GRANT_EXPIRED, True)),
    # Ended grants are final, whatever happens next.
    *[(state, event, None) for state in (X, R, D) for event in GrantEvent],
    # Pending: approved (the vote that completes the tally), rejected, expired unreviewed, cancelled.
    # Never usable, so none of its ends ends anything (no grant.ended outbox row).
    (P, GrantEvent.ISSUE, None),
    (P, GrantEvent.PARK, None),
    (P, GrantEvent.DENY, None),
    (P, GrantEvent.APPROVE, (A, Action.GRANT_ISSUE, False)),
    (P, GrantEvent.REJECT, (D, Action.GRANT_REJECT, False)),
    (P, GrantEvent.EXPIRE, (X, Action.GRANT_EXPIRED, False)),
    (P, GrantEvent.REVOKE, (R, Action.GRANT_REVOKE, False)),
]


def test_the_table_covers_every_state_and_event() -> None:
    assert {(s, e) for s, e, _ in TABLE} == {(s, e) for s in (None, *GrantState) for e in GrantEvent}


@pytest.mark.parametrize(("state", "event", "expected"), TABLE)
def test_transition_table(
    state: GrantState | None, event: GrantEvent, expected: tuple[GrantState, Action, bool] | None
) -> None:
    if expected is None:
        with pytest.raises(IllegalTransition):
            next_state(state, event)
        assert (state, event) not in TRANSITIONS
    else:
        transition = next_state(state, event)
        assert (transition.to_state, transition.action, transition.ends) == expected


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def _outbox(broker: Broker) -> list[tuple[str, dict[str, str]]]:
    with broker.transaction() as conn:
        return [(r.kind, r.payload) for r in conn.execute(sa.select(outbox).order_by(outbox.c.id))]


def _actions(broker: Broker) -> list[str]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.seq)).scalars())


def test_an_end_writes_state_audit_and_outbox_together_and_publishes_after_commit(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    assert _outbox(broker) == []  # issue ends nothing: no outbox row
    heard: list[Event] = []
    broker.events.subscribe(heard.append)
    with lifecycle.transaction(broker) as tx:
        record = store.get(tx.conn, grant.id)
        assert record is not None
        now = broker.clock.now()
        assert lifecycle.apply(tx, record, GrantEvent.REVOKE, actor="sam", now=now, reason="revoked")
        assert heard == []  # not yet committed
        # The same read state again: the conditional update finds nothing, writes nothing.
        assert not lifecycle.apply(tx, record, GrantEvent.REVOKE, actor="sam", now=now, reason="revoked")
    assert heard == [GrantEnded(grant.id, "revoked")]
    assert _outbox(broker) == [("grant.ended", {"grant_id": grant.id, "reason": "revoked"})]
    assert _actions(broker) == ["grant.request", "grant.issue", "grant.revoke"]
    with broker.transaction() as conn:
        entry = conn.execute(
            sa.select(audit_log.c.details).where(audit_log.c.action == "grant.revoke")
        ).scalar_one()
    assert json.loads(entry) == {
        "grant_id": grant.id,
        "reason": "revoked",
        "subject": "alice",
        "scope": "read",
    }


def test_issue_and_deny_are_published_after_commit_too(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    heard: list[Event] = []
    broker.events.subscribe(heard.append)
    eve = add_principal(broker, "eve", groups=("marketing",))
    issued = grants.request_grant(broker, alice, req())
    with pytest.raises(GrantDenied):
        grants.request_grant(broker, eve, req())
    assert len(heard) == 2
    assert heard[0] == GrantDecided(issued.id, "active")
    assert isinstance(heard[1], GrantDecided) and heard[1].state == "denied"
    assert heard[1].grant_id != issued.id


def test_a_rolled_back_end_leaves_no_state_audit_outbox_or_event(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    heard: list[Event] = []
    broker.events.subscribe(heard.append)
    with pytest.raises(RuntimeError), lifecycle.transaction(broker) as tx:
        record = store.get(tx.conn, grant.id)
        assert record is not None
        lifecycle.apply(tx, record, GrantEvent.EXPIRE, actor="broker", now=broker.clock.now())
        raise RuntimeError("something later in the transaction failed")
    assert heard == []
    assert _outbox(broker) == []
    assert _actions(broker) == ["grant.request", "grant.issue"]
    assert grants.get_grant(broker, alice, grant.id).state == GrantState.ACTIVE


def test_an_illegal_transition_changes_nothing(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    grants.revoke_grant(broker, alice, grant.id)
    with lifecycle.transaction(broker) as tx:
        record = store.get(tx.conn, grant.id)
        assert record is not None
        with pytest.raises(IllegalTransition, match="a grant that is revoked cannot expire"):
            lifecycle.apply(tx, record, GrantEvent.EXPIRE, actor="broker", now=broker.clock.now())
    assert _actions(broker) == ["grant.request", "grant.issue", "grant.revoke"]
    assert len(_outbox(broker)) == 1
