"""Failed logins are limited per (name, address) and per address, never per name alone: an
attacker at one address cannot lock a person out at theirs (issue 9, docs/security.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from access.broker.auth import device, identity, ratelimit, sessions
from access.broker.auth.tokens import OAuthError
from access.broker.clock import FakeClock
from access.broker.errors import RateLimited, Unauthenticated
from access.broker.runtime import Broker
from tests.broker.conftest import PASSWORD, add_user

ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.5"


def _code(broker: Broker, ip: str) -> str:
    return device.start(broker, "access-cli", "laptop-7", ip).user_code


def test_one_address_spraying_many_names_is_stopped_there_only(
    make_broker: Callable[..., Broker], fake_clock: FakeClock
) -> None:
    broker = make_broker(login_failures_per_address=2)
    add_user(broker)
    code = _code(broker, ATTACKER)
    for n in range(2):  # far under the per-name allowance for each name, but 2 from one address
        with pytest.raises(Unauthenticated):
            device.sign_in(broker, code, f"user{n}", "guess", ATTACKER)
    with pytest.raises(RateLimited):
        device.sign_in(broker, code, "alice", PASSWORD, ATTACKER)

    device.sign_in(broker, _code(broker, VICTIM), "alice", PASSWORD, VICTIM)  # elsewhere: fine
    fake_clock.advance(15 * 60)
    device.sign_in(broker, _code(broker, ATTACKER), "alice", PASSWORD, ATTACKER)  # the window slides


def test_wrong_client_secrets_are_limited_per_client_and_address(
    broker: Broker, fake_clock: FakeClock
) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    limit = ratelimit.CLIENT_SECRET_FAILURES
    with broker.transaction() as conn:  # nine earlier failures from the attacker's address
        for _ in range(limit.limit - 1):
            ratelimit.hit(conn, broker.clock, limit, limit.key(broker, client_id, ATTACKER))
    with pytest.raises(OAuthError, check=lambda exc: exc.error == "invalid_client"):
        sessions.client_credentials(broker, client_id, "wrong", ATTACKER)
    with pytest.raises(OAuthError, check=lambda exc: exc.status == 429):
        sessions.client_credentials(broker, client_id, secret, ATTACKER)

    sessions.client_credentials(broker, client_id, secret, VICTIM)  # the pipeline elsewhere works
    fake_clock.advance(15 * 60)
    sessions.client_credentials(broker, client_id, secret, ATTACKER)
