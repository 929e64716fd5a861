"""Service kinds, broker side: what the broker hands out for a grant, and no kind it does not have."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.broker.errors import Unavailable
from access.broker.grants import TunnelGrant
from access.broker.kinds import KINDS, UnsupportedKind, check_kind, kind_for
from access.broker.kinds.base import read_password
from access.broker.kinds.login import target_login, target_tls
from access.broker.wire.base import TargetLogin
from access.shared.kinds import CLIENT_KINDS

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def grant(kind: str, **options: Any) -> TunnelGrant:
    return TunnelGrant("g-1", "p-1", "alice", f"svc-{kind}", "read", kind, "10.0.0.5", 5432, EXPIRES, options)


@pytest.mark.parametrize("kind", ["postgres", "mysql", "redis"])
def test_a_kind_the_broker_logs_in_to_hands_the_cli_no_user_or_password(kind: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    details = kind_for(kind).connection_details(
        grant=grant(kind, database="payments", user="ro", password_file=str(secret))
    )
    assert (details.user, details.password) == (None, None)
    assert "s3cret" not in details.model_dump_json()


@pytest.mark.parametrize(
    ("kind", "database"), [("postgres", "db"), ("mysql", "db"), ("redis", None), ("tcp", None)]
)
def test_only_database_kinds_hand_out_the_database(kind: str, database: str | None) -> None:
    details = kind_for(kind).connection_details(grant=grant(kind, database="db", user="u"))
    user = "u" if kind == "tcp" else None
    assert (details.kind, details.database, details.user, details.password) == (kind, database, user, None)


@pytest.fixture
def broker(make_broker: Callable[..., Any]) -> Any:
    """A broker whose policy has one dynamic service, ``svc-dyn``; the grants above name services
    it does not have, so their login is static (from the options)."""
    dynamic = {
        "name": "svc-dyn",
        "kind": "postgres",
        "target": "127.0.0.1:5432",
        "scopes": ["read"],
        "max_ttl": "1h",
        "credentials": {
            "mode": "dynamic",
            "admin": {"user": "postgres"},
            "scopes": {"read": {"roles": ["pg_read_all_data"]}},
        },
    }
    rule = {"name": "r", "subjects": {"groups": ["sre"]}, "services": ["svc-dyn"], "scopes": ["read"]}
    return make_broker(policy={"services": [dynamic], "rules": [rule]})


def test_a_dynamic_service_without_the_grants_identity_is_refused_never_a_shared_login(
    broker: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("shared\n")
    dyn = TunnelGrant(
        "g-1",
        "p-1",
        "alice",
        "svc-dyn",
        "read",
        "postgres",
        "127.0.0.1",
        5432,
        EXPIRES,
        {"user": "ro", "password_file": str(secret)},
    )
    with pytest.raises(Unavailable, match="no identity on svc-dyn for grant g-1"):
        target_login(broker, dyn)


def test_the_target_login_comes_from_the_policy_options(broker: Any, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    login = target_login(broker, grant("postgres", database="payments", user="ro", password_file=str(secret)))
    assert login == TargetLogin("ro", "s3cret", "payments")
    assert "s3cret" not in repr(login)
    assert target_login(broker, grant("tcp", user="ro", password_file=str(secret))) is None


def test_a_redis_login_without_a_user_is_the_default_user_and_no_password(broker: Any) -> None:
    assert target_login(broker, grant("redis")) == TargetLogin("default", "", None)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_database_login_without_a_user_is_refused(broker: Any, kind: str) -> None:
    with pytest.raises(Unavailable, match="no user"):
        target_login(broker, grant(kind, password_file="/nonexistent"))


def test_tls_options_are_checked(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    assert target_tls(grant("postgres")).context() is None
    assert target_tls(grant("redis", tls="require")).mode == "require"
    assert target_tls(grant("postgres", tls="verify-full", tls_ca_file=str(ca))).ca_file == str(ca)
    for bad in ({"tls": "strict"}, {"tls": "require", "tls_ca_file": "/nonexistent"}):
        with pytest.raises(Unavailable, match="tls"):
            target_tls(grant("postgres", **bad))
    assert target_tls(grant("mysql", tls="verify-full", tls_ca_file=str(ca))).mode == "verify-full"


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_PW", "from-env")
    assert read_password("svc", {"password_env": "SVC_PW"}) == "from-env"
    assert read_password("svc", {}) is None


@pytest.mark.parametrize(
    "options", [{"password_file": "/nonexistent/pw"}, {"password_env": "ACCESS_TEST_UNSET_PW"}]
)
def test_unreadable_password_source_is_unavailable(options: dict[str, str]) -> None:
    with pytest.raises(Unavailable):
        read_password("svc", options)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "oracle",
            "unknown kind 'oracle' is not supported yet; "
            "supported kinds: postgres, mysql, redis, kubernetes, tcp",
        ),
        ("", "unknown kind '' is not supported yet"),
        ("TCP", "unknown kind 'TCP'"),
    ],
)
def test_kind_for_an_unknown_name_raises_instead_of_falling_back_to_tcp(name: str, message: str) -> None:
    with pytest.raises(UnsupportedKind) as caught:
        kind_for(name)
    assert message in str(caught.value)
    with pytest.raises(UnsupportedKind):
        check_kind(name)


def test_the_supported_kinds() -> None:
    assert list(KINDS) == ["postgres", "mysql", "redis", "kubernetes", "tcp"]
    for name in KINDS:
        check_kind(name)
        assert kind_for(name).name == name


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_has_its_client_side_beside_it(name: str) -> None:
    kind = kind_for(name)
    assert kind.client.name == name
    assert type(kind.client) is type(CLIENT_KINDS[name])
    # The broker side lives in access.broker.kinds.<name>, the client side in access.shared.kinds.<name>.
    assert type(kind).__module__ == f"access.broker.kinds.{name}"
    assert type(kind.client).__module__ == f"access.shared.kinds.{name}"


def test_only_the_broker_kinds_have_a_client_side() -> None:
    assert set(CLIENT_KINDS) == set(KINDS)
