"""Sessions and refresh tokens: rotation, reuse detection, expiry, logout, revoke (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from access.broker.auth import identity, sessions, tokens
from access.broker.auth.tokens import OAuthError
from access.broker.clock import FakeClock
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.broker.store.tables import refresh_tokens
from access.broker.store.tables import sessions as sessions_table
from tests.broker.conftest import add_user, audit_actions, audit_rows, ledger_text, login


def _session(broker: Broker, session_id: str) -> sa.Row[tuple[object, ...]]:
    with broker.transaction() as conn:
        return conn.execute(sa.select(sessions_table).where(sessions_table.c.id == session_id)).one()


def _oauth_error(error: str) -> pytest.RaisesExc[OAuthError]:
    return pytest.raises(OAuthError, check=lambda exc: exc.error == error)


def test_refresh_rotates_and_audits(any_broker: Broker) -> None:
    first = login(any_broker, add_user(any_broker))
    assert first.refresh_token is not None

    second = sessions.refresh(any_broker, first.refresh_token, "access-cli")

    assert second.session_id == first.session_id
    assert second.refresh_token not in (None, first.refresh_token)
    assert second.access_token != first.access_token
    assert tokens.authenticate(any_broker, second.access_token).session_id == first.session_id
    [entry] = audit_rows(any_broker, "token.refresh")
    assert (entry["actor"], entry["target"]) == ("alice", f"session:{first.session_id}")
    assert first.refresh_token not in ledger_text(any_broker)


def test_refresh_tokens_are_stored_hashed(any_broker: Broker) -> None:
    issued = login(any_broker, add_user(any_broker))
    assert issued.refresh_token is not None
    with any_broker.transaction() as conn:
        stored = list(conn.execute(sa.select(refresh_tokens.c.token_hash)).scalars())
    assert stored == [sessions.hash_token(issued.refresh_token)]


def test_reusing_a_refresh_token_revokes_the_whole_family(any_broker: Broker) -> None:
    first = login(any_broker, add_user(any_broker))
    assert first.refresh_token is not None
    second = sessions.refresh(any_broker, first.refresh_token, "access-cli")
    assert second.refresh_token is not None

    with _oauth_error("invalid_grant"):
        sessions.refresh(any_broker, first.refresh_token, "access-cli")

    assert _session(any_broker, first.session_id).revoked_reason == "refresh_reuse"
    [entry] = audit_rows(any_broker, "token.refresh_reuse")
    assert entry["target"] == f"session:{first.session_id}"
    # The legitimate holder's newest tokens die with the family.
    with _oauth_error("invalid_grant"):
        sessions.refresh(any_broker, second.refresh_token, "access-cli")
    with pytest.raises(Unauthenticated):
        tokens.authenticate(any_broker, second.access_token)


def test_refresh_refuses_unknown_expired_and_foreign_tokens(broker: Broker, fake_clock: FakeClock) -> None:
    issued = login(broker, add_user(broker))
    assert issued.refresh_token is not None
    for bad in ("", "nope", "x" * 1000):
        with _oauth_error("invalid_grant"):
            sessions.refresh(broker, bad, "access-cli")
    with _oauth_error("invalid_grant"):
        sessions.refresh(broker, issued.refresh_token, "another-client")
    # None of that used the token up.
    fresh = sessions.refresh(broker, issued.refresh_token, None)
    assert fresh.refresh_token is not None

    fake_clock.advance(broker.settings.session_ttl)
    with _oauth_error("invalid_grant"):
        sessions.refresh(broker, fresh.refresh_token, "access-cli")
    assert audit_actions(broker).count("token.refresh") == 1


def test_refresh_of_a_disabled_user_fails(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    assert issued.refresh_token is not None
    identity.disable_principal(broker, "alice", "admin:test")
    with _oauth_error("invalid_grant"):
        sessions.refresh(broker, issued.refresh_token, "access-cli")


def test_logout_revokes_the_session(any_broker: Broker) -> None:
    issued = login(any_broker, add_user(any_broker))
    assert issued.refresh_token is not None
    sessions.logout(any_broker, tokens.authenticate(any_broker, issued.access_token))

    assert _session(any_broker, issued.session_id).revoked_reason == "logout"
    assert "logout" in audit_actions(any_broker)
    with _oauth_error("invalid_grant"):
        sessions.refresh(any_broker, issued.refresh_token, "access-cli")


@pytest.mark.parametrize("which", ["refresh", "access"])
def test_revoke_token_ends_the_session(broker: Broker, which: str) -> None:
    issued = login(broker, add_user(broker))
    token = issued.refresh_token if which == "refresh" else issued.access_token
    assert token is not None

    assert sessions.revoke_token(broker, token) is True
    assert sessions.revoke_token(broker, token) is False  # already revoked: still fine
    assert _session(broker, issued.session_id).revoked_reason == "revoked"
    assert audit_actions(broker).count("token.revoke") == 1


def test_revoking_garbage_is_not_an_error(broker: Broker) -> None:
    assert sessions.revoke_token(broker, "not-a-token") is False
    assert sessions.revoke_token(broker, "a.b.c") is False


def test_client_credentials(any_broker: Broker) -> None:
    client_id, secret = identity.create_service_account(any_broker, "deploy-bot", ["ci"])

    issued = sessions.client_credentials(any_broker, client_id, secret, "192.0.2.1")

    ctx = tokens.authenticate(any_broker, issued.access_token)
    assert (ctx.name, ctx.kind, ctx.groups) == ("deploy-bot", "service_account", ("ci",))
    # A refreshable session, bounded by the service-account session lifetime (not the token's).
    row = _session(any_broker, issued.session_id)
    lifetime = any_broker.settings.service_account_session_ttl
    assert (row.expires_at - row.created_at).total_seconds() == lifetime
    assert ctx.session_expires_at == row.expires_at
    assert issued.refresh_token is not None
    renewed = sessions.refresh(any_broker, issued.refresh_token, client_id)
    assert renewed.session_id == issued.session_id and renewed.refresh_token not in (
        None,
        issued.refresh_token,
    )
    [entry] = audit_rows(any_broker, "login.success")
    assert entry["details"]["method"] == "client_credentials"
    assert secret not in ledger_text(any_broker)


def test_client_credentials_failures_are_audited_and_refused(broker: Broker) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    with _oauth_error("invalid_client"):
        sessions.client_credentials(broker, client_id, secret + "x", "192.0.2.1")
    with _oauth_error("invalid_client"):
        sessions.client_credentials(broker, "sa-unknown", secret, "192.0.2.1")
    identity.disable_principal(broker, "deploy-bot", "admin:test")
    with _oauth_error("invalid_client"):
        sessions.client_credentials(broker, client_id, secret, "192.0.2.1")
    reasons = [e["details"]["reason"] for e in audit_rows(broker, "login.failure")]
    assert reasons == ["wrong_credentials", "unknown_client", "disabled"]


def test_a_service_account_session_outlives_its_access_token_until_its_own_end(
    make_broker: Callable[..., Broker], fake_clock: FakeClock
) -> None:
    """What each new channel of a tunnel asks (check_session) holds past the access token's
    lifetime: a pipeline's `access exec` keeps its tunnel across refreshes, until the session ends."""
    broker = make_broker(access_token_ttl=30, service_account_session_ttl=120)
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    issued = sessions.client_credentials(broker, client_id, secret, "192.0.2.1")
    ctx = tokens.authenticate(broker, issued.access_token)
    assert issued.refresh_token is not None

    fake_clock.advance(61)  # two access-token lifetimes
    tokens.check_session(broker, ctx)
    with pytest.raises(Unauthenticated):
        tokens.authenticate(broker, issued.access_token)  # the token itself is over
    renewed = sessions.refresh(broker, issued.refresh_token, client_id)
    assert tokens.authenticate(broker, renewed.access_token).session_id == ctx.session_id

    fake_clock.advance(60)  # past the service-account session lifetime
    with pytest.raises(Unauthenticated, match="session has expired"):
        tokens.check_session(broker, ctx)
    assert renewed.refresh_token is not None
    with _oauth_error("invalid_grant"):
        sessions.refresh(broker, renewed.refresh_token, client_id)
