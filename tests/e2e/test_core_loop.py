"""The core loop end to end, on SQLite and on PostgreSQL: the real broker process, the real CLI.

Login goes through the HTML device page (as a browser would), grants are requested, listed and
revoked, the audit trail is read, and `access-broker audit verify` checks the ledger.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from pathlib import Path

import pytest

from access.shared.errors import ExitCode
from tests.conftest import DEFAULT_POLICY, write_policy
from tests.e2e.conftest import BrokerProcess, Cli

pytestmark = pytest.mark.e2e


def _json(result: object) -> object:
    stdout = getattr(result, "stdout", "")
    assert getattr(result, "returncode", 1) == 0, (
        f"exit {getattr(result, 'returncode', '?')}: {getattr(result, 'stderr', '')}"
    )
    return json.loads(stdout)


def test_device_login_request_list_revoke_audit_verify(cli: Cli, broker: BrokerProcess) -> None:
    login = cli.device_login("alice", "alice-password-1")
    assert login.returncode == 0, login.stderr
    assert "/device" in login.stderr  # the verification URL was shown

    me = _json(cli.run("whoami", "-o", "json"))
    assert isinstance(me, dict)
    assert me["name"] == "alice"
    assert me["groups"] == ["sre"]

    services = _json(cli.run("services", "-o", "json"))
    assert isinstance(services, list)
    assert [s["name"] for s in services] == ["svc-payments"]  # svc-cache: no rule for sre
    assert {s["scope"] for s in services[0]["scopes"]} == {"read", "write"}

    grant = _json(
        cli.run(
            "request", "svc-payments", "--scope", "read", "--ttl", "10m", "--reason", "INC-123", "-o", "json"
        )
    )
    assert isinstance(grant, dict)
    assert grant["state"] == "active"
    assert grant["subject"] == "alice"
    assert 590 <= grant["seconds_left"] <= 600

    listed = _json(cli.run("grants", "-o", "json"))
    assert isinstance(listed, list)
    assert [g["id"] for g in listed] == [grant["id"]]

    text = cli.run("grants")
    assert text.returncode == 0
    assert grant["id"] in text.stdout and "svc-payments" in text.stdout

    revoked = _json(cli.run("revoke", grant["id"], "-o", "json"))
    assert isinstance(revoked, dict)
    assert revoked["state"] == "revoked"
    # Revoking what has already ended succeeds quietly (pipelines revoke "whatever happened").
    again = cli.run("revoke", grant["id"])
    assert again.returncode == 0, again.stderr
    assert "had already ended (revoked)" in again.stderr
    assert _json(cli.run("grants", "-o", "json")) == []

    audit = _json(cli.run("audit", "--actor", "alice", "--since", "1h", "-o", "json"))
    assert isinstance(audit, list)
    actions = [e["action"] for e in audit]
    for expected in ("login.success", "grant.request", "grant.issue", "grant.revoke"):
        assert expected in actions, actions
    assert actions.count("grant.revoke") == 1  # the second revoke changed and audited nothing
    assert all("password" not in json.dumps(e["details"]).lower() for e in audit)

    verify = broker.admin("audit", "verify")
    assert verify.returncode == 0
    assert "ok" in (verify.stdout + verify.stderr).lower()


def test_bad_requests_are_refused_with_clear_errors(cli: Cli) -> None:
    assert cli.device_login("alice", "alice-password-1").returncode == 0

    over = cli.run("request", "svc-payments", "--scope", "read", "--ttl", "2h", "--reason", "x")
    assert over.returncode in (ExitCode.DENIED, ExitCode.USAGE)
    assert "30m" in over.stderr  # states the allowed maximum

    for ttl in ("0s", "-5m", "soon"):
        bad = cli.run("request", "svc-payments", "--scope", "read", "--ttl", ttl)
        assert bad.returncode == ExitCode.USAGE, (ttl, bad.stderr)

    unknown = cli.run("request", "svc-nope", "--scope", "read", "--ttl", "5m")
    assert unknown.returncode in (ExitCode.NOT_FOUND, ExitCode.DENIED)
    assert "access services" in unknown.stderr

    bad_scope = cli.run("request", "svc-payments", "--scope", "admin", "--ttl", "5m")
    assert bad_scope.returncode in (ExitCode.DENIED, ExitCode.USAGE)

    # None of that created a usable grant.
    assert _json(cli.run("grants", "-o", "json")) == []


def test_policy_denies_by_default(cli: Cli) -> None:
    assert cli.device_login("bob", "bob-password-1").returncode == 0
    assert _json(cli.run("services", "-o", "json")) == []
    denied = cli.run("request", "svc-payments", "--scope", "read", "--ttl", "5m", "--reason", "curious")
    assert denied.returncode == ExitCode.DENIED, denied.stderr
    audit_read = cli.run("audit")
    assert audit_read.returncode == ExitCode.DENIED


@pytest.mark.parametrize("e2e_db", ["postgresql"], indirect=True)
def test_sighup_reloads_the_policy_and_refuses_a_bad_one(cli: Cli, broker: BrokerProcess) -> None:
    """SIGHUP to `serve`: a file that fails validation is refused (logged; the old policy stays),
    a good one is in force at once, and one that no longer allows a grant ends it and cuts its
    live tunnel."""
    assert cli.device_login("bob", "bob-password-1").returncode == 0
    assert broker.proc is not None
    bad = copy.deepcopy(DEFAULT_POLICY)
    bad["rules"][0]["max_ttl"] = "forever"
    write_policy(broker.policy, bad)
    broker.proc.send_signal(signal.SIGHUP)
    _wait_for_output(broker, "SIGHUP: policy refused, the one in force stays")
    assert f"{broker.policy}:" in "".join(broker.output)  # file and line
    assert _json(cli.run("services", "-o", "json")) == []
    good = copy.deepcopy(DEFAULT_POLICY)
    good["rules"][0]["subjects"]["users"] = ["bob"]
    write_policy(broker.policy, good)
    broker.proc.send_signal(signal.SIGHUP)
    _wait_for_output(broker, "SIGHUP: policy version 2 in force")
    services = _json(cli.run("services", "-o", "json"))
    assert isinstance(services, list)
    assert [svc["name"] for svc in services] == ["svc-payments"]

    # A reload that no longer gives bob read ends his grant at once and cuts his live tunnel.
    args = ("request", "svc-payments", "--scope", "read", "--ttl", "5m", "--reason", "INC-1", "-o", "json")
    grant = _json(cli.run(*args))
    connect = cli.popen("connect", "svc-payments", "--grant", grant["id"], "-o", "json")
    try:
        assert connect.stdout is not None and connect.stderr is not None
        assert json.loads(connect.stdout.readline())["grant_id"] == grant["id"]  # the tunnel is up
        write_policy(broker.policy, DEFAULT_POLICY)  # bob is in no group: nothing for him
        broker.proc.send_signal(signal.SIGHUP)
        _wait_for_output(broker, "SIGHUP: policy version 3 in force")
        reloaded = time.monotonic()
        assert connect.wait(timeout=10) != 0
        assert time.monotonic() - reloaded < 2.0  # the cut follows the reload, it does not wait out the TTL
        err = connect.stderr.read()
        assert "the policy no longer allows it" in err, err
    finally:
        if connect.poll() is None:
            connect.kill()
            connect.wait(timeout=10)
        for stream in (connect.stdout, connect.stderr):
            if stream is not None:
                stream.close()
    [ended] = [g for g in _json(cli.run("grants", "--all", "-o", "json")) if g["id"] == grant["id"]]
    assert (ended["state"], ended["ended_reason"]) == ("revoked", "policy")


def _wait_for_output(broker: BrokerProcess, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in "".join(broker.output):
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(broker.output)
        time.sleep(0.05)  # a bounded poll of the broker's log, not a synchronisation


def test_denied_on_the_device_page_stops_login(cli: Cli) -> None:
    login = cli.device_login("alice", "alice-password-1", approve=False)
    assert login.returncode == ExitCode.DENIED, login.stderr
    assert cli.run("whoami").returncode == ExitCode.NEEDS_LOGIN


def test_service_account_client_credentials(cli: Cli, broker: BrokerProcess, tmp_path: Path) -> None:
    creds = broker.add_service_account("deploy-bot", "ci")
    secret_file = tmp_path / "secret"
    secret_file.write_text(creds["client_secret"])
    secret_file.chmod(0o600)
    login = cli.run("login", "--client-id", creds["client_id"], "--client-secret-file", str(secret_file))
    assert login.returncode == 0, login.stderr
    assert creds["client_secret"] not in login.stdout + login.stderr

    grant = _json(
        cli.run(
            "request", "svc-payments", "--scope", "read", "--ttl", "5m", "--reason", "deploy 42", "-o", "json"
        )
    )
    assert isinstance(grant, dict)
    assert grant["subject"] == "deploy-bot"
    write = cli.run("request", "svc-payments", "--scope", "write", "--ttl", "5m")
    assert write.returncode == ExitCode.DENIED
    assert _json(cli.run("revoke", grant["id"], "-o", "json"))

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret")
    wrong.chmod(0o600)
    failed = cli.run("login", "--client-id", creds["client_id"], "--client-secret-file", str(wrong))
    assert failed.returncode != 0

    # A pipeline with only the variables (a Docker secret, 0444): no login step, nothing stored.
    assert cli.run("logout").returncode == 0
    secret_file.chmod(0o444)
    env = {"ACCESS_CLIENT_ID": creds["client_id"], "ACCESS_CLIENT_SECRET_FILE": str(secret_file)}
    piped = cli.run(
        "request", "svc-payments", "-s", "read", "-t", "5m", "-r", "deploy 43", "-o", "json", env=env
    )
    assert piped.returncode == 0, piped.stderr
    assert _json(piped)["subject"] == "deploy-bot"
    assert not (cli.home / "config" / "access" / "tokens.json").exists()


def test_logout_revokes_the_token_server_side(cli: Cli) -> None:
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    tokens = json.loads((cli.home / "config" / "access" / "tokens.json").read_text())
    (entry,) = tokens.values() if "access_token" not in tokens else (tokens,)
    access_token = entry["access_token"]
    assert cli.run("whoami", env={"ACCESS_TOKEN": access_token}).returncode == 0
    assert cli.run("logout").returncode == 0
    after = cli.run("whoami", env={"ACCESS_TOKEN": access_token})
    assert after.returncode == ExitCode.NEEDS_LOGIN
    assert "access login" in after.stderr
    assert cli.run("whoami").returncode == ExitCode.NEEDS_LOGIN


def test_forged_and_garbage_tokens_are_refused(cli: Cli) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    claims = b64(
        json.dumps(
            {"sub": "alice", "iss": cli.broker.url, "aud": "access-broker", "exp": 4102444800}
        ).encode()
    )
    for token in (f"{header}.{claims}.", "garbage", "a.b.c"):
        result = cli.run("whoami", env={"ACCESS_TOKEN": token})
        assert result.returncode == ExitCode.NEEDS_LOGIN, (token, result.stderr)


def test_unreachable_broker_names_the_url(cli: Cli) -> None:
    result = cli.run("whoami", env={"ACCESS_BROKER_URL": "https://127.0.0.1:9", "ACCESS_TOKEN": "x"})
    assert result.returncode == ExitCode.UNAVAILABLE
    assert "https://127.0.0.1:9" in result.stderr
