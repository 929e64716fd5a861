"""RFC 8628 device authorization at the service level: codes, polling, sign-in, consent, rate limits."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from access.broker.auth import device, identity, tags, tokens
from access.broker.auth.tokens import OAuthError
from access.broker.clock import FakeClock
from access.broker.errors import InvalidRequest, RateLimited, Unauthenticated
from access.broker.runtime import Broker
from access.broker.store.tables import device_codes
from tests.broker.conftest import BASE_URL, PASSWORD, add_user, audit_actions, audit_rows, ledger_text

IP = "192.0.2.10"


def _oauth_error(error: str) -> pytest.RaisesExc[OAuthError]:
    return pytest.raises(OAuthError, check=lambda exc: exc.error == error)


def _start(broker: Broker, host: str | None = "laptop-7") -> device.DeviceAuthorization:
    return device.start(broker, "access-cli", host, IP)


def _approve(broker: Broker, auth: device.DeviceAuthorization, approve: bool = True) -> device.Decision:
    signed_in = device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    return device.decide(broker, signed_in.consent_token, approve, IP)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("BCDF-GHJK", "BCDFGHJK"),
        ("bcdf-ghjk", "BCDFGHJK"),
        (" bcdf ghjk ", "BCDFGHJK"),
        ("BCDFGHJK", "BCDFGHJK"),
        ("B-C-D-F-G-H-J-K", "BCDFGHJK"),
        ("BCDF-GHJ", None),  # too short
        ("BCDF-GHJKL", None),  # too long
        ("ABCD-GHJK", None),  # vowel: not in the alphabet
        ("BCD1-GHJK", None),  # digit
        ("", None),
    ],
)
def test_user_code_normalisation(typed: str, expected: str | None) -> None:
    assert device.normalise_user_code(typed) == expected


def test_start_issues_codes_per_rfc8628(broker: Broker) -> None:
    auth = _start(broker)

    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", auth.user_code)
    assert len(auth.device_code) >= 43
    assert auth.verification_uri == f"{BASE_URL}/device"
    assert auth.verification_uri_complete == f"{BASE_URL}/device?user_code={auth.user_code}"
    assert (auth.expires_in, auth.interval) == (600, broker.settings.device_poll_interval)
    with broker.transaction() as conn:
        row = conn.execute(sa.select(device_codes)).one()
    # Stored: the device code only as a hash, the user code normalised.
    assert auth.device_code not in (row.device_code_hash, row.user_code)
    assert row.user_code == auth.user_code.replace("-", "")
    assert (row.client_host, row.client_ip, row.status) == ("laptop-7", IP, "pending")
    assert auth.device_code not in ledger_text(broker) and auth.user_code not in ledger_text(broker)
    assert audit_actions(broker) == ["device.request"]


def test_start_refuses_unknown_clients_and_odd_hosts(broker: Broker) -> None:
    with _oauth_error("invalid_client"):
        device.start(broker, "evil-cli", "laptop", IP)
    for host in ("<b>x</b>", "a b", "x" * 256, "", "-leading"):
        with _oauth_error("invalid_request"):
            device.start(broker, "access-cli", host, IP)
    with broker.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(device_codes)).scalar_one() == 0


def test_polling_pending_then_slow_down(broker: Broker, fake_clock: FakeClock) -> None:
    auth = _start(broker)
    interval = auth.interval
    with _oauth_error("authorization_pending"):
        device.exchange(broker, auth.device_code, "access-cli")

    fake_clock.advance(interval - 1)
    with _oauth_error("slow_down"):
        device.exchange(broker, auth.device_code, "access-cli")

    # The interval grew by 5 seconds: polling after the old interval is still too fast.
    fake_clock.advance(interval)
    with _oauth_error("slow_down"):
        device.exchange(broker, auth.device_code, "access-cli")
    fake_clock.advance(interval + 10)
    with _oauth_error("authorization_pending"):
        device.exchange(broker, auth.device_code, "access-cli")
    with broker.transaction() as conn:
        assert conn.execute(sa.select(device_codes.c.interval)).scalar_one() == interval + 10


def test_approved_code_yields_tokens_exactly_once(any_broker: Broker) -> None:
    add_user(any_broker)
    auth = device.start(any_broker, "access-cli", "laptop-7", IP)
    decision = _approve(any_broker, auth)
    assert decision.approved and decision.user_name == "alice"
    assert decision.request.client_host == "laptop-7"

    issued = device.exchange(any_broker, auth.device_code, "access-cli")

    assert issued.refresh_token is not None
    assert tokens.authenticate(any_broker, issued.access_token).name == "alice"
    with _oauth_error("invalid_grant"):
        device.exchange(any_broker, auth.device_code, "access-cli")
    assert audit_actions(any_broker) == [
        "user.create",
        "device.request",
        "login.success",
        "device.approve",
        "token.issue",
    ]
    [approve] = audit_rows(any_broker, "device.approve")
    assert approve["actor"] == "alice"


def test_denied_code(broker: Broker) -> None:
    add_user(broker)
    auth = _start(broker)
    assert _approve(broker, auth, approve=False).approved is False
    with _oauth_error("access_denied"):
        device.exchange(broker, auth.device_code, "access-cli")
    assert "device.deny" in audit_actions(broker)


def test_expired_code(broker: Broker, fake_clock: FakeClock) -> None:
    add_user(broker)
    auth = _start(broker)
    assert auth.expires_in == 10 * 60
    fake_clock.advance(auth.expires_in - 1)
    with _oauth_error("authorization_pending"):
        device.exchange(broker, auth.device_code, "access-cli")
    fake_clock.advance(1)
    with _oauth_error("expired_token"):
        device.exchange(broker, auth.device_code, "access-cli")
    with pytest.raises(InvalidRequest, match="not valid or has expired"):
        device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)


def test_approval_that_comes_too_late_is_expired(broker: Broker, fake_clock: FakeClock) -> None:
    add_user(broker)
    auth = _start(broker)
    signed_in = device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    fake_clock.advance(auth.expires_in)
    with pytest.raises(InvalidRequest, match="no longer valid"):
        device.decide(broker, signed_in.consent_token, True, IP)


def test_unknown_or_foreign_device_codes(broker: Broker) -> None:
    auth = _start(broker)
    with _oauth_error("invalid_grant"):
        device.exchange(broker, "not-a-device-code", "access-cli")
    with _oauth_error("invalid_grant"):
        device.exchange(broker, auth.device_code, "other-client")


def test_consent_is_single_use_and_bound_to_the_sign_in(broker: Broker) -> None:
    add_user(broker)
    auth = _start(broker)
    signed_in = device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    device.decide(broker, signed_in.consent_token, False, IP)
    with pytest.raises(InvalidRequest, match="no longer valid"):
        device.decide(broker, signed_in.consent_token, True, IP)
    with pytest.raises(InvalidRequest, match="no longer valid"):
        device.decide(broker, "forged-consent", True, IP)
    with _oauth_error("access_denied"):
        device.exchange(broker, auth.device_code, "access-cli")


def test_wrong_password_is_audited_without_the_password(broker: Broker) -> None:
    add_user(broker)
    auth = _start(broker)
    with pytest.raises(Unauthenticated, match="Wrong username, password or one-time code"):
        device.sign_in(broker, auth.user_code, "alice", "hunter2-wrong", IP)
    with pytest.raises(Unauthenticated, match="Wrong username, password or one-time code"):
        device.sign_in(broker, auth.user_code, "mallory", "hunter2-wrong", IP)

    failures = audit_rows(broker, "login.failure")
    assert [(f["actor"], f["details"]["reason"]) for f in failures] == [
        ("alice", "wrong_credentials"),
        (tags.unknown_name(broker, "mallory"), "unknown_user"),  # no such user: a keyed tag
    ]
    assert "hunter2" not in ledger_text(broker)
    with broker.transaction() as conn:
        row = conn.execute(sa.select(device_codes)).one()
    assert (row.status, row.principal_id, row.consent_hash) == ("pending", None, None)


def test_a_disabled_user_cannot_sign_in(broker: Broker) -> None:
    add_user(broker)
    identity.disable_principal(broker, "alice", "admin:test")
    auth = _start(broker)
    with pytest.raises(Unauthenticated):
        device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    assert audit_rows(broker, "login.failure")[0]["details"]["reason"] == "disabled"


def test_user_code_guessing_is_rate_limited_per_ip(any_broker: Broker, fake_clock: FakeClock) -> None:
    broker = any_broker  # the sliding window compares stored times: check both databases
    add_user(broker)
    auth = _start(broker)
    for _ in range(10):
        with pytest.raises(InvalidRequest):
            device.sign_in(broker, "BBBB-BBBB", "alice", PASSWORD, IP)
    # Now even the right code is refused from this IP...
    with pytest.raises(RateLimited):
        device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    # ...and so is answering a consent from it (the same allowance)...
    with pytest.raises(RateLimited):
        device.decide(broker, "not-a-consent-token", True, IP)
    # ...but not from another one, and not after the window.
    device.sign_in(broker, auth.user_code, "alice", PASSWORD, "192.0.2.99")
    fake_clock.advance(10 * 60)
    device.sign_in(broker, _start(broker).user_code, "alice", PASSWORD, IP)


def test_password_guessing_is_rate_limited_per_user_and_ip(broker: Broker, fake_clock: FakeClock) -> None:
    add_user(broker)
    add_user(broker, "bob")
    auth = _start(broker)
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            device.sign_in(broker, auth.user_code, "alice", "wrong-password", IP)
    with pytest.raises(RateLimited):
        device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    device.sign_in(broker, auth.user_code, "bob", PASSWORD, IP)  # another name is not locked out
    fake_clock.advance(15 * 60)
    device.sign_in(broker, _start(broker).user_code, "alice", PASSWORD, IP)


def test_a_disabled_approver_gets_no_tokens(broker: Broker) -> None:
    add_user(broker)
    auth = _start(broker)
    _approve(broker, auth)
    identity.disable_principal(broker, "alice", "admin:test")
    with _oauth_error("access_denied"):
        device.exchange(broker, auth.device_code, "access-cli")


def test_starting_device_logins_is_rate_limited_per_ip(broker: Broker, fake_clock: FakeClock) -> None:
    for _ in range(30):
        _start(broker)
    with pytest.raises(
        OAuthError, check=lambda exc: exc.error == "temporarily_unavailable" and exc.status == 429
    ):
        _start(broker)
    device.start(broker, "access-cli", "laptop-7", "192.0.2.99")  # another IP is not affected
    fake_clock.advance(10 * 60)
    _start(broker)


def test_a_second_factor_at_sign_in_dates_the_session_and_survives_refresh(broker: Broker) -> None:
    """The device login's ``mfa_at`` (set by whatever second factor the sign-in presented) is
    copied to the session it becomes; every access token of the session, refreshed or not,
    reports it, so policy can ask how long ago the person proved a second factor."""
    from access.broker.auth import sessions

    add_user(broker)
    plain, strong = _start(broker), _start(broker)
    _approve(broker, plain)
    _approve(broker, strong)
    proved_at = broker.clock.now()
    with broker.transaction() as conn:  # what a TOTP check or an upstream amr records at sign-in
        conn.execute(
            device_codes.update()
            .where(device_codes.c.user_code == strong.user_code.replace("-", ""))
            .values(mfa_at=proved_at)
        )
    assert isinstance(broker.clock, FakeClock)
    broker.clock.advance(30)

    without = device.exchange(broker, plain.device_code, "access-cli")
    with_mfa = device.exchange(broker, strong.device_code, "access-cli")
    assert tokens.authenticate(broker, without.access_token).mfa_at is None
    assert tokens.authenticate(broker, with_mfa.access_token).mfa_at == proved_at
    renewed = sessions.refresh(broker, with_mfa.refresh_token or "", "access-cli")
    assert tokens.authenticate(broker, renewed.access_token).mfa_at == proved_at
    assert [r["details"]["mfa"] for r in audit_rows(broker, "token.issue")] == [False, True]
