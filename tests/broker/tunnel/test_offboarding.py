"""``access-broker users revoke-sessions`` cuts the person's live tunnel within a second, whether
it ran in this process or in another one that shares only the database (PostgreSQL, as
replicas do), and the tunnel says to sign in again (4013)."""

from __future__ import annotations

import pytest

from access.broker import grants
from access.broker.auth import identity, tokens
from access.broker.errors import Unauthenticated
from tests.broker.conftest import audit_rows
from tests.broker.tunnel.test_protocol import (
    Setup,
    _cut_after,
    _one_refused_connection,
    _wait_for,
    setup,  # noqa: F401 (the fixture, used by name)
    wrap_app,  # noqa: F401 (the fixture setup uses)
)


@pytest.fixture
def broker_db_url(pg_url: str) -> str:
    """Replicas share PostgreSQL: the design's case."""
    return pg_url


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_revoke_sessions_cuts_the_live_tunnel_within_a_second(setup: Setup, where: str) -> None:  # noqa: F811
    grant_id = setup.grant()
    bobs = setup.grant(user="bob")
    broker = setup.broker if where == "this process" else setup.other_process()

    elapsed, code, messages = _cut_after(
        setup, grant_id, lambda: identity.revoke_sessions(broker, "alice", "admin:root", identity.USER)
    )

    assert elapsed < 1.0, f"cut {elapsed:.2f}s after the sessions were revoked"
    assert code == "signed out"  # close code 4013: sign in again
    assert any("an administrator ended your sign-in sessions; run `access login`" in m for m in messages), (
        messages
    )
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] in (
        "sessions revoked",
        "signed out",
    )
    with pytest.raises(Unauthenticated):
        tokens.authenticate(setup.broker, setup.tokens["alice"])
    assert _one_refused_connection(setup, grant_id)  # alice's grant opens nothing any more
    # bob's session and grant are not touched.
    assert tokens.authenticate(setup.broker, setup.tokens["bob"]).name == "bob"
    assert (
        grants.get_grant(setup.broker, tokens.authenticate(setup.broker, setup.tokens["bob"]), bobs).state
        == "active"
    )
