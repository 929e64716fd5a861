"""Claims -> user name and groups: a pure function, tested as a table."""

from __future__ import annotations

from typing import Any

import pytest

from access.broker.auth.upstream.config import OidcProvider
from access.broker.auth.upstream.mapping import MAX_GROUPS, MappingRefused, map_claims


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDP_SECRET", "x" * 20)


def _provider(**changes: Any) -> OidcProvider:
    return OidcProvider.model_validate(
        {
            "name": "idp",
            "display_name": "IdP",
            "issuer": "https://idp.test",
            "client_id": "c",
            "client_secret_env": "IDP_SECRET",
            **changes,
        }
    )


ALICE = {"sub": "1", "preferred_username": "alice", "email": "alice@example.com", "email_verified": True}


@pytest.mark.parametrize(
    ("settings", "claims", "name", "groups", "dropped"),
    [
        ({}, {**ALICE, "groups": ["eng", "sre"]}, "alice", ("eng", "sre"), 0),
        ({}, ALICE, "alice", (), 0),  # no groups claim: no groups
        ({}, {**ALICE, "groups": "eng"}, "alice", ("eng",), 0),  # one group as a string
        ({}, {**ALICE, "groups": ["Eng", "/top/eng", 7, "eng"]}, "alice", ("eng",), 2),
        ({"group_prefix": "idp-"}, {**ALICE, "groups": ["eng"]}, "alice", ("idp-eng",), 0),
        ({"groups_claim": "roles"}, {**ALICE, "roles": ["ops"], "groups": ["eng"]}, "alice", ("ops",), 0),
        # Entra ID: the user principal name; the part before @ becomes the name.
        ({"username_claim": "upn"}, {**ALICE, "upn": "Alice.Smith@contoso.com"}, "alice.smith", (), 0),
        # No preferred_username: the email's local part.
        ({}, {"sub": "1", "email": "bob@example.com"}, "bob", (), 0),
        (
            {"email_domains": [{"domain": "example.com", "groups": ["staff"]}]},
            {**ALICE, "groups": ["eng"]},
            "alice",
            ("eng", "staff"),
            0,
        ),
        # An unverified email gives no domain groups.
        (
            {"email_domains": [{"domain": "example.com", "groups": ["staff"]}]},
            {**ALICE, "email_verified": False},
            "alice",
            (),
            0,
        ),
        # ... nor does a verified one in another domain, or "true" as a string.
        (
            {"email_domains": [{"domain": "example.com", "groups": ["staff"]}]},
            {**ALICE, "email": "alice@example.com.evil.test"},
            "alice",
            (),
            0,
        ),
        (
            {"email_domains": [{"domain": "example.com", "groups": ["staff"]}]},
            {**ALICE, "email_verified": "true"},
            "alice",
            (),
            0,
        ),
        ({"allowed_email_domains": ["example.com"]}, ALICE, "alice", (), 0),
        (
            {},
            {**ALICE, "groups": [f"g{i:03d}" for i in range(70)]},
            "alice",
            tuple(f"g{i:03d}" for i in range(64)),
            6,
        ),
    ],
)
def test_claims_map_to_a_name_and_groups(
    settings: dict[str, Any], claims: dict[str, Any], name: str, groups: tuple[str, ...], dropped: int
) -> None:
    mapped = map_claims(_provider(**settings), claims)
    assert (mapped.name, mapped.groups, mapped.dropped_groups) == (name, groups, dropped)
    assert len(mapped.groups) <= MAX_GROUPS


@pytest.mark.parametrize(
    ("settings", "claims", "reason"),
    [
        ({}, {"sub": "1"}, "no_username"),
        ({}, {"sub": "1", "preferred_username": "-bad"}, "bad_username"),
        ({}, {"sub": "1", "preferred_username": "al ice"}, "bad_username"),
        ({"allowed_email_domains": ["example.com"]}, {**ALICE, "email_verified": False}, "email_domain"),
        ({"allowed_email_domains": ["example.org"]}, ALICE, "email_domain"),
        ({"allowed_email_domains": ["example.com"]}, {**ALICE, "email": "a@b@example.com"}, "email_domain"),
    ],
)
def test_claims_that_name_nobody_are_refused(
    settings: dict[str, Any], claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(MappingRefused) as caught:
        map_claims(_provider(**settings), claims)
    assert caught.value.reason == reason
