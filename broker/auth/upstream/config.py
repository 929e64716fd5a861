"""Upstream OpenID providers (``ACCESS_BROKER_OIDC_PROVIDERS``), checked when the settings load.

The client secret is never a settings value: ``client_secret_file`` or ``client_secret_env``
names where it is, read once at start and kept in a private attribute (out of ``repr``, of
``model_dump`` and of every log line).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from access.shared.names import NAME_RULE, is_principal_name
from access.shared.net import check_remote_url

__all__ = ["DEFAULT_MFA_AMR", "DomainRule", "OidcProvider"]

# RFC 8176 values that say a second factor (or a phishing-resistant key) was used.
DEFAULT_MFA_AMR = ("mfa", "otp", "hwk", "swk", "sms", "fpt", "face")
# 27 characters at most: ``principals.source`` holds "oidc:<name>" in 32.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,26}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_MAX_SECRET = 4096


class DomainRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = Field(description="an email domain, e.g. example.com (verified emails only)")
    groups: tuple[str, ...] = Field(description="groups a person with a verified email there gets")


class OidcProvider(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="a slug (a-z, 0-9, -), in the redirect URI /oidc/<name>/callback")
    display_name: str = Field(description='shown as "Sign in with <display_name>"')
    issuer: str = Field(description="the provider's issuer, exactly as its ID tokens' iss")
    client_id: str = Field(description="the broker's client id at the provider")
    client_secret_file: Path | None = Field(default=None, description="file holding the client secret (0600)")
    client_secret_env: str | None = Field(default=None, description="environment variable holding it")
    scopes: tuple[str, ...] = Field(default=("openid", "email", "profile"), description="must hold openid")
    username_claim: str = Field(default="preferred_username", description="the claim naming the user")
    groups_claim: str = Field(default="groups", description="the claim listing the groups (absent: none)")
    group_prefix: str = Field(default="", description="put before every group of groups_claim")
    email_domains: tuple[DomainRule, ...] = Field(default=(), description="groups by verified email domain")
    allowed_email_domains: tuple[str, ...] | None = Field(
        default=None, description="only people with a verified email in these domains may sign in"
    )
    mfa_amr: tuple[str, ...] = Field(default=DEFAULT_MFA_AMR, description="amr values that mean a 2nd factor")
    mfa_acr: tuple[str, ...] = Field(default=(), description="acr values that mean a second factor")

    _secret: str = PrivateAttr(default="")

    # ``auth.jwks.KeySource``: an upstream provider's keys always come from its discovery document.
    @property
    def jwks_uri(self) -> str | None:
        return None

    @property
    def algorithms(self) -> tuple[str, ...] | None:
        return None

    @property
    def source(self) -> str:
        """What ``principals.source`` says of the users this provider signs in."""
        return f"oidc:{self.name}"

    @property
    def client_secret(self) -> str:
        return self._secret

    @model_validator(mode="after")
    def _check(self) -> OidcProvider:
        if not _NAME.match(self.name):
            raise ValueError(
                f"OIDC provider {self.name[:40]!r}: a name is 1 to 27 of a-z, 0-9 and -, "
                "starting with a letter or digit"
            )
        where = f"OIDC provider {self.name!r}"
        check_remote_url(where, self.issuer)
        if self.issuer.endswith("/") or "?" in self.issuer or "#" in self.issuer:
            raise ValueError(
                f"{where}: give the issuer exactly as its ID tokens' iss (no trailing /, ? or #)"
            )
        if not self.display_name.strip() or len(self.display_name) > 64:
            raise ValueError(f"{where}: display_name is required (at most 64 characters)")
        if not self.client_id.strip() or len(self.client_id) > 256:
            raise ValueError(f"{where}: client_id is required (at most 256 characters)")
        if "openid" not in self.scopes:
            raise ValueError(f"{where}: scopes must include openid (it is what makes an ID token)")
        if any(not s or " " in s for s in self.scopes):
            raise ValueError(f"{where}: a scope is one word")
        for claim in (self.username_claim, self.groups_claim):
            if not _CLAIM.match(claim):
                raise ValueError(f"{where}: {claim[:40]!r} is not a claim name")
        if self.group_prefix and not is_principal_name(self.group_prefix + "x"):
            raise ValueError(f"{where}: group_prefix must make group names ({NAME_RULE})")
        for rule in self.email_domains:
            _check_domain(where, rule.domain)
            for group in rule.groups:
                if not is_principal_name(group):
                    raise ValueError(
                        f"{where}: email_domains {rule.domain}: {group[:40]!r} is not a group name"
                    )
        if self.allowed_email_domains is not None:
            if not self.allowed_email_domains:
                raise ValueError(f"{where}: allowed_email_domains is empty: nobody could sign in")
            for domain in self.allowed_email_domains:
                _check_domain(where, domain)
        if (self.client_secret_file is None) == (self.client_secret_env is None):
            raise ValueError(f"{where}: give the client secret as client_secret_file or client_secret_env")
        self._secret = _read_secret(where, self.client_secret_file, self.client_secret_env)
        return self


def _check_domain(where: str, domain: str) -> None:
    if not _DOMAIN.match(domain):
        raise ValueError(f"{where}: {domain[:80]!r} is not a lower-case domain name such as example.com")


def _read_secret(where: str, path: Path | None, env: str | None) -> str:
    if env is not None:
        if not _ENV_NAME.match(env):
            raise ValueError(f"{where}: client_secret_env must be an environment variable's name")
        value, source = os.environ.get(env, "").strip(), f"environment variable {env}"
    else:
        assert path is not None  # one of the two, checked by the caller
        source = f"client secret file {path}"
        try:
            mode = path.stat().st_mode
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: cannot read {source}: {getattr(exc, 'strerror', exc)}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"{where}: {source} is open to others: chmod 600 it")
    if not value or len(value) > _MAX_SECRET:
        raise ValueError(f"{where}: {source} holds no client secret")
    return value
