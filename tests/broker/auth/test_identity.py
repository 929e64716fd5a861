"""The embedded directory: users, service accounts, disabling; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker.auth import identity, tokens
from access.broker.auth.identity import embedded
from access.broker.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from access.broker.events.bus import GrantEnded, PrincipalLocked
from access.broker.grants import request_grant
from access.broker.runtime import Broker
from access.broker.store.tables import principals, sessions
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import PASSWORD, add_user, audit_actions, audit_rows, ledger_text, login


def _stored(broker: Broker, name: str) -> tuple[str | None, str | None]:
    """The (password_hash, secret_hash) columns as stored."""
    with broker.transaction() as conn:
        row = conn.execute(
            sa.select(principals.c.password_hash, principals.c.secret_hash).where(principals.c.name == name)
        ).one()
    return row.password_hash, row.secret_hash


def test_create_user_stores_an_argon2id_hash_and_audits(any_broker: Broker) -> None:
    user_id = identity.create_user(
        any_broker, "alice", ["sre", "oncall", "sre"], PASSWORD, actor="admin:root"
    )

    [alice] = identity.list_principals(any_broker)
    assert (alice.id, alice.name, alice.kind, alice.groups, alice.disabled) == (
        user_id,
        "alice",
        "user",
        ("oncall", "sre"),
        False,
    )
    password_hash, _ = _stored(any_broker, "alice")
    assert password_hash is not None and password_hash.startswith("$argon2id$")
    [entry] = audit_rows(any_broker, "user.create")
    assert (entry["actor"], entry["target"]) == ("admin:root", "principal:alice")
    assert entry["details"] == {"kind": "user", "groups": ["oncall", "sre"]}
    assert PASSWORD not in ledger_text(any_broker)


@pytest.mark.parametrize(
    ("name", "groups", "password", "message"),
    [
        ("Alice", [], PASSWORD, "invalid user name"),
        ("-alice", [], PASSWORD, "invalid user name"),
        ("a" * 65, [], PASSWORD, "invalid user name"),
        ("alice", ["SRE"], PASSWORD, "invalid group name"),
        ("alice", ["a b"], PASSWORD, "invalid group name"),
        ("alice", [], "short", "at least 8 characters"),
    ],
)
def test_bad_user_input_changes_nothing(
    broker: Broker, name: str, groups: list[str], password: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        identity.create_user(broker, name, groups, password)
    assert identity.list_principals(broker) == []
    assert audit_actions(broker) == []


def test_a_taken_name_is_a_conflict_and_changes_nothing(any_broker: Broker) -> None:
    identity.create_user(any_broker, "alice", [], PASSWORD)
    with pytest.raises(Conflict, match="already exists"):
        identity.create_user(any_broker, "alice", ["admin"], PASSWORD + "x")
    with pytest.raises(Conflict, match="already exists"):
        identity.create_service_account(any_broker, "alice", [])
    [alice] = identity.list_principals(any_broker)
    assert alice.groups == ()
    assert audit_actions(any_broker) == ["user.create"]


def test_check_password(any_broker: Broker) -> None:
    add_user(any_broker)
    user, reason = identity.check_password(any_broker, "alice", PASSWORD)
    assert user is not None and (user.name, reason) == ("alice", "ok")
    assert identity.check_password(any_broker, "alice", PASSWORD + "!") == (None, "wrong_credentials")
    assert identity.check_password(any_broker, "mallory", PASSWORD) == (None, "unknown_user")
    assert identity.check_password(any_broker, "<script>", PASSWORD) == (None, "unknown_user")


def test_hashes_follow_the_settings_and_an_older_one_is_remade_at_sign_in(
    make_broker: Callable[..., Broker],
) -> None:
    strong = make_broker(
        password_hash_memory_kib=65536, password_hash_time_cost=3, password_hash_parallelism=4
    )
    identity.create_user(strong, "alice", ["sre"], PASSWORD)
    before, _ = _stored(strong, "alice")
    assert before is not None and "$m=65536,t=3,p=4$" in before

    # The same database under a broker set to OWASP's minimum: the old hash still verifies, and
    # the sign-in re-makes it with the new parameters.
    light = make_broker(
        db_url=str(strong.engine.url),
        password_hash_memory_kib=19456,
        password_hash_time_cost=2,
        password_hash_parallelism=1,
    )
    user, reason = identity.check_password(light, "alice", PASSWORD)
    assert user is not None and reason == "ok"
    after, _ = _stored(light, "alice")
    assert after is not None and "$m=19456,t=2,p=1$" in after
    assert identity.check_password(light, "alice", PASSWORD)[1] == "ok"


@pytest.mark.parametrize(
    ("setting", "value"),
    [("password_hash_memory_kib", 19455), ("password_hash_time_cost", 1), ("password_hash_parallelism", 0)],
)
def test_hash_parameters_below_owasps_minimum_are_refused(setting: str, value: int, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from access.broker.settings import Settings

    with pytest.raises(ValidationError, match=setting):
        Settings(data_dir=tmp_path, **{setting: value})


def test_an_unknown_user_still_costs_one_argon2_verification(broker: Broker) -> None:
    # Same work whether or not the name exists: the dummy hash is used for unknown names.
    embedded._dummy_hash.cache_clear()
    identity.check_password(broker, "nobody", PASSWORD)
    assert embedded._dummy_hash.cache_info().misses == 1


def test_service_accounts_cannot_sign_in_with_a_password(broker: Broker) -> None:
    _client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    assert identity.check_password(broker, "deploy-bot", secret) == (None, "unknown_user")


def test_create_service_account_returns_its_secret_once(any_broker: Broker) -> None:
    client_id, secret = identity.create_service_account(any_broker, "deploy-bot", ["ci"], actor="admin:root")

    assert re.fullmatch(r"sa-deploy-bot-[0-9a-f]{12}", client_id)
    assert len(secret) >= 43
    _, secret_hash = _stored(any_broker, "deploy-bot")
    assert secret_hash is not None and secret_hash.startswith("$argon2id$") and secret not in secret_hash
    account, reason = identity.check_client_secret(any_broker, client_id, secret)
    assert account is not None and (account.kind, account.client_id, reason) == (
        "service_account",
        client_id,
        "ok",
    )
    assert identity.check_client_secret(any_broker, client_id, secret[:-1]) == (None, "wrong_credentials")
    assert identity.check_client_secret(any_broker, "sa-nope-000000000000", secret) == (
        None,
        "unknown_client",
    )
    [entry] = audit_rows(any_broker, "service_account.create")
    assert entry["details"] == {"kind": "service_account", "groups": ["ci"], "client_id": client_id}
    assert secret not in ledger_text(any_broker)


def test_a_long_service_account_name_still_gets_a_bounded_client_id(broker: Broker) -> None:
    client_id, _ = identity.create_service_account(broker, "x" * 63, [])
    assert len(client_id) <= 64


def test_disable_revokes_sessions_ends_grants_and_publishes(any_broker: Broker) -> None:
    alice = add_user(any_broker, "alice", ("sre",))
    issued = login(any_broker, alice)
    ctx = tokens.authenticate(any_broker, issued.access_token)
    grant = request_grant(any_broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="10m"))
    events: list[object] = []
    any_broker.events.subscribe(events.append)

    ended = identity.disable_principal(any_broker, "alice", "admin:root")

    assert ended == [grant.id]
    assert events == [PrincipalLocked(alice.id), GrantEnded(grant.id, "locked")]
    with any_broker.transaction() as conn:
        row = conn.execute(sa.select(sessions).where(sessions.c.id == issued.session_id)).one()
    assert row.revoked_reason == "principal_disabled"
    with pytest.raises(Unauthenticated):
        tokens.authenticate(any_broker, issued.access_token)
    with any_broker.transaction() as conn:
        stored = conn.execute(sa.select(principals.c.disabled, principals.c.disabled_at)).one()
    assert stored.disabled and stored.disabled_at == any_broker.clock.now()
    [entry] = audit_rows(any_broker, "user.disable")
    assert entry["actor"] == "admin:root"
    assert entry["details"] == {"sessions_revoked": 1, "grants_ended": [grant.id]}
    assert identity.check_password(any_broker, "alice", PASSWORD) == (None, "disabled")


def test_disabled_grant_state(broker: Broker) -> None:
    from access.broker.store.tables import grants

    alice = add_user(broker, "alice", ("sre",))
    ctx = tokens.authenticate(broker, login(broker, alice).access_token)
    grant = request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="10m"))
    identity.disable_principal(broker, "alice", "admin:root")
    with broker.transaction() as conn:
        row = conn.execute(
            sa.select(grants.c.state, grants.c.ended_reason).where(grants.c.id == grant.id)
        ).one()
    assert (row.state, row.ended_reason) == (GrantState.REVOKED.value, "locked")


def test_disable_service_account(broker: Broker) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    assert identity.disable_principal(broker, "deploy-bot", "admin:root") == []
    assert identity.check_client_secret(broker, client_id, secret) == (None, "disabled")
    assert "service_account.disable" in audit_actions(broker)


def test_disable_twice_or_unknown_changes_nothing(broker: Broker) -> None:
    add_user(broker)
    identity.disable_principal(broker, "alice", "admin:root")
    before = audit_actions(broker)
    with pytest.raises(Conflict, match="already disabled"):
        identity.disable_principal(broker, "alice", "admin:root")
    with pytest.raises(NotFound, match="no user or service account"):
        identity.disable_principal(broker, "bob", "admin:root")
    assert audit_actions(broker) == before


# ------------------------------------------------------------------ access-broker users / service-accounts


@pytest.fixture
def run_admin(tmp_path: Path, sqlite_url: str) -> Callable[..., tuple[int, str, str]]:
    from access.broker.admin.main import app

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app, [*args, "--data-dir", str(tmp_path / "data"), "--database-url", sqlite_url], input=stdin
        )
        return result.exit_code, result.stdout, result.stderr

    return run


def test_admin_users_add_list_disable(run_admin: Callable[..., tuple[int, str, str]]) -> None:
    code, _out, err = run_admin(
        "users", "add", "alice", "--group", "sre", "-g", "oncall", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0, err
    assert "added user alice" in err

    code, out, _ = run_admin("users", "list", "-o", "json")
    [alice] = json.loads(out)
    assert (alice["name"], alice["groups"], alice["disabled"]) == ("alice", ["oncall", "sre"], False)
    code, out, _ = run_admin("users", "list")
    assert code == 0 and "alice" in out and "oncall,sre" in out and "active" in out

    code, _, err = run_admin("users", "disable", "alice")
    assert code == 0 and "disabled alice" in err
    code, out, _ = run_admin("users", "list", "-o", "json")
    assert json.loads(out)[0]["disabled"] is True


def test_admin_users_add_refuses_bad_input(run_admin: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = run_admin("users", "add", "alice", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 8 characters" in err
    code, _, err = run_admin("users", "add", "alice")  # no TTY, no --password-stdin
    assert code == 2 and "--password-stdin" in err
    code, _, err = run_admin("users", "disable", "nobody")
    assert code == 8 and "no user or service account" in err
    code, out, _ = run_admin("users", "list", "-o", "json")
    assert json.loads(out) == []


def test_admin_service_accounts_print_the_secret_once(
    run_admin: Callable[..., tuple[int, str, str]], tmp_path: Path, sqlite_url: str
) -> None:
    code, out, err = run_admin("service-accounts", "add", "deploy-bot", "--group", "ci", "-o", "json")
    assert code == 0, err
    created = json.loads(out)
    assert created["client_id"].startswith("sa-deploy-bot-") and created["client_secret"]

    code, out, _ = run_admin("service-accounts", "list", "-o", "json")
    [listed] = json.loads(out)
    assert listed["client_id"] == created["client_id"]
    assert created["client_secret"] not in out

    code, _, err = run_admin("service-accounts", "disable", "deploy-bot")
    assert code == 0, err


def test_admin_service_accounts_have_an_owner_who_must_exist(
    run_admin: Callable[..., tuple[int, str, str]],
) -> None:
    code, _, err = run_admin("service-accounts", "add", "deploy-bot", "--owner", "alice")
    assert code == 2 and "no user named 'alice' to own the service account" in err
    code, out, _ = run_admin("service-accounts", "list", "-o", "json")
    assert json.loads(out) == []  # nothing made
    code, _, err = run_admin("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, err
    code, _, err = run_admin("service-accounts", "add", "deploy-bot", "-g", "ci", "--owner", "alice")
    assert code == 0, err
    code, out, _ = run_admin("service-accounts", "list", "-o", "json")
    assert json.loads(out)[0]["owner"] == "alice"
    code, out, _ = run_admin("service-accounts", "list")
    assert out.splitlines()[0].split() == ["NAME", "GROUPS", "STATUS", "CREATED", "OWNER", "CLIENT", "ID"]
    assert " alice " in out.splitlines()[1]
