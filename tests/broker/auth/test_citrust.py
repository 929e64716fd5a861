"""ACCESS_BROKER_CI_ISSUERS: what is refused at start, and how claims match (pure)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from access.broker.auth.citrust import CiIssuer, claim_matches, match_rule
from access.broker.settings import Settings

GITHUB = "https://token.actions.githubusercontent.com"
RULE = {"service_account": "deploy-bot", "claims": {"repository": "acme/payments"}}


@pytest.fixture(autouse=True)
def _no_broker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ACCESS_BROKER_"):
            monkeypatch.delenv(name)


def _issuer(**changes: Any) -> dict[str, Any]:
    return {"issuer": GITHUB, "audience": "access-broker", "rules": [RULE], **changes}


def test_issuers_come_as_json_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_BROKER_CI_ISSUERS", json.dumps([_issuer(algorithms=["RS256"])]))
    [issuer] = Settings(data_dir=tmp_path).ci_issuers
    assert issuer.issuer == GITHUB and issuer.algorithms == ("RS256",) and issuer.jwks_uri is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"issuer": "http://token.example.com"}, "must be https://"),
        ({"issuer": GITHUB + "/"}, "no trailing /"),
        ({"jwks_uri": "http://keys.example.com/jwks"}, "jwks_uri: the url must be https://"),
        ({"audience": " "}, "audience is required"),
        ({"algorithms": ["none"]}, "never none or HMAC"),
        ({"algorithms": ["HS256"]}, "never none or HMAC"),
        ({"algorithms": []}, "are not accepted"),
        ({"rules": []}, "rules is empty"),
        ({"rules": [{"service_account": "deploy-bot", "claims": {}}]}, "claims is empty"),
        ({"rules": [{"service_account": "deploy-bot", "claims": {"repository": "*"}}]}, "bare *"),
        ({"rules": [{"service_account": "deploy-bot", "claims": {"ref": "refs/*/main"}}]}, "only at the end"),
        ({"rules": [{"service_account": "deploy-bot", "claims": {"aud": "x"}}]}, "checked by the broker"),
        ({"rules": [{"service_account": "Deploy Bot", "claims": {"repository": "a/b"}}]}, "is not a name"),
        ({"rules": [{"service_account": "x", "claims": {"a": "b"}, "regex": "."}]}, "Extra inputs"),
    ],
)
def test_bad_issuers_are_refused_at_start(tmp_path: Path, changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace("*", r"\*").replace("/", "/")):
        Settings(data_dir=tmp_path, ci_issuers=[_issuer(**changes)])  # type: ignore[list-item]


def test_http_to_loopback_is_allowed(tmp_path: Path) -> None:
    Settings(data_dir=tmp_path, ci_issuers=[_issuer(issuer="http://127.0.0.1:9000")])  # type: ignore[list-item]


def test_an_issuer_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="given more than once"):
        Settings(data_dir=tmp_path, ci_issuers=[_issuer(), _issuer()])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("acme/payments", "acme/payments", True),
        ("acme/payments", "acme/payments-fork", False),
        ("acme/payments", "ACME/payments", False),
        ("refs/tags/v*", "refs/tags/v1.2", True),
        ("refs/tags/v*", "refs/heads/v1", False),
        ("true", True, False),  # only strings match
        ("acme/payments", None, False),
        ("acme/payments", ["acme/payments"], False),
    ],
)
def test_claims_match_exactly_or_by_a_trailing_star(expected: str, actual: Any, matches: bool) -> None:
    assert claim_matches(expected, actual) is matches


def test_the_first_matching_rule_wins_and_misses_say_which_claims_differed() -> None:
    issuer = CiIssuer.model_validate(
        _issuer(
            rules=[
                {
                    "service_account": "deploy-bot",
                    "claims": {"repository": "acme/payments", "ref": "refs/heads/main"},
                },
                {"service_account": "any-bot", "claims": {"repository_owner": "acme"}},
            ]
        )
    )
    assert match_rule(
        issuer, {"repository": "acme/payments", "ref": "refs/heads/main", "repository_owner": "acme"}
    ) == (
        1,
        issuer.rules[0],
    )
    assert match_rule(issuer, {"repository": "acme/web", "repository_owner": "acme"}) == (2, issuer.rules[1])
    misses = match_rule(issuer, {"repository": "evil/x", "ref": "refs/heads/main"})
    assert isinstance(misses, list)
    assert [miss.to_audit() for miss in misses] == [
        {"rule": 1, "service_account": "deploy-bot", "mismatched": {"repository": "evil/x"}},
        {"rule": 2, "service_account": "any-bot", "mismatched": {"repository_owner": None}},
    ]
