"""Redis ACL users per grant, against the real Redis at 127.0.0.1:6379 (unique names, removed after)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from access.broker.errors import BrokerError, InvalidRequest, TargetUnreachable
from access.broker.provision.base import Identity, IdentitySpec
from access.broker.provision.redis import RedisProvisioner, check_rule

HOST, PORT = "127.0.0.1", 6379


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    client = redis.Redis(HOST, PORT, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def broker_id(admin: redis.Redis) -> Iterator[str]:
    """A broker id of this test alone; every user it made is removed after."""
    broker = f"test-{secrets.token_hex(4)}"
    yield broker
    mine = [
        name
        for raw in admin.execute_command("ACL", "USERS")  # type: ignore[no-untyped-call]
        if broker in (name := raw.decode())
    ]
    if mine:
        admin.execute_command("ACL", "DELUSER", *mine)  # type: ignore[no-untyped-call]


@pytest.fixture
def provisioner(broker_id: str) -> Iterator[RedisProvisioner]:
    made = RedisProvisioner(host=HOST, port=PORT, broker_id=broker_id)
    yield made
    made.close()


def spec(*privileges: str, grant: str | None = None) -> IdentitySpec:
    return IdentitySpec(
        grant_id=grant or "g-" + secrets.token_hex(8),
        principal="Alice.Smith@example.com",
        scope="read",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        privileges=privileges,
    )


def login(identity: Identity) -> redis.Redis:
    client = redis.Redis(
        HOST,
        PORT,
        username=identity.name,
        password=identity.password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    client.ping()
    return client


def test_create_makes_a_tagged_user_with_the_specs_rules(
    provisioner: RedisProvisioner, broker_id: str, admin: redis.Redis
) -> None:
    wanted = spec("+@read", "+ping", "~test:prov:*")
    identity = provisioner.create(wanted)
    assert identity.name.startswith("access_alicesmith_")
    assert identity.name.endswith(f".{wanted.grant_id}.{broker_id}")
    assert identity.password not in repr(identity) and len(identity.password) >= 40
    [ours] = [o for o in provisioner.ours() if o.name == identity.name]
    assert (ours.grant_id, ours.broker_id) == (wanted.grant_id, broker_id)
    key = f"test:prov:{secrets.token_hex(4)}"
    admin.set(key, "v")
    try:
        client = login(identity)
        assert client.get(key) == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(key, "changed")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("other:key")
        client.close()
    finally:
        admin.delete(key)
    described = admin.execute_command("ACL", "GETUSER", identity.name)  # type: ignore[no-untyped-call]
    assert identity.password.encode() not in repr(described).encode()


def test_a_retry_for_the_same_grant_reuses_the_user_with_a_new_password(
    provisioner: RedisProvisioner,
) -> None:
    wanted = spec("+ping")
    first = provisioner.create(wanted)
    second = provisioner.create(wanted)
    assert second.name == first.name
    assert [o.name for o in provisioner.ours() if o.grant_id == wanted.grant_id] == [first.name]
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(first)
    login(second).close()


@pytest.mark.parametrize(
    "rule",
    [
        "nopass",
        "NOPASS",
        ">secret",
        "<secret",
        "#" + "0" * 64,
        "!" + "0" * 64,
        "on",
        "off",
        "reset",
        "resetpass",
        "+get nopass",
        "~a:* >x",
        "(+get nopass)",
        "(+get >x)",
        "(clearselectors)",
        "()",
        "+get\x00",
        "",
    ],
)
def test_policy_rules_that_touch_the_login_are_refused_before_anything_is_sent(
    provisioner: RedisProvisioner, rule: str
) -> None:
    before = provisioner.ours()
    with pytest.raises(InvalidRequest, match="not a privilege the policy may grant"):
        provisioner.create(spec("+@read", rule))
    assert provisioner.ours() == before


def test_privilege_rules_pass() -> None:
    for rule in (
        "+@read",
        "-@dangerous",
        "+client|id",
        "-flushall",
        "~cache:*",
        "%R~a:*",
        "%RW~b:*",
        "&events:*",
        "allkeys",
        "resetkeys",
        "allchannels",
        "allcommands",
        "nocommands",
        "clearselectors",
        "(+get ~c:*)",
        "+json.get",
    ):
        assert check_rule(rule) == rule


def test_a_rule_redis_refuses_makes_no_user(provisioner: RedisProvisioner) -> None:
    wanted = spec("+@read", "+@nosuchcategory")
    with pytest.raises(InvalidRequest, match="refused ACL SETUSER"):
        provisioner.create(wanted)
    assert not [o for o in provisioner.ours() if o.grant_id == wanted.grant_id]


def test_end_kills_a_live_redis_cli_session_and_the_user_can_no_longer_log_in(
    provisioner: RedisProvisioner, admin: redis.Redis
) -> None:
    identity = provisioner.create(spec("+ping", "+@read", "~test:prov:*"))
    session = subprocess.Popen(
        ["redis-cli", "-h", HOST, "-p", str(PORT), "--user", identity.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "REDISCLI_AUTH": identity.password},
    )
    assert session.stdin is not None and session.stdout is not None
    try:
        session.stdin.write(b"PING\n")
        session.stdin.flush()
        assert session.stdout.readline() == b"PONG\n"
        assert identity.name in _connected_users(admin)

        provisioner.end(identity.name)

        assert identity.name not in _connected_users(admin)
        session.stdin.write(b"PING\n")
        session.stdin.flush()
        assert b"closed the connection" in session.stdout.readline()
    finally:
        session.stdin.close()
        session.wait(5)
        session.stdout.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(identity)
    assert identity.name not in [o.name for o in provisioner.ours()]
    provisioner.end(identity.name)  # again: already gone is a success


def _connected_users(admin: redis.Redis) -> list[str]:
    return [client["user"] for client in admin.client_list()]


def test_end_touches_only_users_of_ours(provisioner: RedisProvisioner, admin: redis.Redis) -> None:
    for name in ("default", "someone", "access_x y"):
        with pytest.raises(InvalidRequest, match="not an identity of ours"):
            provisioner.end(name)
    assert b"default" in admin.execute_command("ACL", "USERS")  # type: ignore[no-untyped-call]


def test_ours_lists_untagged_access_users_without_a_grant(
    provisioner: RedisProvisioner, broker_id: str, admin: redis.Redis
) -> None:
    stray = f"access_stray_{broker_id}"
    admin.execute_command("ACL", "SETUSER", stray, "off")  # type: ignore[no-untyped-call]
    found = {o.name: o for o in provisioner.ours()}
    assert (found[stray].grant_id, found[stray].broker_id) == (None, None)
    assert "default" not in found


def test_an_unreachable_or_silent_target_is_a_bounded_error(broker_id: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(TargetUnreachable, match="did not answer"):
        RedisProvisioner(host="127.0.0.1", port=closed_port, broker_id=broker_id).ours()

    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True)
        thread.start()
        quiet = RedisProvisioner(
            host="127.0.0.1", port=silent.getsockname()[1], broker_id=broker_id, timeout=0.3
        )
        with pytest.raises(TargetUnreachable, match="did not answer"):
            quiet.ours()  # within the 0.3 s timeout, no retries (else the test's timeout fails it)
        thread.join(1)
        for conn in accepted:
            conn.close()


def test_a_wrong_admin_credential_says_so(broker_id: str) -> None:
    wrong = RedisProvisioner(
        host=HOST, port=PORT, broker_id=broker_id, admin_user="nosuch-admin", admin_password="x"
    )
    with pytest.raises(BrokerError, match="refused the broker's admin login"):
        wrong.ours()
