"""A service's ``credentials:`` block: dynamic services name an admin login (never its password)
and privileges for every scope they offer, checked at load by the target kind's own rules; a
problem names the file, the field path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from access.broker.policy import PolicyError, load_policy

HEAD = """\
services:
  - name: svc-a
    kind: {kind}
    target: 127.0.0.1:5432
    scopes: [read, write]
    max_ttl: 1h
    credentials:
      mode: dynamic
      admin: {{user: admin, password_env: ADMIN_PW}}
"""  # line 7: credentials, 9: admin


def load(tmp_path: Path, kind: str, tail: str) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD.format(kind=kind) + tail)
    return load_policy(path)


def test_a_dynamic_service_loads_with_its_privileges(tmp_path: Path) -> None:
    tail = "      scopes:\n        read: {roles: [pg_read_all_data]}\n        write: {roles: [app_writer]}\n"
    policy = load(tmp_path, "postgres", tail)
    svc = policy.services["svc-a"]  # type: ignore[attr-defined]
    assert svc.dynamic and svc.credentials.privileges("postgres", "write") == ("app_writer",)


@pytest.mark.parametrize(
    ("kind", "tail", "where", "message", "line"),
    [
        pytest.param(
            "postgres",
            "      scopes:\n        read: {roles: [pg_read_all_data]}\n",
            "services[0].credentials.scopes",
            "name the roles of scope 'write' (deny by default)",
            11,
            id="a scope without privileges",
        ),
        pytest.param(
            "mysql",
            "      broker_host: 127.0.0.1\n      scopes:\n        read: {grants: ['SELECT ON app.*']}\n"
            "        write: {grants: ['SELECT ON *.*']}\n",
            "services[0].credentials.scopes.write.grants[0]",
            "'SELECT ON *.*': *.* is every database, the grant tables too; name the database",
            13,
            id="a mysql grant the provisioner refuses",
        ),
        pytest.param(
            "redis",
            "      scopes:\n        read: {acl: ['+@read']}\n        write: {acl: ['+@write', nopass]}\n",
            "services[0].credentials.scopes.write.acl[1]",
            "the Redis ACL rule 'nopass' is not a privilege the policy may grant",
            12,
            id="a redis rule that touches the login",
        ),
        pytest.param(
            "mysql",
            "      scopes:\n        read: {grants: ['SELECT ON app.*']}\n"
            "        write: {grants: ['SELECT ON app.*']}\n",
            "services[0].credentials",
            "a dynamic mysql service needs broker_host (the broker's address)",
            8,
            id="mysql without broker_host",
        ),
        pytest.param(
            "postgres",
            "      scopes:\n        read: {grants: ['SELECT ON app.*']}\n        write: {roles: [w]}\n",
            "services[0].credentials.scopes",
            "name the roles of scope 'read' (deny by default)",
            11,
            id="another kind's privileges",
        ),
        pytest.param(
            "tcp",
            "      scopes:\n        read: {roles: [r]}\n        write: {roles: [w]}\n",
            "services[0].credentials.mode",
            "a tcp service has no dynamic identities",
            8,
            id="a kind without identities",
        ),
    ],
)
def test_a_bad_credentials_block_names_the_place(
    tmp_path: Path, kind: str, tail: str, where: str, message: str, line: int
) -> None:
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, kind, tail)
    assert str(caught.value).split(": ", 1)[1] == f"{where}: {message}"
    assert str(caught.value).split(": ", 1)[0].endswith(f"policy.yaml:{line}")


def test_the_admin_password_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD.format(kind="postgres").replace("password_env: ADMIN_PW", "password: hunter2"))
    with pytest.raises(PolicyError, match=r"credentials\.admin: unknown key 'password'"):
        load_policy(path)
