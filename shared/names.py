"""Validation of names that cross the wire: services, users, groups, scopes."""

from __future__ import annotations

import re

__all__ = ["NAME_RULE", "is_dns_label", "is_principal_name", "is_scope"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PRINCIPAL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SCOPE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

NAME_RULE = "lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'"


def is_dns_label(name: str) -> bool:
    """True when ``name`` is a DNS-1123 label: what service names must be."""
    return bool(_DNS_LABEL.match(name))


def is_principal_name(name: str) -> bool:
    """True for user, group and service-account names (``alice``, ``deploy-bot``, ``j.doe``)."""
    return bool(_PRINCIPAL.match(name))


def is_scope(name: str) -> bool:
    """True for scope names such as ``read``, ``write`` or ``admin``."""
    return bool(_SCOPE.match(name))
