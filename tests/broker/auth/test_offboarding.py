"""Password reset, re-enabling and offboarding (``users set-password``, ``enable``,
``revoke-sessions``); on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker.auth import device, identity, sessions, tokens, websessions
from access.broker.auth.tokens import OAuthError
from access.broker.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from access.broker.events.bus import GrantEnded, SessionEnded
from access.broker.grants import request_grant
from access.broker.runtime import Broker
from access.broker.store.tables import grants, principals
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import PASSWORD, add_user, audit_actions, audit_rows, ledger_text, login
from tests.conftest import REVIEWED_POLICY

NEW_PASSWORD = "a new and longer passphrase"
IP = "192.0.2.7"


@pytest.fixture
def any_broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    """A broker whose policy also has a rule that waits for review (a pending request)."""
    return make_broker(db_url=db_url, policy=REVIEWED_POLICY)


def _signed_in_everywhere(broker: Broker) -> tuple[sessions.TokenSet, websessions.WebSignIn, str]:
    """alice with a CLI session, an inbox sign-in and a device login approved but not exchanged."""
    tokens_ = login(broker, add_user(broker, "alice", ("ci", "dev")))
    inbox = websessions.sign_in(broker, "alice", PASSWORD, IP)
    auth = device.start(broker, "access-cli", "laptop-7", IP)
    signed_in = device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP)
    assert device.decide(broker, signed_in.consent_token, True, IP).approved
    return tokens_, inbox, auth.device_code


def _assert_signed_out(
    broker: Broker, cli: sessions.TokenSet, inbox: websessions.WebSignIn, code: str
) -> None:
    with pytest.raises(Unauthenticated, match="signed out or revoked"):
        tokens.authenticate(broker, cli.access_token)  # at once, though it has not expired
    with pytest.raises(OAuthError, match="invalid, expired or revoked"):
        sessions.refresh(broker, cli.refresh_token or "", "access-cli")
    with pytest.raises(Unauthenticated):
        websessions.authenticate(broker, inbox.token)
    with pytest.raises(OAuthError, check=lambda exc: exc.error == "access_denied"):
        device.exchange(broker, code, "access-cli")  # approved before: no session from it now


def test_set_password_replaces_it_and_signs_everyone_out(any_broker: Broker) -> None:
    cli, inbox, code = _signed_in_everywhere(any_broker)
    grant = request_grant(
        any_broker,
        tokens.authenticate(any_broker, cli.access_token),
        GrantRequest(service="svc-payments", scope="read", ttl="10m"),
    )
    events: list[object] = []
    any_broker.events.subscribe(events.append)

    ended = identity.set_password(any_broker, "alice", NEW_PASSWORD, actor="admin:root")

    assert ended is not None and set(ended.session_ids) == {cli.session_id, inbox.session_id}
    assert identity.check_password(any_broker, "alice", PASSWORD) == (None, "wrong_credentials")
    user, reason = identity.check_password(any_broker, "alice", NEW_PASSWORD)
    assert user is not None and reason == "ok"
    _assert_signed_out(any_broker, cli, inbox, code)
    assert sorted(events, key=str) == sorted(
        [SessionEnded(s, "password_changed") for s in ended.session_ids], key=str
    )
    [entry] = audit_rows(any_broker, "user.set_password")
    assert (entry["actor"], entry["target"]) == ("admin:root", "principal:alice")
    assert entry["details"] == {
        "sessions_kept": False,
        "sessions_revoked": 2,
        "inbox_sessions_revoked": 1,
        "device_logins_denied": 1,
    }
    assert NEW_PASSWORD not in ledger_text(any_broker) and PASSWORD not in ledger_text(any_broker)
    with any_broker.transaction() as conn:  # grants stay: alice uses them after signing in again
        state = conn.execute(sa.select(grants.c.state).where(grants.c.id == grant.id)).scalar_one()
    assert state == GrantState.ACTIVE.value
    # The new password signs in on the inbox (and so on the device page: the same check).
    assert websessions.sign_in(any_broker, "alice", NEW_PASSWORD, IP).name == "alice"


def test_set_password_can_keep_the_sessions(broker: Broker) -> None:
    cli = login(broker, add_user(broker))
    assert identity.set_password(broker, "alice", NEW_PASSWORD, keep_sessions=True) is None
    assert tokens.authenticate(broker, cli.access_token).name == "alice"
    assert identity.check_password(broker, "alice", NEW_PASSWORD)[1] == "ok"
    [entry] = audit_rows(broker, "user.set_password")
    assert entry["details"] == {"sessions_kept": True}


@pytest.mark.parametrize(
    ("name", "password", "error", "message"),
    [
        ("bob", NEW_PASSWORD, NotFound, "no user named 'bob'"),
        ("deploy-bot", NEW_PASSWORD, InvalidRequest, "is a service account: it has a client secret"),
        ("alice", "short", InvalidRequest, "at least 8 characters"),
    ],
)
def test_set_password_refuses_bad_input_and_changes_nothing(
    broker: Broker, name: str, password: str, error: type[Exception], message: str
) -> None:
    cli = login(broker, add_user(broker))
    identity.create_service_account(broker, "deploy-bot", ["ci"])
    before = audit_actions(broker)
    with pytest.raises(error, match=message):
        identity.set_password(broker, name, password)
    assert audit_actions(broker) == before
    assert identity.check_password(broker, "alice", PASSWORD)[1] == "ok"
    assert tokens.authenticate(broker, cli.access_token).name == "alice"


def test_enable_after_disable_lets_a_new_sign_in_in_and_nothing_old(any_broker: Broker) -> None:
    cli = login(any_broker, add_user(any_broker))
    identity.disable_principal(any_broker, "alice", "admin:root")
    with pytest.raises(Unauthenticated):
        websessions.sign_in(any_broker, "alice", PASSWORD, IP)

    enabled = identity.enable_principal(any_broker, "alice", "admin:root", identity.USER)

    assert enabled.name == "alice"
    with any_broker.transaction() as conn:
        row = conn.execute(sa.select(principals.c.disabled, principals.c.disabled_at)).one()
    assert (row.disabled, row.disabled_at) == (False, None)
    with pytest.raises(Unauthenticated):
        tokens.authenticate(any_broker, cli.access_token)  # the old session stays revoked
    with pytest.raises(OAuthError):
        sessions.refresh(any_broker, cli.refresh_token or "", "access-cli")
    assert websessions.sign_in(any_broker, "alice", PASSWORD, IP).name == "alice"  # a new one: yes
    [entry] = audit_rows(any_broker, "user.enable")
    assert (entry["actor"], entry["details"]) == ("admin:root", {"sessions_revoked": 0})


def test_enable_refuses_what_is_not_disabled_and_changes_nothing(broker: Broker) -> None:
    add_user(broker)
    identity.create_service_account(broker, "deploy-bot", ["ci"])
    identity.disable_principal(broker, "deploy-bot", "admin:root")
    before = audit_actions(broker)
    with pytest.raises(Conflict, match="'alice' is not disabled"):
        identity.enable_principal(broker, "alice", "admin:root", identity.USER)
    with pytest.raises(NotFound, match="no user named 'bob'"):
        identity.enable_principal(broker, "bob", "admin:root", identity.USER)
    with pytest.raises(InvalidRequest, match="is a service account, not a user"):
        identity.enable_principal(broker, "deploy-bot", "admin:root", identity.USER)
    assert audit_actions(broker) == before
    assert next(p for p in identity.list_principals(broker) if p.name == "deploy-bot").disabled
    assert identity.enable_principal(broker, "deploy-bot", "admin:root", identity.SERVICE_ACCOUNT).name
    assert "service_account.enable" in audit_actions(broker)


def test_revoke_sessions_ends_every_token_grant_and_request_and_stays_enabled(any_broker: Broker) -> None:
    cli, inbox, code = _signed_in_everywhere(any_broker)
    bob = login(any_broker, add_user(any_broker, "bob", ("sre",)))
    ctx = tokens.authenticate(any_broker, cli.access_token)
    active = request_grant(any_broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="10m"))
    pending = request_grant(
        any_broker, ctx, GrantRequest(service="svc-payments", scope="write", ttl="10m", reason="deploy")
    )
    assert (active.state, pending.state) == (GrantState.ACTIVE, GrantState.PENDING)
    bobs = request_grant(
        any_broker,
        tokens.authenticate(any_broker, bob.access_token),
        GrantRequest(service="svc-payments", scope="read", ttl="10m"),
    )
    events: list[object] = []
    any_broker.events.subscribe(events.append)

    done = identity.revoke_sessions(any_broker, "alice", "admin:root", identity.USER)

    assert (done.grants_revoked, done.requests_cancelled) == ((active.id,), (pending.id,))
    assert (len(done.sign_ins.session_ids), done.sign_ins.inbox_sessions, done.sign_ins.device_logins) == (
        2,
        1,
        1,
    )
    _assert_signed_out(any_broker, cli, inbox, code)
    with any_broker.transaction() as conn:
        rows = {
            row.id: (row.state, row.ended_reason)
            for row in conn.execute(sa.select(grants.c.id, grants.c.state, grants.c.ended_reason))
        }
    assert rows[active.id] == rows[pending.id] == (GrantState.REVOKED.value, "sessions revoked")
    assert rows[bobs.id] == (GrantState.ACTIVE.value, None)  # nobody else is touched
    assert tokens.authenticate(any_broker, bob.access_token).name == "bob"
    # The grants first (so a tunnel says why in the grant's words), then the sessions.
    assert events[:2] == [
        GrantEnded(active.id, "sessions revoked"),
        GrantEnded(pending.id, "sessions revoked"),
    ]
    assert sorted(map(str, events[2:])) == sorted(
        str(SessionEnded(s, "sessions_revoked")) for s in done.sign_ins.session_ids
    )
    [entry] = audit_rows(any_broker, "user.revoke_sessions")
    assert (entry["actor"], entry["target"]) == ("admin:root", "principal:alice")
    assert entry["details"] == {
        "sessions_revoked": 2,
        "inbox_sessions_revoked": 1,
        "device_logins_denied": 1,
        "grants_revoked": [active.id],
        "requests_cancelled": [pending.id],
    }
    revokes = [row["details"] for row in audit_rows(any_broker, "grant.revoke")]
    assert {(d["grant_id"], d["reason"]) for d in revokes} == {
        (active.id, "sessions revoked"),
        (pending.id, "sessions revoked"),
    }
    # Still enabled: alice signs in again, unlike after a disable.
    assert websessions.sign_in(any_broker, "alice", PASSWORD, IP).name == "alice"


def test_revoke_sessions_of_a_service_account(broker: Broker) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    issued = sessions.client_credentials(broker, client_id, secret, IP)
    with pytest.raises(InvalidRequest, match="is a service account, not a user"):
        identity.revoke_sessions(broker, "deploy-bot", "admin:root", identity.USER)
    assert tokens.authenticate(broker, issued.access_token).name == "deploy-bot"  # nothing changed

    identity.revoke_sessions(broker, "deploy-bot", "admin:root", identity.SERVICE_ACCOUNT)

    with pytest.raises(Unauthenticated):
        tokens.authenticate(broker, issued.access_token)
    assert sessions.client_credentials(broker, client_id, secret, IP).access_token  # its secret works
    [entry] = audit_rows(broker, "service_account.revoke_sessions")
    assert entry["details"]["sessions_revoked"] == 1


def test_revoke_sessions_refuses_unknown_names_and_changes_nothing(broker: Broker) -> None:
    cli = login(broker, add_user(broker))
    before = audit_actions(broker)
    with pytest.raises(NotFound, match="no user named 'bob'"):
        identity.revoke_sessions(broker, "bob", "admin:root", identity.USER)
    with pytest.raises(InvalidRequest, match="is a user, not a service account"):
        identity.revoke_sessions(broker, "alice", "admin:root", identity.SERVICE_ACCOUNT)
    assert audit_actions(broker) == before
    assert tokens.authenticate(broker, cli.access_token).name == "alice"


# ------------------------------------------------------------------ the access-broker commands


@pytest.fixture
def run_admin(tmp_path: Path, sqlite_url: str) -> Callable[..., tuple[int, str, str]]:
    from access.broker.admin.main import app

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app, [*args, "--data-dir", str(tmp_path / "data"), "--database-url", sqlite_url], input=stdin
        )
        return result.exit_code, result.stdout, result.stderr

    return run


def test_admin_set_password_enable_revoke_sessions(run_admin: Callable[..., tuple[int, str, str]]) -> None:
    assert run_admin("users", "add", "alice", "-g", "sre", "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    assert run_admin("service-accounts", "add", "deploy-bot", "-g", "ci")[0] == 0

    code, _, err = run_admin("users", "set-password", "alice", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert code == 0, err
    assert "set the password of alice; 0 sign-in session(s) ended (0 in the inbox)" in err
    code, _, err = run_admin(
        "users", "set-password", "alice", "--keep-sessions", "--password-stdin", stdin="x" * 9
    )
    assert code == 0 and "their sessions were kept" in err, err

    code, _, err = run_admin("users", "revoke-sessions", "alice")
    assert code == 0, err
    assert (
        "revoked the sessions of alice: 0 session(s) (0 in the inbox), 0 device login(s) not yet"
        " completed, 0 active grant(s) revoked, 0 pending request(s) cancelled; live tunnels are cut"
    ) in err
    assert "alice stays enabled" in err
    code, _, err = run_admin("service-accounts", "revoke-sessions", "deploy-bot")
    assert code == 0 and "revoked the sessions of deploy-bot" in err, err

    code, _, err = run_admin("users", "enable", "alice")
    assert code == 1 and "'alice' is not disabled" in err
    assert run_admin("users", "disable", "alice")[0] == 0
    code, _, err = run_admin("users", "enable", "alice")
    assert code == 0 and "enabled alice" in err, err


@pytest.mark.parametrize(
    ("args", "stdin", "exit_code", "message"),
    [
        (("users", "set-password", "bob", "--password-stdin"), NEW_PASSWORD, 8, "no user named 'bob'"),
        (("users", "set-password", "deploy-bot", "--password-stdin"), NEW_PASSWORD, 2, "client secret"),
        (("users", "set-password", "alice", "--password-stdin"), "short", 2, "at least 8 characters"),
        (("users", "set-password", "alice"), None, 2, "--password-stdin"),  # no TTY, no stdin flag
        (("users", "enable", "bob"), None, 8, "no user named 'bob'"),
        (("users", "enable", "deploy-bot"), None, 2, "is a service account, not a user"),
        (("users", "revoke-sessions", "bob"), None, 8, "no user named 'bob'"),
        (("users", "revoke-sessions", "deploy-bot"), None, 2, "service-accounts"),
        (("service-accounts", "revoke-sessions", "alice"), None, 2, "is a user, not a service account"),
        (("service-accounts", "enable", "nobody"), None, 8, "no service account named 'nobody'"),
    ],
)
def test_admin_bad_inputs_exit_non_zero_and_change_nothing(
    run_admin: Callable[..., tuple[int, str, str]],
    args: tuple[str, ...],
    stdin: str | None,
    exit_code: int,
    message: str,
) -> None:
    assert run_admin("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    assert run_admin("service-accounts", "add", "deploy-bot")[0] == 0
    before = run_admin("audit", "export")[1]

    code, _, err = run_admin(*args, stdin=None if stdin is None else stdin + "\n")

    assert code == exit_code and message in err, (code, err)
    assert run_admin("audit", "export")[1] == before
