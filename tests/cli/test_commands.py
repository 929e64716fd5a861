"""The data commands: -o json shapes, text tables, early input checks, broker errors, logout."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import respx

from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, PRINCIPAL, grant_body, invoke, store_tokens, stored

SERVICES = [
    {
        "name": "svc-payments",
        "kind": "postgres",
        "description": "Payments database",
        "scopes": [{"scope": "read", "max_ttl_seconds": 3600}, {"scope": "write", "max_ttl_seconds": 1800}],
    }
]


@pytest.fixture
def signed_in(config_dir: Path) -> None:
    store_tokens(config_dir)


@pytest.mark.usefixtures("signed_in")
def test_json_output_is_the_wire_model_on_stdout(broker: respx.MockRouter) -> None:
    broker.get("/v1/whoami").respond(200, json=PRINCIPAL)
    broker.get("/v1/services").respond(200, json=SERVICES)
    broker.get("/v1/grants").respond(200, json=[grant_body()])
    me = invoke("whoami", "-o", "json")
    assert me.exit_code == 0 and me.stderr == ""
    assert json.loads(me.stdout) == {**PRINCIPAL, "token_expires_at": None}
    services = json.loads(invoke("services", "--output", "json").stdout)
    assert services[0]["name"] == "svc-payments"
    assert services[0]["scopes"][1] == {"scope": "write", "max_ttl_seconds": 1800, "requirement": "auto"}
    grants = json.loads(invoke("grants", "-o", "json").stdout)
    assert isinstance(grants, list) and grants[0]["id"] == grant_body()["id"]
    assert grants[0]["expires_at"] == "2026-01-01T10:30:00Z" and grants[0]["seconds_left"] == 1800


@pytest.mark.usefixtures("signed_in")
def test_text_tables_keep_ids_whole(broker: respx.MockRouter) -> None:
    long_id = "g-" + "f" * 60
    broker.get("/v1/grants").respond(200, json=[grant_body(id=long_id)])
    broker.get("/v1/services").respond(200, json=SERVICES)
    grants = invoke("grants")
    assert grants.exit_code == 0
    assert long_id in grants.stdout and "30m" in grants.stdout
    services = invoke("services").stdout
    assert "read 1h, write 30m" in services


@pytest.mark.usefixtures("signed_in")
def test_request_sends_the_grant_request(broker: respx.MockRouter) -> None:
    route = broker.post("/v1/grants").respond(200, json=grant_body())
    result = invoke(
        "request", "svc-payments", "--scope", "read", "--ttl", "30m", "--reason", "INC-123", "-o", "json"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(route.calls[0].request.content) == {
        "service": "svc-payments",
        "scope": "read",
        "ttl": "30m",
        "reason": "INC-123",
    }
    assert json.loads(result.stdout)["state"] == "active"
    assert "access connect svc-payments" in result.stderr


@pytest.mark.usefixtures("signed_in")
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["svc-payments", "--scope", "read", "--ttl", "0s"], "longer than zero"),
        (["svc-payments", "--scope", "read", "--ttl", "-5m"], "bad duration"),
        (["svc-payments", "--scope", "read", "--ttl", "soon"], "30m"),
        (["Svc_Payments", "--scope", "read"], "not a service name"),
        (["svc-payments", "--scope", "READ!"], "not a scope"),
    ],
)
def test_bad_request_input_is_refused_before_asking_the_broker(
    broker: respx.MockRouter, args: list[str], text: str
) -> None:
    route = broker.post("/v1/grants").respond(200, json=grant_body())
    result = invoke("request", *args)
    assert result.exit_code == ExitCode.USAGE
    assert text in result.stderr and "hint: " in result.stderr
    assert not route.called


@pytest.mark.usefixtures("signed_in")
@pytest.mark.parametrize(
    ("status", "code", "exit_code"),
    [
        (403, "grant_denied", ExitCode.DENIED),
        (404, "not_found", ExitCode.NOT_FOUND),
        (400, "invalid_request", ExitCode.USAGE),
        (409, "pending", ExitCode.PENDING),
        (503, "unavailable", ExitCode.UNAVAILABLE),
    ],
)
def test_broker_errors_map_to_exit_codes_with_their_hint(
    broker: respx.MockRouter, status: int, code: str, exit_code: int
) -> None:
    body = {"error": {"code": code, "message": f"broker says {code}", "hint": "see `access services`"}}
    broker.post("/v1/grants").respond(status, json=body)
    result = invoke("request", "svc-payments", "--scope", "read", "--ttl", "5m")
    assert result.exit_code == exit_code
    assert result.stderr == f"error: broker says {code}\nhint: see `access services`\n"
    assert result.stdout == ""


@pytest.mark.usefixtures("signed_in")
def test_revoke_and_audit(broker: respx.MockRouter) -> None:
    gid = grant_body()["id"]
    broker.post(f"/v1/grants/{gid}/revoke").respond(200, json=grant_body(state="revoked", seconds_left=0))
    revoked = invoke("revoke", gid, "-o", "json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["state"] == "revoked"

    entry = {
        "seq": 7,
        "at": "2026-01-01T10:00:00Z",
        "actor": "alice",
        "action": "grant.issue",
        "target": "svc-payments",
        "details": {"scope": "read"},
        "hash": "ab" * 32,
    }
    audit = broker.get("/v1/audit").respond(200, json={"entries": [entry]})
    result = invoke("audit", "--actor", "alice", "--since", "1h", "--limit", "5", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [entry]
    assert dict(audit.calls[0].request.url.params) == {"actor": "alice", "since": "1h", "limit": "5"}
    text = invoke("audit")
    assert "grant.issue" in text.stdout and "scope=read" in text.stdout

    bad = invoke("audit", "--since", "yesterday")
    assert bad.exit_code == ExitCode.USAGE


def test_logout_revokes_server_side_and_deletes_local_tokens(
    config_dir: Path, broker: respx.MockRouter
) -> None:
    store_tokens(config_dir, access="at-1", refresh="rt-1")
    logout = broker.post("/v1/logout").respond(200, json={"status": "signed_out"})
    revoke = broker.post("/oauth/revoke").respond(200, json={})
    result = invoke("logout")
    assert result.exit_code == 0, result.stderr
    assert logout.calls[0].request.headers["authorization"] == "Bearer at-1"
    assert parse_qs(revoke.calls[0].request.content.decode())["token"] == ["rt-1"]
    assert stored(config_dir) is None
    assert invoke("whoami").exit_code == ExitCode.NEEDS_LOGIN


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_broker_names_the_url(config_dir: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = invoke("--broker", url, "whoami", env={"ACCESS_TOKEN": "t"})
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert f"cannot reach the broker at {url}" in result.stderr
    assert "ACCESS_BROKER_URL" in result.stderr  # the hint says where the URL came from


def test_logout_works_when_the_broker_is_unreachable(config_dir: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    store_tokens(config_dir, url=url)
    result = invoke("logout")
    assert result.exit_code == 0
    assert "warning: cannot reach the broker" in result.stderr
    assert stored(config_dir, url) is None


def test_plain_http_only_on_loopback_or_with_insecure(config_dir: Path) -> None:
    refused = invoke("--broker", "http://broker.example.com", "whoami")
    assert refused.exit_code == ExitCode.USAGE
    assert "--insecure" in refused.stderr
    allowed = invoke("--insecure", "--broker", "http://broker.example.com", "whoami")
    assert allowed.exit_code == ExitCode.NEEDS_LOGIN  # past the URL check: not signed in there


def test_no_broker_configured_says_how_to_set_one(config_dir: Path) -> None:
    result = invoke("grants")
    assert result.exit_code == ExitCode.USAGE
    assert "access login --broker" in result.stderr


def test_no_color_turns_colour_off(config_dir: Path) -> None:
    coloured = invoke("grants", env={"FORCE_COLOR": "1"})
    assert "\x1b[" in coloured.stderr  # the check below can fail
    plain = invoke("grants", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[" not in plain.stderr
    assert plain.stderr.startswith("error: no broker configured")


def test_missing_ca_file_is_a_usage_error(config_dir: Path) -> None:
    result = invoke(
        "--broker", BROKER, "--ca-file", str(config_dir / "nope.pem"), "whoami", env={"ACCESS_TOKEN": "t"}
    )
    assert result.exit_code == ExitCode.USAGE
    assert "CA file not found" in result.stderr
