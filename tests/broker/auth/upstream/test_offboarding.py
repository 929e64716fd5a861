"""Offboarding and linking upstream users with the access-broker commands."""

from __future__ import annotations

import json

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker.auth import identity
from access.broker.auth.tokens import authenticate
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.broker.store.tables import sessions
from tests.broker.auth.upstream.test_signin import _device_login
from tests.broker.conftest import PASSWORD, audit_rows
from tests.fakes.oidcmock import FakeProvider, provider_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def broker_db(db_url: str) -> str:
    """On SQLite and PostgreSQL."""
    return db_url


@pytest.fixture
def run_admin(broker: Broker, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from access.broker.admin.main import app

    monkeypatch.setenv("ACCESS_BROKER_OIDC_PROVIDERS", json.dumps([provider_settings()]))
    where = [
        "--data-dir",
        str(broker.settings.data_dir),
        "--database-url",
        broker.settings.resolved_database_url,
    ]

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [*args, *where])
        return result.exit_code, result.stdout, result.stderr

    return run


async def test_revoke_sessions_by_upstream_subject_ends_every_token(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider, run_admin
) -> None:  # type: ignore[no-untyped-def]
    tokens = await _device_login(client, idp)
    code, out, _ = run_admin("users", "list")
    assert code == 0 and "SOURCE" in out and "oidc:idp" in out
    code, _, err = run_admin("users", "revoke-sessions", "--provider", "idp", "--subject", "sub-alice")
    assert code == 0, err
    assert "revoked the sessions of alice: 1 session(s)" in err
    with pytest.raises(Unauthenticated, match="revoked"):
        authenticate(broker, str(tokens["access_token"]))
    with broker.transaction() as conn:  # the provider's refresh token is not kept past the end
        kept = conn.execute(
            sa.select(sessions.c.upstream_refresh).where(sessions.c.upstream_provider == "idp")
        )
        assert list(kept.scalars()) == [None]
    code, _, err = run_admin("users", "revoke-sessions", "--provider", "idp", "--subject", "sub-nobody")
    assert code == 8 and "no user is linked to subject 'sub-nobody'" in err
    code, _, err = run_admin("users", "revoke-sessions", "alice", "--provider", "idp", "--subject", "x")
    assert code == 2 and "not both" in err


async def test_link_lets_a_password_user_sign_in_upstream(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider, run_admin
) -> None:  # type: ignore[no-untyped-def]
    identity.create_user(broker, "bob", ["sre"], PASSWORD, actor="admin:test")
    idp.groups["bob"] = ["eng"]
    code, _, err = run_admin("users", "link", "bob", "--provider", "idp", "--subject", "sub-bob")
    assert code == 0, err
    assert audit_rows(broker, "user.link")[0]["details"] == {"provider": "idp", "subject": "sub-bob"}
    tokens = await _device_login(client, idp, "bob")
    ctx = authenticate(broker, str(tokens["access_token"]))
    assert (ctx.name, ctx.groups) == ("bob", ("eng",))  # the provider's groups from now on
    assert not audit_rows(broker, "user.provision")
    code, _, err = run_admin("users", "link", "bob", "--provider", "idp", "--subject", "sub-bob")
    assert code != 0 and "already linked" in err
    code, _, err = run_admin("users", "link", "bob", "--provider", "nope", "--subject", "s")
    assert code == 8 and "no OIDC provider named 'nope'" in err
