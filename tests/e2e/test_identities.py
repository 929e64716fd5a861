"""Nothing left behind: a real broker SIGKILLed with active grants on PostgreSQL, MariaDB and
Redis (each with its per-grant identity), restarted after they expired, removes every identity
of its own within the reconcile interval, also one its store never recorded; and nothing lost:
a statement it relayed but had not yet written to the ledger is written after the restart."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from access.broker.identities.targets import provisioner_for
from access.broker.keys import key_id, load_or_create_key
from access.broker.policy import policy_from_data
from access.broker.policy.model import ServiceConfig
from access.broker.provision.base import IdentitySpec
from access.broker.provision.common import wait_until
from access.shared.devca import DevCA
from tests.broker.identities.conftest import (
    Place,
    place,  # noqa: F401 (the fixture, used by name)
)
from tests.e2e.conftest import _require_tool, make_broker_process, new_cli, running

RECONCILE = 1.0  # seconds: ACCESS_BROKER_IDENTITY_RECONCILE_INTERVAL for this broker


def ours_on(svc: ServiceConfig, ours: str, *, end: bool = False) -> list[str]:
    """The names of broker ``ours``'s identities on the service's target (ended, with ``end``)."""
    with provisioner_for(svc, ours) as target:
        names = [o.name for o in target.ours() if o.broker_id == ours]
        for name in names if end else ():
            target.end(name)
    return names


def test_a_broker_killed_with_active_grants_leaves_no_identity_after_restart(
    tmp_path: Path,
    devca: DevCA,
    place: Place,  # noqa: F811
) -> None:
    policy = place.policy()
    services: list[ServiceConfig] = list(policy_from_data(policy).services.values())
    proc = make_broker_process(
        tmp_path,
        devca,
        f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}",
        policy,
        ACCESS_BROKER_IDENTITY_RECONCILE_INTERVAL=str(RECONCILE),
        # The writer waits a minute: a statement of a live channel is only in memory and the journal.
        ACCESS_BROKER_STATEMENT_FLUSH_INTERVAL="60",
    )
    creds = proc.add_service_account("deploy-bot", "sre")
    secret = tmp_path / "secret"
    secret.write_text(creds["client_secret"])
    secret.chmod(0o600)
    proc.start()
    ours = key_id(load_or_create_key(proc.data_dir / "token-signing-key.pem"))

    def left() -> list[str]:
        return [name for svc in services for name in ours_on(svc, ours)]

    try:
        cli = new_cli(tmp_path, proc)
        login = cli.run("login", "--client-id", creds["client_id"], "--client-secret-file", str(secret))
        assert login.returncode == 0, login.stderr
        expiries = []
        for service in ("svc-pg", "svc-my", "svc-rd"):
            made = cli.run(
                "request", service, "--scope", "read", "--ttl", "8s", "--reason", "t", "-o", "json"
            )
            assert made.returncode == 0, made.stderr
            expiries.append(datetime.fromisoformat(json.loads(made.stdout)["expires_at"]))
        assert len(left()) == 3
        marker = f"journal-{place.suffix}"
        held = cli.popen(
            "exec", "svc-pg", "-s", "read", "-t", "8s", "-r", "journal", "--",
            "psql", "-X", "-c", f"SELECT '{marker}', pg_sleep(30)",
        )  # fmt: skip
        try:
            assert wait_until(lambda: _running_on_target(marker, place.pg_port), within=15, step=0.05)
            assert _statements(proc.database_url, marker, 1, within=0) == []  # not in the ledger yet
            listed = cli.run("grants", "-o", "json")
            assert listed.returncode == 0, listed.stderr
            expiries += [
                datetime.fromisoformat(g["expires_at"]) for g in json.loads(listed.stdout)
            ]  # the exec's
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGKILL)
        finally:
            held.kill()
            held.communicate(timeout=10)
        proc.proc.wait(timeout=10)
        proc.stop()
        # Past every expiry, with the broker dead: the identities are still there.
        assert wait_until(lambda: datetime.now(expiries[0].tzinfo) > max(expiries), within=10, step=0.1)
        # And one the store never heard of (lost with a restored backup, say): only reconcile knows it.
        lost = IdentitySpec("g-lost0000000000", "bob", "read", max(expiries), ("pg_read_all_data",))
        with provisioner_for(services[0], ours) as target:
            target.create(lost)
        assert len(left()) == 5  # three requests, the exec, and the lost one
        proc.start()
        started = time.monotonic()
        assert wait_until(lambda: not left(), within=RECONCILE + 5, step=0.1), left()
        gone = time.monotonic() - started
        print(f"\nrestart -> none of the broker's identities left in {gone * 1000:.0f} ms")
        assert gone <= RECONCILE + 1
        # The statement the killed process relayed, from its journal, once.
        [statement] = _statements(proc.database_url, marker, 1)
        assert statement[1:3] == ["query", f"SELECT '{marker}', pg_sleep(30)"]
    finally:
        proc.stop()
        for svc in services:  # whatever a failed run left
            ours_on(svc, ours, end=True)


def _running_on_target(needle: str, port: int = 5432) -> bool:
    """Whether a query containing ``needle`` runs on the machine's PostgreSQL now."""
    import psycopg

    with psycopg.connect(
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=5
    ) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{needle}%",),
        ).fetchone()
    return bool(row and row[0])


def _statements(database_url: str, needle: str, count: int, *, within: float = 10) -> list[Any]:
    """The ``connection.statements`` rows whose text contains ``needle``, once there are ``count``
    (written from a worker thread about once a second: polled, bounded)."""
    import sqlalchemy as sa

    from access.broker.store.engine import create_engine

    engine = create_engine(database_url)
    found: list[Any] = []

    def look() -> bool:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT details FROM audit_log WHERE action = 'connection.statements' ORDER BY seq")
            ).all()
        found[:] = [s for (d,) in rows for s in json.loads(d)["statements"] if needle in s[2]]
        return len(found) >= count

    try:
        if within:
            wait_until(look, within=within, step=0.1)
        else:
            look()
    finally:
        engine.dispose()
    return found


def test_access_exec_logs_in_as_the_grants_own_identity_whose_scope_the_target_enforces(
    tmp_path: Path,
    devca: DevCA,
    place: Place,  # noqa: F811
) -> None:
    """The whole of issue 10's path: `access exec` with no password reaches PostgreSQL, MariaDB
    and Redis as a per-grant identity; read cannot write, write can; the statements are in the
    ledger; revoking ends the identity."""
    for tool in ("psql", "mysql", "redis-cli"):
        _require_tool(tool)
    database_url = f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}"
    proc = make_broker_process(tmp_path, devca, database_url, place.policy())
    creds = proc.add_service_account("deploy-bot", "sre")
    secret = tmp_path / "secret"
    secret.write_text(creds["client_secret"])
    secret.chmod(0o600)
    s = place.schema
    with running(proc):
        ours = key_id(load_or_create_key(proc.data_dir / "token-signing-key.pem"))
        cli = new_cli(tmp_path, proc)
        login = cli.run("login", "--client-id", creds["client_id"], "--client-secret-file", str(secret))
        assert login.returncode == 0, login.stderr

        def run(service: str, scope: str, *argv: str) -> tuple[int, str]:
            done = cli.run("exec", service, "-s", scope, "-t", "5m", "-r", "INC-10", "--", *argv)
            return done.returncode, (done.stderr + done.stdout).strip()  # the client's output last

        code, said = run("svc-pg", "read", "psql", "-Atc", "select current_user")
        assert code == 0 and said.splitlines()[-1].startswith("access_"), said
        code, said = run("svc-pg", "read", "psql", "-Atc", f"insert into {s}.t values (1)")
        assert code != 0 and "permission denied" in said, said
        code, said = run(
            "svc-pg", "read", "psql", "-Atc", f"set role {s}_writer; insert into {s}.t values (1)"
        )
        assert code != 0, said  # a read identity is not a member of the writer role
        code, said = run("svc-pg", "write", "psql", "-Atc", f"insert into {s}.t values (2)")
        assert code == 0, said
        code, said = run("svc-my", "read", "mysql", "-N", "-B", "-e", f"insert into {s}.t values (1)")
        assert code != 0 and "denied" in said.lower(), said
        code, said = run("svc-my", "write", "mysql", "-N", "-B", "-e", f"insert into {s}.t values (2)")
        assert code == 0, said
        code, said = run("svc-rd", "read", "redis-cli", "set", f"{s}:k", "v")
        assert "NOPERM" in said, said
        code, said = run("svc-rd", "write", "redis-cli", "set", f"{s}:k", "v")
        assert said.endswith("OK"), said
        # Every statement is in the ledger, tied to its grant, with no parameter values asked for.
        rows = _statements(database_url, f"insert into {s}.t values (2)", 2)  # psql's, then mysql's
        assert [row[1] for row in rows] == ["query", "query"], rows
        # Each exec reused or made a grant; revoking them all ends every identity of ours.
        listed = cli.run("grants", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        for grant in json.loads(listed.stdout):
            assert cli.run("revoke", grant["id"]).returncode == 0
        services = list(policy_from_data(place.policy()).services.values())
        assert wait_until(lambda: not [n for svc in services for n in ours_on(svc, ours)], within=5, step=0.1)
