"""The CLI and a rule's ``mfa:`` against the real broker in-process: ``access services`` shows
the window, a request without a recent second factor exits 3 saying to run ``access login
--mfa``, and the same request from a session whose sign-in presented one is issued."""

from __future__ import annotations

import sqlalchemy as sa

from access.broker.store import principals
from access.broker.store.tables import sessions
from access.shared.errors import ExitCode
from tests.broker.grants.test_approvals import person
from tests.broker.grants.test_mfa import POLICY
from tests.cli.conftest import BrokerApp

WRITE = ("request", "svc-payments", "-s", "write", "-t", "10m", "-r", "INC-7")


def test_a_request_without_a_second_factor_says_to_step_up(broker_app: BrokerApp) -> None:
    live = broker_app(policy=POLICY, users={})
    person(live.broker, "alice", "sre")
    with live.broker.transaction() as conn:
        live.users["alice"] = principals.by_name(conn, "alice")
    live.sign_in("alice")

    listed = live.invoke("services")
    assert "write (mfa within 30m)" in listed.stdout
    assert "read (approval: 1 of group:leads)" in listed.stdout

    refused = live.invoke(*WRITE)
    assert refused.exit_code == ExitCode.NEEDS_LOGIN, refused.stderr
    assert "needs a sign-in with a second factor within 30m" in refused.stderr
    assert "access login --mfa" in refused.stderr
    assert live.answered("POST", "/v1/grants")[-1]["error"]["max_age"] == 1800

    # What `access login --mfa` leaves behind: a session whose sign-in presented a second factor.
    with live.broker.transaction() as conn:
        conn.execute(sa.update(sessions).values(mfa_at=live.broker.clock.now()))
    issued = live.invoke(*WRITE)
    assert issued.exit_code == ExitCode.OK, issued.stderr
    assert "active" in issued.stdout


def test_mfa_is_for_the_device_login_only(broker_app: BrokerApp) -> None:
    live = broker_app(policy=POLICY, users={})
    for other in (("--client-id", "deploy-bot"), ("--oidc-token-env", "CI_TOKEN")):
        refused = live.invoke("login", "--mfa", *other)
        assert refused.exit_code == ExitCode.USAGE, refused.stderr
        assert "--mfa is for a person's sign-in in the browser" in refused.stderr
