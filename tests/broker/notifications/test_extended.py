"""``grant.extended``: an extension is told to the endpoints that chose it, signed, with the old
and the new expiry, and in the Slack form as a headline of its own."""

from __future__ import annotations

from datetime import timedelta

from access.broker import grants
from access.broker.clock import FakeClock
from access.broker.notifications import forms
from access.broker.notifications.delivery import WebhookLoop
from access.shared.models import ExtendRequest, GrantRequest
from tests.broker.grants.test_grants import add_principal
from tests.broker.notifications.test_delivery import Hooked, MakeReceiver


def test_an_extension_is_delivered_with_the_old_and_new_expiry(
    hooked: Hooked, make_receiver: MakeReceiver, fake_clock: FakeClock
) -> None:
    hook = make_receiver()
    broker = hooked(hook.url, events=["grant.extended"])
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, GrantRequest(service="svc-payments", scope="read", ttl="10m"))
    fake_clock.advance(timedelta(minutes=1))
    extended = grants.extend_grant(broker, alice, grant.id, ExtendRequest(ttl="20m"))
    assert WebhookLoop(broker).run_due() == 1
    [got] = hook.wait_for(1)
    assert got.signed and got.header("X-Access-Event") == "grant.extended"
    body = got.json
    assert (body["event"], body["actor"], body["grant"]["id"]) == ("grant.extended", "alice", grant.id)
    assert body["details"]["old_expires_at"].startswith("2030-01-01T00:10:00")
    assert body["details"]["expires_at"] == body["grant"]["expires_at"]
    assert body["details"]["expires_at"].startswith(extended.expires_at.strftime("%Y-%m-%dT%H:%M:%S"))
    slack = forms.render_slack(body, "https://broker.test")
    until = body["grant"]["expires_at"]
    assert slack["text"] == f":stopwatch: *alice* extended their *read* grant on *svc-payments* to *{until}*"
