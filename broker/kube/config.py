"""A ``kubernetes`` service's block in the policy: the API server, the broker's credential for
it, impersonation, and each scope's rules (``rules.py``).

::

    services:
      - name: prod-cluster
        kind: kubernetes
        scopes: [read, operate]
        max_ttl: 1h
        kubernetes:
          server: https://kube.internal:6443      # the API server (https only); the target
          ca_file: /etc/access/kube-ca.pem         # its CA bundle (default: the system's CAs)
          token_file: /etc/access/kube-token       # or token_env: NAME,
                                                   # or client_cert_file + client_key_file
          impersonate: true                        # Impersonate-User/-Group: the grant's person
          scopes:                                  # optional for read, operate and admin (presets)
            operate:
              namespaces: [shop]
              rules:
                - {verbs: [get, list, watch], resources: ["*"], exclude: [secrets]}
                - {verbs: [delete], resources: [pods]}

The credential is never in the policy: the broker reads the file or variable named when a
channel opens, and never logs it. Checked at load: one credential source, an https URL with a
host, rules for every scope the service offers (its own, or a preset's), none for a scope it
does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField

from access.broker.kube.rules import PRESETS, KubeScope

__all__ = ["KubernetesConfig", "server_target"]


def server_target(url: str) -> str:
    """``host:port`` of an ``https://host[:port]`` API server URL (443 by default).

    Raises:
        ValueError: not https, no host, or a path, query, fragment or user in it.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ValueError(f"bad server URL {url!r}: {exc}") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"the server must be an https:// URL with a host, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"the server URL takes a host and a port only, got {url!r}")
    host = parts.hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(value: str) -> str:
    server_target(value)
    return value


def _text(value: str) -> str:
    if not value:
        raise ValueError("expected a non-empty string")
    return value


_Text = Annotated[str, AfterValidator(_text)]


class KubernetesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: Annotated[str, AfterValidator(_url)]
    ca_file: _Text | None = None
    token_file: _Text | None = None
    token_env: _Text | None = None
    client_cert_file: _Text | None = None
    client_key_file: _Text | None = None
    impersonate: bool = False
    scopes: Annotated[Mapping[str, KubeScope], PydanticField(max_length=256)] = PydanticField(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _one_credential(self) -> KubernetesConfig:
        sources = [self.token_file is not None, self.token_env is not None, self.client_cert_file is not None]
        if sum(sources) != 1:
            raise ValueError(
                "name the broker's credential for the API server: token_file, token_env, "
                "or client_cert_file with client_key_file (exactly one)"
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self

    @property
    def target(self) -> str:
        return server_target(self.server)

    def rules(self, scope: str) -> KubeScope | None:
        """The rules of ``scope``: the policy's, else the preset of that name, else None (deny)."""
        return self.scopes.get(scope) or PRESETS.get(scope)
