"""Trusted CI issuers (``ACCESS_BROKER_CI_ISSUERS``) and their rules, and how claims match them.

An issuer is a CI system's OpenID issuer (GitHub Actions, GitLab CI, ...) whose identity tokens
the broker exchanges for its own (``auth.exchange``, RFC 8693). Each rule names a service
account and the claims a token must carry to act as it. Matching is pure: exact string
equality, or a prefix when the configured value ends in ``*`` (``refs/tags/v*``). No regular
expressions: a rule must be readable at a glance by whoever reviews the settings.

A rule with no claims would let every pipeline of the issuer in (on github.com, every
repository in the world): refused at start, as is a bare ``*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from access.shared.names import NAME_RULE, is_principal_name
from access.shared.net import check_remote_url

__all__ = [
    "ALLOWED_ALGORITHMS",
    "CiIssuer",
    "Mismatch",
    "TrustRule",
    "claim_matches",
    "match_rule",
]

# Asymmetric algorithms only: ``none`` would need no key, and an HMAC algorithm would take the
# issuer's *public* key as its secret, which anyone can fetch (the classic RS256/HS256 mix-up).
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Checked by the token validation itself, never by a rule.
_RESERVED = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti"})
_MAX_CLAIM = 512


class TrustRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service_account: str = Field(description="the service account a matching token acts as")
    claims: dict[str, str] = Field(description="claim name -> exact value, or a prefix ending in *")

    def check(self, where: str) -> None:
        """Raises ValueError naming ``where`` when the rule is not acceptable."""
        if not is_principal_name(self.service_account):
            raise ValueError(
                f"{where}: service_account {self.service_account[:80]!r} is not a name ({NAME_RULE})"
            )
        if not self.claims:
            raise ValueError(f"{where}: claims is empty, which would let every token of the issuer in")
        for name, value in self.claims.items():
            if name in _RESERVED:
                raise ValueError(f"{where}: claim {name!r} is checked by the broker itself; leave it out")
            if not value or value == "*":
                raise ValueError(f"{where}: claim {name!r} needs a value (a bare * would match anything)")
            if "*" in value[:-1]:
                raise ValueError(f"{where}: claim {name!r}: * is allowed only at the end of a value")
            if len(value) > _MAX_CLAIM:
                raise ValueError(f"{where}: claim {name!r}: the value is longer than {_MAX_CLAIM}")


class CiIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(description="the tokens' iss, exactly (https://token.actions.githubusercontent.com)")
    audience: str = Field(description="the aud the tokens must carry (the pipeline asks for it)")
    jwks_uri: str | None = Field(default=None, description="default: from the issuer's discovery document")
    algorithms: tuple[str, ...] | None = Field(
        default=None, description="accepted signature algorithms; default: what discovery announces"
    )
    rules: tuple[TrustRule, ...] = Field(description="first match wins")

    @model_validator(mode="after")
    def _check(self) -> CiIssuer:
        where = f"CI issuer {self.issuer[:100]!r}"
        check_remote_url(where, self.issuer)
        if self.issuer.endswith("/") or "?" in self.issuer or "#" in self.issuer:
            raise ValueError(
                f"{where}: give the issuer exactly as its tokens' iss (no trailing /, query or #)"
            )
        if self.jwks_uri is not None:
            check_remote_url(f"{where}: jwks_uri", self.jwks_uri)
        if not self.audience.strip():
            raise ValueError(f"{where}: audience is required (e.g. the broker's URL or 'access-broker')")
        if self.algorithms is not None:
            bad = sorted(set(self.algorithms) - ALLOWED_ALGORITHMS)
            if bad or not self.algorithms:
                raise ValueError(
                    f"{where}: algorithms {bad or '[]'} are not accepted; "
                    f"choose from {', '.join(sorted(ALLOWED_ALGORITHMS))} (never none or HMAC)"
                )
        if not self.rules:
            raise ValueError(f"{where}: rules is empty; without a rule no token is accepted")
        for number, rule in enumerate(self.rules, 1):
            rule.check(f"{where}, rule {number}")
        return self


def claim_matches(expected: str, actual: Any) -> bool:
    """``actual`` (a token's claim) against a rule's value: only strings match."""
    if not isinstance(actual, str):
        return False
    if expected.endswith("*"):
        return actual.startswith(expected[:-1])
    return actual == expected


@dataclass(frozen=True)
class Mismatch:
    """Why one rule did not match: the claims whose value differed (the token's values)."""

    rule: int  # 1-based, as the settings number them
    service_account: str
    claims: dict[str, str | None]  # claim name -> the token's value (None: absent or not a string)

    def to_audit(self) -> dict[str, object]:
        return {"rule": self.rule, "service_account": self.service_account, "mismatched": self.claims}


def _shown(value: Any) -> str | None:
    return value[:_MAX_CLAIM] if isinstance(value, str) else None


def match_rule(issuer: CiIssuer, claims: Mapping[str, Any]) -> tuple[int, TrustRule] | list[Mismatch]:
    """The first rule (1-based number, rule) whose claims all match, or why each did not."""
    misses: list[Mismatch] = []
    for number, rule in enumerate(issuer.rules, 1):
        differing = {
            name: _shown(claims.get(name))
            for name, expected in rule.claims.items()
            if not claim_matches(expected, claims.get(name))
        }
        if not differing:
            return number, rule
        misses.append(Mismatch(number, rule.service_account, differing))
    return misses
