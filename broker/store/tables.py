"""Tables: one schema for SQLite (embedded default) and PostgreSQL.

Times are stored in UTC and always come back as aware UTC datetimes. Every write that
matters happens in a transaction together with its audit entry (``audit.ledger``), so an
action whose audit entry cannot be written does not happen. Only ``access.broker.store``
modules use these tables; services call store functions.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from access.broker.clock import utc

__all__ = [
    "approvals",
    "audit_checkpoints",
    "audit_log",
    "audit_sink_cursor",
    "broker_instances",
    "broker_meta",
    "cancel_keys",
    "device_codes",
    "grants",
    "identities",
    "locks",
    "metadata",
    "oidc_logins",
    "open_connections",
    "outbox",
    "policy_versions",
    "principals",
    "rate_events",
    "refresh_tokens",
    "sessions",
    "web_sessions",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC datetime."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = utc(value)
        # SQLite has no time zones: store naive UTC so that string comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else utc(value)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Users and service accounts. ``source``: ``embedded`` (passwords and client secrets here), or
# ``oidc:<provider>`` for a person provisioned at their first upstream sign-in
# (auth/upstream), linked by (``issuer``, ``subject``) and never by name. CI identity tokens
# sign in as an embedded service account (auth/exchange.py).
principals = sa.Table(
    "principals",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "user" | "service_account"
    sa.Column("source", sa.String(32), nullable=False, server_default="embedded"),
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=True),  # argon2id, users only
    sa.Column("client_id", sa.String(64), nullable=True, unique=True),  # service accounts only
    sa.Column("secret_hash", sa.Text, nullable=True),  # argon2id, service accounts only
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
    # A service account's owning user (by name: names are unique and never reused): they may not
    # approve its requests. Null for users, and for accounts made before owners existed.
    sa.Column("owner", sa.String(64), nullable=True),
    # TOTP (RFC 6238, ``auth.identity.totp``): the base32 secret sealed (AES-GCM with a key of its
    # own, the principal id as associated data), when a first correct code confirmed the
    # enrolment (until then sign-in ignores it), and the last time step a code was accepted for
    # (a code is good once: RFC 6238 section 5.2).
    sa.Column("totp_secret", sa.LargeBinary, nullable=True),
    sa.Column("totp_confirmed_at", UTCDateTime, nullable=True),
    sa.Column("totp_last_step", sa.BigInteger, nullable=True),
    # Upstream OIDC users only: the provider's issuer and the ID token's ``sub`` (unique together).
    sa.Column("issuer", sa.String(512), nullable=True),
    sa.Column("subject", sa.String(255), nullable=True),
    sa.UniqueConstraint("issuer", "subject", name="uq_principals_issuer_subject"),
)

# A login session: one refresh-token family. Access tokens carry its id (``sid``), so revoking
# the session (logout, reuse of a refresh token, disabling the user) stops its access tokens too.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("principal_id", sa.String(36), sa.ForeignKey("principals.id"), nullable=False, index=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("revoked_reason", sa.String(64), nullable=True),
    # When the sign-in that opened the session presented a second factor (TOTP, or an upstream
    # provider's amr/acr saying so); None: it did not. Refreshes keep it: it dates the sign-in.
    sa.Column("mfa_at", UTCDateTime, nullable=True),
    # A session opened by an upstream OIDC sign-in: the provider's name, and its refresh token
    # sealed (auth/upstream/refresh.py), with which every refresh re-reads the person's groups.
    sa.Column("upstream_provider", sa.String(64), nullable=True),
    sa.Column("upstream_refresh", sa.LargeBinary, nullable=True),
)

# Upstream OIDC sign-ins under way (auth/upstream/signin.py): what the callback must match.
# In the database, not in memory, so the callback may reach another replica. ``state`` and the
# browser's cookie are stored as SHA-256; the PKCE verifier sealed; single use (``used_at``).
oidc_logins = sa.Table(
    "oidc_logins",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("state_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("browser_hash", sa.String(64), nullable=False),
    sa.Column("nonce", sa.String(128), nullable=False),
    sa.Column("code_verifier", sa.LargeBinary, nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),  # device | inbox
    # No foreign key: device authorizations are pruned a day after they expire, these sooner.
    sa.Column("device_id", sa.String(36), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("used_at", UTCDateTime, nullable=True),
)

# Refresh tokens are stored as SHA-256 of the token: a leaked table grants nothing.
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=True),
)

# The approvals inbox's browser sign-ins: the cookie is a random token, stored as SHA-256 like a
# refresh token, pointing at an ordinary ``sessions`` row (so revocation, expiry and disabling a
# principal work as for the CLI's logins). A table of its own, not ``refresh_tokens``: a cookie
# must never be exchangeable for API tokens at /oauth/token.
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# RFC 8628 device authorizations. The device code is stored hashed; the user code is stored
# normalised (upper case, no dash) because the person types it.
device_codes = sa.Table(
    "device_codes",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("device_code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("user_code", sa.String(8), nullable=False, unique=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("client_host", sa.String(255), nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("interval", sa.Integer, nullable=False),
    sa.Column("last_poll_at", UTCDateTime, nullable=True),
    # pending -> approved | denied; approved -> consumed (single use)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("principal_id", sa.String(36), sa.ForeignKey("principals.id"), nullable=True),
    sa.Column("consent_hash", sa.String(64), nullable=True),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    # The second factor presented when the person signed in on the page (copied to the session).
    sa.Column("mfa_at", UTCDateTime, nullable=True),
    # ``access login --mfa``: the page refuses a sign-in without a second factor.
    sa.Column("mfa_required", sa.Boolean, nullable=False, server_default=sa.false()),
    # Signed in with an upstream provider (auth/upstream): carried to the session at exchange.
    sa.Column("upstream_provider", sa.String(64), nullable=True),
    sa.Column("upstream_refresh", sa.LargeBinary, nullable=True),
    sa.Column("session_expires_at", UTCDateTime, nullable=True),
)

# Sliding-window rate limiting that every replica sees (user-code guessing, password guessing).
rate_events = sa.Table(
    "rate_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_rate_events_key_at", "key", "at"),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("principal_id", sa.String(36), sa.ForeignKey("principals.id"), nullable=False, index=True),
    sa.Column("subject", sa.String(64), nullable=False),
    sa.Column("service", sa.String(63), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    # active | expired | revoked | denied | pending (waits for review, ``grants.approvals``)
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("rule", sa.String(128), nullable=True),
    sa.Column("requirement", sa.String(16), nullable=False, server_default="auto"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("ended_reason", sa.String(64), nullable=True),
    sa.Column("ended_by", sa.String(64), nullable=True),
    # The TTL asked for. A pending grant's ``expires_at`` is its review deadline; once approved
    # (``approved_at``) it becomes ``approved_at + ttl_seconds``. Null: a grant older than approvals.
    sa.Column("ttl_seconds", sa.Integer, nullable=True),
    sa.Column("approved_at", UTCDateTime, nullable=True),
    sa.Column("break_glass", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Each reviewer's word on a pending grant: one row per reviewer and grant (the UNIQUE makes a
# second vote impossible even if two requests of one reviewer race past the row lock).
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("grant_id", sa.String(40), sa.ForeignKey("grants.id"), nullable=False),
    sa.Column("reviewer_id", sa.String(36), nullable=False),
    sa.Column("reviewer", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # approve | deny
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("grant_id", "reviewer_id", name="uq_approvals_grant_reviewer"),
)

# The audit ledger: append-only (triggers refuse UPDATE/DELETE/TRUNCATE), hash-chained.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    sa.Column("at", UTCDateTime, nullable=False, index=True),  # searches bounded by time
    sa.Column("actor", sa.String(64), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False, index=True),
    sa.Column("details", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Signed checkpoints: (entry count, head hash) signed with the broker's Ed25519 audit key.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("head_hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),  # base64
)

# How far the audit sink (``audit.sink``) has delivered the ledger: one row per sink, its last
# delivered seq, moved only after the receiver took the entries up to it.
audit_sink_cursor = sa.Table(
    "audit_sink_cursor",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Work that must follow a commit (``events.outbox``): written in the transaction that decides
# it, so it exists exactly when that decision does; worked off by ``OutboxLoop`` on any replica.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Due from then on: after a failure, the retry time; while a replica works on it, its lease.
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("done_at", UTCDateTime, nullable=True),
    sa.Index("ix_outbox_due", "done_at", "available_at"),
)

# What every replica on this database must share (``broker.startup.claim_identity``): the token
# issuer (the public URL) and the fingerprints (``keys.key_id``) of the token and audit keys.
# One row, id 1, written by the first ``serve``; a replica that differs refuses to start.
broker_meta = sa.Table(
    "broker_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("issuer", sa.String(2048), nullable=True),
    sa.Column("token_key_id", sa.String(64), nullable=False),
    sa.Column("audit_key_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    # The id in the tags of this fleet's identities on targets: the first token key's, kept when
    # the key rotates (token_key_id then follows the key that signs).
    sa.Column("broker_id", sa.String(64), nullable=True),
)

# Each running broker process (replica), with its heartbeat: one whose heartbeat is older than
# ``instance_lease`` is dead, and what it left open is closed by another (``tunnel.closes``).
broker_instances = sa.Table(
    "broker_instances",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)

# Tunnel connections whose ``connection.open`` is written and ``connection.close`` is not yet:
# inserted in the transaction of the open, deleted in that of the close, so a close owed by a
# process that died is known from the database alone.
open_connections = sa.Table(
    "open_connections",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the connection id of the ledger entries
    sa.Column("instance_id", sa.String(32), nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),  # what connection.open recorded
    sa.Column("opened_at", UTCDateTime, nullable=False),
)

# The PostgreSQL cancel keys the broker issued (issue 10): one row per logged-in postgres channel,
# written once its login is done and deleted at its end, so that a CancelRequest reaching another
# replica than the query's finds it. The issued secret is kept only as a keyed hash, the target's
# own key only sealed (``tunnel.cancels``). ``instance_id``: the process that relays the channel
# (its rows go when it stops, or when its lease runs out).
cancel_keys = sa.Table(
    "cancel_keys",
    metadata,
    sa.Column("pid", sa.Integer, primary_key=True, autoincrement=False),  # the issued pid
    sa.Column("secret_mac", sa.LargeBinary, nullable=False),
    sa.Column("grant_id", sa.String(32), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("target_key", sa.LargeBinary, nullable=False),
    sa.Column("instance_id", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The per-grant identities the broker makes on targets (issue 10), one row per grant, written
# BEFORE the identity is made (state ``intended``), so a crash between the two leaves a trace.
# ``intended`` -> ``created`` -> ``ending`` -> ``dropped``, or ``failed`` (creation refused).
# ``password`` is sealed (AES-GCM, ``identities.sealing``): the store never holds it in clear.
# ``attempt_at``: when the latest attempt to make it began (the issuing request's, or a
# reconcile's that took over an ``intended`` row its issuer left); only that attempt records it.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("grant_id", sa.String(32), primary_key=True),
    sa.Column("service", sa.String(63), nullable=False),
    sa.Column("target_name", sa.String(200), nullable=True),  # known once made
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("password", sa.LargeBinary, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempt_at", UTCDateTime, nullable=True),  # null: a row older than the column
    sa.Index("ix_identities_state", "state"),
)

# Every policy the broker put in force, newest last: its YAML as validated, so that every replica
# applies the same version whatever file it was started with (``rollout``). Only appended.
policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source", sa.String(1024), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("recorded_by", sa.String(64), nullable=False),
)

# Locks (``access-broker lock``): while one is in force on a user, a service or a grant, what it
# covers is refused (new requests, tunnels, extensions, approvals) and its grants were ended.
# In force iff ``lifted_at`` is null and (``until`` is null or ``until`` > now): an expired lock
# lifts itself, with no write. Rows are never deleted, so ``access-broker locks --all`` is history.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # user | service | grant
    sa.Column("value", sa.String(64), nullable=False),  # the user's, service's name or the grant id
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("until", UTCDateTime, nullable=True),
    sa.Column("lifted_at", UTCDateTime, nullable=True),
    sa.Column("lifted_by", sa.String(64), nullable=True),
    sa.Index("ix_locks_kind_value", "kind", "value"),
)
