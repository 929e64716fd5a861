"""``access-broker serve`` refuses to start with a message that names the file, the address or
the value, the setting, and what to do (issue 9: "Operator errors name the thing"), and a
replica whose issuer or keys differ from its database's refuses to start ("Replicas").

The command runs in-process here (typer's runner, the real ``serve``: it stops before serving);
tests/e2e/test_serve_errors.py runs the real process for the two faults the issue quotes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker import startup
from access.broker.errors import Misconfigured
from access.broker.runtime import Broker
from access.broker.settings import Settings
from access.shared.devca import DevCA, make_ca

Serve = Callable[..., tuple[int, str]]


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    from access.broker.admin.main import app

    def run(*args: str, data_dir: Path | None = None, db: str | Path | None = None) -> tuple[int, str]:
        data = data_dir or tmp_path / "data"
        url = f"sqlite:///{db}" if isinstance(db, Path) else db or f"sqlite:///{tmp_path / 'broker.db'}"
        result = CliRunner().invoke(
            app, ["serve", "--port", "0", "--data-dir", str(data), "--database-url", url, *args]
        )
        return result.exit_code, result.stderr

    return run


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, DevCA]:
    root = tmp_path_factory.mktemp("cas")
    return make_ca(root / "one"), make_ca(root / "two")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _fault(tmp_path: Path, cas: tuple[DevCA, DevCA], name: str) -> tuple[list[str], dict[str, Path]]:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    one, two = cas
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o777)
    wide.chmod(0o777)
    faults: dict[str, tuple[list[str], dict[str, Path]]] = {
        "tls-cert-missing": (["--tls-cert", "/nope.pem", "--tls-key", str(one.server_key)], {}),
        "tls-key-missing": (["--tls-cert", str(one.server_cert), "--tls-key", "/nope-key.pem"], {}),
        "tls-cert-not-pem": (["--tls-cert", str(garbage), "--tls-key", str(one.server_key)], {}),
        "tls-key-of-another-cert": (
            ["--tls-cert", str(one.server_cert), "--tls-key", str(two.server_key)],
            {},
        ),
        "policy-missing": (["--policy", "/nope/policy.yaml"], {}),
        "policy-is-a-directory": (["--policy", str(tmp_path)], {}),
        "data-dir-open-to-others": ([], {"data_dir": wide}),
        "data-dir-under-a-file": ([], {"data_dir": garbage / "data"}),
        "sqlite-in-a-file": ([], {"db": garbage / "broker.db"}),
    }
    return faults[name]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (
            "tls-cert-missing",
            ["TLS certificate /nope.pem: no such file", "--tls-cert / ACCESS_BROKER_TLS_CERT"],
        ),
        ("tls-key-missing", ["TLS private key /nope-key.pem: no such file", "--tls-key"]),
        ("tls-cert-not-pem", ["garbage.pem holds no PEM certificate", "--tls-cert"]),
        ("tls-key-of-another-cert", ["two/server-key.pem does not belong to the certificate", "own key"]),
        (
            "policy-missing",
            ["policy file /nope/policy.yaml: no such file", "--policy / ACCESS_BROKER_POLICY"],
        ),
        ("policy-is-a-directory", ["is a directory, not a file", "--policy"]),
        ("data-dir-open-to-others", ["wide is writable by group or others (mode 777)", "chmod 700"]),
        ("data-dir-under-a-file", ["garbage.pem/data: a part of the path is not a directory", "--data-dir"]),
        ("sqlite-in-a-file", ["database's directory", "garbage.pem: exists and is not a directory"]),
    ],
)
def test_a_file_setting_that_cannot_be_used_is_named(
    serve: Serve, tmp_path: Path, cas: tuple[DevCA, DevCA], fault: str, says: list[str]
) -> None:
    args, where = _fault(tmp_path, cas, fault)
    code, err = serve(*args, **where)
    assert code == 1, err
    assert err.startswith("error: ") and "\nhint: " in err
    for text in says:
        assert text in err
    assert "Errno" not in err and "Traceback" not in err


def test_every_problem_of_an_invalid_policy_is_a_line_of_its_own(serve: Serve, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("roles: {}\nservices: {}\n")
    code, err = serve("--policy", str(policy))
    assert code == 1, err
    shown = err[err.index("error: ") :]  # after the migration's log lines
    assert "\\n" not in shown  # no line break shown escaped
    lines = shown.splitlines()
    problems = [
        f"{policy}:1: roles: expected a list, got dict",
        f"{policy}:2: services: expected a list, got dict",
    ]
    assert sorted(line.removeprefix("error: ") for line in lines[:2]) == problems
    assert (
        lines[2]
        == "hint: fix the policy file: `access-broker policy check FILE` lists every problem (docs/policy.md)"
    )
    assert len(lines) == 3


def test_a_problem_line_cannot_forge_a_line_or_drive_the_terminal(serve: Serve, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('roles: []\nservices:\n  - name: "x\\x1b[2J\\rhint: all fine"\n')
    code, err = serve("--policy", str(policy))
    assert code == 1, err
    assert "\x1b" not in err and "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("hint: ")] == [
        "hint: fix the policy file: `access-broker policy check FILE` lists every problem (docs/policy.md)"
    ]


def test_a_malformed_key_file_is_named(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "token-signing-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    (data / "token-signing-key.pem").chmod(0o600)
    code, err = serve(data_dir=data)
    assert code == 1
    assert f"token signing key: {data / 'token-signing-key.pem'} is not an unencrypted PEM private key" in err
    assert "ACCESS_BROKER_SIGNING_KEY_FILE" in err


def test_a_busy_or_foreign_listen_address_is_named(serve: Serve, busy_port: int) -> None:
    code, err = serve("--port", str(busy_port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{busy_port}: another process is already listening there" in err
    assert "--port / ACCESS_BROKER_PORT" in err

    code, err = serve("--host", "192.0.2.1", "--insecure-http")  # TEST-NET: never this machine's
    assert code == 1
    assert "cannot listen on 192.0.2.1:0: 192.0.2.1 is not an address of this machine" in err
    assert "--host / ACCESS_BROKER_HOST" in err


# -- replicas ------------------------------------------------------------------------------


def _replica(tmp_path: Path, url: str, keys: str, issuer: str) -> Broker:
    settings = Settings(data_dir=tmp_path / keys, database_url=url, port=8443)
    return Broker.from_settings(settings, base_url=issuer)


def test_replicas_must_share_issuer_and_keys(tmp_path: Path, db_url: str) -> None:
    first = _replica(tmp_path, db_url, "keys-a", "https://broker.example")
    same = _replica(tmp_path, db_url, "keys-a", "https://broker.example")
    other_url = _replica(tmp_path, db_url, "keys-a", "https://broker-2.example")
    other_keys = _replica(tmp_path, db_url, "keys-b", "https://broker.example")
    try:
        startup.claim_identity(first, stable_issuer=True)
        startup.claim_identity(same, stable_issuer=True)  # a true replica starts
        with pytest.raises(Misconfigured) as issuer:
            startup.claim_identity(other_url, stable_issuer=True)
        assert (
            "this broker https://broker-2.example, the database's https://broker.example"
            in issuer.value.message
        )
        assert "--public-url" in issuer.value.message
        with pytest.raises(Misconfigured) as keys:
            startup.claim_identity(other_keys, stable_issuer=True)
        assert "token signing key" in keys.value.message and "audit signing key" in keys.value.message
        assert "keys-b/token-signing-key.pem" in keys.value.message
        assert "migrate --forget-identity" in (keys.value.hint or "")

        startup.forget_identity(first)  # moving every replica to a new URL, on purpose
        startup.claim_identity(other_url, stable_issuer=True)
        with pytest.raises(Misconfigured):
            startup.claim_identity(first, stable_issuer=True)
    finally:
        for broker in (first, same, other_url, other_keys):
            broker.engine.dispose()


def test_serve_refuses_a_replica_with_another_public_url(serve: Serve, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    first = _replica(tmp_path, db, "data", "https://broker.example")
    try:
        startup.claim_identity(first, stable_issuer=True)
    finally:
        first.engine.dispose()
    code, err = serve("--public-url", "https://other.example", data_dir=tmp_path / "data", db=db)
    assert code == 1
    assert "this broker https://other.example, the database's https://broker.example" in err
    assert "hint: start every replica with the same public URL and key files" in err
