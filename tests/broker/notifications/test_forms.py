"""The bodies: Slack blocks with every client-written value escaped, and the plain JSON form."""

from __future__ import annotations

import json
from typing import Any

from access.broker.notifications import forms
from access.broker.notifications.kinds import Notice

BASE = "https://broker.example"


def notice(event: str = "grant.issued", **details: Any) -> dict[str, Any]:
    grant = {
        "id": "g-0123456789abcdef",
        "subject": "alice",
        "service": "svc-payments",
        "scope": "write",
        "ttl": "30m",
        "reason": "CHG-12 fix <b>&</b>",
    }
    return {
        "event": event,
        "id": "ev-1",
        "at": "2030-01-01T00:00:00.000000Z",
        "actor": "alice",
        "grant": grant,
        "details": details,
    }


def test_mrkdwn_escapes_what_slack_reads() -> None:
    assert forms.mrkdwn("<!here> & <@U123> a>b") == "&lt;!here&gt; &amp; &lt;@U123&gt; a&gt;b"
    assert forms.mrkdwn("&amp;") == "&amp;amp;"  # escaped once more: shown as typed


def test_every_event_has_a_slack_headline() -> None:
    for event in Notice:
        body = forms.render_slack(notice(str(event), target="user:bob"), BASE)
        assert "{" not in body["text"] and body["text"] != str(event), event


def test_the_slack_form_holds_the_facts_and_the_link() -> None:
    body = json.loads(forms.render("slack", notice("grant.revoked", why="locked"), BASE))
    assert body["text"] == ":stop_sign: *alice*'s *write* grant on *svc-payments* was ended by *alice*"
    headline, facts, link = body["blocks"]
    assert headline == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert [f["text"] for f in facts["fields"]] == [
        "*Who*\nalice",
        "*Service*\nsvc-payments",
        "*Scope*\nwrite",
        "*TTL*\n30m",
        "*Reason*\nCHG-12 fix &lt;b&gt;&amp;&lt;/b&gt;",
        "*Grant*\ng-0123456789abcdef",
        "*Why*\nlocked",
    ]
    assert link["elements"][0]["text"] == (
        "<https://broker.example/inbox|Open the access inbox> · `grant.revoked` · 2030-01-01T00:00:00.000000Z"
    )


def test_a_lock_without_a_grant_renders_its_target() -> None:
    body = forms.render_slack(
        {
            "event": "access.locked",
            "id": "ev-2",
            "at": "t",
            "actor": "admin:<ops>",
            "grant": None,
            "details": {"target": "user:bob", "grants_ended": ["g-1", "g-2"]},
        },
        BASE,
    )
    assert body["text"] == ":lock: *admin:&lt;ops&gt;* locked *user:bob*"
    assert [f["text"] for f in body["blocks"][1]["fields"]] == ["*Grants ended*\ng-1, g-2"]


def test_the_json_form_carries_the_values_as_they_are() -> None:
    body = json.loads(forms.render("json", notice(why="expired"), BASE))
    assert body == {
        "event": "grant.issued",
        "id": "ev-1",
        "at": "2030-01-01T00:00:00.000000Z",
        "actor": "alice",
        "grant": notice()["grant"],
        "details": {"why": "expired"},
        "broker": BASE,
        "inbox": BASE + "/inbox",
    }
