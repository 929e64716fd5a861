"""Broker settings: flags of ``access-broker serve`` and ``ACCESS_BROKER_*`` environment variables.

Every field here is documented in docs/broker.md; tests/test_docs.py fails when one is not.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from access.broker.auth.citrust import CiIssuer
from access.broker.auth.upstream.config import OidcProvider
from access.broker.notifications.endpoints import WebhookEndpoint
from access.broker.store.engine import DatabaseTimeouts, PoolSettings
from access.shared.net import IPNetwork, check_remote_url, is_loopback_host

__all__ = [
    "LISTENING_WATCH_INTERVAL",
    "POLLING_WATCH_INTERVAL",
    "Settings",
    "default_data_dir",
    "is_loopback_host",
]


# The tunnel watch's default poll: quick when it is the only way ends decided elsewhere arrive,
# slower as the safety net behind PostgreSQL's notifications.
POLLING_WATCH_INTERVAL = 0.25
LISTENING_WATCH_INTERVAL = 2.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "access-broker"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCESS_BROKER_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir, description="keys and the SQLite database live here"
    )
    database_url: str | None = Field(
        default=None, description="sqlite:///PATH or postgresql://...; default: SQLite in the data dir"
    )
    policy: Path | None = Field(default=None, description="policy YAML file (services and rules)")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8443, ge=0, le=65535, description="port to listen on (0: pick a free one)")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain for HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key for HTTPS")
    insecure_http: bool = Field(
        default=False, description="serve plain HTTP on a non-loopback address (INSECURE: tokens in clear)"
    )
    public_url: str | None = Field(
        default=None, description="the URL people and CLIs reach the broker at; default from host and port"
    )
    access_token_ttl: int = Field(
        default=900, ge=30, le=900, description="access token lifetime, seconds (max 900)"
    )
    session_ttl: int = Field(default=12 * 3600, ge=60, description="refresh token family lifetime, seconds")
    service_account_session_ttl: int = Field(
        default=12 * 3600,
        ge=60,
        description="service account (client credentials) session lifetime, seconds; refreshed within it",
    )
    device_code_ttl: int = Field(default=600, ge=30, le=1800, description="device code lifetime, seconds")
    device_poll_interval: int = Field(
        default=5, ge=1, le=60, description="RFC 8628 polling interval, seconds"
    )
    checkpoint_interval: float = Field(
        default=60.0, gt=0, description="seconds between signed ledger checkpoints"
    )
    grant_watch_interval: float | None = Field(
        default=None,
        gt=0,
        le=30.0,
        description="seconds between checks for grants ended by other processes; default 2 on "
        "PostgreSQL while notifications are listened for (db_notify), else 0.25",
    )
    db_notify: bool = Field(
        default=True,
        description="PostgreSQL: hear other processes' ends at once (LISTEN/NOTIFY); false: the poll alone",
    )
    policy_watch_interval: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="seconds between checks for a newer policy version (a reload on another process)",
    )
    instance_lease: float = Field(
        default=30.0,
        ge=3,
        le=3600,
        description="seconds without a heartbeat after which a broker process counts as dead",
    )
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 PEM key for tokens; default in data dir"
    )
    audit_key_file: Path | None = Field(
        default=None, description="Ed25519 PEM key for checkpoints; default in data dir"
    )
    # Key rotation without logging anyone out (docs/deploy.md): keys listed here are never used
    # to sign or seal, only to verify and open what was made with them before.
    previous_signing_key_files: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="older token keys (comma-separated PEM files): their tokens and sealed secrets "
        "are still accepted; nothing new is signed with them",
    )
    previous_audit_key_files: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="older audit keys (comma-separated PEM files): checkpoints they signed still verify",
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=200, description="PostgreSQL: connections kept open per broker process"
    )
    db_max_overflow: int = Field(
        default=10, ge=0, le=200, description="PostgreSQL: extra connections allowed under load"
    )
    db_pool_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="seconds to wait for a pooled connection before refusing (503)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text (for a terminal) or json (one object per line, for a collector)"
    )
    metrics_listen: str | None = Field(
        default=None,
        pattern=r"^[^\s]+:[0-9]{1,5}$",
        description="HOST:PORT to serve /metrics on instead of the main port (which then answers 404)",
    )
    # Every other wait for the database (docs/broker.md, "When the database hangs").
    db_connect_timeout: float = Field(
        default=3.0, ge=2, le=120, description="PostgreSQL: seconds to open a connection (at least 2)"
    )
    db_statement_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="seconds a statement or COMMIT may take before the broker gives up (503)",
    )
    db_lock_timeout: float = Field(
        default=2.0, gt=0, le=3600, description="PostgreSQL: seconds to wait for a lock another holds"
    )
    db_tcp_timeout: float = Field(
        default=10.0,
        ge=1,
        le=600,
        description="PostgreSQL: seconds after which a silent TCP peer counts as gone (keepalives)",
    )
    db_busy_timeout: float = Field(
        default=5.0, gt=0, le=120, description="SQLite: seconds to wait for another process's lock"
    )
    # -- issue 9: operations (client addresses behind proxies, lockout) -------------------
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default=(),
        description="CIDRs of proxies whose X-Forwarded-For is believed (comma-separated); default none",
    )
    login_failures_per_address: int = Field(
        default=30,
        ge=1,
        le=100_000,
        description="failed logins (any name) one client address may make in 15 minutes",
    )
    # argon2id for passwords and client secrets: RFC 9106's second recommended option by default;
    # no lower than OWASP's minimum (19 MiB, 2 passes, 1 lane) for a small machine. A stored hash
    # made with other parameters is verified with its own and re-made at the next sign-in.
    password_hash_memory_kib: int = Field(
        default=65536, ge=19456, le=4 * 1024 * 1024, description="argon2id memory per hash, KiB"
    )
    password_hash_time_cost: int = Field(default=3, ge=2, le=32, description="argon2id passes")
    password_hash_parallelism: int = Field(default=4, ge=1, le=64, description="argon2id lanes")

    @field_validator("previous_signing_key_files", "previous_audit_key_files", mode="before")
    @classmethod
    def _parse_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(part.strip()) for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # INFO, JSON as given before

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", ",").split(",") if part]
        if isinstance(value, list | tuple):
            try:
                return tuple(ipaddress.ip_network(str(part), strict=True) for part in value)
            except ValueError as exc:
                raise ValueError(
                    f"trusted proxies: {exc}; give networks such as 10.0.0.0/8,2001:db8::/32"
                ) from exc
        return value

    # -- limits on what one client can make the broker hold (memory, connections) --
    http_max_head: int = Field(
        default=64 * 1024, ge=4096, le=1024 * 1024, description="largest request head, bytes (431 past it)"
    )
    http_head_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds a request head may take to arrive (408 past it)"
    )
    http_body_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds a request body may take to arrive (408 past it)"
    )
    http_keepalive_timeout: float = Field(
        default=5.0, gt=0, le=300, description="seconds an idle keep-alive connection stays open"
    )
    max_tunnels_per_user: int = Field(
        default=16, ge=1, le=10_000, description="tunnels (WebSockets) one user may have open per process"
    )
    max_channels_per_tunnel: int = Field(
        default=256, ge=1, le=256, description="connections open at once through one tunnel (at most 256)"
    )
    max_channels_per_user: int = Field(
        default=512, ge=1, le=100_000, description="connections open at once through all of a user's tunnels"
    )
    tunnel_buffer_limit: int = Field(
        default=32 * 1024 * 1024,
        ge=4 * 1024 * 1024,
        description="bytes one tunnel may hold for its channels before it stops reading",
    )
    broker_buffer_limit: int = Field(
        default=256 * 1024 * 1024,
        ge=4 * 1024 * 1024,
        description="bytes all tunnels of a process may hold before the one adding stops reading",
    )
    # The statement log (audit/statements): batches of statements written as ledger entries.
    statement_log_limit: int = Field(
        default=100_000,
        ge=1000,
        le=10_000_000,
        description="statements a process may hold before writing them to the ledger; past it channels stop",
    )
    statement_log_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes of statement text a process may hold before writing them; past it channels stop",
    )
    statement_flush_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="seconds between writes of the statement log to the ledger (a full batch or an ended "
        "channel is written at once; the statement journal keeps what waits safe from a crash)",
    )
    # Per-grant identities (issue 10, identities/).
    identity_reconcile_interval: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="seconds between reconciliations of dynamic services' identities with the store",
    )
    # Issue 10: the broker logs in to postgres/mysql/redis targets itself (docs/tunnel.md).
    tunnel_login_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds a channel's login to its target may take"
    )
    # A graceful stop (SIGTERM): tunnels are told to open new connections elsewhere (docs/deploy.md).
    drain_timeout: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="on SIGTERM, seconds the open connections of tunnels may go on before they are "
        "cut (new ones go to another replica at once)",
    )

    # Issue 12: signed webhook notifications (notifications/, docs/notifications.md).
    webhooks: tuple[WebhookEndpoint, ...] = Field(
        default=(),
        description="webhook endpoints told about grants: a JSON list of {name, url, format, "
        "secret_file or secret_env, events}; default none",
    )
    webhook_timeout: float = Field(
        default=10.0,
        gt=0,
        le=20,
        description="seconds one webhook delivery may take in all (connect, send, the answer's head)",
    )
    webhook_max_attempts: int = Field(
        default=12,
        ge=1,
        le=100,
        description="tries of one webhook delivery before it is given up on (audited notification.failed)",
    )
    # Issue 14: the ledger pushed to a SIEM (audit/sink.py, docs/audit.md#streaming-the-ledger).
    audit_sink_url: str | None = Field(
        default=None,
        repr=False,
        description="where to POST the ledger's entries as NDJSON batches, in order (https://, or "
        "http:// to a loopback address); default none",
    )
    audit_sink_token_file: Path | None = Field(
        default=None, description="file (0600) holding the bearer token sent to the audit sink"
    )
    audit_sink_token_env: str | None = Field(
        default=None, description="environment variable holding that token (instead of a file)"
    )
    audit_sink_batch: int = Field(
        default=500, ge=1, le=5000, description="entries per audit sink POST, at most"
    )
    audit_sink_interval: float = Field(
        default=2.0,
        ge=0.1,
        le=300,
        description="seconds between looks for new entries to send to the audit sink",
    )
    # Issue 12: the approvals inbox in the browser (web/inbox.py, docs/inbox.md).
    inbox_session_ttl: int = Field(
        default=8 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="how long a sign-in on the approvals inbox page lasts, seconds",
    )

    # Issue 13: pipelines sign in with their CI system's identity token (auth/exchange.py,
    # docs/pipelines.md).
    ci_issuers: tuple[CiIssuer, ...] = Field(
        default=(),
        description="CI systems whose identity tokens are exchanged for a service account's token: "
        "a JSON list of {issuer, audience, jwks_uri, algorithms, rules}; default none",
    )
    ci_session_ttl: int = Field(
        default=900,
        ge=30,
        le=3600,
        description="how long a pipeline's login from a CI token lasts, seconds (its access token: at most "
        "ACCESS_BROKER_ACCESS_TOKEN_TTL of it, not refreshed)",
    )

    # Issue 13: people sign in with their organisation's OpenID provider (auth/upstream,
    # docs/upstream.md).
    oidc_providers: tuple[OidcProvider, ...] = Field(
        default=(),
        description="OpenID providers people sign in with on the device page and the inbox: a JSON list "
        "of {name, display_name, issuer, client_id, client_secret_file or client_secret_env, scopes, "
        "username_claim, groups_claim, group_prefix, email_domains, allowed_email_domains, mfa_amr, "
        "mfa_acr}; default none",
    )

    @field_validator("oidc_providers", mode="after")
    @classmethod
    def _unique_providers(cls, value: tuple[OidcProvider, ...]) -> tuple[OidcProvider, ...]:
        for what in ("name", "issuer"):
            seen = [getattr(provider, what) for provider in value]
            twice = sorted({item for item in seen if seen.count(item) > 1})
            if twice:
                raise ValueError(f"OIDC providers: each {what} once; {', '.join(twice)} given more than once")
        return value

    def oidc_provider(self, name: str) -> OidcProvider | None:
        """The upstream provider called ``name``, or None."""
        return next((provider for provider in self.oidc_providers if provider.name == name), None)

    @field_validator("ci_issuers", mode="after")
    @classmethod
    def _unique_issuers(cls, value: tuple[CiIssuer, ...]) -> tuple[CiIssuer, ...]:
        issuers = [entry.issuer for entry in value]
        twice = sorted({issuer for issuer in issuers if issuers.count(issuer) > 1})
        if twice:
            raise ValueError(f"CI issuers must be unique: {', '.join(twice)} given more than once")
        return value

    @field_validator("webhooks", mode="after")
    @classmethod
    def _unique_webhooks(cls, value: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        names = [endpoint.name for endpoint in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"webhook names must be unique: {', '.join(twice)} given more than once")
        return value

    @model_validator(mode="after")
    def _check_audit_sink(self) -> Settings:
        if self.audit_sink_url is not None:
            check_remote_url("audit sink (ACCESS_BROKER_AUDIT_SINK_URL)", self.audit_sink_url)
        elif self.audit_sink_token_file is not None or self.audit_sink_token_env is not None:
            raise ValueError("an audit sink token was given without ACCESS_BROKER_AUDIT_SINK_URL")
        if self.audit_sink_token_file is not None and self.audit_sink_token_env is not None:
            raise ValueError("give the audit sink's token as a file or an environment variable, not both")
        return self

    @model_validator(mode="after")
    def _check_transport(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if self.tls_cert is None and not self.insecure_http and not is_loopback_host(self.host):
            raise ValueError(
                f"refusing plain HTTP on {self.host}: give --tls-cert/--tls-key, "
                "or --insecure-http if something in front of the broker terminates TLS"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def on_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @property
    def listens(self) -> bool:
        """Whether this broker hears other processes' ends by LISTEN/NOTIFY (``events.listen``)."""
        return self.db_notify and self.on_postgres

    @property
    def watch_interval(self) -> float:
        """Seconds between the tunnel watch's polls: the safety net's longer default while
        notifications carry ends at once, else the quick poll that is the only way."""
        if self.grant_watch_interval is not None:
            return self.grant_watch_interval
        return LISTENING_WATCH_INTERVAL if self.listens else POLLING_WATCH_INTERVAL

    @property
    def pool(self) -> PoolSettings:
        return PoolSettings(
            size=self.db_pool_size, max_overflow=self.db_max_overflow, timeout=self.db_pool_timeout
        )

    @property
    def db_timeouts(self) -> DatabaseTimeouts:
        return DatabaseTimeouts(
            connect=self.db_connect_timeout,
            statement=self.db_statement_timeout,
            lock=self.db_lock_timeout,
            tcp=self.db_tcp_timeout,
            busy=self.db_busy_timeout,
        )

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.data_dir / "token-signing-key.pem"

    @property
    def resolved_audit_key_file(self) -> Path:
        return self.audit_key_file or self.data_dir / "audit-signing-key.pem"

    def base_url(self, port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.host in ("127.0.0.1", "::1", "0.0.0.0", "::") else self.host
        return f"{scheme}://{host}:{port or self.port}"
