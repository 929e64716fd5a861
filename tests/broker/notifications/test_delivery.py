"""Webhooks end to end in one process: a grant's change writes the notice in its transaction, the
webhook loop POSTs it, signed, to a real HTTP receiver on loopback, retries, and gives up audited."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.auth.identity import disable_principal
from access.broker.clock import FakeClock
from access.broker.errors import GrantDenied
from access.broker.events import outbox
from access.broker.events.bus import GrantDecided, GrantEnded
from access.broker.notifications import signing
from access.broker.notifications.delivery import WEBHOOK, WebhookLoop
from access.broker.runtime import Broker
from access.broker.store.tables import outbox as outbox_table
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import audit_rows, ledger_text
from tests.broker.grants.test_grants import add_principal
from tests.fakes.webhooks import HANG, Receiver

Hooked = Callable[..., Broker]
MakeReceiver = Callable[..., Receiver]


def request(broker: Broker, name: str = "alice", reason: str = "INC-7", scope: str = "read") -> Any:
    ctx = add_principal(broker, name)
    return grants.request_grant(
        broker, ctx, GrantRequest(service="svc-payments", scope=scope, ttl="30m", reason=reason)
    ), ctx


def rows(broker: Broker) -> list[Any]:
    with broker.transaction() as conn:
        query = sa.select(outbox_table).where(outbox_table.c.kind == WEBHOOK).order_by(outbox_table.c.id)
        return list(conn.execute(query))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


def test_issue_revoke_and_expiry_are_delivered_signed(
    hooked: Hooked, make_receiver: MakeReceiver, fake_clock: FakeClock, db_url: str
) -> None:
    hook = make_receiver()
    broker = hooked(hook.url, db_url=db_url)
    loop = WebhookLoop(broker)
    first, alice = request(broker)
    second, _ = request(broker, "bob")
    grants.revoke_grant(broker, alice, first.id)
    fake_clock.advance(timedelta(minutes=30))
    assert grants.expire_due(broker) == [second.id]
    assert loop.run_due() == 4
    got = hook.wait_for(4)
    assert all(r.signed for r in got)
    assert [(r.json["event"], r.json["grant"]["id"]) for r in got] == [
        ("grant.issued", first.id),
        ("grant.issued", second.id),
        ("grant.revoked", first.id),
        ("grant.expired", second.id),
    ]
    issued = got[0].json
    assert issued["grant"] | {"requested_at": None, "expires_at": None} == {
        "id": first.id,
        "subject": "alice",
        "service": "svc-payments",
        "kind": "postgres",
        "scope": "read",
        "state": "active",
        "reason": "INC-7",
        "ttl": "30m",
        "requested_at": None,
        "expires_at": None,
        "rule": "sre-payments",
        "requirement": "auto",
        "ended_reason": None,
        "ended_by": None,
        "approved_at": None,
        "break_glass": False,
    }
    assert (issued["actor"], issued["broker"], issued["inbox"]) == (
        "alice",
        "https://broker.test",
        "https://broker.test/inbox",
    )
    revoked = got[2].json
    assert (revoked["actor"], revoked["details"], revoked["grant"]["state"]) == (
        "alice",
        {"why": "revoked"},
        "revoked",
    )
    assert got[3].json["details"] == {"why": "expired"} and got[3].json["actor"] == "broker"
    assert got[2].header("X-Access-Event") == "grant.revoked"
    assert len({r.delivery for r in got}) == 4 and len({r.json["id"] for r in got}) == 4
    assert loop.run_due() == 0 and len(hook.received) == 4  # each once


def test_a_forged_or_stale_signature_fails_the_receivers_check(
    hooked: Hooked, make_receiver: MakeReceiver, fake_clock: FakeClock
) -> None:
    # The receiver's check is the docs' check: it must refuse what it should, or the tests prove nothing.
    hook = make_receiver()
    broker = hooked(hook.url)
    request(broker)
    WebhookLoop(broker).run_due()
    [got] = hook.wait_for(1)
    timestamp = got.header(signing.TIMESTAMP_HEADER)
    signature = got.header(signing.SIGNATURE_HEADER)
    now = fake_clock.now().timestamp()
    assert signing.verify(hook.secret, timestamp, signature, got.body, now)
    assert not signing.verify(hook.secret, timestamp, signature, got.body + b" ", now)
    assert not signing.verify(b"another secret of 32 bytes......", timestamp, signature, got.body, now)
    assert not signing.verify(hook.secret, str(int(timestamp) - 1), signature, got.body, now)
    assert not signing.verify(hook.secret, timestamp, signature, got.body, now + signing.TOLERANCE + 1)
    assert signing.verify(hook.secret, timestamp, signature, got.body, now + signing.TOLERANCE)


def test_a_receiver_that_fails_first_gets_the_same_delivery_again_after_the_backoff(
    hooked: Hooked, make_receiver: MakeReceiver, fake_clock: FakeClock
) -> None:
    hook = make_receiver(answers=[500])
    broker = hooked(hook.url)
    loop = WebhookLoop(broker)
    request(broker)
    assert loop.run_due() == 0
    [row] = rows(broker)
    assert (row.attempts, row.done_at, row.last_error) == (
        1,
        None,
        "DeliveryFailed: webhook 'ops' answered 500",
    )
    fake_clock.advance(outbox.backoff(1))
    assert loop.run_due() == 1
    first, second = hook.wait_for(2)
    assert first.delivery == second.delivery and first.json == second.json  # one delivery, retried
    assert first.signed and second.signed
    assert int(second.header("X-Access-Timestamp")) == int(first.header("X-Access-Timestamp")) + 1
    [row] = rows(broker)
    assert row.done_at is not None and row.last_error is None
    assert loop.run_due() == 0 and len(hook.received) == 2


def test_a_receiver_that_is_down_does_not_block_or_fail_the_request(hooked: Hooked) -> None:
    broker = hooked(f"http://127.0.0.1:{closed_port()}/hook")
    started = time.monotonic()
    grant, _ = request(broker)
    assert grant.state == GrantState.ACTIVE
    [row] = rows(broker)  # the notice waits in the outbox, written with the grant
    assert row.done_at is None and row.attempts == 0
    assert WebhookLoop(broker).run_due() == 0
    [row] = rows(broker)
    assert row.attempts == 1 and row.last_error.startswith("DeliveryFailed: webhook 'ops': ConnectError")
    assert time.monotonic() - started < 5


def test_a_receiver_that_never_answers_costs_at_most_the_timeout(
    hooked: Hooked, make_receiver: MakeReceiver
) -> None:
    hook = make_receiver(answers=[HANG])
    broker = hooked(hook.url, webhook_timeout=0.5)
    request(broker)
    started = time.monotonic()
    assert WebhookLoop(broker).run_due() == 0
    assert time.monotonic() - started < 3
    [row] = rows(broker)
    assert row.last_error == "DeliveryFailed: webhook 'ops': no answer within 0.5 s"


def test_a_delivery_given_up_on_is_audited_not_dropped(
    hooked: Hooked, make_receiver: MakeReceiver, fake_clock: FakeClock
) -> None:
    hook = make_receiver(answers=[503, 503, 503])
    broker = hooked(hook.url, webhook_max_attempts=3)
    loop = WebhookLoop(broker)
    grant, _ = request(broker)
    for attempt in (1, 2, 3):
        assert loop.run_due() == 0
        fake_clock.advance(outbox.backoff(attempt))
    assert loop.run_due() == 0 and len(hook.wait_for(3)) == 3  # not tried a fourth time
    [row] = rows(broker)
    assert row.done_at is not None and row.last_error == "DeliveryFailed: webhook 'ops' answered 503"
    [failed] = audit_rows(broker, "notification.failed")
    assert (failed["actor"], failed["target"]) == ("broker", "webhook:ops")
    assert failed["details"] == {
        "delivery": hook.received[0].delivery,
        "event": "grant.issued",
        "event_id": hook.received[0].json["id"],
        "grant_id": grant.id,
        "attempts": 3,
        "error": "DeliveryFailed: webhook 'ops' answered 503",
    }
    assert hook.url not in ledger_text(broker)  # the URL may be a secret (Slack's are)


def test_the_slack_form_escapes_the_reason_and_links_the_inbox(
    hooked: Hooked, make_receiver: MakeReceiver
) -> None:
    hook = make_receiver()
    broker = hooked(hook.url, format="slack")
    grant, _ = request(broker, reason="INC-1 <!channel> & <https://evil.example|click>")
    WebhookLoop(broker).run_due()
    [got] = hook.wait_for(1)
    body = got.json
    assert body["text"] == ":white_check_mark: *alice* was granted *read* on *svc-payments* for *30m*"
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert "*Reason*\nINC-1 &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in fields
    assert f"*Grant*\n{grant.id}" in fields and "*TTL*\n30m" in fields
    assert body["blocks"][2]["elements"][0]["text"].startswith("<https://broker.test/inbox|")
    assert "<!channel>" not in got.body.decode()


def test_only_the_events_an_endpoint_chose_are_written(hooked: Hooked, make_receiver: MakeReceiver) -> None:
    hook = make_receiver()
    broker = hooked(hook.url, events=["grant.revoked", "access.locked"])
    grant, alice = request(broker)
    assert rows(broker) == []  # nothing written for an event nobody chose
    grants.revoke_grant(broker, alice, grant.id)
    assert WebhookLoop(broker).run_due() == 1
    assert [r.json["event"] for r in hook.wait_for(1)] == ["grant.revoked"]


def test_a_lock_out_tells_of_the_lock_and_each_grant_it_ended(
    hooked: Hooked, make_receiver: MakeReceiver
) -> None:
    hook = make_receiver()
    broker = hooked(hook.url, events=["grant.revoked", "access.locked"])
    grant, _ = request(broker, "carol")
    assert disable_principal(broker, "carol", "admin:ops") == [grant.id]
    assert WebhookLoop(broker).run_due() == 2
    revoked, locked = (r.json for r in hook.wait_for(2))
    assert (revoked["event"], revoked["details"], revoked["actor"]) == (
        "grant.revoked",
        {"why": "locked"},
        "admin:ops",
    )
    assert (locked["event"], locked["grant"], locked["details"]) == (
        "access.locked",
        None,
        {"target": "user:carol", "grants_ended": [grant.id]},
    )


def test_the_grant_outbox_loop_leaves_webhooks_to_theirs(hooked: Hooked, make_receiver: MakeReceiver) -> None:
    hook = make_receiver()
    broker = hooked(hook.url)
    request(broker)
    outbox.OutboxLoop(broker, skip=(WEBHOOK,)).run_due()
    assert hook.received == [] and rows(broker)[0].attempts == 0


def test_a_policy_denial_says_why(hooked: Hooked, make_receiver: MakeReceiver) -> None:
    hook = make_receiver()
    broker = hooked(hook.url)
    ctx = add_principal(broker, "erin", groups=("nobody",))
    with pytest.raises(GrantDenied):
        grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="5m"))
    WebhookLoop(broker).run_due()
    [got] = hook.wait_for(1)
    assert (got.json["event"], got.json["grant"]["state"], got.json["actor"]) == (
        "grant.denied",
        "denied",
        "erin",
    )
    assert got.json["details"]["why"] == "no policy rule gives erin read on svc-payments"


def test_the_webhook_loop_wakes_on_grant_events_only_when_an_endpoint_is_configured(
    hooked: Hooked, make_broker: Callable[..., Broker]
) -> None:
    # Without an endpoint no event wrote a delivery: a wake per grant would be a wasted transaction.
    decided, ended = GrantDecided("g-1", "active"), GrantEnded("g-1", "revoked")
    assert WebhookLoop(hooked("http://127.0.0.1:9/hook")).wakes_on(decided)
    assert WebhookLoop(hooked("http://127.0.0.1:9/hook")).wakes_on(ended)
    bare = WebhookLoop(make_broker())
    assert not bare.wakes_on(decided) and not bare.wakes_on(ended)
