"""The CLI's BrokerClient against the real broker app, in-process (no sockets): the wire contract holds.

The broker runs on a FakeClock; the client gets the app through the harness's InProcessTransport.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from access.cli.client import BrokerClient
from access.cli.errors import Denied, NeedsLogin, NotFound, UsageError
from access.cli.tokens import FileStore
from tests.cli.conftest import BROKER, InProcessTransport


@pytest.fixture
def cli_client(make_broker: Callable[..., Any], tmp_path: Path) -> Iterator[tuple[BrokerClient, Any]]:
    from access.broker.app import create_app

    broker = make_broker()
    transport = InProcessTransport(create_app(broker, background=False))
    client = BrokerClient(BROKER, transport=transport, token_store=FileStore(tmp_path / "tokens.json"))
    try:
        yield client, broker
    finally:
        client.close()
        transport.shutdown()


def test_service_account_core_loop(cli_client: tuple[BrokerClient, Any]) -> None:
    from access.broker.auth.identity import create_service_account

    client, broker = cli_client
    client_id, secret = create_service_account(broker, "deploy-bot", ["ci"])
    with pytest.raises(Denied):
        client.client_credentials(client_id, secret + "x")
    client.save_tokens(client.client_credentials(client_id, secret))

    me = client.whoami()
    assert (me.name, me.kind, me.groups) == ("deploy-bot", "service_account", ["ci"])
    assert [s.name for s in client.services()] == ["svc-payments"]

    grant = client.request_grant("svc-payments", "read", "10m", "deploy 42")
    assert grant.state == "active" and grant.subject == "deploy-bot" and grant.seconds_left == 600
    assert [g.id for g in client.list_grants()] == [grant.id]
    assert client.get_grant(grant.id).id == grant.id
    with pytest.raises(Denied):
        client.request_grant("svc-payments", "write", "5m")
    with pytest.raises((UsageError, Denied)) as over:
        client.request_grant("svc-payments", "read", "2h")
    assert "15m" in over.value.message + str(over.value.hint)
    with pytest.raises(NotFound):
        client.request_grant("svc-nope", "read", "5m")

    assert client.revoke(grant.id).state == "revoked"
    assert client.list_grants() == []
    ended = {g.id: g.state for g in client.list_grants(include_ended=True)}
    assert ended[grant.id] == "revoked"
    assert set(ended.values()) == {"revoked", "denied"}  # refused requests are on record too
    with pytest.raises(Denied):
        client.audit(since="1h")  # ci may not read the audit log

    tokens = client.store.load(client.base_url)
    assert tokens is not None
    client.logout(tokens.access_token)
    with pytest.raises(NeedsLogin):
        client.whoami()


def test_device_authorization_and_pending_poll(cli_client: tuple[BrokerClient, Any]) -> None:
    client, _ = cli_client
    auth = client.device_authorize("laptop-1")
    assert auth.verification_uri.endswith("/device") and len(auth.user_code) == 9
    assert client.poll_token(auth.device_code) == "authorization_pending"
