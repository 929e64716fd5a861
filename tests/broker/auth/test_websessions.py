"""Browser sign-ins for the inbox (``auth.websessions``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from access.broker.auth import websessions
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from tests.broker.conftest import PASSWORD, add_user, audit_rows


def test_sign_in_authenticate_sign_out(any_broker: Broker) -> None:
    add_user(any_broker, "alice", ("leads",))
    signed = websessions.sign_in(any_broker, " alice ", PASSWORD, "192.0.2.7")

    ctx = websessions.authenticate(any_broker, signed.token)
    assert (ctx.name, ctx.kind, ctx.groups, ctx.session_id) == (
        "alice",
        "user",
        ("leads",),
        signed.session_id,
    )
    assert ctx.session_expires_at == signed.expires_at

    assert websessions.sign_out(any_broker, signed.token) == "alice"
    with pytest.raises(Unauthenticated, match="signed out or revoked"):
        websessions.authenticate(any_broker, signed.token)
    assert websessions.sign_out(any_broker, signed.token) is None  # nothing left to end
    [entry] = audit_rows(any_broker, "logout")
    assert entry["details"] == {"session_id": signed.session_id}


def test_two_sign_ins_are_two_sessions(any_broker: Broker) -> None:
    add_user(any_broker)
    one = websessions.sign_in(any_broker, "alice", PASSWORD, "192.0.2.7")
    two = websessions.sign_in(any_broker, "alice", PASSWORD, "192.0.2.8")
    assert one.token != two.token and one.session_id != two.session_id
    websessions.sign_out(any_broker, one.token)
    assert websessions.authenticate(any_broker, two.token).name == "alice"  # the other tab stays


def test_an_unknown_or_malformed_token_signs_nobody_in(broker: Broker) -> None:
    for token in ("", "short", "A" * 43, "A" * 44, "é" * 43):
        with pytest.raises(Unauthenticated):
            websessions.authenticate(broker, token)
