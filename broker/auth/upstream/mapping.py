"""How an ID token's claims name a person and their groups (pure: no I/O, a table test covers it).

* The name: the ``username_claim`` (default ``preferred_username``), else the ``email``; its part
  before any ``@``, lower-cased (Entra ID's ``alice@contoso.com`` UPN is ``alice``). It must be a
  principal name, or the sign-in is refused: a name is never invented. It is read only when the
  person is first provisioned; later sign-ins find them by (issuer, subject).
* The groups: each string of ``groups_claim`` (absent: none), lower-cased, after
  ``group_prefix``; those that are not group names are left out (and counted), since leaving a
  group out can only take access away. Then the groups of each ``email_domains`` rule whose
  domain is that of a *verified* email (``email_verified`` true). At most ``MAX_GROUPS``.
* ``allowed_email_domains``: anyone without a verified email in one of them is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from access.broker.auth.upstream.config import OidcProvider
from access.shared.names import is_principal_name

__all__ = ["MAX_GROUPS", "Mapped", "MappingRefused", "map_claims", "map_groups"]

MAX_GROUPS = 64  # as the embedded directory's users (auth.identity.MAX_GROUPS)
_MAX_CLAIM_GROUPS = 1000  # more than this in a claim is not read (a buffer cap, not a policy)


class MappingRefused(Exception):
    """The claims cannot sign anyone in: ``reason`` for the ledger, the message for the person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Mapped:
    name: str
    groups: tuple[str, ...]
    email: str | None  # verified only
    dropped_groups: int  # groups of the claim that were not group names


def _verified_email(claims: Mapping[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True or email.count("@") != 1:
        return None
    return email.lower()


def _name(provider: OidcProvider, claims: Mapping[str, Any]) -> str:
    value = claims.get(provider.username_claim)
    if not isinstance(value, str) or not value:
        value = claims.get("email")
    if not isinstance(value, str) or not value:
        raise MappingRefused(
            "no_username",
            f"{provider.display_name} did not say who you are (no {provider.username_claim} or email "
            "claim): ask an administrator to check the provider's settings",
        )
    name = value.split("@", 1)[0].lower()
    if not is_principal_name(name):
        raise MappingRefused(
            "bad_username",
            f"your {provider.display_name} user name {value[:64]!r} cannot be a user name here "
            "(lower-case letters, digits, '.', '_' and '-'): ask an administrator",
        )
    return name


def map_groups(provider: OidcProvider, claims: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """The groups the claims give (sorted, at most ``MAX_GROUPS``) and how many were left out."""
    raw = claims.get(provider.groups_claim)
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    groups: set[str] = set()
    dropped = 0
    for value in values[:_MAX_CLAIM_GROUPS]:
        group = provider.group_prefix + value.lower() if isinstance(value, str) else ""
        if is_principal_name(group):
            groups.add(group)
        else:
            dropped += 1
    email = _verified_email(claims)
    domain = None if email is None else email.split("@", 1)[1]
    for rule in provider.email_domains:
        if rule.domain == domain:
            groups.update(rule.groups)
    ordered = sorted(groups)
    return tuple(ordered[:MAX_GROUPS]), dropped + max(0, len(ordered) - MAX_GROUPS)


def map_claims(provider: OidcProvider, claims: Mapping[str, Any]) -> Mapped:
    """The user name and groups ``claims`` (a validated ID token's) give at ``provider``.

    Raises:
        MappingRefused: no usable name, or the email domain is not allowed.
    """
    email = _verified_email(claims)
    if provider.allowed_email_domains is not None and (
        email is None or email.split("@", 1)[1] not in provider.allowed_email_domains
    ):
        raise MappingRefused(
            "email_domain",
            f"only people with a verified email in {', '.join(provider.allowed_email_domains)} may sign in "
            f"with {provider.display_name}",
        )
    name = _name(provider, claims)
    groups, dropped = map_groups(provider, claims)
    return Mapped(name=name, groups=groups, email=email, dropped_groups=dropped)
