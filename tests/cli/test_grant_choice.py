"""Which grant `connect`, `exec` and `env` use (docs/cli.md, "Which grant is used"): the rule
as a pure function, then against the real broker in-process, with what the CLI says on stderr.

No silent reuse: --ttl and --reason are honoured, --grant picks one, and the hint printed by
`access request` leads to that very grant.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from access.cli.client import BrokerClient
from access.cli.commands.grants import Ask, pick
from access.cli.commands.tunnel import _grant_for
from access.cli.errors import CliError, Denied, NotFound, UsageError
from access.shared.models import Grant
from tests.cli.conftest import BrokerApp, LiveBroker
from tests.cli.test_commands import POLICY

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _grant(
    gid: str,
    *,
    left: int,
    age: int = 0,
    service: str = "svc",
    scope: str = "read",
    reason: str = "",
    state: str = "active",
) -> Grant:
    created = T0 - timedelta(seconds=age)
    return Grant.model_validate(
        {
            "id": gid,
            "subject": "alice",
            "service": service,
            "kind": "tcp",
            "scope": scope,
            "reason": reason,
            "state": state,
            "created_at": created,
            "expires_at": T0 + timedelta(seconds=left),
            "seconds_left": left,
        }
    )


def _picked(items: list[Grant], ask: Ask) -> str | None:
    grant, _ = pick(items, ask)
    return None if grant is None else grant.id


def test_without_ttl_or_reason_the_newest_active_grant_of_that_service_and_scope_is_used() -> None:
    items = [
        _grant("old", left=1800, age=600),
        _grant("new", left=20, age=10),  # newest, however little it has left
        _grant("other-scope", left=900, scope="write"),
        _grant("other-service", left=900, service="svc-b"),
        _grant("revoked", left=900, state="revoked"),
    ]
    assert _picked(items, Ask("svc", "read")) == "new"
    assert _picked(items, Ask("svc", "admin")) is None
    assert "no active grant for svc (admin)" in pick(items, Ask("svc", "admin"))[1]


def test_reason_must_be_the_same_text() -> None:
    items = [_grant("inc-8", left=600, age=5, reason="INC-8"), _grant("none", left=600, age=1)]
    assert _picked(items, Ask("svc", "read", reason="INC-8")) == "inc-8"
    grant, why = pick(items, Ask("svc", "read", reason="INC-9"))
    assert grant is None
    assert why.startswith("none (read, 10m left, no reason) does not match what you asked")
    assert "nor does any of your 1 other active grants" in why


@pytest.mark.parametrize(
    ("left", "ttl", "reused"),
    [
        (1320, 20, False),  # the case: 22 minutes left, 20 s asked
        (20, 20, True),
        (18, 20, True),
        (10, 20, True),  # half of it
        (9, 20, False),  # less than half
        (1500, 1800, True),
        (1801, 1800, False),
    ],
)
def test_ttl_is_honoured_time_left_at_most_the_ttl_and_at_least_half(
    left: int, ttl: int, reused: bool
) -> None:
    grant, why = pick([_grant("g", left=left)], Ask("svc", "read", ttl_seconds=ttl))
    assert (grant is not None) == reused, why
    if not reused:
        assert ("more than" in why) if left > ttl else ("less than half" in why)


# -- against the broker ----------------------------------------------------------------------


@pytest.fixture
def live(broker_app: BrokerApp) -> LiveBroker:
    made = broker_app(policy=POLICY, users={"alice": ["sre"]})
    made.sign_in("alice")
    return made


def _client(live: LiveBroker) -> BrokerClient:
    return BrokerClient.from_config(None, None, False, transport=live.transport, now=live.now)


def _request(live: LiveBroker, *args: str) -> dict[str, Any]:
    result = live.invoke("request", "svc-payments", "--scope", "read", *args, "-o", "json")
    assert result.exit_code == 0, result.stderr
    grant: dict[str, Any] = json.loads(result.stdout)
    return grant


def test_an_older_grant_without_the_reason_or_with_more_time_is_not_reused(
    live: LiveBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _request(live, "--ttl", "30m")
    live.clock.advance(8 * 60)  # 22 minutes left, no reason
    broker = _client(live)
    capsys.readouterr()

    first = _grant_for(broker, "svc-payments", None, "20s", "INC-9")
    err = capsys.readouterr().err
    assert first.id != old["id"]
    assert (first.reason, first.seconds_left) == ("INC-9", 20)
    assert f"requesting a new grant: {old['id']} (read, 22m left, no reason) does not match" in err
    assert "22m left is more than the 20s asked" in err and 'not "INC-9"' in err
    [sent] = [json.loads(r.content) for r in live.sent("POST", "/v1/grants")][1:]
    assert sent == {
        "service": "svc-payments",
        "scope": "read",
        "ttl": "20s",
        "reason": "INC-9",
        "break_glass": False,
    }

    live.clock.advance(5)
    again = _grant_for(broker, "svc-payments", None, "20s", "INC-9")
    assert again.id == first.id
    assert f'using grant {first.id} (read, 15s left, reason "INC-9"): matches what you asked' in (
        capsys.readouterr().err
    )
    broker.close()


def test_the_hint_after_request_leads_to_that_very_grant(
    live: LiveBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    _request(live, "--ttl", "1h", "--reason", "older")
    live.clock.advance(60)
    result = live.invoke("request", "svc-payments", "--scope", "read", "--ttl", "20s")
    assert result.exit_code == 0, result.stderr
    match = re.search(r"`access exec svc-payments --grant (\S+) -- CMD`", result.stderr)
    assert match, result.stderr
    assert f"`access connect svc-payments --grant {match.group(1)}`" in result.stderr
    broker = _client(live)
    capsys.readouterr()
    grant = _grant_for(broker, "svc-payments", None, None, None, match.group(1))
    assert grant.id == match.group(1) and grant.seconds_left == 20
    assert "named with --grant" in capsys.readouterr().err
    # Without --grant, too: the newest active grant, not a new 30-minute one.
    assert _grant_for(broker, "svc-payments", None, None, None).id == match.group(1)
    assert len(live.sent("POST", "/v1/grants")) == 2
    broker.close()


def test_grant_flag_refuses_what_it_cannot_use(live: LiveBroker) -> None:
    grant = _request(live, "--ttl", "30m")
    broker = _client(live)
    cases: list[tuple[dict[str, Any], type[CliError], str]] = [
        ({"service": "svc-orders"}, UsageError, "is for svc-payments, not svc-orders"),
        ({"scope": "write"}, UsageError, "is for scope read, not write"),
        ({"ttl": "20s"}, UsageError, "--grant uses that grant as it is"),
        ({"reason": "INC-9"}, UsageError, "--grant uses that grant as it is"),
        ({"grant_id": "g-nope"}, NotFound, "g-nope"),
    ]
    for overrides, error, text in cases:
        args: dict[str, Any] = {"service": "svc-payments", "scope": None, "ttl": None, "reason": None}
        args["grant_id"] = grant["id"]
        args.update(overrides)
        with pytest.raises(error, match=re.escape(text)):
            _grant_for(broker, **args)
    assert live.invoke("revoke", grant["id"]).exit_code == 0
    with pytest.raises(Denied, match="has ended"):
        _grant_for(broker, "svc-payments", None, None, None, grant["id"])
    assert len(live.sent("POST", "/v1/grants")) == 1  # nothing was requested instead
    broker.close()


def test_env_says_which_grant_it_uses(live: LiveBroker) -> None:
    grant = _request(live, "--ttl", "30m", "--reason", "INC-1")
    result = live.invoke("env", "svc-payments", "--port", "15432")
    assert result.exit_code == 0, result.stderr
    assert (
        f'using grant {grant["id"]} (read, 30m left, reason "INC-1"): the newest active grant'
        in result.stderr
    )
