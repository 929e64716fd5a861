"""A reload from another process (``access-broker policy reload``, or a replica's SIGHUP) ends a
grant the new policy forbids and cuts its live tunnel here; this broker takes up the version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from access.broker.rollout import Reloaded, reload_file
from tests.broker.conftest import audit_rows
from tests.broker.tunnel.test_protocol import (
    Setup,
    _cut_after,
    _policy,
    _wait_for,
    setup,  # noqa: F401 (the fixture, used by name)
    wrap_app,  # noqa: F401 (the fixture setup uses)
)
from tests.conftest import write_policy


@pytest.fixture
def broker_db_url(pg_url: str) -> str:
    """Replicas share PostgreSQL: the design's case."""
    return pg_url


@pytest.fixture
def broker_settings() -> dict[str, Any]:
    return {"policy_watch_interval": 0.1}


def test_a_reload_elsewhere_ends_the_grant_cuts_its_tunnel_and_reaches_this_broker(
    setup: Setup,  # noqa: F811
    tmp_path: Path,
) -> None:
    grant_id = setup.grant()
    kept = setup.grant(user="bob", service="svc-dead")
    policy = _policy(setup.target.port, 1)
    policy["services"] = [svc for svc in policy["services"] if svc["name"] != "svc-echo"]
    policy["rules"][0]["services"].remove("svc-echo")
    path = write_policy(tmp_path / "policy.yaml", policy)

    other = setup.other_process()  # `access-broker policy reload`: only the database is shared
    done: list[Reloaded] = []
    elapsed, code, messages = _cut_after(
        setup, grant_id, lambda: done.append(reload_file(other, path, "admin:root"))
    )
    assert done[0].ended == (grant_id,)
    assert elapsed < 1.0, elapsed
    assert code == "revoked"  # close code 4011
    assert any("the policy no longer allows it" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "policy"
    # This broker notices the version within its poll interval, and decides by it.
    _wait_for(lambda: setup.broker.policy.version is not None, "the new policy version here")
    assert "svc-echo" not in setup.broker.policy.services
    [revoke] = audit_rows(setup.broker, "grant.revoke")  # not `kept`: svc-dead is still allowed
    assert revoke["details"]["grant_id"] == grant_id and revoke["details"]["reason"] == "policy"
    assert kept != grant_id
