"""Per-grant login roles on a PostgreSQL target, made and dropped with the broker's admin role.

create
    One transaction (serialised per grant by an advisory lock, so a retry or a race cannot make
    two roles for one grant)::

        CREATE ROLE <name> LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
            NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>'
            VALID UNTIL '<expires_at>' CONNECTION LIMIT <n> IN ROLE <privileges...>
        COMMENT ON ROLE <name> IS 'access grant=<grant id> broker=<broker id>'

    The password is sent as a SCRAM-SHA-256 verifier the broker computes (RFC 5802/7677), so the
    cleartext never reaches the server, its logs or ``pg_stat_statements``: only the broker can log
    in as the role. ``VALID UNTIL`` is the target's own second lock should the broker never come
    back to end the grant (PostgreSQL applies it to password logins only: keep the identities'
    ``pg_hba.conf`` lines password-based). Memberships are granted without ADMIN, so the
    identity cannot pass them on.

    INHERIT, on purpose: predefined roles such as ``pg_read_all_data`` act through inherited
    privileges; with NOINHERIT the identity would have to ``SET ROLE`` first. What a read identity
    may do is exactly what its roles may do, so "read means read" is the policy's choice of roles;
    this module refuses, before creating anything, a role that is (or through membership reaches) a
    superuser, CREATEROLE, REPLICATION or BYPASSRLS role, or one of the server-file roles
    (``pg_write_server_files``, ``pg_read_server_files``, ``pg_execute_server_program``), since
    ``SET ROLE`` to any of them would be an escalation. When every role is a predefined read-only one
    (``READ_ONLY_ROLES``) the role also gets ``default_transaction_read_only = on``: defence in depth
    only (a client may ``SET`` it off again); the guarantee is the privileges. Like every role, a read
    identity may still create TEMP tables (PUBLIC has TEMP on each database by default) and run
    functions granted to PUBLIC.

    A second ``create`` for the same grant (a retry after a crash) finds the role by its tag, gives
    it a fresh password and the spec's expiry, limit and memberships, and returns it under the same
    name; the previous password stops working. If ``end`` has begun on it (NOLOGIN) it refuses.

end
    ``ALTER ROLE NOLOGIN``; ``pg_terminate_backend`` for each of its sessions, polled until none is
    left (bounded); then, in each database where ``pg_shdepend`` says it owns objects or holds
    privileges, ``REASSIGN OWNED BY <name> TO <owner>`` and ``DROP OWNED BY <name>``; then ``DROP
    ROLE``. REASSIGN and DROP OWNED act in the current database only (PostgreSQL's limitation), hence
    one admin connection per such database; a database the admin cannot connect to leaves the role in
    place, and ``end`` raises, naming it (a retry is safe). Absent role = already done.

extend
    ``ALTER ROLE <name> VALID UNTIL '<new expiry>'`` when the grant was extended (never earlier, one
    at a time per role under an advisory lock; a NOLOGIN role, being ended, is left alone). Live
    sessions are untouched: ``VALID UNTIL`` is checked at login only, which is why it must move,
    or a login after the old expiry would fail.

Waits: libpq's ``connect_timeout``; ``statement_timeout`` and ``lock_timeout`` (server side) on
every admin statement; and, since a server-side timeout cannot help when the answer never
arrives, a watchdog that shuts the admin connection's socket after ``operation_timeout``.

Permissions the admin role needs: superuser, or (PostgreSQL 15) CREATEROLE plus ADMIN on every
role the policy names, ``pg_signal_backend`` (to terminate the identity's sessions) and
membership in the owner objects are handed to.

Note: predefined roles are cluster-wide: ``pg_read_all_data`` reads every database the identity
may CONNECT to (PUBLIC may, by default), not only the service's. Scope it with the target's own
``REVOKE CONNECT`` / ``pg_hba.conf``, or name per-database roles in the policy.

Tests run on the shared PostgreSQL, which trusts every local login: there they prove privileges,
sessions and tags, not the password (the wire tests log in with it on a private SCRAM cluster).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .base import Identity, IdentitySpec, OurIdentity
from .common import (
    PREFIX,
    AdminLogin,
    ProvisionFailed,
    being_ended,
    check_ours,
    check_spec,
    check_token,
    cut_sessions,
    make_name,
    new_password,
    parse_tag,
    tag,
    watchdog,
)

__all__ = ["READ_ONLY_ROLES", "REFUSED_ROLES", "PostgresProvisioner", "scram_verifier"]

SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
READ_ONLY_ROLES = frozenset({"pg_read_all_data", "pg_read_all_settings", "pg_read_all_stats", "pg_monitor"})
REFUSED_ROLES = frozenset({"pg_write_server_files", "pg_read_server_files", "pg_execute_server_program"})

# Roles reachable from the named ones through membership (what SET ROLE could reach) that would
# make the identity more than its privileges say.
_ESCALATIONS: LiteralString = """
    WITH RECURSIVE reach(oid) AS (
        SELECT oid FROM pg_roles WHERE rolname = ANY(%(names)s)
        UNION
        SELECT m.roleid FROM pg_auth_members m JOIN reach ON m.member = reach.oid
    )
    SELECT r.rolname FROM pg_roles r JOIN reach USING (oid)
    WHERE r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls
       OR r.rolname = ANY(%(refused)s) OR r.rolname LIKE 'access\\_%%'
    ORDER BY 1
"""
_OURS: LiteralString = """
    SELECT r.oid, r.rolname, r.rolcanlogin, shobj_description(r.oid, 'pg_authid')
    FROM pg_roles r WHERE r.rolname LIKE 'access\\_%%' ORDER BY r.rolname
"""


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` form PostgreSQL stores
    (RFC 5802 section 3, RFC 7677). Passwords are printable ASCII (``token_urlsafe``), for which
    SASLprep changes nothing; anything else is refused rather than prepared differently from libpq."""
    if not (password.isascii() and password.isprintable()):
        raise ValueError("scram_verifier takes printable ASCII passwords only")
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


class PostgresProvisioner:
    """Identities on one PostgreSQL target.

    ``admin`` is the broker's admin login (its ``database`` is where roles are managed, default
    ``postgres``); ``broker_id`` goes in every tag; ``owner`` receives what an ended identity owned
    (default: the admin role itself).
    """

    def __init__(self, admin: AdminLogin, *, broker_id: str, owner: str | None = None) -> None:
        self.admin = admin
        self.broker_id = check_token("broker id", broker_id)
        self.owner = owner

    # -- the interface --------------------------------------------------------------------------

    def identity_name(self, spec: IdentitySpec) -> str:
        return make_name(spec.principal)

    def create(self, spec: IdentitySpec) -> Identity:
        check_spec(spec)
        password = new_password()
        verifier = scram_verifier(password)
        label = tag(spec.grant_id, self.broker_id)
        with self._connect() as conn, self._step("create the role", spec.grant_id), conn.transaction():
            lock_key = "access-provision:" + spec.grant_id
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [lock_key])
            self._refuse_escalations(conn, spec.privileges)
            found = [row for row in conn.execute(_OURS).fetchall() if row[3] == label]
            if found:
                _oid, name, can_login, _ = found[0]
                if not can_login:
                    raise being_ended(name, spec.grant_id)
                self._update(conn, name, spec, verifier)
            else:
                name = self._insert(conn, spec, verifier, label)
            read_only = bool(spec.privileges) and set(spec.privileges) <= READ_ONLY_ROLES
            setting = "SET {} = on" if read_only else "RESET {}"
            conn.execute(
                sql.SQL("ALTER ROLE {} " + setting).format(
                    sql.Identifier(name), sql.Identifier("default_transaction_read_only")
                )
            )
        return Identity(name=name, password=password, grant_id=spec.grant_id)

    def end(self, name: str) -> None:
        check_ours(name)
        role = sql.Identifier(name)
        with self._connect() as conn, self._step("end the role", name):
            conn.autocommit = True
            row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            if row is None:
                return
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
            self._terminate(conn, name)
            databases = conn.execute(
                """SELECT DISTINCT coalesce(d.datname, current_database()) FROM pg_shdepend s
                   LEFT JOIN pg_database d ON d.oid = s.dbid
                   WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s""",
                [row[0]],
            ).fetchall()
            owner = sql.Identifier(self.owner) if self.owner else sql.SQL("CURRENT_USER")
            for (database,) in databases:
                with self._connect(database) as db, db.transaction():
                    db.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, owner))
                    db.execute(sql.SQL("DROP OWNED BY {}").format(role))
            self._terminate(conn, name)  # a login that raced the NOLOGIN
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))

    def extend(self, name: str, expires_at: datetime) -> None:
        check_ours(name)
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must carry a time zone (the broker's clock is UTC)")
        with self._connect() as conn, self._step("extend the role", name), conn.transaction():
            # One extension of a role at a time, so "never earlier" holds between two of them.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ["access-extend:" + name])
            row = conn.execute(
                "SELECT rolcanlogin, rolvaliduntil FROM pg_roles WHERE rolname = %s", [name]
            ).fetchone()
            if row is None or not row[0]:
                return  # gone, or being ended (NOLOGIN): an extension must not revive it
            if row[1] is not None and row[1] >= expires_at:
                return
            conn.execute(
                sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(
                    sql.Identifier(name), sql.Literal(expires_at.isoformat())
                )
            )

    def ours(self) -> list[OurIdentity]:
        with self._connect() as conn, self._step("list identities", PREFIX + "*"):
            rows = conn.execute(_OURS).fetchall()
        return [OurIdentity(name, *parse_tag(comment)) for _oid, name, _login, comment in rows]

    # -- steps ----------------------------------------------------------------------------------

    def _insert(self, conn: psycopg.Connection[Any], spec: IdentitySpec, verifier: str, label: str) -> str:
        for _ in range(3):  # a random name taken by another grant: pick again
            name = self.identity_name(spec)
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is None:
                break
        else:
            raise ProvisionFailed(f"PostgreSQL {self.admin.where}: no free role name for {spec.principal!r}")
        statement = sql.SQL(
            "CREATE ROLE {name} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            " PASSWORD {verifier} VALID UNTIL {until} CONNECTION LIMIT {limit}"
        ).format(
            name=sql.Identifier(name),
            verifier=sql.Literal(verifier),
            until=sql.Literal(spec.expires_at.isoformat()),
            limit=sql.Literal(spec.connection_limit),
        )
        if spec.privileges:
            statement += sql.SQL(" IN ROLE ") + sql.SQL(", ").join(map(sql.Identifier, spec.privileges))
        conn.execute(statement)
        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), sql.Literal(label)))
        return name

    def _update(self, conn: psycopg.Connection[Any], name: str, spec: IdentitySpec, verifier: str) -> None:
        role = sql.Identifier(name)
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {}").format(
                role,
                sql.Literal(verifier),
                sql.Literal(spec.expires_at.isoformat()),
                sql.Literal(spec.connection_limit),
            )
        )
        held = {
            granted
            for (granted,) in conn.execute(
                """SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                   JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s""",
                [name],
            )
        }
        for granted in sorted(set(spec.privileges) - held):
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), role))
        for granted in sorted(held - set(spec.privileges)):
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(granted), role))

    def _refuse_escalations(self, conn: psycopg.Connection[Any], privileges: Sequence[str]) -> None:
        if not privileges:
            return
        names = list(privileges)
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [names])
        missing = set(names) - {found for (found,) in rows}
        if missing:
            raise ProvisionFailed(
                f"PostgreSQL {self.admin.where} has no role {', '.join(sorted(missing))} to grant",
                hint="create the role on the target or correct the service's privileges in the policy",
            )
        risky = [r for (r,) in conn.execute(_ESCALATIONS, {"names": names, "refused": sorted(REFUSED_ROLES)})]
        if risky:
            raise ValueError(
                f"membership in {', '.join(privileges)} would reach {', '.join(risky)} (superuser,"
                " CREATEROLE, REPLICATION, BYPASSRLS, server files or another access identity):"
                " the broker refuses it; name narrower roles in the policy"
            )

    def _terminate(self, conn: psycopg.Connection[Any], name: str) -> None:
        def gone() -> bool:
            pids = [
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()", [name]
                )
            ]
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
            return not pids

        cut_sessions(gone, kind="PostgreSQL", admin=self.admin, name=name)

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connect(self, database: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        admin = self.admin
        try:
            conn = psycopg.connect(
                host=admin.host,
                port=admin.port,
                user=admin.user,
                password=admin.password or None,
                dbname=database or admin.database or "postgres",
                connect_timeout=max(2, round(admin.connect_timeout)),
                options=f"-c statement_timeout={round(admin.statement_timeout * 1000)}"
                f" -c lock_timeout={round(admin.statement_timeout * 1000)}",
                application_name="access-broker provision",
            )
        except psycopg.Error as exc:
            raise admin.refused("PostgreSQL", exc) from exc
        with conn, watchdog(conn.fileno(), admin.operation_timeout):
            yield conn

    @contextmanager
    def _step(self, step: str, subject: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or type(exc).__name__
            raise ProvisionFailed(
                f"PostgreSQL {self.admin.where} failed to {step} for {subject}: {reason}",
                hint="check the broker's admin role may manage roles (superuser or CREATEROLE with ADMIN)",
            ) from exc
