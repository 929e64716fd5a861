"""Webhooks from the real broker process: a grant requested through the real CLI, and its end
when an admin command (another process) disables the service account, reach a loopback receiver
signed; an endpoint that is down delays nothing. SQLite only: the database paths are covered in
tests/broker/notifications on both."""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import DevCA, make_broker_process, new_cli, running
from tests.fakes.webhooks import receiver


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_serving_broker_delivers_signed_notices(tmp_path: Path, devca: DevCA) -> None:
    secret = secrets.token_hex(32).encode()
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    with receiver(secret, time.time) as hook:
        hooks = [
            {"name": "down", "url": f"http://127.0.0.1:{_closed_port()}/", "secret_file": str(secret_file)},
            {"name": "ops", "url": hook.url, "format": "json", "secret_file": str(secret_file)},
        ]
        proc = make_broker_process(
            tmp_path,
            devca,
            f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}",
            ACCESS_BROKER_WEBHOOKS=json.dumps(hooks),
        )
        with running(proc):
            creds = proc.add_service_account("deploy-bot", "ci")
            creds_file = tmp_path / "client.secret"
            creds_file.write_text(creds["client_secret"])
            creds_file.chmod(0o600)
            cli = new_cli(tmp_path, proc)
            env = {"ACCESS_CLIENT_ID": creds["client_id"], "ACCESS_CLIENT_SECRET_FILE": str(creds_file)}
            started = time.monotonic()
            grant = _json(
                cli.run(
                    "request",
                    "svc-payments",
                    "-s",
                    "read",
                    "-t",
                    "5m",
                    "-r",
                    "deploy <42>",
                    "-o",
                    "json",
                    env=env,
                )
            )
            assert time.monotonic() - started < 10  # the dead endpoint is not on the request's path
            proc.admin("service-accounts", "disable", "deploy-bot")  # another process writes this notice
            got = hook.wait_for(3, timeout=20)
    assert all(r.signed for r in got)
    assert [r.json["event"] for r in got] == ["grant.issued", "grant.revoked", "access.locked"]
    assert got[0].json["grant"]["id"] == grant["id"] and got[0].json["grant"]["reason"] == "deploy <42>"
    assert got[1].json["details"] == {"why": "locked"} and got[1].json["actor"].startswith("admin:")
    assert got[2].json["details"] == {"target": "service_account:deploy-bot", "grants_ended": [grant["id"]]}
    assert proc.url in got[0].json["broker"]
    assert hook.url not in "".join(proc.output)  # the URL is never logged (a Slack URL is a secret)
