"""The demo's PostgreSQL: a database of its own, a dynamic service on it, the operator's ``psql``.

Everything the demo makes on the local server is its own, and named so: the database
``access_demo_<8 hex>`` (a fresh name each run, so demos and tests running at once never meet)
and the per-grant roles its broker makes, each tagged ``access grant=<grant id> broker=<broker
id>``, where the broker id is the key id of the broker's token signing key, fresh with each demo's
data directory. The broker ends a grant's role itself when the grant ends; ``drop`` runs after the
broker has stopped and removes what an interrupted run left: the roles with this broker's tag,
then the database. Nothing else on the server is touched.

The broker's admin login is ``postgres``, its password read from a file the policy names
(``credentials.admin.password_file``), as an operator would wire it: empty when this PostgreSQL
trusts local logins, else the ``PGPASSWORD`` of the shell that runs the demo.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from access.cli.demo import console
from access.shared.kinds.postgres import LOCAL_USER

__all__ = ["ADMIN", "HOST", "PORT", "DemoPostgres", "LongQuery", "why_no_postgres"]

HOST, PORT, ADMIN = "127.0.0.1", 5432, "postgres"
# The roles on the server that carry this broker's tag, ``access grant=<id> broker=<id>``. The
# queries are constant text (ruff's S608 cannot tell): values come in as psql variables.
_OURS = (
    "from pg_roles where rolname like 'access\\_%'"
    " and split_part(shobj_description(oid, 'pg_authid'), ' broker=', 2) = :'broker'"
)
_COUNT_OURS = f"select count(*) {_OURS};"
_LIST_OURS = f"select rolname {_OURS};"
_DROP_OURS = (
    f"select pg_terminate_backend(pid) from pg_stat_activity where usename in (select rolname {_OURS});"  # noqa: S608
    f" select format('drop role %I', rolname) {_OURS} \\gexec"
)
_GONE_WITHIN = 10.0  # seconds a role may take to go after its grant ended before the demo says so


def _admin_env() -> dict[str, str]:
    # The operator's own shell, so PGPASSWORD and ~/.pgpass work for them; no psqlrc, so the
    # output is what the demo expects.
    return {**os.environ, "PGCONNECT_TIMEOUT": "5", "PSQLRC": os.devnull}


def why_no_postgres(pgpassfile: Path) -> str | None:
    """Why the demo cannot use the PostgreSQL on 127.0.0.1:5432 (None: it can). It needs psql, and
    postgres let in with what the broker will have: no password (a trusting server) or
    ``PGPASSWORD``, never ``~/.pgpass`` (``pgpassfile`` does not exist, as in the broker's env)."""
    if shutil.which("psql") is None:
        return "psql is not installed"
    try:
        with socket.create_connection((HOST, PORT), timeout=0.5):
            pass
    except OSError:
        return f"nothing answers on {HOST}:{PORT}"
    result = subprocess.run(
        ["psql", "-h", HOST, "-U", ADMIN, "-d", "postgres", "-Atc", "select 1", "-w"],
        capture_output=True,
        text=True,
        env={**_admin_env(), "PGCONNECT_TIMEOUT": "2", "PGPASSFILE": str(pgpassfile)},
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return (
            f"the PostgreSQL on {HOST}:{PORT} does not let {ADMIN} in without a password (or with PGPASSWORD)"
        )
    return None


class DemoPostgres:
    """The demo's database and its broker's roles on the local PostgreSQL."""

    def __init__(self, workdir: Path) -> None:
        self.database = "access_demo_" + secrets.token_hex(4)
        self.password_file = workdir / "pg-admin.pw"
        self.broker_id: str | None = None  # known once the broker has issued a token
        self._made = False
        self._swept = False

    @property
    def target(self) -> str:
        return f"{HOST}:{PORT}"

    def options(self) -> dict[str, str]:
        return {"database": self.database}

    def credentials(self) -> dict[str, Any]:
        """The service's ``credentials``: a fresh role per grant, in the scope's predefined roles."""
        return {
            "mode": "dynamic",
            "admin": {"user": ADMIN, "password_file": str(self.password_file)},
            "connection_limit": 3,
            "scopes": {
                "read": {"roles": ["pg_read_all_data"]},
                "write": {"roles": ["pg_read_all_data", "pg_write_all_data"]},
            },
        }

    # -- the operator's side -----------------------------------------------------------------

    @property
    def password_source(self) -> str:
        return (
            "the PGPASSWORD of this shell"
            if os.environ.get("PGPASSWORD")
            else "empty: postgres needs none here"
        )

    def create(self) -> None:
        """Write the admin password file (mode 0600) and make the database with a table in it."""
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.environ.get("PGPASSWORD", ""))
        self.psql('create database :"db"', db=self.database)
        self._made = True  # ours (the name is fresh, so CREATE would have failed on another's)
        self.psql(
            "create table orders (id int primary key, item text not null);"
            " insert into orders values (1, 'keyboard'), (2, 'monitor');",
            database=self.database,
        )

    def psql(
        self, sql: str, *flags: str, database: str = "postgres", show: bool = True, **variables: str
    ) -> str:
        """Run ``sql`` as the admin, printing the command and its output (``show``); its stdout.

        Values go in as psql variables (``-v name=value``, used as ``:'name'``), never into the
        SQL text: the statements come on stdin, where psql interpolates them.

        Raises:
            RuntimeError: psql failed (its last line of stderr says why).
        """
        argv = ["psql", "-h", HOST, "-U", ADMIN, "-d", database, "-v", "ON_ERROR_STOP=1", *flags]
        for name, value in variables.items():
            argv += ["-v", f"{name}={value}"]
        if show:
            console.command(argv, stdin=sql)
        result = subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            env=_admin_env(),
            timeout=30,
            check=False,
        )
        if show:
            console.output(result.stdout, result.stderr)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"psql as {ADMIN} exited {result.returncode}: {last}")
        return result.stdout

    # -- what the broker made ----------------------------------------------------------------

    def _broker(self) -> str:
        assert self.broker_id is not None
        return self.broker_id

    def count_roles(self) -> int:
        """How many roles carry this broker's tag (printed, as the operator would ask)."""
        return int(self.psql(_COUNT_OURS, "-At", broker=self._broker()))

    def show_role(self, grant_id: str) -> str:
        """Print the role made for ``grant_id`` (name, expiry, limit, memberships); its name.

        Raises:
            RuntimeError: there is none.
        """
        label = f"access grant={grant_id} broker={self._broker()}"
        shown = self.psql(
            "select rolname, rolvaliduntil, rolconnlimit, array(select g.rolname from pg_auth_members m"
            " join pg_roles g on g.oid = m.roleid where m.member = r.oid) as member_of, rolconfig"
            " from pg_roles r where shobj_description(r.oid, 'pg_authid') = :'tag';",
            "-x",
            tag=label,
        )
        found = re.search(r"^rolname\s*\|\s*(access_\w+)$", shown, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"PostgreSQL has no role tagged {label!r}")
        return found.group(1)

    def wait_session(self, role: str, within: float = 5.0) -> str:
        """Print the session ``role`` has open once it runs its query (polled, ``within`` seconds
        at most); its pid.

        Raises:
            RuntimeError: no such session showed up in time.
        """
        sql = "select pid, usename, wait_event, query from pg_stat_activity where usename = :'role';"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rows = [
                row for row in self.psql(sql, "-At", show=False, role=role).splitlines() if "pg_sleep" in row
            ]
            if rows:
                self.psql(sql, "-At", role=role)
                return rows[0].split("|", 1)[0]
            time.sleep(0.05)
        raise RuntimeError(f"no session of {role} showed up on PostgreSQL within {within:g}s")

    def wait_gone(self, role: str) -> float | None:
        """Poll (every 50 ms, ``_GONE_WITHIN`` seconds at most) until neither ``role`` nor a session
        of it is left; the wall-clock time it was first seen gone, None if it never was."""
        sql = (
            "select (select count(*) from pg_roles where rolname = :'role')"
            " + (select count(*) from pg_stat_activity where usename = :'role');"
        )
        deadline = time.monotonic() + _GONE_WITHIN
        shown = True  # the first poll is printed, the others are the same command
        while time.monotonic() < deadline:
            if self.psql(sql, "-At", show=shown, role=role).strip() == "0":
                return time.time()
            if shown:
                console.note("(polling every 50 ms)")
                shown = False
            time.sleep(0.05)
        return None

    def drop(self) -> None:
        """Remove what the demo made: the database, then any role that carries this broker's tag
        (an interrupted run's: the broker drops a grant's role when the grant ends). Call it once
        the broker has stopped; again is harmless.

        Raises:
            RuntimeError: psql failed; the message names it.
        """
        if self._made:
            self.psql('drop database if exists :"db" with (force);', db=self.database)
            self._made = False
        if self.broker_id is None or self._swept:
            return  # no token was issued, so no grant and no role; or done already
        left = self.psql(_LIST_OURS, "-At", show=False, broker=self.broker_id).split()
        if left:
            console.say(f"[demo] dropping the roles an interrupted run left: {', '.join(left)}")
            self.psql(_DROP_OURS, "-q", "-At", broker=self.broker_id)
        self._swept = True  # the broker has stopped (the caller's promise): no new role can come


class LongQuery:
    """``select pg_sleep(60)`` through the tunnel on ``port``, in the background: a live session
    (run with ``env``, the engineer's: no password anywhere in it)."""

    def __init__(self, port: int, database: str, env: dict[str, str]) -> None:
        argv = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", LOCAL_USER, "-d", database]
        console.command([*argv[:4], "PORT", *argv[5:], "-c", "select pg_sleep(60)"], "   (a long query)")
        self.proc = subprocess.Popen(
            [*argv, "-c", "select pg_sleep(60)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PGCONNECT_TIMEOUT": "5", "PSQLRC": os.devnull},
        )

    def wait(self) -> tuple[float, str]:
        """Wait (90 s at most) for psql to exit; when it did, and what it said last."""
        _, err = self.proc.communicate(timeout=90)
        at = time.time()
        last = (err.strip().splitlines() or ["(no message)"])[-1]
        return at, f"psql exited {self.proc.returncode} ({last.strip()})"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
