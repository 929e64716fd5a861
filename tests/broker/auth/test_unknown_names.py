"""A password typed as a username, or a secret pasted as a client id, leaves nothing behind.

The ledger cannot be redacted and ``rate_events`` rows sit in the database file: a name that
matches no account is kept only as its keyed tag (``unknown:<16 hex>``), the same for the same
name, and the raw text is in no table and nowhere in the SQLite files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth import identity, ratelimit, tags
from access.broker.runtime import Broker
from tests.broker.conftest import PASSWORD, DevicePage, add_user, audit_rows, start_device

pytestmark = pytest.mark.anyio

# What a person pastes into the wrong field: one shaped like a name, one that is not.
NAME_SHAPED_SECRET = "hunter2-tr0ub4dor"
ODD_SECRET = "Zq8#vLp!2mWx$Kd9"
PASTED_CLIENT_SECRET = "cs-8d1f0e6ab2c94f7aa8b3e5d2f01c9e77"
CLIENT_IP = "192.0.2.7"  # the ``client`` fixture's address


def _every_row(broker: Broker) -> str:
    """Every row of every table in the database, as text."""
    metadata = sa.MetaData()
    with broker.transaction() as conn:
        metadata.reflect(conn)
        return "\n".join(
            repr(tuple(row)) for table in metadata.sorted_tables for row in conn.execute(sa.select(table))
        )


def _database_files(broker: Broker) -> bytes:
    """The SQLite database and its WAL as bytes (free pages and old frames included)."""
    database = broker.engine.url.database
    assert database
    files = [Path(database + suffix) for suffix in ("", "-wal", "-journal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


async def test_a_password_typed_as_the_username_is_stored_nowhere(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client)
    for typed in (NAME_SHAPED_SECRET, ODD_SECRET, NAME_SHAPED_SECRET):
        response = await page.sign_in(started["user_code"], username=typed, password="whatever-else")
        assert response.status_code == 401

    failures = audit_rows(broker, "login.failure")
    assert [f["details"]["reason"] for f in failures] == ["unknown_user"] * 3
    assert [f["actor"] for f in failures] == [
        tags.unknown_name(broker, NAME_SHAPED_SECRET),
        tags.unknown_name(broker, ODD_SECRET),
        tags.unknown_name(broker, NAME_SHAPED_SECRET),
    ]
    # The same name gives the same tag, so repeated attempts still correlate...
    assert failures[0]["actor"] == failures[2]["actor"] != failures[1]["actor"]
    assert failures[0]["actor"].startswith("unknown:") and len(failures[0]["actor"]) == len("unknown:") + 16
    assert failures[0]["target"] == f"user:{failures[0]['actor']}"
    # Rate-limit keys are keyed too: a stored key cannot be tested against guessed passwords.
    rows = _every_row(broker)
    assert ratelimit.PASSWORD_FAILURES.key(broker, NAME_SHAPED_SECRET, CLIENT_IP) in rows
    assert hashlib.sha256(f"{NAME_SHAPED_SECRET}\x00{CLIENT_IP}".encode()).hexdigest() not in rows
    # ...and the text typed is in no table, and nowhere in the database files.
    for secret in (NAME_SHAPED_SECRET, ODD_SECRET):
        assert secret not in _every_row(broker)
        assert secret.encode() not in _database_files(broker)
        assert secret.lower().encode() not in _database_files(broker)


async def test_a_secret_pasted_as_client_id_is_stored_nowhere(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    for _ in range(2):
        response = await client.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": PASTED_CLIENT_SECRET,
                "client_secret": "anything",
            },
        )
        assert response.status_code == 401

    failures = audit_rows(broker, "login.failure")
    tag = tags.unknown_name(broker, PASTED_CLIENT_SECRET)
    expected = [(f"client:{tag}", "unknown_client")] * 2
    assert [(f["target"], f["details"]["reason"]) for f in failures] == expected
    assert PASTED_CLIENT_SECRET not in _every_row(broker)
    assert PASTED_CLIENT_SECRET.encode() not in _database_files(broker)


async def test_failures_for_names_that_exist_still_name_them(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    identity.create_user(broker, "bob", ["sre"], PASSWORD, actor="admin:test")
    identity.disable_principal(broker, "bob", "admin:test")
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    started = await start_device(client)
    assert (await page.sign_in(started["user_code"], password="not-the-password")).status_code == 401
    assert (await page.sign_in(started["user_code"], username="bob")).status_code == 401
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret + "x"},
    )
    assert response.status_code == 401

    failures = audit_rows(broker, "login.failure")
    assert [(f["actor"], f["target"], f["details"]["reason"]) for f in failures] == [
        ("alice", "user:alice", "wrong_credentials"),
        ("bob", "user:bob", "disabled"),
        ("anonymous", f"client:{client_id}", "wrong_credentials"),
    ]


def test_tags_are_keyed_by_the_audit_key(make_broker: Callable[..., Broker]) -> None:
    """Two brokers with different audit keys give the same name different tags (no rainbow table)."""
    first, second = make_broker(), make_broker()
    assert tags.unknown_name(first, "mallory") == tags.unknown_name(first, "mallory")
    assert tags.unknown_name(first, "mallory") != tags.unknown_name(second, "mallory")
