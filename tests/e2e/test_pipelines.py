"""A pipeline without secrets, from the real broker process and the real CLI: a CI identity token
(minted by the issuer on loopback, tests/fakes/ciissuer.py) exchanged by `access login
--oidc-token-env`, then used by policy; and the tokens the broker must refuse. SQLite only: the
exchange's database paths are those of any login (tests/broker/auth/test_exchange.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from access.shared.errors import ExitCode
from tests.e2e.conftest import DevCA, make_broker_process, new_cli, running
from tests.fakes.ciissuer import AUDIENCE, SigningKey, ci_issuer, github_claims

RULES = [
    {
        "service_account": "deploy-bot",
        "claims": {"repository": "acme/payments", "ref": "refs/heads/main", "environment": "production"},
    }
]


def test_a_pipeline_signs_in_with_its_ci_token_and_bad_tokens_are_refused(
    tmp_path: Path, devca: DevCA
) -> None:
    with ci_issuer(time.time) as issuer:
        trusted = [{"issuer": issuer.url, "audience": AUDIENCE, "rules": RULES}]
        proc = make_broker_process(
            tmp_path,
            devca,
            f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}",
            ACCESS_BROKER_CI_ISSUERS=json.dumps(trusted),
        )
        with running(proc):
            proc.add_service_account("deploy-bot", "ci")
            cli = new_cli(tmp_path, proc)
            token = issuer.mint()
            login = cli.run("login", "--oidc-token-env", "CI_ID_TOKEN", env={"CI_ID_TOKEN": token})
            assert login.returncode == 0, login.stderr
            assert "as deploy-bot (service_account" in login.stderr
            assert token not in login.stdout + login.stderr

            who = cli.run("whoami", "--output", "json")
            assert who.returncode == 0, who.stderr
            me = json.loads(who.stdout)
            assert (me["name"], me["kind"]) == ("deploy-bot", "service_account")

            # ci-payments-read in the default policy: ci may read svc-payments for 15 minutes.
            granted = cli.run(
                "request", "svc-payments", "-s", "read", "-t", "10m", "-r", "deploy", "--output", "json"
            )
            assert granted.returncode == 0, granted.stderr
            assert json.loads(granted.stdout)["state"] == "active"

            refused = {
                "wrong repository": (issuer.mint(github_claims("evil/payments")), "no rule of"),
                "wrong audience": (issuer.mint(audience="someone-else"), "is not for this broker"),
                "expired": (issuer.mint(lifetime=-120), "has expired"),
                "unknown key": (issuer.mint(key=SigningKey()), "key the issuer does not publish"),
            }
            for case, (bad, words) in refused.items():
                result = cli.run("login", "--oidc-token-env", "CI_ID_TOKEN", env={"CI_ID_TOKEN": bad})
                assert result.returncode == ExitCode.DENIED, (case, result.stderr)
                assert "the broker refused the CI token" in result.stderr, (case, result.stderr)
                assert words in result.stderr, (case, result.stderr)
                assert bad not in result.stderr
            # The refusal names the claim that differed; the stored login is still the pipeline's.
            again = cli.run("login", "--oidc-token-env", "T", env={"T": refused["wrong repository"][0]})
            assert "repository='evil/payments'" in again.stderr
            assert json.loads(cli.run("whoami", "--output", "json").stdout)["name"] == "deploy-bot"
