"""Service kinds, broker side: what the broker hands out for a grant, and no kind it does not have."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.broker.errors import Unavailable
from access.broker.grants import TunnelGrant
from access.broker.kinds import KINDS, UnsupportedKind, check_kind, kind_for
from access.broker.kinds.base import read_password
from access.shared.kinds import CLIENT_KINDS

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def grant(kind: str, **options: Any) -> TunnelGrant:
    return TunnelGrant("g-1", "p-1", "alice", f"svc-{kind}", "read", kind, "10.0.0.5", 5432, EXPIRES, options)


def test_postgres_details_come_from_the_policy_options(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    details = kind_for("postgres").connection_details(
        grant=grant("postgres", database="payments", user="ro", password_file=str(secret))
    )
    assert (details.database, details.user, details.password) == ("payments", "ro", "s3cret")
    assert "s3cret" not in repr(details)


@pytest.mark.parametrize(
    ("kind", "database"), [("postgres", "db"), ("mysql", "db"), ("redis", None), ("tcp", None)]
)
def test_only_database_kinds_hand_out_the_database(kind: str, database: str | None) -> None:
    details = kind_for(kind).connection_details(grant=grant(kind, database="db", user="u"))
    assert (details.kind, details.database, details.user, details.password) == (kind, database, "u", None)


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
        ("kubernetes", "kind kubernetes is not supported yet; supported kinds: postgres, mysql, redis, tcp"),
        (
            "oracle",
            "unknown kind 'oracle' is not supported yet; supported kinds: postgres, mysql, redis, tcp",
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
    assert list(KINDS) == ["postgres", "mysql", "redis", "tcp"]
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
