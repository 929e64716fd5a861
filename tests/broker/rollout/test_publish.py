"""Reloading the policy: a bad file changes nothing (audited), a good one is a new stored version
(audited) that ends the grants it no longer allows, and every broker on the database takes it up."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker import grants
from access.broker.admin.main import app as admin_app
from access.broker.auth import tokens
from access.broker.errors import GrantDenied, NotFound
from access.broker.policy import PolicyError
from access.broker.rollout import adopt_at_start, apply_latest, reload_file, reload_on_signal, sha256_of
from access.broker.runtime import Broker
from access.broker.store import policy_versions
from access.broker.store.tables import grants as grants_table
from access.shared.models import GrantRequest
from tests.broker.conftest import add_user, audit_rows, login
from tests.conftest import DEFAULT_POLICY, write_policy


def _without_writes() -> dict[str, Any]:
    """DEFAULT_POLICY, except that its rule gives sre read only (write is gone)."""
    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["rules"][0]["scopes"] = ["read"]
    return policy


def _grant(broker: Broker, user: str, scope: str, service: str = "svc-payments") -> str:
    ctx = tokens.authenticate(broker, login(broker, add_user(broker, user, ("sre",))).access_token)
    return grants.request_grant(broker, ctx, GrantRequest(service=service, scope=scope, ttl="10m")).id


def _state(broker: Broker, grant_id: str) -> tuple[str, str | None]:
    with broker.transaction() as conn:
        row = conn.execute(
            sa.select(grants_table.c.state, grants_table.c.ended_reason).where(grants_table.c.id == grant_id)
        ).one()
    return row.state, row.ended_reason


def test_a_new_policy_ends_the_grants_it_no_longer_allows(any_broker: Broker, tmp_path: Path) -> None:
    broker = any_broker
    reader = _grant(broker, "alice", "read")
    writer = _grant(broker, "bob", "write")
    path = write_policy(tmp_path / "policy.yaml", _without_writes())

    done = reload_file(broker, path, "admin:root")

    assert done.new and done.ended == (writer,)
    assert (done.version, done.sha256) == (broker.policy.version, sha256_of(path.read_text()))
    assert _state(broker, writer) == ("revoked", "policy")
    assert _state(broker, reader) == ("active", None)
    [reload] = audit_rows(broker, "policy.reload")
    assert reload["actor"] == "admin:root"
    assert reload["details"] == {
        "version": done.version,
        "sha256": done.sha256,
        "source": str(path),
        "previous": None,
        "unchanged": False,
    }
    [revoke] = audit_rows(broker, "grant.revoke")
    assert revoke["seq"] > reload["seq"]
    assert revoke["details"]["reason"] == "policy"
    assert revoke["details"]["policy_version"] == done.version
    assert revoke["details"]["why"] == "no policy rule gives bob write on svc-payments"
    # The ledger says which version decided each later grant.
    _grant(broker, "carol", "read")
    assert audit_rows(broker, "grant.issue")[-1]["details"]["policy_version"] == done.version


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("services: [\n", ["unreadable or not YAML"]),
        ("rules:\n  - name: x\n    require: sometimes\n", ["rules[0]", "rules[0].require"]),
    ],
)
def test_a_file_that_fails_validation_changes_nothing(
    broker: Broker, tmp_path: Path, text: str, problems: list[str]
) -> None:
    grant_id = _grant(broker, "alice", "write")
    before = broker.policy
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(PolicyError):
        reload_file(broker, path, "admin:root")

    assert broker.policy is before
    assert _state(broker, grant_id) == ("active", None)
    with broker.transaction() as conn:
        assert policy_versions.latest(conn) is None
    assert audit_rows(broker, "policy.reload") == []
    [refuse] = audit_rows(broker, "policy.refuse")
    assert refuse["details"]["sha256"] == sha256_of(text)
    assert set(problems) <= set(refuse["details"]["problems"])
    assert "sometimes" not in str(refuse["details"])  # paths, never the file's values


def test_the_same_file_again_is_no_new_version(broker: Broker, tmp_path: Path) -> None:
    path = write_policy(tmp_path / "policy.yaml")
    first = reload_file(broker, path, "admin:root")
    again = reload_file(broker, path, "admin:root")
    assert (again.version, again.new) == (first.version, False)
    assert [row["details"]["unchanged"] for row in audit_rows(broker, "policy.reload")] == [False, True]
    # A broker started with that file records nothing more.
    assert adopt_at_start(_with_file(broker, path)) is not None
    assert len(audit_rows(broker, "policy.reload")) == 2


def _with_file(broker: Broker, path: Path | None) -> Broker:
    broker.settings = broker.settings.model_copy(update={"policy": path})
    return broker


def test_every_broker_on_the_database_takes_up_the_newest_version(
    make_broker: Callable[..., Broker], pg_url: str, tmp_path: Path
) -> None:
    serving = make_broker(db_url=pg_url)
    writer = _grant(serving, "alice", "write")
    admin = make_broker(db_url=pg_url)
    done = reload_file(admin, write_policy(tmp_path / "p.yaml", _without_writes()), "admin:root")
    assert _state(serving, writer) == ("revoked", "policy")  # ended by the reloading process
    assert serving.policy.version is None

    applied = apply_latest(serving)

    assert applied is not None and applied.version == done.version
    assert serving.policy.version == done.version and serving.policy.sha256 == done.sha256
    assert apply_latest(serving) is None  # nothing newer
    ctx = tokens.authenticate(serving, login(serving, add_user(serving, "bob", ("sre",))).access_token)
    with pytest.raises(GrantDenied, match="no policy rule gives bob write"):
        grants.request_grant(serving, ctx, GrantRequest(service="svc-payments", scope="write", ttl="5m"))
    # A broker started without a file takes up the stored version too.
    late = make_broker(db_url=pg_url)
    assert adopt_at_start(_with_file(late, None)) is not None
    assert late.policy.version == done.version


def test_a_grant_issued_under_the_old_version_meanwhile_ends_when_a_replica_applies_the_new(
    make_broker: Callable[..., Broker], pg_url: str, tmp_path: Path
) -> None:
    serving = make_broker(db_url=pg_url)
    admin = make_broker(db_url=pg_url)
    reload_file(admin, write_policy(tmp_path / "p.yaml", _without_writes()), "admin:root")
    late = _grant(serving, "alice", "write")  # before this replica's poll: the old policy said yes
    applied = apply_latest(serving)
    assert applied is not None and applied.ended == (late,)
    assert _state(serving, late) == ("revoked", "policy")


def test_a_stored_version_this_broker_cannot_validate_is_refused_once(broker: Broker) -> None:
    before = broker.policy
    with broker.transaction() as conn:
        number = policy_versions.insert(
            conn, sha256="0" * 64, source="newer.yaml", text="services: 7\n", at=broker.clock.now(), by="x"
        )
    assert apply_latest(broker) is None
    assert apply_latest(broker) is None
    assert broker.policy.services == before.services and broker.policy.version == number
    [refuse] = audit_rows(broker, "policy.refuse")
    assert refuse["details"]["version"] == number and refuse["details"]["problems"] == ["services"]


def test_a_service_gone_from_the_policy_refuses_new_requests(broker: Broker, tmp_path: Path) -> None:
    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["services"] = policy["services"][1:]
    policy["rules"] = []
    reload_file(broker, write_policy(tmp_path / "p.yaml", policy), "admin:root")
    ctx = tokens.authenticate(broker, login(broker, add_user(broker, "alice", ("sre",))).access_token)
    with pytest.raises(NotFound, match="no service named 'svc-payments'"):
        grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl="5m"))


def test_sighup_reloads_the_file_and_logs_a_refusal(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_policy(tmp_path / "policy.yaml", _without_writes())
    _with_file(broker, path)
    asyncio.run(reload_on_signal(broker))
    assert broker.policy.version is not None
    path.write_text("rules: 3\n")
    with caplog.at_level(logging.WARNING):
        asyncio.run(reload_on_signal(broker))
    assert "SIGHUP: policy refused, the one in force stays" in caplog.text
    assert f"{path}:1: rules: expected a list, got int" in caplog.text
    assert [len(audit_rows(broker, a)) for a in ("policy.reload", "policy.refuse")] == [1, 1]


# ---------------------------------------------------------------- access-broker policy reload


def test_the_reload_command(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--database-url", f"sqlite:///{tmp_path / 'b.db'}"]
    good = write_policy(tmp_path / "policy.yaml")
    result = CliRunner().invoke(admin_app, ["policy", "reload", str(good), *data])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("policy version 1 in force (sha256 ")
    assert result.stderr.rstrip().endswith(f"from {good})")

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("max_ttl: 30m", "max_ttl: forever"))
    # The configured file is not loaded first: the command itself refuses it, audited.
    result = CliRunner().invoke(
        admin_app, ["policy", "reload", *data], env={"ACCESS_BROKER_POLICY": str(bad)}
    )
    assert result.exit_code == 2
    assert "rules[0].max_ttl: bad duration 'forever'" in result.stderr
    assert "refused: the policy in force stays" in result.stderr
