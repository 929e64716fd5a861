"""The demo's steps, as the ``access demo`` command runs them."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import typer

from access.cli.demo import console
from access.cli.demo.runner import Runner, program
from access.cli.demo.targets import EchoService, hold_session, policy, postgres_reachable

__all__ = ["demo"]

_CUT_TTL = "6s"


def demo(
    keep: bool = typer.Option(
        False, "--keep", help="Keep the demo's temporary directory and print where it is"
    ),
) -> None:
    """Run the whole loop against a throwaway broker: login, request, exec, cut at expiry, audit."""
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
    service: EchoService | None = None
    run = Runner(workdir)
    try:
        if postgres_reachable():
            target, kind, options = "127.0.0.1:5432", "postgres", {"database": "postgres", "user": "postgres"}
            command = [
                "psql",
                "-Atc",
                "select 'connected to PostgreSQL as ' || current_user || ' at ' || now()",
            ]
            console.say("[demo] target: the local PostgreSQL on 127.0.0.1:5432")
        else:
            service = EchoService()
            target, kind, options = f"127.0.0.1:{service.port}", "tcp", {}
            client = (
                "import os,socket;"
                "s=socket.create_connection((os.environ['ACCESS_HOST'],int(os.environ['ACCESS_PORT'])));"
                "print(s.recv(100).decode().strip())"
            )
            command = [sys.executable, "-c", client]
            console.say("[demo] no PostgreSQL reachable on 127.0.0.1:5432: using the built-in demo service")
        policy_file = workdir / "policy.yaml"
        policy_file.write_text(policy(target, kind, options))
        password = secrets.token_urlsafe(12)

        console.say("\n1. An operator starts a broker (TLS from a throwaway CA) and adds a user")
        run.admin("users", "add", "demo", "--group", "sre", "--password-stdin", stdin=password + "\n")
        run.start_broker(policy_file)
        console.note(f"$ access-broker serve --policy {policy_file.name} ...   -> {run.url}")

        console.say("\n2. An engineer signs in with the device flow (RFC 8628)")
        run.login("demo", password)
        run.access("whoami")
        run.access("services")

        console.say("\n3. They ask for a grant; policy decides, the ledger records it")
        run.access("request", "demo-db", "--scope", "write", "--ttl", "5m", "--reason", "DEMO-1", check=False)
        grant = json.loads(
            run.access(
                "request", "demo-db", "--scope", "read", "--ttl", "5m", "--reason", "DEMO-1", "-o", "json"
            ).stdout
        )
        run.access("grants")

        console.say(
            "\n4. access exec: tunnel up, command runs with the connection in its environment, tunnel down"
        )
        run.access("exec", "demo-db", "--scope", "read", "--", *command)
        run.access("revoke", grant["id"])

        console.say(f"\n5. A live connection is cut when the grant expires ({_CUT_TTL} grant)")
        args = [
            "connect",
            "demo-db",
            "--scope",
            "read",
            "--ttl",
            _CUT_TTL,
            "--reason",
            "DEMO-2",
            "-o",
            "json",
        ]
        console.command(["access", *args], "   (in the background)")
        connect = subprocess.Popen(
            [program("access"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run.cli_env,
        )
        assert connect.stdout is not None
        line = connect.stdout.readline()
        if not line:
            raise RuntimeError(
                "access connect did not start: " + (connect.stderr.read() if connect.stderr else "")
            )
        info = json.loads(line)
        expires = datetime.fromisoformat(info["expires_at"]).timestamp()
        console.note(
            f"tunnel on {info['address']}:{info['port']}, grant {info['grant_id']} until {info['expires_at']}"
        )
        cut_at, how = hold_session(kind, info["port"], options)
        console.note(f"{how}: cut {cut_at - expires:+.2f}s from the grant's expiry")
        _, err = connect.communicate(timeout=15)
        console.output(*err.strip().splitlines()[-2:])
        console.note(f"access connect exited {connect.returncode}; its port is closed")
        answer = run.replay_handshake(info["grant_id"])
        console.note(
            f"[demo] replaying the tunnel handshake for {info['grant_id']}, as a client that kept it would: "
            f"the broker answers {answer}"
        )

        console.say("\n6. The audit trail, and the ledger's verification")
        run.access("audit", "--since", "10m")
        run.stop_broker()
        verify = run.admin("audit", "verify")
        console.output(verify.stdout, verify.stderr)
        console.say(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        typer.secho(f"demo failed: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from exc
    finally:
        run.stop_broker()
        if service:
            service.close()
        if keep:
            typer.echo(f"demo files kept in {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
