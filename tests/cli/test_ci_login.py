"""`access login --oidc-token-file/--oidc-token-env` against the real broker in process and a CI
issuer on loopback: the token is read (never from argv), exchanged, stored as other logins are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from access.broker.clock import FakeClock
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker, stored
from tests.cli.test_commands import POLICY  # ci may read svc-payments for 15 minutes
from tests.fakes.ciissuer import AUDIENCE, Issuer, ci_issuer, github_claims

RULES = [
    {"service_account": "deploy-bot", "claims": {"repository": "acme/payments", "ref": "refs/heads/main"}}
]


@pytest.fixture
def issuer(fake_clock: FakeClock) -> Iterator[Issuer]:
    with ci_issuer(lambda: fake_clock.now().timestamp()) as running:
        yield running


@pytest.fixture
def live(broker_app: BrokerApp, issuer: Issuer) -> LiveBroker:
    made = broker_app(
        policy=POLICY, users={}, ci_issuers=[{"issuer": issuer.url, "audience": AUDIENCE, "rules": RULES}]
    )
    made.service_account("deploy-bot", ["ci"])
    return made


def test_a_token_in_the_environment_signs_the_pipeline_in(live: LiveBroker, issuer: Issuer) -> None:
    token = issuer.mint()
    result = live.invoke(
        "--broker", BROKER, "login", "--oidc-token-env", "CI_TOKEN", env={"CI_TOKEN": f" {token}\n"}
    )
    assert result.exit_code == 0, result.stderr
    assert "as deploy-bot (service_account" in result.stderr
    saved = stored(live.config_dir)
    assert saved is not None and saved["refresh_token"] is None and saved["client_id"] is None
    assert token not in result.stdout + result.stderr
    who = live.invoke("whoami")
    assert who.exit_code == 0 and "deploy-bot" in who.stdout
    granted = live.invoke("request", "svc-payments", "-s", "read", "-t", "5m", "-r", "deploy")
    assert granted.exit_code == 0, granted.stderr


def test_a_token_file_works_too(live: LiveBroker, issuer: Issuer, tmp_path: Path) -> None:
    path = tmp_path / "ci-token"
    path.write_text(issuer.mint() + "\n")
    path.chmod(0o600)
    result = live.invoke("--broker", BROKER, "login", "--oidc-token-file", str(path))
    assert result.exit_code == 0, result.stderr


def test_a_refused_token_exits_denied_with_the_brokers_reason(live: LiveBroker, issuer: Issuer) -> None:
    token = issuer.mint(github_claims("evil/payments"))
    result = live.invoke("--broker", BROKER, "login", "--oidc-token-env", "CI_TOKEN", env={"CI_TOKEN": token})
    assert result.exit_code == ExitCode.DENIED, result.stderr
    assert "refused the CI token: no rule of" in result.stderr
    assert "evil/payments" in result.stderr
    assert stored(live.config_dir) is None


def test_an_unreachable_issuer_exits_unavailable(live: LiveBroker, issuer: Issuer) -> None:
    issuer.failing = True
    result = live.invoke(
        "--broker", BROKER, "login", "--oidc-token-env", "CI_TOKEN", env={"CI_TOKEN": issuer.mint()}
    )
    assert result.exit_code == ExitCode.UNAVAILABLE, result.stderr


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("--oidc-token-env", "CI_TOKEN"), {}, "CI_TOKEN is unset or empty"),
        (("--oidc-token-env", "CI_TOKEN"), {"CI_TOKEN": "  \n"}, "CI_TOKEN is unset or empty"),
        (("--oidc-token-env", "eyJhbGciOi.x.y"), {}, "takes the name of an environment variable"),
        (("--oidc-token-file", "/nonexistent/token"), {}, "cannot read the identity token file"),
        (("--oidc-token-env", "A", "--oidc-token-file", "f"), {}, "give one of"),
        (("--oidc-token-env", "A", "--client-id", "sa-x"), {}, "not both"),
    ],
)
def test_bad_token_sources_are_usage_errors_and_nothing_is_sent(
    live: LiveBroker, args: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    result = live.invoke("--broker", BROKER, "login", *args, env=env)
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert words in result.stderr
    assert live.sent("POST", "/oauth/token") == []
