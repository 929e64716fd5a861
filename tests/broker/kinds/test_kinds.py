"""Service kinds: what the broker hands out for a grant, and the client environment the CLI builds."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.broker.errors import Unavailable
from access.broker.grants import TunnelGrant
from access.broker.kinds import kind_for
from access.broker.kinds.base import read_password
from access.shared.kinds import ConnectionInfo, client_setup

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def grant(kind: str, **options: Any) -> TunnelGrant:
    return TunnelGrant("g-1", "p-1", "alice", f"svc-{kind}", "read", kind, "10.0.0.5", 5432, EXPIRES, options)


def info(kind: str, **fields: Any) -> ConnectionInfo:
    return ConnectionInfo(
        grant_id="g-1", service=f"svc-{kind}", kind=kind, scope="read", expires_at=EXPIRES, **fields
    )


def test_postgres_details_come_from_the_policy_options(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    details = kind_for("postgres").connection_details(
        grant=grant("postgres", database="payments", user="ro", password_file=str(secret))
    )
    assert (details.database, details.user, details.password) == ("payments", "ro", "s3cret")
    assert "s3cret" not in repr(details)


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


def test_unknown_kind_behaves_as_tcp() -> None:
    assert kind_for("kubernetes").name == "tcp"


def test_postgres_env_and_a_private_passfile_that_cleanup_deletes(tmp_path: Path) -> None:
    setup = client_setup(
        info("postgres", database="db", user="u", password="p:w"), "127.0.0.1", 4000, secret_dir=tmp_path
    )
    env = setup.env
    assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"], env["PGUSER"]) == (
        "127.0.0.1",
        "4000",
        "db",
        "u",
    )
    assert env["ACCESS_ADDR"] == "127.0.0.1:4000"
    assert not any("p:w" in value for value in env.values())
    passfile = Path(env["PGPASSFILE"])
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert passfile.read_text() == "127.0.0.1:4000:db:u:p\\:w\n"
    setup.cleanup()
    assert not passfile.exists()


def test_env_without_secrets_writes_no_file(tmp_path: Path) -> None:
    setup = client_setup(
        info("postgres", user="u", password="pw"), "127.0.0.1", 4000, secret_dir=tmp_path, with_secrets=False
    )
    assert "PGPASSFILE" not in setup.env
    assert list(tmp_path.iterdir()) == []


def test_mysql_gets_host_port_env_and_an_option_file_first_in_argv(tmp_path: Path) -> None:
    setup = client_setup(info("mysql", user="root", password="pw"), "127.0.0.1", 4001, secret_dir=tmp_path)
    assert (setup.env["MYSQL_HOST"], setup.env["MYSQL_TCP_PORT"]) == ("127.0.0.1", "4001")
    argv = setup.args_for(["mysql", "-e", "select 1"], "127.0.0.1", 4001)
    assert argv[0] == "mysql"
    assert argv[1].startswith("--defaults-extra-file=")
    option_file = Path(argv[1].split("=", 1)[1])
    assert stat.S_IMODE(option_file.stat().st_mode) == 0o600
    assert 'password="pw"' in option_file.read_text()
    assert argv[2:] == ["-e", "select 1"]
    setup.cleanup()
    assert not option_file.exists()


def test_redis_password_and_host_port_arguments() -> None:
    setup = client_setup(info("redis", password="pw"), "127.0.0.1", 4002)
    assert setup.env["REDISCLI_AUTH"] == "pw"
    assert setup.args_for(["redis-cli", "ping"], "127.0.0.1", 4002) == [
        "redis-cli",
        "-h",
        "127.0.0.1",
        "-p",
        "4002",
        "ping",
    ]
    assert setup.args_for(["redis-cli", "-p", "1", "ping"], "127.0.0.1", 4002) == [
        "redis-cli",
        "-p",
        "1",
        "ping",
    ]
    assert setup.args_for(["psql"], "127.0.0.1", 4002) == ["psql"]


def test_tcp_gets_the_access_variables_only() -> None:
    env = client_setup(info("tcp"), "127.0.0.1", 4003).env
    assert set(env) == {"ACCESS_HOST", "ACCESS_PORT", "ACCESS_ADDR", "ACCESS_SERVICE", "ACCESS_GRANT"}
