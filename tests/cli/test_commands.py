"""The data commands against the real broker in-process: -o json shapes, text tables, early input
checks, broker errors and their exit codes, revoke, audit, logout.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from access.shared.errors import ExitCode
from access.shared.models import Grant
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker, invoke, store_tokens, stored
from tests.conftest import DEFAULT_POLICY

# svc-payments: read for up to 1h, write for up to 30m (for sre); ci may read for 15m.
POLICY: dict[str, Any] = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "postgres",
            "target": "127.0.0.1:5432",
            "description": "Payments database",
            "scopes": ["read", "write"],
            "max_ttl": "1h",
            "options": {"database": "test", "user": "postgres"},
        }
    ],
    "rules": [
        {
            "name": "sre-read",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "max_ttl": "1h",
            "require": "auto",
        },
        {
            "name": "sre-write",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["write"],
            "max_ttl": "30m",
            "require": "auto",
        },
        {
            "name": "ci-read",
            "subjects": {"groups": ["ci"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "max_ttl": "15m",
            "require": "auto",
        },
    ],
    "audit": {"readers": {"groups": ["sre"]}},
}


@pytest.fixture
def live(broker_app: BrokerApp) -> LiveBroker:
    """The broker with POLICY, alice (sre) signed in through the CLI's token store."""
    made = broker_app(policy=POLICY, users={"alice": ["sre"], "bob": ["ci"]})
    made.sign_in("alice")
    return made


def _request(live: LiveBroker, *args: str) -> dict[str, Any]:
    result = live.invoke("request", "svc-payments", *args, "-o", "json")
    assert result.exit_code == 0, result.stderr
    grant: dict[str, Any] = json.loads(result.stdout)
    return grant


def test_json_output_is_the_wire_model_on_stdout(live: LiveBroker) -> None:
    me = live.invoke("whoami", "-o", "json")
    assert me.exit_code == 0 and me.stderr == ""
    principal = json.loads(me.stdout)
    assert set(principal) == {
        "name",
        "kind",
        "groups",
        "session_id",
        "can_read_audit",
        "token_expires_at",
        "session_expires_at",
        "mfa_at",
        "mfa_age_seconds",
    }
    assert (principal["mfa_at"], principal["mfa_age_seconds"]) == (None, None)  # a password-only sign-in
    assert (principal["name"], principal["kind"], principal["groups"]) == ("alice", "user", ["sre"])
    assert principal["can_read_audit"] is True and principal["session_id"]

    services = json.loads(live.invoke("services", "--output", "json").stdout)
    assert services[0]["name"] == "svc-payments"
    assert services[0]["scopes"][1] == {
        "scope": "write",
        "max_ttl_seconds": 1800,
        "requirement": "auto",
        "reviewers": None,
        "mfa_seconds": None,
    }

    issued = _request(live, "--scope", "read", "--ttl", "30m", "--reason", "INC-123")
    grants = json.loads(live.invoke("grants", "-o", "json").stdout)
    assert isinstance(grants, list) and grants[0]["id"] == issued["id"]
    # The broker's FakeClock starts at 2030-01-01T00:00:00Z and has not moved.
    assert grants[0]["expires_at"] == "2030-01-01T00:30:00Z" and grants[0]["seconds_left"] == 1800


def test_every_data_command_prints_json(live: LiveBroker) -> None:
    """`-o json` on each data command gives parseable JSON on stdout and nothing else there."""
    grant = _request(live, "--scope", "read", "--ttl", "10m")
    for args in (
        ["whoami"],
        ["services"],
        ["grants"],
        ["grants", "--all"],
        ["audit", "--limit", "3"],
        ["env", "svc-payments", "--port", "15432"],
        ["revoke", grant["id"]],
    ):
        result = live.invoke(*args, "-o", "json")
        assert result.exit_code == 0, (args, result.stderr)
        assert isinstance(json.loads(result.stdout), dict | list), args


def test_text_tables_keep_ids_whole(live: LiveBroker) -> None:
    grant = _request(live, "--scope", "read", "--ttl", "30m", "--reason", "INC-123 " + "word " * 30)
    # At 60 columns the long reason squeezes the table: without keep_whole the id would wrap.
    grants = live.invoke("grants", env={"COLUMNS": "60"})
    assert grants.exit_code == 0
    assert grant["id"] in grants.stdout and "30m" in grants.stdout
    services = live.invoke("services").stdout
    assert "read 1h, write 30m" in services


def test_request_sends_the_grant_request(live: LiveBroker) -> None:
    result = live.invoke(
        "request", "svc-payments", "--scope", "read", "--ttl", "30m", "--reason", "INC-123", "-o", "json"
    )
    assert result.exit_code == 0, result.stderr
    [sent] = live.sent("POST", "/v1/grants")
    assert json.loads(sent.content) == {
        "service": "svc-payments",
        "scope": "read",
        "ttl": "30m",
        "reason": "INC-123",
    }
    grant = json.loads(result.stdout)
    assert (grant["state"], grant["subject"], grant["reason"]) == ("active", "alice", "INC-123")
    assert "access connect svc-payments" in result.stderr


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
    live: LiveBroker, args: list[str], text: str
) -> None:
    result = live.invoke("request", *args)
    assert result.exit_code == ExitCode.USAGE
    assert text in result.stderr and "hint: " in result.stderr
    assert live.transport.requests == []


@pytest.mark.parametrize(
    ("args", "exit_code", "text"),
    [
        (["svc-payments", "--scope", "write", "--ttl", "5m"], ExitCode.DENIED, "write"),  # bob is ci
        (["svc-nope", "--scope", "read", "--ttl", "5m"], ExitCode.NOT_FOUND, "svc-nope"),
        (["svc-payments", "--scope", "read", "--ttl", "2h"], ExitCode.DENIED, "15m"),  # over ci's max
    ],
)
def test_broker_refusals_map_to_exit_codes_with_their_hint(
    live: LiveBroker, args: list[str], exit_code: int, text: str
) -> None:
    live.sign_in("bob")
    result = live.invoke("request", *args)
    assert result.exit_code == exit_code, result.stderr
    assert result.stdout == ""
    # The broker's request id (X-Request-Id) comes last: the error can be found in its logs.
    error, hint, request_id = result.stderr.splitlines()
    assert error.startswith("error: ") and hint.startswith("hint: ")
    assert request_id.startswith("request id: ") and len(request_id) > len("request id: ")
    assert text in result.stderr


def test_an_unavailable_database_is_exit_code_unavailable(live: LiveBroker) -> None:
    # The broker fails closed: with its database gone it answers 503 and the CLI exits 7.
    live.broker.engine.dispose()
    Path(live.broker.engine.url.database or "").unlink()
    result = live.invoke("grants")
    assert result.exit_code == ExitCode.UNAVAILABLE, result.stderr
    assert result.stderr.startswith("error: the broker's database is unavailable")
    assert "hint: " in result.stderr


@pytest.mark.parametrize("command", [["login"], ["login", "--client-id", "sa-ci"]])
def test_a_sign_in_while_the_database_is_down_is_exit_code_unavailable(
    live: LiveBroker, command: list[str], tmp_path: Path
) -> None:
    # /oauth/* answers the database's 503 in the broker's own error shape: the CLI shows its
    # message and hint (not a dict, not "refused"), and exits 7 as for every other endpoint.
    secret = tmp_path / "secret"
    secret.write_text("not-the-secret\n")
    live.broker.engine.dispose()
    Path(live.broker.engine.url.database or "").unlink()
    args = [*command, "--client-secret-file", str(secret)] if "--client-id" in command else command
    result = live.invoke(*args)
    assert result.exit_code == ExitCode.UNAVAILABLE, result.stderr
    assert result.stderr.startswith("error: the broker's database is unavailable"), result.stderr
    assert "hint: " in result.stderr and "{" not in result.stderr


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
    config_dir: Path, stub_broker: respx.MockRouter, status: int, code: str, exit_code: int
) -> None:
    # respx: the exact rendering of an error body for each wire code, with a message and hint we
    # choose; the real broker cannot send some of them here (409 pending: approvals are not
    # enabled yet). The real broker's refusals are covered by the two tests above.
    store_tokens(config_dir)
    body = {"error": {"code": code, "message": f"broker says {code}", "hint": "see `access services`"}}
    stub_broker.post("/v1/grants").respond(status, json=body)
    if code == "not_found":  # the CLI looks for a "did you mean" among your services: none here
        stub_broker.get("/v1/services").respond(200, json=[])
    result = invoke("request", "svc-payments", "--scope", "read", "--ttl", "5m")
    assert result.exit_code == exit_code
    assert result.stderr == f"error: broker says {code}\nhint: see `access services`\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("reply", "exit_code", "text"),
    [
        # A proxy in front of the broker failing with its own HTML page.
        (httpx.Response(502, html="<h1>Bad Gateway</h1>"), ExitCode.UNAVAILABLE, "answered HTTP 502"),
        # Some other web server at that URL.
        (httpx.Response(404, html="<h1>Not Found</h1>"), ExitCode.NOT_FOUND, "is this the broker's URL?"),
        (httpx.Response(200, text="{not json"), ExitCode.ERROR, "sent a reply that is not JSON"),
        (httpx.Response(200, json=[{"id": 7}]), ExitCode.ERROR, "invalid field(s)"),
    ],
)
def test_foreign_or_malformed_replies_are_reported(
    config_dir: Path, stub_broker: respx.MockRouter, reply: httpx.Response, exit_code: int, text: str
) -> None:
    # respx: no real broker sends these; the CLI must still say something useful.
    store_tokens(config_dir)
    stub_broker.get("/v1/grants").mock(return_value=reply)
    result = invoke("grants")
    assert result.exit_code == exit_code, result.stderr
    assert text in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("reply", [{"grants": []}, [{"id": "g-1"}, "g-2"]])
def test_grants_json_must_be_a_list_of_objects(
    config_dir: Path, stub_broker: respx.MockRouter, reply: Any
) -> None:
    # -o json prints the broker's listing without parsing it into grants: its shape is checked.
    store_tokens(config_dir)
    stub_broker.get("/v1/grants").respond(200, json=reply)
    result = invoke("grants", "-o", "json")
    assert result.exit_code == ExitCode.ERROR and result.stdout == ""
    assert "unexpected answer from the broker" in result.stderr and "not a list of grants" in result.stderr


def test_grants_json_is_the_brokers_answer_as_the_models_print_it(live: LiveBroker) -> None:
    # What `grants -o json` prints is the broker's JSON, unchanged (docs/cli.md); and that JSON
    # is what the wire models themselves write: the output is the one parsing it would give.
    kept = _request(live, "--scope", "read", "--ttl", "10m", "--reason", "INC-7")["id"]
    live.invoke("revoke", _request(live, "--scope", "read", "--ttl", "5m")["id"])
    for args in ([], ["--all"]):
        printed = live.invoke("grants", *args, "-o", "json")
        assert printed.exit_code == 0, printed.stderr
        answered = live.answered("GET", "/v1/grants")[-1]
        assert printed.stdout == json.dumps(answered, indent=2) + "\n"
        assert answered == [Grant.model_validate(g).model_dump(mode="json") for g in answered]
    assert [g["id"] for g in json.loads(live.invoke("grants", "-o", "json").stdout)] == [kept]
    assert len(json.loads(printed.stdout)) == 2


def test_revoke_and_audit(live: LiveBroker) -> None:
    gid = _request(live, "--scope", "read", "--ttl", "5m")["id"]
    revoked = live.invoke("revoke", gid, "-o", "json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    assert json.loads(live.invoke("grants", "-o", "json").stdout) == []

    result = live.invoke("audit", "--actor", "alice", "--since", "1h", "--limit", "5", "-o", "json")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)
    mine = [e["action"] for e in entries if e["target"].endswith(gid)]
    assert mine == ["grant.request", "grant.issue", "grant.revoke"]  # newest last, as --help says
    assert {e["actor"] for e in entries} == {"alice"} and len(entries) <= 5
    [asked] = [e for e in entries if e["action"] == "grant.request"]
    assert asked["details"]["scope"] == "read" and len(asked["hash"]) == 64
    assert dict(live.sent("GET", "/v1/audit")[0].url.params) == {
        "actor": "alice",
        "since": "1h",
        "limit": "5",
    }
    text = live.invoke("audit")
    assert "grant.issue" in text.stdout and "scope=read" in text.stdout

    bad = live.invoke("audit", "--since", "yesterday")
    assert bad.exit_code == ExitCode.USAGE


def test_audit_needs_policy_permission(live: LiveBroker) -> None:
    live.sign_in("bob")  # ci is not an audit reader
    result = live.invoke("audit")
    assert result.exit_code == ExitCode.DENIED, result.stderr


def test_logout_revokes_server_side_and_deletes_local_tokens(live: LiveBroker, config_dir: Path) -> None:
    tokens = live.sign_in("alice")
    result = live.invoke("logout")
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr  # the broker confirmed both steps
    assert live.sent("POST", "/v1/logout")[0].headers["authorization"] == f"Bearer {tokens.access_token}"
    assert parse_qs(live.sent("POST", "/oauth/revoke")[0].content.decode())["token"] == [tokens.refresh_token]
    assert stored(config_dir) is None
    assert live.invoke("whoami").exit_code == ExitCode.NEEDS_LOGIN
    # The session is over on the broker too: the old access token no longer works.
    reused = live.invoke("--broker", BROKER, "whoami", env={"ACCESS_TOKEN": tokens.access_token})
    assert reused.exit_code == ExitCode.NEEDS_LOGIN


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


def test_the_default_policy_lists_only_what_policy_lets_you_request(broker_app: BrokerApp) -> None:
    live = broker_app(policy=DEFAULT_POLICY, users={"carol": ["web"]})
    live.sign_in("carol")
    result = live.invoke("services")
    assert result.exit_code == 0, result.stderr
    assert "Policy lets you request no services" in result.stderr


def test_a_reason_the_rule_refuses_is_told_with_the_pattern(broker_app: BrokerApp) -> None:
    import copy

    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["rules"][0]["reason"] = {"pattern": "^(INC|CHG)-[0-9]+$"}
    live = broker_app(policy=policy)
    live.sign_in("alice")
    refused = live.invoke("request", "svc-payments", "--scope", "write", "--ttl", "5m", "--reason", "oops")
    assert refused.exit_code == ExitCode.DENIED
    assert "needs a reason matching ^(INC|CHG)-[0-9]+$ (rule sre-payments)" in refused.stderr
    assert 'the reason "oops" was given' in refused.stderr
    given = live.invoke("request", "svc-payments", "--scope", "write", "--ttl", "5m", "--reason", "INC-7")
    assert given.exit_code == 0, given.stderr
