"""Service kinds, client side: the environment, files and arguments ``access exec`` builds."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.shared.kinds import CLIENT_KINDS, ClientSetup, ConnectionInfo, client_setup

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
COMMON = {"ACCESS_HOST", "ACCESS_PORT", "ACCESS_ADDR", "ACCESS_SERVICE", "ACCESS_GRANT"}


def info(kind: str, **fields: Any) -> ConnectionInfo:
    return ConnectionInfo(
        grant_id="g-1", service=f"svc-{kind}", kind=kind, scope="read", expires_at=EXPIRES, **fields
    )


def test_postgres_env_carries_no_password_even_if_a_broker_sends_one(tmp_path: Path) -> None:
    # Issue 10: the broker logs in to the target; the laptop holds no target secret.
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
    assert "PGPASSFILE" not in env and "PGPASSWORD" not in env
    assert not any("p:w" in value for value in env.values())
    assert setup.files == [] and list(tmp_path.iterdir()) == []


def test_postgres_without_a_user_presents_access_to_the_local_port(tmp_path: Path) -> None:
    setup = client_setup(info("postgres"), "127.0.0.1", 4000, secret_dir=tmp_path)
    assert "PGDATABASE" not in setup.env and setup.env["PGUSER"] == "access"
    assert setup.files == []


@pytest.mark.parametrize("kind", ["postgres", "mysql", "redis"])
def test_env_without_secrets_writes_no_file_and_sets_no_password(kind: str, tmp_path: Path) -> None:
    setup = client_setup(
        info(kind, user="u", password="pw"), "127.0.0.1", 4000, secret_dir=tmp_path, with_secrets=False
    )
    assert "PGPASSFILE" not in setup.env and "REDISCLI_AUTH" not in setup.env
    assert not any(value == "pw" for value in setup.env.values())
    assert setup.files == []
    assert list(tmp_path.iterdir()) == []


def test_mysql_gets_host_port_env_and_an_option_file_without_secrets_first_in_argv(tmp_path: Path) -> None:
    setup = client_setup(info("mysql", database="db", password="pw"), "127.0.0.1", 4001, secret_dir=tmp_path)
    assert (setup.env["MYSQL_HOST"], setup.env["MYSQL_TCP_PORT"]) == ("127.0.0.1", "4001")
    argv = setup.args_for(["mysql", "-e", "select 1"], "127.0.0.1", 4001)
    assert argv[0] == "mysql"
    assert argv[1].startswith("--defaults-extra-file=")
    option_file = Path(argv[1].split("=", 1)[1])
    assert stat.S_IMODE(option_file.stat().st_mode) == 0o600
    text = option_file.read_text()
    assert "pw" not in text and "password" not in text
    assert text.splitlines() == [
        "[client]",
        'user="access"',
        "loose-ssl-mode=DISABLED",
        "loose-skip-ssl",
        'database="db"',
    ]
    assert argv[2:] == ["-e", "select 1"]
    assert setup.args_for(["/usr/bin/mariadb"], "127.0.0.1", 4001)[1] == argv[1]
    assert setup.args_for(["psql"], "127.0.0.1", 4001) == ["psql"]
    setup.cleanup()
    assert not option_file.exists()


def test_redis_gets_no_password_and_host_port_arguments() -> None:
    setup = client_setup(info("redis", password="pw"), "127.0.0.1", 4002)
    assert "REDISCLI_AUTH" not in setup.env and setup.files == []
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
    setup = client_setup(info("tcp"), "127.0.0.1", 4003)
    assert set(setup.env) == COMMON
    assert setup.args_for(["redis-cli", "ping"], "127.0.0.1", 4003) == ["redis-cli", "ping"]


def test_a_kind_this_client_does_not_know_gets_the_common_variables_and_no_guesses() -> None:
    # A broker newer than the CLI: nothing kind-specific is guessed (no redis-cli or mysql rules).
    setup = client_setup(info("mongodb", user="u", password="pw"), "127.0.0.1", 4004)
    assert setup.kind is None
    assert set(setup.env) == COMMON
    assert setup.args_for(["redis-cli", "ping"], "127.0.0.1", 4004) == ["redis-cli", "ping"]
    assert setup.files == []


def test_kubernetes_gets_a_private_kubeconfig_for_the_local_listener(tmp_path: Path) -> None:
    import base64
    import json

    setup = client_setup(
        info("kubernetes"), "127.0.0.1", 4006, secret_dir=tmp_path, ca_pem="PEM", local_token="local-tok"
    )
    try:
        path = Path(setup.env["KUBECONFIG"])
        assert path.parent == tmp_path and path.stat().st_mode & 0o777 == 0o600
        config = json.loads(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        assert cluster["server"] == "https://127.0.0.1:4006"
        assert base64.b64decode(cluster["certificate-authority-data"]) == b"PEM"
        assert config["users"][0]["user"] == {"token": "local-tok"}
    finally:
        setup.cleanup()
    assert not path.exists()
    # access env: no file, no KUBECONFIG
    assert "KUBECONFIG" not in client_setup(info("kubernetes"), "127.0.0.1", 4006, with_secrets=False).env


def test_an_empty_argv_is_left_alone() -> None:
    assert client_setup(info("redis"), "127.0.0.1", 4005).args_for([], "127.0.0.1", 4005) == []
    assert ClientSetup().args_for(["redis-cli"], "127.0.0.1", 4005) == ["redis-cli"]


def test_each_client_kind_is_registered_under_its_name() -> None:
    assert list(CLIENT_KINDS) == ["postgres", "mysql", "redis", "kubernetes", "tcp"]
    assert all(kind.name == name for name, kind in CLIENT_KINDS.items())


def test_secret_files_carry_the_writers_pid_and_stale_ones_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess

    from access.shared.kinds import remove_stale_secrets

    setup = client_setup(info("mysql"), "127.0.0.1", 4000, secret_dir=tmp_path)
    assert setup.option_file is not None
    passfile = setup.option_file
    assert passfile.parent == tmp_path
    assert passfile.name.startswith(f"access-my-{os.getpid()}-")
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = [tmp_path / f"access-pgpass-{gone.pid}-x1", tmp_path / f"access-my-{gone.pid}-x2"]
    kept = [tmp_path / "notes.txt", tmp_path / "access-pgpass-nopid", tmp_path / "connect-svc-read.json"]
    for path in (*stale, *kept):
        path.write_text("x")
    assert sorted(remove_stale_secrets(tmp_path)) == sorted(stale)
    assert passfile.exists()  # this process is running: its file stays
    assert all(path.exists() for path in kept)
    assert remove_stale_secrets(tmp_path / "missing") == []
    setup.cleanup()
    assert not passfile.exists()
