"""The broker's id for a request (its ``X-Request-Id`` header) is shown under an error it answered,
so the operator can find the user's error in the broker's log.

The broker sends the header (the broker side's contract); respx stands in for it here, with
replies that carry the header or not: the CLI's side is how it reads, bounds and prints it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from access.cli.client import MAX_REQUEST_ID, REQUEST_ID_HEADER, request_id
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, invoke, store_tokens

ID = "7f3c9a0e5b2d4c18a6e1f09d3b7c2a45"


def test_a_broker_error_shows_the_request_id_under_the_hint(
    config_dir: Path, stub_broker: respx.MockRouter
) -> None:
    store_tokens(config_dir)
    body = {"error": {"code": "grant_denied", "message": "no rule allows it", "hint": "ask your lead"}}
    stub_broker.post("/v1/grants").respond(403, json=body, headers={REQUEST_ID_HEADER: ID})
    result = invoke("request", "svc-payments", "--scope", "read", "--ttl", "5m")
    assert result.exit_code == ExitCode.DENIED
    assert result.stderr == f"error: no rule allows it\nhint: ask your lead\nrequest id: {ID}\n"


def test_without_the_header_there_is_no_request_id_line(
    config_dir: Path, stub_broker: respx.MockRouter
) -> None:
    store_tokens(config_dir)
    body = {"error": {"code": "unavailable", "message": "the database is down", "hint": "try later"}}
    stub_broker.get("/v1/grants").respond(503, json=body)
    result = invoke("grants")
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.stderr == "error: the database is down\nhint: try later\n"


@pytest.mark.parametrize(
    ("reply", "exit_code"),
    [
        (httpx.Response(502, html="<h1>Bad Gateway</h1>"), ExitCode.UNAVAILABLE),  # a proxy's page
        (httpx.Response(200, text="{not json"), ExitCode.ERROR),
    ],
    ids=["proxy-502", "not-json"],
)
def test_a_reply_without_an_error_body_shows_its_request_id_too(
    config_dir: Path, stub_broker: respx.MockRouter, reply: httpx.Response, exit_code: int
) -> None:
    store_tokens(config_dir)
    reply.headers[REQUEST_ID_HEADER] = ID
    stub_broker.get("/v1/grants").mock(return_value=reply)
    result = invoke("grants")
    assert result.exit_code == exit_code
    assert result.stderr.endswith(f"\nrequest id: {ID}\n"), result.stderr


def test_a_did_you_mean_keeps_the_request_id_of_the_refusal(
    config_dir: Path, stub_broker: respx.MockRouter
) -> None:
    store_tokens(config_dir)
    body = {"error": {"code": "not_found", "message": "no service svc-paymnets", "hint": None}}
    stub_broker.post("/v1/grants").respond(404, json=body, headers={REQUEST_ID_HEADER: ID})
    services = [{"name": "svc-payments", "kind": "postgres", "scopes": []}]
    stub_broker.get("/v1/services").respond(200, json=services, headers={REQUEST_ID_HEADER: "other"})
    result = invoke("request", "svc-paymnets", "--scope", "read", "--ttl", "5m")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "did you mean `svc-payments`?" in result.stderr
    assert result.stderr.endswith(f"\nrequest id: {ID}\n"), result.stderr


def test_a_refused_refresh_shows_the_id_of_the_token_request(
    config_dir: Path, stub_broker: respx.MockRouter
) -> None:
    store_tokens(config_dir)
    stub_broker.get("/v1/grants").respond(401, json={"error": {"code": "unauthenticated", "message": "no"}})
    refused = {"error": "invalid_grant", "error_description": "the session has ended"}
    stub_broker.post("/oauth/token").respond(400, json=refused, headers={REQUEST_ID_HEADER: ID})
    result = invoke("grants")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "has ended" in result.stderr and result.stderr.endswith(f"\nrequest id: {ID}\n"), result.stderr


def test_a_refused_service_account_login_shows_the_request_id(
    tmp_path: Path, stub_broker: respx.MockRouter
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not-the-secret\n")
    secret.chmod(0o600)
    refused = {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
    stub_broker.post("/oauth/token").respond(401, json=refused, headers={REQUEST_ID_HEADER: ID})
    result = invoke("--broker", BROKER, "login", "--client-id", "ci", "--client-secret-file", str(secret))
    assert result.exit_code == ExitCode.DENIED
    assert result.stderr.endswith(f"\nrequest id: {ID}\n"), result.stderr


def test_an_id_with_escapes_is_shown_escaped_and_a_long_one_cut(
    config_dir: Path, stub_broker: respx.MockRouter
) -> None:
    # The header comes from the network (the broker, or whatever answers at its URL).
    store_tokens(config_dir)
    stub_broker.get("/v1/grants").respond(503, headers={REQUEST_ID_HEADER: "\x1b]0;owned\x07" + "a" * 500})
    result = invoke("grants")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("request id: ")]
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert line.startswith("request id: \\x1b]0;owned\\x07aaa")
    assert line.count("a") == MAX_REQUEST_ID - len("\x1b]0;owned\x07")  # no "a" in the rest


def test_request_id_reads_the_header_and_ignores_an_empty_one() -> None:
    assert request_id(httpx.Response(500, headers={"x-request-id": f"  {ID} "})) == ID
    assert request_id(httpx.Response(500, headers={REQUEST_ID_HEADER: " "})) is None
    assert request_id(httpx.Response(500)) is None
