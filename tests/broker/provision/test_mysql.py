"""MariaDB accounts on the real shared server (127.0.0.1:3306, root without a password).

Unlike the shared PostgreSQL, MariaDB checks the password here, so these tests log in with the
one the broker holds. Every test makes its own databases, tag schema and broker id.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest

from access.broker.errors import Conflict
from access.broker.provision.base import Identity, IdentitySpec, OurIdentity
from access.broker.provision.common import AdminLogin, ProvisionFailed, is_ours, wait_until
from access.broker.provision.mysql import InvalidPrivilege, MySQLProvisioner, parse_privilege

from .conftest import FreezableProxy, in_thread

ADMIN = AdminLogin(host="127.0.0.1", port=3306, user="root", statement_timeout=5.0)
DENIED = 1142  # ER_TABLEACCESS_DENIED_ERROR


def admin() -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host=ADMIN.host, port=ADMIN.port, user="root", autocommit=True)


def sql(statement: str, *args: object) -> list[tuple[Any, ...]]:
    with admin() as conn, conn.cursor() as cur:
        cur.execute(statement, args or None)
        return list(cur.fetchall())


def login_as(made: Identity, password: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=ADMIN.host,
        port=ADMIN.port,
        user=made.name,
        password=made.password if password is None else password,
    )


def run(conn: pymysql.connections.Connection[Any], statement: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement)
        return list(cur.fetchall())


@dataclass
class World:
    db: str
    t: str  # a table of the test's own in ``db``, holding one row
    broker_id: str
    provisioner: MySQLProvisioner
    made: list[str]

    def spec(
        self, *privileges: str, grant: str | None = None, limit: int = 10, principal: str = "bob@corp.test"
    ) -> IdentitySpec:
        return IdentitySpec(
            grant_id=grant or "g-" + secrets.token_hex(8),
            principal=principal,
            scope="read",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            privileges=privileges,
            connection_limit=limit,
        )

    def create(self, spec: IdentitySpec) -> Identity:
        made = self.provisioner.create(spec)
        self.made.append(made.name)
        return made


@pytest.fixture(scope="module")
def place() -> Iterator[tuple[str, str]]:
    """A database and a tag schema per module run (DDL is slow on MariaDB; tests share them, each
    with its own table, broker id and rows)."""
    suffix = secrets.token_hex(4)
    db, tags = f"prov_{suffix}_a", f"access_broker_t{suffix}"
    sql(f"CREATE DATABASE {db}")
    try:
        yield db, tags
    finally:
        sql(f"DROP DATABASE {db}")
        sql(f"DROP DATABASE IF EXISTS {tags}")


@pytest.fixture
def world(place: tuple[str, str]) -> Iterator[World]:
    (db, tags), suffix = place, secrets.token_hex(4)
    table = f"t_{suffix}"
    sql(f"CREATE TABLE {db}.{table} (x INT)")
    sql(f"INSERT INTO {db}.{table} VALUES (1)")
    provisioner = MySQLProvisioner(
        ADMIN, broker_id=f"b-test-{suffix}", broker_host="127.0.0.1", tag_schema=tags
    )
    made = World(db, table, f"b-test-{suffix}", provisioner, [])
    try:
        yield made
    finally:
        for name in made.made:
            provisioner.end(name)
        sql(f"DROP TABLE {db}.{table}")


def test_create_makes_a_tagged_account_for_the_broker_host_only(world: World) -> None:
    spec = world.spec(f"SELECT ON {world.db}.*", limit=3)
    made = world.create(spec)

    assert is_ours(made.name) and made.name.startswith("access_bob_corp_test_")
    assert sql("SELECT Host, max_user_connections FROM mysql.user WHERE User = %s", made.name) == [
        ("127.0.0.1", 3)
    ]
    tags = f"{world.provisioner.tag_schema}.identities"
    assert sql(f"SELECT host, broker_id, grant_id, ending FROM {tags} WHERE name = %s", made.name) == [
        ("127.0.0.1", world.broker_id, spec.grant_id, 0)
    ]
    lifetime = sql(
        "SELECT JSON_VALUE(Priv, '$.password_lifetime') FROM mysql.global_priv WHERE User = %s", made.name
    )
    assert lifetime == [("1",)]  # whole days: the coarse second lock
    with login_as(made) as conn:
        assert run(conn, "SELECT CURRENT_USER()") == [(f"{made.name}@127.0.0.1",)]
    with pytest.raises(pymysql.err.OperationalError):
        login_as(made, password="wrong")


def test_a_read_identity_reads_and_cannot_write_whatever_it_sets(world: World) -> None:
    made = world.create(world.spec(f"SELECT ON {world.db}.*"))
    with login_as(made) as conn:
        assert run(conn, f"SELECT x FROM {world.db}.{world.t}") == [(1,)]
        for escape in (
            "SET SESSION TRANSACTION READ WRITE",
            "SET SESSION tx_read_only = 0",
            "SET SESSION sql_mode = ''",
            "SET ROLE NONE",
        ):
            run(conn, escape)
            with pytest.raises(pymysql.err.OperationalError) as refused:
                run(conn, f"INSERT INTO {world.db}.{world.t} VALUES (2)")
            assert refused.value.args[0] == DENIED
        for forbidden in (
            f"CREATE TABLE {world.db}.u (x INT)",
            f"GRANT SELECT ON {world.db}.* TO root@'127.0.0.1'",
            "SET ROLE mariadb.sys",
            "SELECT User FROM mysql.user",
            f"CREATE USER '{made.name}x'@'%'",
        ):
            with pytest.raises(pymysql.err.MySQLError):
                run(conn, forbidden)
    assert sql(f"SELECT COUNT(*) FROM {world.db}.{world.t}") == [(1,)]


def test_an_underscore_in_a_granted_database_is_not_a_wildcard(world: World) -> None:
    lookalike = world.db.replace("_a", "xa")  # prov_<hex>_a as a LIKE pattern matches prov_<hex>xa
    sql(f"CREATE DATABASE {lookalike}")
    try:
        sql(f"CREATE TABLE {lookalike}.t (x INT)")
        made = world.create(world.spec(f"SELECT ON {world.db}.*"))
        with login_as(made) as conn, pytest.raises(pymysql.err.OperationalError) as refused:
            run(conn, f"SELECT x FROM {lookalike}.t")
        assert refused.value.args[0] == DENIED
    finally:
        sql(f"DROP DATABASE {lookalike}")


def test_a_write_identity_writes(world: World) -> None:
    made = world.create(world.spec(f"SELECT, INSERT ON `{world.db}`.`{world.t}`"))
    with login_as(made) as conn:
        run(conn, f"INSERT INTO {world.db}.{world.t} VALUES (2)")
        conn.commit()
    assert sql(f"SELECT COUNT(*) FROM {world.db}.{world.t}") == [(2,)]


def test_end_cuts_a_live_session_within_a_second_and_drops_the_account(world: World) -> None:
    made = world.create(world.spec(f"SELECT ON {world.db}.*"))
    held = login_as(made)
    try:
        assert run(held, "SELECT 1") == [(1,)]
        started = time.monotonic()
        world.provisioner.end(made.name)
        elapsed = time.monotonic() - started
        with pytest.raises(pymysql.err.OperationalError):
            run(held, "SELECT 1")
    finally:
        held.close()
    assert elapsed < 1.0
    assert sql("SELECT Host FROM mysql.user WHERE User = %s", made.name) == []
    with pytest.raises(pymysql.err.OperationalError):
        login_as(made)
    world.provisioner.end(made.name)  # twice is fine
    assert [found for found in world.provisioner.ours() if found.name == made.name] == []


def test_ours_finds_an_identity_whose_record_the_broker_lost(world: World) -> None:
    spec = world.spec(f"SELECT ON {world.db}.*")
    made = world.create(spec)
    restarted = MySQLProvisioner(
        ADMIN, broker_id="b-other", broker_host="127.0.0.1", tag_schema=world.provisioner.tag_schema
    )
    assert OurIdentity(made.name, spec.grant_id, world.broker_id) in restarted.ours()
    sql(f"DELETE FROM {world.provisioner.tag_schema}.identities WHERE name = %s", made.name)  # the tag too
    assert OurIdentity(made.name, None, None) in restarted.ours()


def test_create_again_for_the_same_grant_converges_on_one_account(world: World) -> None:
    first = world.create(world.spec(f"SELECT ON {world.db}.*"))
    second = world.create(world.spec(f"INSERT ON {world.db}.{world.t}", grant=first.grant_id, limit=2))

    assert second.name == first.name
    with pytest.raises(pymysql.err.OperationalError):
        login_as(first)  # the earlier password no longer works
    grants = sql(f"SHOW GRANTS FOR '{first.name}'@'127.0.0.1'")
    assert [g for (g,) in grants if " ON *.* " not in g] == [
        f"GRANT INSERT ON `{world.db}`.`{world.t}` TO `{first.name}`@`127.0.0.1`"
    ]
    assert sql("SELECT max_user_connections FROM mysql.user WHERE User = %s", first.name) == [(2,)]


def test_create_refuses_a_grant_whose_identity_is_being_ended(world: World) -> None:
    made = world.create(world.spec(f"SELECT ON {world.db}.*"))
    sql(  # end() began, then the broker died
        f"UPDATE {world.provisioner.tag_schema}.identities SET ending = TRUE WHERE name = %s", made.name
    )
    with pytest.raises(Conflict):
        world.provisioner.create(world.spec(f"SELECT ON {world.db}.*", grant=made.grant_id))


def test_a_refused_grant_leaves_no_account(world: World) -> None:
    principal = "refused" + secrets.token_hex(4)
    spec = world.spec(f"SELECT ON {world.db}.*", f"SELECT ON {world.db}.missing", principal=principal)
    with pytest.raises(ProvisionFailed, match="1146"):  # the target refuses a grant on a missing table
        world.provisioner.create(spec)
    assert sql("SELECT User FROM mysql.user WHERE User LIKE %s", f"access\\_{principal}\\_%") == []
    assert (
        sql(f"SELECT name FROM {world.provisioner.tag_schema}.identities WHERE grant_id = %s", spec.grant_id)
        == []
    )


@pytest.mark.parametrize(
    ("clause", "why"),
    [
        ("ALL ON *.*", "allow_admin|every database"),
        ("SELECT ON *.*", "every database"),
        ("SELECT ON mysql.*", "system schema"),
        ("SELECT ON `MySQL`.`user`", "system schema"),
        ("SELECT ON access_broker.*", "system schema"),
        ("SELECT, GRANT OPTION ON payments.*", "allow_admin"),
        ("FILE ON *.*", "allow_admin"),
        ("PROCESS ON payments.*", "allow_admin"),
        ("SELECT ON payments.*; DROP USER root", "not `PRIV"),
        ("SELECT ON payments.* TO x", "not `PRIV"),
        ("SELECT ON payments", "not `PRIV"),
        ("SELECT (id) ON payments.t", "not `PRIV"),
        ("SELECT ON *.t", "grant level"),
        ("SELECT ON `pay%`.*", "without %"),
        ("EXECUTE ON payments.t", "not grantable on a table"),
        ("SELEC ON payments.*", "not grantable"),
        (", ON payments.*", "empty privilege"),
    ],
)
def test_privilege_clauses_are_parsed_and_the_dangerous_refused(clause: str, why: str) -> None:
    with pytest.raises(InvalidPrivilege, match=why):
        parse_privilege(clause)


def test_privilege_clauses_are_rendered_quoted() -> None:
    assert parse_privilege("select,  insert ON payments_v2.*").sql() == r"SELECT, INSERT ON `payments\_v2`.*"
    assert parse_privilege("SELECT ON `we``ird db`.`t 1`").sql() == "SELECT ON `we``ird db`.`t 1`"
    assert parse_privilege("create temporary tables ON app.*").sql() == "CREATE TEMPORARY TABLES ON `app`.*"
    assert parse_privilege("PROCESS ON *.*", allow_admin=True).sql() == "PROCESS ON *.*"
    assert parse_privilege("SELECT, GRANT OPTION ON app.*", allow_admin=True).sql() == (
        "SELECT, GRANT OPTION ON `app`.*"
    )


def test_end_refuses_to_run_with_an_admin_that_cannot_see_other_sessions(world: World) -> None:
    """Without PROCESS, PROCESSLIST shows an account its own threads only: an end that went on
    would find no session to kill and drop the account under a live one."""
    made = world.create(world.spec(f"SELECT ON {world.db}.*"))
    weak = f"prov_adm_{secrets.token_hex(4)}"
    sql(f"CREATE USER '{weak}'@'127.0.0.1' IDENTIFIED BY 'weak-admin-pw'")
    try:
        sql(f"GRANT CREATE USER, CONNECTION ADMIN ON *.* TO '{weak}'@'127.0.0.1'")
        sql(f"GRANT SELECT ON mysql.user TO '{weak}'@'127.0.0.1'")
        sql(f"GRANT ALL ON {world.provisioner.tag_schema}.* TO '{weak}'@'127.0.0.1'")
        provisioner = MySQLProvisioner(
            AdminLogin(ADMIN.host, ADMIN.port, weak, "weak-admin-pw"),
            broker_id=world.broker_id,
            broker_host="127.0.0.1",
            tag_schema=world.provisioner.tag_schema,
        )
        with login_as(made) as held:
            with pytest.raises(ProvisionFailed, match="cannot see other accounts' sessions") as refused:
                provisioner.end(made.name)
            assert refused.value.hint is not None and "GRANT PROCESS" in refused.value.hint
            assert run(held, "SELECT 1") == [(1,)]
    finally:
        sql(f"DROP USER '{weak}'@'127.0.0.1'")


def test_end_refuses_an_account_that_is_not_ours(world: World) -> None:
    with pytest.raises(ValueError, match="not an identity the broker made"):
        world.provisioner.end("root")


def test_the_broker_host_takes_no_wildcard() -> None:
    for host in ("%", "10.0.%", "a'b"):
        with pytest.raises(ValueError, match="no wildcard"):
            MySQLProvisioner(ADMIN, broker_id="b", broker_host=host)


def test_a_target_that_stops_answering_mid_statement_is_cut_by_the_read_timeout(
    world: World, make_proxy: Callable[[tuple[str, int]], FreezableProxy]
) -> None:
    """max_statement_time cannot help when the server's answer never arrives: the client's
    read_timeout (statement_timeout + 1 s) ends the wait and create fails instead of hanging."""
    proxy = make_proxy((ADMIN.host, ADMIN.port))
    login = replace(ADMIN, port=proxy.port, statement_timeout=0.5)
    provisioner = MySQLProvisioner(
        login, broker_id=world.broker_id, broker_host="127.0.0.1", tag_schema=world.provisioner.tag_schema
    )
    spec = world.spec(f"SELECT ON {world.db}.*")
    world.create(world.spec(f"SELECT ON {world.db}.*"))  # the tag table exists
    tags = f"{world.provisioner.tag_schema}.identities"
    with admin() as holder, holder.cursor() as cur:
        cur.execute("BEGIN")  # the same grant's row, uncommitted: the provisioner's INSERT waits on it
        cur.execute(
            f"INSERT INTO {tags} (name, host, broker_id, grant_id) VALUES ('access_held_0', 'h', %s, %s)",
            (world.broker_id, spec.grant_id),
        )
        waiting = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()"
        )
        thread, outcome = in_thread(lambda: provisioner.create(spec))
        assert wait_until(
            lambda: sql(waiting, f"INSERT INTO `{world.provisioner.tag_schema}`%") == [(1,)], within=5
        )
        proxy.freeze()  # the server's timeout error will never reach the provisioner
        thread.join(timeout=6)
        cur.execute("ROLLBACK")
    assert not thread.is_alive(), "create hung on a silent target"
    assert isinstance(outcome[0], ProvisionFailed)
