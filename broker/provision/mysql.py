"""Per-grant accounts on a MySQL or MariaDB target, made and dropped with the broker's admin account.

create
    ::

        CREATE USER '<name>'@'<broker host>' IDENTIFIED BY PASSWORD '*<hash>'   -- MariaDB
        CREATE USER '<name>'@'<broker host>' IDENTIFIED BY '<password>'         -- MySQL
            WITH MAX_USER_CONNECTIONS <n> PASSWORD EXPIRE INTERVAL <days> DAY
        GRANT <privileges> ON `db`.`table` TO '<name>'@'<broker host>'          -- one per clause

    The account exists for the broker's own host only (``broker_host``: the address the target
    sees the broker connect from, e.g. ``127.0.0.1``, or a netmask form ``10.1.0.0/255.255.0.0``
    for several replicas); no wildcard hosts. On MariaDB the broker sends the
    ``mysql_native_password`` hash, not the password, so the cleartext never reaches the server's
    logs. MySQL 8 removed that syntax; there the password goes in ``IDENTIFIED BY``, which MySQL
    rewrites out of its general, slow and binary logs. (Only MariaDB is tested here.)

    Password expiry is the target's own second lock, but coarse: whole days counted from the
    target's clock, so a one-hour grant's account expires after one day at the latest if the broker
    never ends it; ``end`` is the real lock. On MariaDB an expired account may still log in to
    "sandbox mode" and set a new password; only the holder of the old password (the broker) could.

    Privilege clauses (the policy's) are parsed, not pasted: ``PRIV[, PRIV...] ON db.*`` or
    ``ON db.table``, names bare (``[A-Za-z0-9_$]``) or back-quoted, privileges from a known list,
    re-rendered with quoted identifiers. ``_`` in a database name is a wildcard in MySQL's
    database-level grants; the broker escapes it, so ``payments_v2.*`` means exactly that database.
    Refused unless the provisioner is built with ``allow_admin=True``: ``*.*``, the system schemas
    (``mysql``, ``sys``, ``performance_schema``, ``information_schema``, the tag schema), GRANT
    OPTION and the server-wide privileges (PROCESS, FILE, SUPER, CREATE USER, ...). ``%`` and ``\\``
    in names are always refused: name each database.

Tags
    MariaDB has no account ATTRIBUTE or COMMENT (MySQL 8 has), so both use a table the broker owns
    on the target, ``<tag_schema>.identities`` (name, host, broker id, grant id, ending), made on
    first use. Its row is written BEFORE the account, so an account the broker made always has one
    unless someone deleted it; ``ours()`` lists the accounts by the ``access_`` prefix (tag or not)
    plus rows whose account is missing (a crash between the two), and ``end`` cleans both.
    One row per (broker, grant): a second ``create`` for the grant finds it, gives the account a
    fresh password, expiry and limit, revokes everything and grants the spec again; once ``end`` has
    marked it ending, ``create`` refuses.

extend
    ``ALTER USER ... PASSWORD EXPIRE INTERVAL <days> DAY`` with the days from the password's last
    change (MariaDB: ``mysql.global_priv``; MySQL: ``mysql.user``) to the grant's new expiry, when
    that is more than it has: an extended grant's account must not expire at the old day.

end
    Mark the row ending; ``ALTER USER ... ACCOUNT LOCK`` (new logins refused; sessions stay, so);
    ``KILL CONNECTION`` each of its sessions in ``information_schema.PROCESSLIST``, polled until
    none is left (bounded); ``DROP USER`` (every host of that name); delete the row. Absent account =
    done. MySQL has no object owners: tables it made stay in their database; views, routines,
    triggers and events with it as DEFINER are left with a missing definer and fail to run
    (MySQL ≥ 8.0.22 refuses the DROP USER instead, and ``end`` raises, naming the error).

Waits: ``connect_timeout``; ``max_statement_time`` (MariaDB; MySQL's ``max_execution_time`` bounds
SELECTs only) and ``lock_wait_timeout`` server side; the client's read/write timeouts
(``statement_timeout`` + 1 s) for an answer that never arrives.

Permissions the admin account needs: CREATE USER; what the policy grants, WITH GRANT OPTION;
PROCESS, granted directly (without it PROCESSLIST hides other accounts' sessions, so ``end``
refuses to run rather than drop an account whose sessions it cannot see); CONNECTION ADMIN or
SUPER to kill them; SELECT on ``mysql.user`` (MariaDB: and on ``mysql.global_priv``, for
``extend``); CREATE, INSERT, UPDATE, DELETE on the tag schema.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import pymysql
import pymysql.cursors
from pymysql.constants import ER

from .base import Identity, IdentitySpec, OurIdentity
from .common import (
    AdminLogin,
    ProvisionFailed,
    being_ended,
    check_ours,
    check_spec,
    check_token,
    cut_sessions,
    make_name,
    new_password,
)

__all__ = ["InvalidPrivilege", "MySQLProvisioner", "Privilege", "native_password_hash", "parse_privilege"]

OBJECT_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER", "REFERENCES", "TRIGGER"}
    | {"CREATE VIEW", "SHOW VIEW", "DELETE HISTORY", "ALL", "ALL PRIVILEGES"}
)
DATABASE_PRIVILEGES = OBJECT_PRIVILEGES | {
    "CREATE TEMPORARY TABLES",
    "LOCK TABLES",
    "EXECUTE",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
}
ADMIN_PRIVILEGES = frozenset(  # only with allow_admin, and (but GRANT OPTION) only ON *.*
    {"GRANT OPTION", "PROCESS", "RELOAD", "SHUTDOWN", "FILE", "SUPER", "CREATE USER", "SHOW DATABASES"}
    | {"REPLICATION CLIENT", "REPLICATION SLAVE", "BINLOG MONITOR", "SLAVE MONITOR", "CONNECTION ADMIN"}
    | {"CREATE TABLESPACE", "READ_ONLY ADMIN", "SET USER", "FEDERATED ADMIN"}
)
SYSTEM_SCHEMAS = frozenset({"mysql", "sys", "performance_schema", "information_schema"})

_NAME = r"(?:\*|[A-Za-z0-9_$]+|`(?:[^`]|``)+`)"
_CLAUSE = re.compile(
    rf"\s*(?P<privs>[A-Za-z_ ,]+?)\s+ON\s+(?P<db>{_NAME})\s*\.\s*(?P<table>{_NAME})\s*", re.I
)
_TAG_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    name VARCHAR(80) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    broker_id VARCHAR(64) NOT NULL,
    grant_id VARCHAR(64) NOT NULL,
    ending BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY one_per_grant (broker_id, grant_id)
) ENGINE=InnoDB"""
_HAS_PROCESS = """SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES
    WHERE PRIVILEGE_TYPE = 'PROCESS' AND GRANTEE = CONCAT(
        "'", SUBSTRING_INDEX(CURRENT_USER(), '@', 1), "'@'", SUBSTRING_INDEX(CURRENT_USER(), '@', -1), "'")"""
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,255}(?:/[0-9.]{7,15})?")


class InvalidPrivilege(ValueError):
    """A policy's GRANT clause the broker will not run: the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Privilege:
    """One parsed clause: ``privileges ON database.table`` (``None`` = ``*``)."""

    privileges: tuple[str, ...]
    database: str | None
    table: str | None

    def sql(self) -> str:
        """``SELECT, INSERT ON `db`.`table```, names quoted, ``_`` escaped at database level."""

        def quote(name: str | None, *, escape: bool = False) -> str:
            if name is None:
                return "*"
            if escape:
                name = name.replace("_", "\\_")
            return "`" + name.replace("`", "``") + "`"

        target = f"{quote(self.database, escape=self.table is None)}.{quote(self.table)}"
        return f"{', '.join(self.privileges)} ON {target}"


def parse_privilege(
    clause: str, *, allow_admin: bool = False, tag_schema: str = "access_broker"
) -> Privilege:
    """Parse and check one GRANT clause of the policy (the policy loader can call this at load)."""
    found = _CLAUSE.fullmatch(clause)
    if found is None:
        raise InvalidPrivilege(f"{clause!r} is not `PRIV[, PRIV] ON db.* | db.table`")
    privileges = tuple(" ".join(p.split()).upper() for p in found["privs"].split(","))
    database, table = _name(found["db"], clause), _name(found["table"], clause)
    if database is None and table is not None:
        raise InvalidPrivilege(f"{clause!r}: `*.table` is not a MySQL grant level")
    where = "ON *.*" if database is None else "on a table" if table is not None else "on a database"
    allowed = DATABASE_PRIVILEGES if table is None else OBJECT_PRIVILEGES
    for privilege in privileges:
        if privilege in ADMIN_PRIVILEGES and not allow_admin:
            raise InvalidPrivilege(f"{clause!r}: {privilege} needs a provisioner with allow_admin")
        if privilege not in allowed | ADMIN_PRIVILEGES:
            raise InvalidPrivilege(
                f"{clause!r}: {privilege or 'an empty privilege'} is not grantable {where}"
            )
        if privilege in ADMIN_PRIVILEGES - {"GRANT OPTION"} and database is not None:
            raise InvalidPrivilege(f"{clause!r}: {privilege} is server-wide: grant it ON *.*")
    if not allow_admin:
        if database is None:
            raise InvalidPrivilege(
                f"{clause!r}: *.* is every database, the grant tables too; name the database"
            )
        if database.lower() in SYSTEM_SCHEMAS | {tag_schema.lower()}:
            raise InvalidPrivilege(f"{clause!r}: {database} is a system schema")
    return Privilege(privileges, database, table)


def _name(text: str, clause: str) -> str | None:
    if text == "*":
        return None
    name = text[1:-1].replace("``", "`") if text.startswith("`") else text
    if len(name) > 64 or not name.isprintable() or "%" in name or "\\" in name:
        raise InvalidPrivilege(f"{clause!r}: {name!r} must be ≤ 64 printable characters without % or \\")
    return name


def native_password_hash(password: str) -> str:
    """``*`` + SHA1(SHA1(password)) in upper-case hex: what ``mysql_native_password`` stores."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()  # noqa: S324


class MySQLProvisioner:
    """Accounts on one MySQL/MariaDB target.

    ``admin`` is the broker's admin login; ``broker_host`` the host part of every account made
    (the broker's own address as the target sees it); ``tag_schema`` the broker-owned schema for
    the tag table; ``allow_admin`` lets the policy grant the clauses refused by default.
    """

    def __init__(
        self,
        admin: AdminLogin,
        *,
        broker_id: str,
        broker_host: str,
        tag_schema: str = "access_broker",
        allow_admin: bool = False,
    ) -> None:
        if not _HOST.fullmatch(broker_host):
            raise ValueError(
                f"broker_host {broker_host!r} must be one address or address/netmask, no wildcards"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", tag_schema):
            raise ValueError(f"tag_schema {tag_schema!r} must be [a-z][a-z0-9_]*, ≤ 64 characters")
        self.admin = admin
        self.broker_id = check_token("broker id", broker_id)
        self.broker_host = broker_host
        self.tag_schema = tag_schema
        self.allow_admin = allow_admin
        self._tags = f"`{tag_schema}`.`identities`"
        self._mariadb = True  # learnt on each admin connection

    # -- the interface --------------------------------------------------------------------------

    def identity_name(self, spec: IdentitySpec) -> str:
        return make_name(spec.principal)

    def create(self, spec: IdentitySpec) -> Identity:
        check_spec(spec)
        grants = [
            parse_privilege(p, allow_admin=self.allow_admin, tag_schema=self.tag_schema)
            for p in spec.privileges
        ]
        password = new_password()
        with self._connect() as cur:
            with self._step("record the identity", spec.grant_id):
                name = self._claim(cur, spec)
            try:
                with self._step("create the account", name):
                    self._account(cur, name, spec, password)
                    for grant in grants:
                        cur.execute(f"GRANT {grant.sql()} TO %s@%s", (name, self.broker_host))
            except BaseException:
                with suppress(Exception):  # no half-made account left behind (else reconcile ends it)
                    self._end(cur, name)
                raise
        return Identity(name=name, password=password, grant_id=spec.grant_id)

    def end(self, name: str) -> None:
        check_ours(name)
        with self._connect() as cur, self._step("end the account", name):
            self._end(cur, name)

    def extend(self, name: str, expires_at: datetime) -> None:
        check_ours(name)
        with self._connect() as cur, self._step("extend the account", name):
            # The lifetime counts whole days from the password's last change, on the target's clock.
            if self._mariadb:
                cur.execute(
                    "SELECT Host, JSON_VALUE(Priv, '$.password_last_changed'),"
                    " JSON_VALUE(Priv, '$.password_lifetime') FROM mysql.global_priv WHERE User = %s",
                    (name,),
                )
            else:
                cur.execute(
                    "SELECT Host, UNIX_TIMESTAMP(password_last_changed), password_lifetime"
                    " FROM mysql.user WHERE User = %s",
                    (name,),
                )
            for host, changed, lifetime in cur.fetchall():
                if changed is None:
                    continue
                remaining = expires_at.timestamp() - float(changed)
                days = max(1, math.ceil(remaining / 86_400))
                if lifetime is not None and int(lifetime) >= days:
                    continue  # never earlier: the account already lasts at least that long
                cur.execute("ALTER USER %s@%s PASSWORD EXPIRE INTERVAL %s DAY", (name, host, days))

    def ours(self) -> list[OurIdentity]:
        with self._connect() as cur, self._step("list identities", "access_*"):
            cur.execute(r"SELECT DISTINCT User FROM mysql.user WHERE User LIKE 'access\_%%'")
            accounts = {str(user) for (user,) in cur.fetchall()}
            cur.execute(f"SELECT name, grant_id, broker_id FROM {self._tags}")  # noqa: S608 (our schema)
            tagged = {str(name): (str(grant), str(broker)) for name, grant, broker in cur.fetchall()}
        return [OurIdentity(name, *tagged.get(name, (None, None))) for name in sorted(accounts | set(tagged))]

    # -- steps ----------------------------------------------------------------------------------

    def _claim(self, cur: pymysql.cursors.Cursor, spec: IdentitySpec) -> str:
        """The grant's name: its existing row's, or a new row written before the account."""
        select = f"SELECT name, ending FROM {self._tags} WHERE broker_id = %s AND grant_id = %s"  # noqa: S608
        for _ in range(3):
            cur.execute(select, (self.broker_id, spec.grant_id))
            row = cur.fetchone()
            if row is not None:
                if row[1]:
                    raise being_ended(str(row[0]), spec.grant_id)
                return str(row[0])
            name = self.identity_name(spec)
            try:
                cur.execute(
                    f"INSERT INTO {self._tags} (name, host, broker_id, grant_id) VALUES (%s, %s, %s, %s)",  # noqa: S608
                    (name, self.broker_host, self.broker_id, spec.grant_id),
                )
            except pymysql.err.IntegrityError:
                continue  # the name was taken, or a racing create claimed the grant: look again
            return name
        raise ProvisionFailed(f"MySQL {self.admin.where}: could not record an identity for {spec.grant_id}")

    def _account(self, cur: pymysql.cursors.Cursor, name: str, spec: IdentitySpec, password: str) -> None:
        cur.execute("SELECT UTC_TIMESTAMP()")
        (now,) = cur.fetchone() or (None,)
        remaining = (spec.expires_at - now.replace(tzinfo=UTC)).total_seconds() if now else 86_400
        days = max(1, math.ceil(remaining / 86_400))
        secret = ("PASSWORD %s", native_password_hash(password)) if self._mariadb else ("%s", password)
        options = "WITH MAX_USER_CONNECTIONS %s PASSWORD EXPIRE INTERVAL %s DAY"
        args = (name, self.broker_host, secret[1], spec.connection_limit, days)
        cur.execute("SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s", (name, self.broker_host))
        if cur.fetchone() is None:
            cur.execute(f"CREATE USER %s@%s IDENTIFIED BY {secret[0]} {options}", args)
        else:  # a retry: same account, fresh password, the spec's privileges only
            cur.execute(f"ALTER USER %s@%s IDENTIFIED BY {secret[0]} {options}", args)
            cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (name, self.broker_host))

    def _end(self, cur: pymysql.cursors.Cursor, name: str) -> None:
        # Without PROCESS the admin sees only its own threads in PROCESSLIST: the kill loop would
        # find none and the identity's live sessions would outlive the DROP USER. Refuse instead.
        cur.execute(_HAS_PROCESS)
        if not (cur.fetchone() or (0,))[0]:
            raise ProvisionFailed(
                f"MySQL {self.admin.where}: the broker's admin account cannot see other accounts' sessions",
                hint="GRANT PROCESS ON *.* (directly, not through a role) to the broker's admin account",
            )
        cur.execute(f"UPDATE {self._tags} SET ending = TRUE WHERE name = %s", (name,))  # noqa: S608
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (name,))
        hosts = [str(host) for (host,) in cur.fetchall()]
        for host in hosts:
            cur.execute("ALTER USER %s@%s ACCOUNT LOCK", (name, host))
        self._kill(cur, name)
        for host in hosts:
            cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
        self._kill(cur, name)  # a login that raced the lock
        cur.execute(f"DELETE FROM {self._tags} WHERE name = %s", (name,))  # noqa: S608

    def _kill(self, cur: pymysql.cursors.Cursor, name: str) -> None:
        def gone() -> bool:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND ID <> CONNECTION_ID()",
                (name,),
            )
            ids = [int(i) for (i,) in cur.fetchall()]
            for thread in ids:
                try:
                    cur.execute("KILL CONNECTION %s", (thread,))
                except pymysql.err.MySQLError as exc:
                    if exc.args[0] != ER.NO_SUCH_THREAD:  # it went by itself meanwhile
                        raise
            return not ids

        cut_sessions(gone, kind="MySQL", admin=self.admin, name=name)

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[pymysql.cursors.Cursor]:
        admin = self.admin
        try:
            conn = pymysql.connect(
                host=admin.host,
                port=admin.port,
                user=admin.user,
                password=admin.password,
                connect_timeout=admin.connect_timeout,
                read_timeout=admin.statement_timeout + 1,
                write_timeout=admin.statement_timeout + 1,
                autocommit=True,
                charset="utf8mb4",
            )
        except pymysql.Error as exc:
            raise admin.refused("MySQL", exc) from exc
        with conn, conn.cursor() as cur:
            with self._step("prepare the admin session", self.tag_schema):
                seconds = admin.statement_timeout
                cur.execute("SELECT VERSION()")
                self._mariadb = "mariadb" in str((cur.fetchone() or ("",))[0]).lower()
                if self._mariadb:
                    cur.execute("SET SESSION max_statement_time = %s", (seconds,))
                else:  # MySQL bounds SELECTs only; read_timeout bounds the rest
                    cur.execute("SET SESSION max_execution_time = %s", (round(seconds * 1000),))
                cur.execute("SET SESSION lock_wait_timeout = %s", (max(1, math.ceil(seconds)),))
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.tag_schema}`")
                cur.execute(_TAG_TABLE.format(table=self._tags))
            yield cur

    @contextmanager
    def _step(self, step: str, subject: str) -> Iterator[None]:
        try:
            yield
        except pymysql.Error as exc:
            code = exc.args[0] if exc.args else "?"
            reason = exc.args[1] if len(exc.args) > 1 else type(exc).__name__
            failed = ProvisionFailed(
                f"MySQL {self.admin.where} failed to {step} for {subject}: ({code}) {reason}",
                hint="check the broker's admin account holds CREATE USER and the privileges it grants",
            )
            if code == ER.PARSE_ERROR:  # its text quotes the statement, which may hold a password
                failed = ProvisionFailed(f"MySQL {self.admin.where} failed to {step} for {subject}: (1064)")
                raise failed from None
            raise failed from exc
