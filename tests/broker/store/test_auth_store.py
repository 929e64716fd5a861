"""The auth room's store on SQLite and PostgreSQL: the conditional updates that keep replicas
safe win once, and lookups return plain values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from access.broker.runtime import Broker
from access.broker.store import device_codes, principals, rate_events, sessions
from access.broker.store.device_codes import DeviceState

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)


@pytest.fixture
def store_broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def _principal(broker: Broker, principal_id: str = "p1", name: str = "alice") -> None:
    with broker.transaction() as conn:
        principals.insert(
            conn,
            principal_id=principal_id,
            name=name,
            kind=principals.USER,
            groups=["sre"],
            created_at=NOW,
            password_hash="argon2-hash",
        )


def _device(broker: Broker) -> None:
    with broker.transaction() as conn:
        device_codes.insert_pending(
            conn,
            device_id="d1",
            device_code_hash="h" * 64,
            user_code="BCDFGHJK",
            client_id="access-cli",
            client_host="laptop",
            client_ip="192.0.2.1",
            created_at=NOW,
            expires_at=LATER,
            interval=5,
        )


def test_principals_round_trip(store_broker: Broker) -> None:
    _principal(store_broker)
    with store_broker.transaction() as conn:
        alice = principals.by_name(conn, "alice")
        assert alice is not None and alice == principals.by_id(conn, "p1")
        assert (alice.kind, alice.groups, alice.disabled) == ("user", ("sre",), False)
        assert principals.user_credentials(conn, "alice") == (alice, "argon2-hash")
        assert principals.service_account_credentials(conn, "no-such-client") is None
        assert principals.name_taken(conn, "alice") and not principals.name_taken(conn, "bob")
        principals.disable(conn, "p1", NOW)
        assert principals.all_by_name(conn)[0].disabled


def test_sessions_revoke_once_and_refresh_tokens_are_used_once(store_broker: Broker) -> None:
    _principal(store_broker)
    with store_broker.transaction() as conn:
        for session_id in ("s1", "s2"):
            sessions.insert(
                conn,
                session_id=session_id,
                principal_id="p1",
                client_id="access-cli",
                created_at=NOW,
                expires_at=LATER,
            )
        sessions.insert_refresh_token(
            conn, token_hash="t" * 64, session_id="s1", created_at=NOW, expires_at=LATER
        )
        assert sessions.mark_refresh_token_used(conn, "t" * 64, NOW)
        assert not sessions.mark_refresh_token_used(conn, "t" * 64, NOW)
        token = sessions.refresh_token(conn, "t" * 64)
        assert token is not None and (token.session_id, token.name, token.used_at) == ("s1", "alice", NOW)
        assert sessions.session_of_refresh_token(conn, "t" * 64) == "s1"
        assert sessions.principal_name(conn, "s2") == "alice"
        assert sessions.revoke(conn, "s1", NOW, "logout")
        assert not sessions.revoke(conn, "s1", NOW, "logout")
        assert sessions.revoke_for_principal(conn, "p1", NOW, "principal_disabled") == [
            "s2"
        ]  # only s2 was live
        assert sessions.revoke_for_principal(conn, "p1", NOW, "principal_disabled") == []
        view = sessions.by_id(conn, "s2")
        assert view is not None and view.revoked_at == NOW and view.groups == ("sre",)


def test_device_codes_move_forward_once(store_broker: Broker) -> None:
    _principal(store_broker)
    _device(store_broker)
    with store_broker.transaction() as conn:
        code = device_codes.open_by_user_code(conn, "BCDFGHJK", NOW)
        assert code is not None and code.status is DeviceState.PENDING
        assert device_codes.open_by_user_code(conn, "BCDFGHJK", LATER) is None  # expired
        assert not device_codes.attach_consent(conn, "d1", "p1", "c" * 64, LATER)
        assert device_codes.attach_consent(conn, "d1", "p1", "c" * 64, NOW)
        assert device_codes.open_by_consent_hash(conn, "c" * 64, NOW) is not None
        assert not device_codes.mark_consumed(conn, "d1", NOW)  # not approved yet
        device_codes.record_decision(conn, "d1", DeviceState.APPROVED, NOW)
        assert device_codes.open_by_consent_hash(conn, "c" * 64, NOW) is None  # consent is spent
        assert device_codes.mark_consumed(conn, "d1", NOW)
        assert not device_codes.mark_consumed(conn, "d1", NOW)  # single use
        device_codes.record_poll(conn, "d1", NOW, interval=10)
        consumed = device_codes.by_device_code_hash(conn, "h" * 64)
        assert consumed is not None and (consumed.status, consumed.interval) == (DeviceState.CONSUMED, 10)
        assert device_codes.user_code_taken(conn, "BCDFGHJK")
        device_codes.delete_expired(conn, LATER)
        assert not device_codes.user_code_taken(conn, "BCDFGHJK")


def test_rate_events_count_within_the_window(store_broker: Broker) -> None:
    with store_broker.transaction() as conn:
        for minutes in (0, 5, 9):
            rate_events.insert(conn, "k", NOW + timedelta(minutes=minutes))
        rate_events.insert(conn, "other", NOW)
        assert rate_events.count_since(conn, "k", NOW) == 2  # strictly after
        rate_events.delete_for_key_before(conn, "k", NOW + timedelta(minutes=5))
        assert rate_events.count_since(conn, "k", NOW - timedelta(days=1)) == 1
        rate_events.delete_before(conn, NOW + timedelta(minutes=9))
        assert rate_events.count_since(conn, "other", NOW - timedelta(days=1)) == 0
