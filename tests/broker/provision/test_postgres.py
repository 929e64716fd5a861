"""PostgreSQL identities on the real shared server (127.0.0.1:5432, database ``test``).

That server trusts every local login, so logging in as a new role here needs no password: these
tests prove privileges, tags and ends. That the password is the one the broker holds is shown by
running a SCRAM exchange (scramp) against the verifier the server stored; the wire tests log in
with it on a private SCRAM cluster. Every test makes its own schema, roles and broker id.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import scramp
from psycopg import errors

from access.broker.errors import Conflict
from access.broker.provision.base import IdentitySpec, OurIdentity
from access.broker.provision.common import AdminLogin, ProvisionFailed, is_ours, wait_until
from access.broker.provision.postgres import PostgresProvisioner, scram_verifier

from .conftest import FreezableProxy, in_thread

ADMIN = AdminLogin(host="127.0.0.1", port=5432, user="postgres", database="test", statement_timeout=5.0)
LATER = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(host=ADMIN.host, port=ADMIN.port, user="postgres", dbname="test", autocommit=True)


def login_as(name: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=ADMIN.host, port=ADMIN.port, user=name, dbname="test", autocommit=True)


@dataclass
class World:
    schema: str
    writer: str  # a NOLOGIN role with INSERT on the table and CREATE on the schema
    broker_id: str
    provisioner: PostgresProvisioner

    def spec(self, *privileges: str, grant: str | None = None, limit: int = 10) -> IdentitySpec:
        return IdentitySpec(
            grant_id=grant or "g-" + secrets.token_hex(8),
            principal="Alice.Example@corp.test",
            scope="read",
            expires_at=LATER,
            privileges=privileges,
            connection_limit=limit,
        )

    def mine(self) -> list[OurIdentity]:
        return [found for found in self.provisioner.ours() if found.broker_id == self.broker_id]


@pytest.fixture
def world() -> Iterator[World]:
    suffix = secrets.token_hex(4)
    schema, writer = f"prov_{suffix}", f"prov_rw_{suffix}"
    with admin() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (x int)")
        conn.execute(f"INSERT INTO {schema}.t VALUES (1)")
        conn.execute(f"CREATE ROLE {writer} NOLOGIN")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {writer}")
        conn.execute(f"GRANT SELECT, INSERT ON {schema}.t TO {writer}")
    made = World(schema, writer, f"b-test-{suffix}", PostgresProvisioner(ADMIN, broker_id=f"b-test-{suffix}"))
    try:
        yield made
    finally:
        for found in made.mine():
            made.provisioner.end(found.name)
        with admin() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.execute(f"DROP OWNED BY {writer}")
            conn.execute(f"DROP ROLE {writer}")


def role(name: str) -> tuple[Any, ...] | None:
    with admin() as conn:
        return conn.execute(
            """SELECT rolcanlogin, rolinherit, rolconnlimit, rolvaliduntil,
                      shobj_description(oid, 'pg_authid'),
                      array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                            WHERE m.member = r.oid AND NOT m.admin_option ORDER BY 1)
               FROM pg_roles r WHERE rolname = %s""",
            [name],
        ).fetchone()


def test_create_makes_a_tagged_login_role_with_the_spec(world: World) -> None:
    spec = world.spec("pg_read_all_data", limit=3)
    made = world.provisioner.create(spec)

    assert is_ours(made.name) and made.name.startswith("access_alice_example_c")
    assert made.password not in repr(made)
    assert role(made.name) == (
        True,
        True,
        3,
        LATER,
        f"access grant={spec.grant_id} broker={world.broker_id}",
        ["pg_read_all_data"],
    )


def test_the_stored_verifier_is_the_identity_password(world: World) -> None:
    """The server kept our verifier as is (not a hash of it taken for a cleartext password), and a
    SCRAM exchange with the Identity's password succeeds against it."""
    made = world.provisioner.create(world.spec("pg_read_all_data"))
    with admin() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [made.name]).fetchone()
    assert row is not None
    head, keys = row[0].removeprefix("SCRAM-SHA-256$").split("$")
    count, salt = head.split(":")
    stored, server_key = keys.split(":")
    info = (base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server_key), int(count))
    assert count == "4096"
    assert scram_verifier(made.password, salt=info[0]) == row[0]

    client = scramp.ScramClient(["SCRAM-SHA-256"], made.name, made.password)
    server = scramp.ScramMechanism("SCRAM-SHA-256").make_server(lambda _user: info)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())  # raises if the proof does not match
    client.set_server_final(server.get_server_final())


def test_a_read_identity_reads_and_cannot_write_whatever_it_sets(world: World) -> None:
    made = world.provisioner.create(world.spec("pg_read_all_data"))
    insert = f"INSERT INTO {world.schema}.t VALUES (2)"
    with login_as(made.name) as conn:
        assert conn.execute(f"SELECT x FROM {world.schema}.t").fetchall() == [(1,)]
        with pytest.raises(errors.ReadOnlySqlTransaction):  # the default (defence in depth)
            conn.execute(insert)
        for escape in (
            "SET default_transaction_read_only = off",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SET ROLE pg_read_all_data",
            "RESET ROLE",
        ):
            conn.execute(escape)
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(insert)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"CREATE TABLE {world.schema}.u (x int)")
        for forbidden in (
            "SET SESSION AUTHORIZATION postgres",
            "SET ROLE postgres",
            f"SET ROLE {world.writer}",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(forbidden)
        with pytest.raises(errors.InsufficientPrivilege):  # no ADMIN on its membership
            conn.execute(f"GRANT pg_read_all_data TO {world.writer}")
    with admin() as conn:
        assert conn.execute(f"SELECT count(*) FROM {world.schema}.t").fetchone() == (1,)


def test_a_write_identity_writes_and_what_it_made_is_handed_over_at_end(world: World) -> None:
    made = world.provisioner.create(world.spec(world.writer))
    with login_as(made.name) as conn:
        conn.execute(f"INSERT INTO {world.schema}.t VALUES (2)")
        conn.execute(f"CREATE TABLE {world.schema}.made_by_grant (x int)")
    world.provisioner.end(made.name)
    with admin() as conn:
        assert conn.execute(f"SELECT count(*) FROM {world.schema}.t").fetchone() == (2,)
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'made_by_grant'",
            [world.schema],
        ).fetchone()
    assert owner == ("postgres",)
    assert role(made.name) is None


def test_end_cuts_a_live_session_within_a_second_and_drops_the_role(world: World) -> None:
    made = world.provisioner.create(world.spec("pg_read_all_data"))
    held = login_as(made.name)
    try:
        assert held.execute("SELECT 1").fetchone() == (1,)
        started = time.monotonic()
        world.provisioner.end(made.name)
        elapsed = time.monotonic() - started
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()
    assert elapsed < 1.0
    assert role(made.name) is None
    with pytest.raises(psycopg.OperationalError):
        login_as(made.name)
    world.provisioner.end(made.name)  # twice is fine
    assert world.mine() == []


def test_ours_finds_an_identity_whose_record_the_broker_lost(world: World) -> None:
    spec = world.spec("pg_read_all_data")
    made = world.provisioner.create(spec)
    restarted = PostgresProvisioner(ADMIN, broker_id="b-other")  # no memory of anything
    assert OurIdentity(made.name, spec.grant_id, world.broker_id) in restarted.ours()


def test_create_again_for_the_same_grant_converges_on_one_role(world: World) -> None:
    first = world.provisioner.create(world.spec("pg_read_all_data", grant="g-retry" + secrets.token_hex(4)))
    spec = world.spec(world.writer, grant=first.grant_id, limit=2)
    second = world.provisioner.create(spec)

    assert second.name == first.name and second.password != first.password
    assert [found.name for found in world.mine()] == [first.name]
    status = role(first.name)
    assert status is not None and status[2] == 2 and status[5] == [world.writer]
    with login_as(first.name) as conn:  # no longer the read-only default: a write identity now
        conn.execute(f"INSERT INTO {world.schema}.t VALUES (3)")


def test_create_refuses_a_grant_whose_identity_is_being_ended(world: World) -> None:
    made = world.provisioner.create(world.spec("pg_read_all_data"))
    with admin() as conn:
        conn.execute(f'ALTER ROLE "{made.name}" NOLOGIN')  # end() got this far, then the broker died
    with pytest.raises(Conflict):
        world.provisioner.create(world.spec("pg_read_all_data", grant=made.grant_id))


@pytest.mark.parametrize("how", ["superuser", "member of superuser", "server files"])
def test_create_refuses_memberships_that_escalate(world: World, how: str) -> None:
    named = {"superuser": "postgres", "server files": "pg_write_server_files"}
    granted = named.get(how, f"{world.writer}_esc")
    if how == "member of superuser":
        with admin() as conn:
            conn.execute(f"CREATE ROLE {granted} NOLOGIN IN ROLE postgres")
    try:
        with pytest.raises(ValueError, match="refuses"):
            world.provisioner.create(world.spec(granted))
        assert world.mine() == []
    finally:
        if how == "member of superuser":
            with admin() as conn:
                conn.execute(f"DROP ROLE {granted}")


def test_end_refuses_a_role_that_is_not_ours(world: World) -> None:
    with pytest.raises(ValueError, match="not an identity the broker made"):
        world.provisioner.end("postgres")
    with pytest.raises(ValueError):
        world.provisioner.end(world.writer)


def test_a_target_that_stops_answering_mid_statement_is_cut_by_the_watchdog(
    world: World, make_proxy: Callable[[tuple[str, int]], FreezableProxy]
) -> None:
    """The server's own statement timeout cannot help when its answer never arrives: the admin
    connection's watchdog (operation_timeout) shuts the socket and create fails instead of hanging."""
    proxy = make_proxy((ADMIN.host, ADMIN.port))
    login = replace(ADMIN, port=proxy.port, statement_timeout=2.0, operation_timeout=1.0)
    provisioner = PostgresProvisioner(login, broker_id=world.broker_id)
    spec = world.spec("pg_read_all_data")
    with admin() as holder, holder.transaction(), admin() as watcher:
        key = "access-provision:" + spec.grant_id
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s::int = ANY(pg_blocking_pids(pid))"
        thread, outcome = in_thread(lambda: provisioner.create(spec))
        assert wait_until(
            lambda: watcher.execute(blocked, [holder.info.backend_pid]).fetchone() == (1,), within=5
        )
        proxy.freeze()  # its lock_timeout error (at 2 s) will never reach the provisioner
        thread.join(timeout=6)
    assert not thread.is_alive(), "create hung on a silent target"
    assert isinstance(outcome[0], ProvisionFailed)
