"""``access-broker serve --log-format json`` as users start it: every log line is JSON, none
holds the password; ``/metrics`` is served on ``metrics_listen`` (and gone from the main port)."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import httpx

from tests.broker.observe.test_metrics import samples, value
from tests.e2e.conftest import DevCA, make_broker_process, new_cli, running

PASSWORD = "alice-password-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_logs_json_lines_and_serves_metrics_on_their_own_address(tmp_path: Path, devca: DevCA) -> None:
    metrics_port = _free_port()
    proc = make_broker_process(
        tmp_path,
        devca,
        f"sqlite:///{tmp_path / 'broker.db'}",
        ACCESS_BROKER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    proc.args = ("--log-format", "json", "--log-level", "info")
    proc.admin("users", "add", "alice", "-g", "sre", "--password-stdin", input=PASSWORD + "\n")
    with running(proc):
        cli = new_cli(tmp_path, proc)
        login = cli.device_login("alice", PASSWORD)
        assert login.returncode == 0, login.stderr
        request = cli.run("request", "svc-payments", "--scope", "read", "--ttl", "5m", "--reason", "INC-9")
        assert request.returncode == 0, request.stderr
        verify = ssl.create_default_context(cafile=str(devca.ca_cert))
        main_port = httpx.get(f"{proc.url}/metrics", verify=verify, timeout=10)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert main_port.status_code == 404
    assert main_port.headers["x-request-id"]
    assert scraped.status_code == 200
    found = samples(scraped.text)
    assert value(found, "access_http_requests_total", route="/v1/grants", method="POST", status="201") == 1
    assert value(found, "access_grants", state="active") == 1

    output = "".join(proc.output)
    assert PASSWORD not in output
    logged = [json.loads(line) for line in proc.output if not line.startswith("access-broker listening on")]
    assert any(line["logger"].startswith("uvicorn") for line in logged)  # uvicorn's lines too
    requests = [line for line in logged if line["logger"] == "access.broker.requests"]
    created = next(line for line in requests if line["route"] == "/v1/grants" and line["method"] == "POST")
    assert created["status"] == 201 and created["principal"] == "alice" and created["request_id"]
