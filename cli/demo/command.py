"""The demo's steps, as the ``access demo`` command runs them.

On PostgreSQL the service is dynamic: every grant gets a role of its own, made by the broker when
the grant is issued and dropped when it ends; the demo shows it on the server (with ``psql`` as the
admin) before, during and after. Without PostgreSQL the service is the built-in echo service, and
there is no role to show.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from access.cli.demo import console
from access.cli.demo.postgres import ADMIN, DemoPostgres, LongQuery, why_no_postgres
from access.cli.demo.runner import Runner, program
from access.cli.demo.targets import EchoService, hold_echo, policy

__all__ = ["demo"]

_CUT_TTL = "6s"
_ECHO_CLIENT = (
    "import os,socket;"
    "s=socket.create_connection((os.environ['ACCESS_HOST'],int(os.environ['ACCESS_PORT'])));"
    "print(s.recv(100).decode().strip())"
)


@dataclass
class _Target:
    """The demo's service target: PostgreSQL (``pg``) or the echo service (``echo``)."""

    pg: DemoPostgres | None = None
    echo: EchoService | None = None

    def policy(self) -> str:
        if self.pg is not None:
            return policy(self.pg.target, "postgres", self.pg.options(), self.pg.credentials())
        assert self.echo is not None
        return policy(f"127.0.0.1:{self.echo.port}", "tcp", {})

    def close(self) -> None:
        if self.echo is not None:
            self.echo.close()


def demo(
    keep: bool = typer.Option(
        False, "--keep", help="Keep the demo's temporary directory and print where it is"
    ),
) -> None:
    """Run the whole loop against a throwaway broker: login, request, exec, cut at expiry, audit.

    On the local PostgreSQL each grant gets a database role of its own, shown as it is made and
    dropped; the demo's database and roles are removed at the end, also after Ctrl-C.
    """
    from access.cli.errors import CliError
    from access.shared.extras import BROKER_INSTALL_HINT, missing_broker_modules

    if missing := missing_broker_modules():
        raise CliError(
            f"access demo starts a broker, and the broker's dependencies are not installed "
            f"({', '.join(missing)})",
            hint=BROKER_INSTALL_HINT,
        )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="access-demo-"))
    run = Runner(workdir)
    target = _Target()
    try:
        with _terminate_as_interrupt():
            why_not = why_no_postgres(run.no_pgpass)
            if why_not is None:
                target.pg = DemoPostgres(workdir)
                console.say(
                    f"[demo] target: the local PostgreSQL on {target.pg.target}, database"
                    f" {target.pg.database} (made for this run), a new role for each grant"
                )
            else:
                target.echo = EchoService()
                console.say(
                    f"[demo] not using PostgreSQL ({why_not}): using the built-in demo service instead"
                    " (bytes only: no per-grant role to show)"
                )
            _steps(run, target)
            console.say(f"\ndemo finished in {time.monotonic() - started:.1f}s")
            console.note(
                "a Kubernetes cluster is one more service in the policy: kind: kubernetes, its API server, "
                "its CA and a token file for the broker (docs/kubernetes.md); then "
                "`access exec CLUSTER --scope read -- kubectl get pods -A`"
            )
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        typer.secho(f"demo failed: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from exc
    finally:
        run.stop_broker()
        _clean_up(target)
        if keep:
            typer.echo(f"demo files kept in {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does: through ``finally``, which drops what it made."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clean_up(target: _Target) -> None:
    """After the broker stopped: whatever the run left on PostgreSQL is dropped (never raises)."""
    target.close()
    if target.pg is None:
        return
    try:
        target.pg.drop()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        typer.secho(
            f"demo clean-up failed: {exc}; drop database {target.pg.database} and the roles tagged "
            f"broker={target.pg.broker_id} by hand",
            err=True,
            fg=typer.colors.RED,
        )


def _steps(run: Runner, target: _Target) -> None:
    pg = target.pg
    policy_file = run.workdir / "policy.yaml"
    password = secrets.token_urlsafe(12)

    console.say("\n1. An operator starts a broker (TLS from a throwaway CA) and adds a user")
    if pg is not None:
        pg.create()
        console.note(
            f"[demo] demo-db is dynamic: the broker logs in as {ADMIN} to make each grant's role, with"
            f" the password in {pg.password_file.name} (mode 0600, named in the policy; {pg.password_source})"
        )
    policy_file.write_text(target.policy())
    run.admin("users", "add", "demo", "--group", "sre", "--password-stdin", stdin=password + "\n")
    lead_password = secrets.token_urlsafe(12)
    run.admin("users", "add", "lead", "--group", "leads", "--password-stdin", stdin=lead_password + "\n")
    run.start_broker(policy_file)
    console.note(f"$ access-broker serve --policy {policy_file.name} ...   -> {run.url}")

    console.say("\n2. An engineer signs in with the device flow (RFC 8628)")
    run.login("demo", password)
    if pg is not None:
        pg.broker_id = run.broker_id()  # before any grant, so the clean-up knows its roles
    run.access("whoami")
    run.access("services")

    console.say("\n3. They ask for a grant; policy decides, the ledger records it")
    if pg is not None:
        console.note(f"[demo] before the grant: roles on PostgreSQL tagged by this broker ({pg.broker_id})")
        if pg.count_roles() != 0:
            raise RuntimeError("PostgreSQL has roles of this broker before any grant")
    grant = json.loads(
        run.access(
            "request", "demo-db", "--scope", "read", "--ttl", "5m", "--reason", "DEMO-1", "-o", "json"
        ).stdout
    )
    run.access("grants")
    role = None
    if pg is not None:
        console.note(f"[demo] the role the broker made on PostgreSQL for {grant['id']}:")
        role = pg.show_role(grant["id"])

    console.say(
        "\n4. access exec: tunnel up, command runs with the connection in its environment, tunnel down"
    )
    if pg is not None and role is not None:
        _exec_as_role(run, pg, role, grant["id"])
    else:
        run.access("exec", "demo-db", "--scope", "read", "--", sys.executable, "-c", _ECHO_CLIENT)
        run.access("revoke", grant["id"])

    console.say("\n5. A write needs a second person: the lead approves it from their own terminal")
    _approved_write(run, pg, lead_password)

    console.say(f"\n6. A live connection is cut when the grant expires ({_CUT_TTL} grant)")
    _cut_at_expiry(run, pg)

    console.say("\n7. The audit trail, and the ledger's verification")
    run.access("audit", "--since", "10m")
    run.stop_broker()
    verify = run.admin("audit", "verify")
    console.output(verify.stdout, verify.stderr)
    if pg is not None:
        console.note(
            "[demo] nothing left on PostgreSQL: no role of this broker, and the demo's database goes"
        )
        left = pg.count_roles()
        pg.drop()
        if left:
            raise RuntimeError(f"{left} role(s) of this broker were left on PostgreSQL")


def _exec_as_role(run: Runner, pg: DemoPostgres, role: str, grant_id: str) -> None:
    """``access exec`` logs in as the grant's role with no password; a write is refused by
    PostgreSQL; revoking the grant drops the role."""
    ran = run.access("exec", "demo-db", "--scope", "read", "--", "psql", "-c", "select current_user")
    if role not in ran.stdout:
        raise RuntimeError(f"psql through the tunnel did not run as {role}")
    console.note(f"[demo] psql was given no password and ran as {role}, the grant's own role")
    write = run.access(
        "exec",
        "demo-db",
        "--scope",
        "read",
        "--",
        "psql",
        "-c",
        "set default_transaction_read_only = off",
        "-c",
        "insert into orders values (3, 'lamp')",
        check=False,
    )
    if write.returncode == 0 or "permission denied" not in write.stderr:
        raise RuntimeError("a write through the read grant was not refused by PostgreSQL")
    console.note(
        "[demo] refused by PostgreSQL itself: the role may read (pg_read_all_data) and nothing more;"
        " the read-only default it also has is switched off first, to show it is the privileges that refuse"
    )
    run.access("revoke", grant_id)
    revoked = time.time()
    gone = pg.wait_gone(role)
    if gone is None:
        raise RuntimeError(f"role {role} was still on PostgreSQL 10s after the revoke")
    console.note(f"[demo] role {role} gone {gone - revoked:.2f}s after `access revoke` returned")


def _approved_write(run: Runner, pg: DemoPostgres | None, lead_password: str) -> None:
    """A write request waits (pending) for one of the leads; its requester may not approve it;
    the lead, signed in on their own terminal, sees it and approves it; the grant's TTL counts
    from then, and on PostgreSQL its role may write."""
    asked = run.access(
        "request",
        "demo-db",
        "--scope",
        "write",
        "--ttl",
        "5m",
        "--reason",
        "DEMO-3",
        "--no-wait",
        "-o",
        "json",
        check=False,
        show=False,
    )
    console.output(asked.stderr)  # the pending grant, as JSON on stdout, is long: its id is what counts
    if asked.returncode != 5:
        raise RuntimeError(f"the write request was not left pending (exit {asked.returncode})")
    grant_id = json.loads(asked.stdout)["id"]
    console.note("[demo] exit 5: pending, waiting for one of group:leads; the requester cannot say yes:")
    if run.access("approve", grant_id, check=False).returncode != 4:
        raise RuntimeError("the requester approved their own request")
    console.say("[demo] meanwhile, in the lead's terminal (a second person, signed in as lead):")
    run.login("lead", lead_password, who="lead")
    run.access("request", "demo-db", "--scope", "read", "--ttl", "5m", who="lead", check=False)
    console.note("[demo] deny by default: no rule gives lead anything; the lead reviews")
    run.access("grants", "--pending", who="lead")
    run.access("approve", grant_id, "--comment", "ok for DEMO-3", who="lead")
    console.say("[demo] back in the engineer's terminal:")
    run.access("wait", grant_id)
    if pg is None:
        run.access("revoke", grant_id)
        return
    console.note(f"[demo] the role the broker made on PostgreSQL for {grant_id}, once approved:")
    role = pg.show_role(grant_id)
    run.access(
        "exec", "demo-db", "--grant", grant_id, "--", "psql", "-c", "insert into orders values (3, 'lamp')"
    )
    console.note(f"[demo] PostgreSQL let {role} write: the approved write grant's own role")
    run.access("revoke", grant_id)
    if pg.wait_gone(role) is None:
        raise RuntimeError(f"role {role} was still on PostgreSQL 10s after the revoke")


def _cut_at_expiry(run: Runner, pg: DemoPostgres | None) -> None:
    args = ["connect", "demo-db", "--scope", "read", "--ttl", _CUT_TTL, "--reason", "DEMO-2", "-o", "json"]
    console.command(["access", *args], "   (in the background)")
    connect = subprocess.Popen(
        [program("access"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run.cli_env,
    )
    try:
        assert connect.stdout is not None
        line = connect.stdout.readline()
        if not line:
            raise RuntimeError(
                "access connect did not start: " + (connect.stderr.read() if connect.stderr else "")
            )
        info: dict[str, Any] = json.loads(line)
        console.note(
            f"tunnel on {info['address']}:{info['port']}, grant {info['grant_id']} until {info['expires_at']}"
        )
        expires = datetime.fromisoformat(info["expires_at"]).timestamp()
        if pg is None:
            cut_at, how = hold_echo(info["port"])
            console.note(f"{how}: cut {cut_at - expires:+.2f}s from the grant's expiry")
        else:
            _hold_postgres(run, pg, info, expires)
        _, err = connect.communicate(timeout=15)
        console.output(*err.strip().splitlines()[-2:])
        console.note(f"access connect exited {connect.returncode}; its port is closed")
    finally:
        if connect.poll() is None:
            connect.kill()
            connect.wait(timeout=10)
    answer = run.replay_handshake(info["grant_id"])
    console.note(
        f"[demo] replaying the tunnel handshake for {info['grant_id']}, as a client that kept it would: "
        f"the broker answers {answer}"
    )


def _hold_postgres(run: Runner, pg: DemoPostgres, info: dict[str, Any], expires: float) -> None:
    """A long query through the tunnel as the grant's role: cut at expiry, and the role dropped
    with its session on the server."""
    role = pg.show_role(info["grant_id"])
    query = LongQuery(info["port"], pg.database, run.cli_env)
    try:
        console.note(f"[demo] its session on PostgreSQL, as {role}:")
        pid = pg.wait_session(role)
        cut_at, how = query.wait()
    finally:
        query.close()
    console.note(f"{how}: cut {cut_at - expires:+.2f}s from the grant's expiry")
    gone = pg.wait_gone(role)
    if gone is None:
        raise RuntimeError(f"role {role} was still on PostgreSQL 10s after its grant expired")
    console.note(
        f"[demo] role {role} and its session (pid {pid}) gone {gone - expires:+.2f}s from the grant's expiry"
    )
