"""The broker's runtime: settings, database, clock, keys, policy and the event bus, in one object.

Routes reach it through ``deps.BrokerDep``; background loops and the tunnel protocol get it
from ``app.state.broker``. Nothing in it is state that only this process knows except the
event subscribers for its own live sockets: grants, sessions and the ledger live in the database.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.engine import Engine

from access.broker.auth.jwks import KeyCache
from access.broker.auth.tokencache import VerifiedTokens
from access.broker.clock import Clock, SystemClock
from access.broker.errors import Unavailable, database_unavailable, outcome_unknown
from access.broker.events.bus import EventBus
from access.broker.keys import key_id, load_key, load_or_create_key
from access.broker.policy import Policy, load_policy
from access.broker.settings import Settings
from access.broker.store import engine as store_engine

__all__ = ["Broker", "database_down"]


@dataclass
class Broker:
    settings: Settings
    engine: Engine
    clock: Clock
    policy: Policy
    token_key: Ed25519PrivateKey
    audit_key: Ed25519PrivateKey
    base_url: str
    # Keys kept from before a rotation (``previous_*_key_files``): they verify and open, never sign.
    previous_token_keys: tuple[Ed25519PrivateKey, ...] = ()
    previous_audit_keys: tuple[Ed25519PrivateKey, ...] = ()
    events: EventBus = field(default_factory=EventBus)
    # This process among the replicas: owner of the tunnel connections it opens (tunnel.closes).
    instance_id: str = field(default_factory=lambda: secrets.token_hex(16))
    # The signing keys of trusted CI issuers, as last fetched (auth/jwks.py).
    ci_keys: KeyCache = field(default_factory=KeyCache)
    # The discovery documents and keys of upstream OIDC providers (auth/upstream), and the
    # transport of every request to them. A provider that rotates its keys is refetched after
    # 5 seconds, not CI's 30: people sign in one at a time, and each sign-in that fails on an
    # unknown key is a person told to try again (the refetch stays bounded per provider).
    oidc_keys: KeyCache = field(default_factory=lambda: KeyCache(refetch_after=5.0))
    # Access tokens whose signature this process checked (auth/tokencache.py): their claims.
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        base_url: str | None = None,
        policy: Policy | None = None,
        migrate: bool = True,
    ) -> Broker:
        """Open the database (migrating it), load or create keys, load the policy.

        Raises:
            Unavailable: the database cannot be reached.
            PolicyError: the policy file is invalid.
            ValueError: a key file is unsafe or malformed.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = store_engine.create_engine(
            settings.resolved_database_url, settings.pool, settings.db_timeouts
        )
        if migrate:
            try:
                store_engine.migrate(engine)
            except sa.exc.OperationalError as exc:
                raise Unavailable(
                    f"cannot reach the database: {exc.orig}",
                    hint="check --database-url / ACCESS_BROKER_DATABASE_URL",
                ) from exc
        if policy is None:
            policy = load_policy(settings.policy) if settings.policy else Policy.empty()
        return cls(
            settings=settings,
            engine=engine,
            clock=clock or SystemClock(),
            policy=policy,
            token_key=load_or_create_key(settings.resolved_signing_key_file),
            audit_key=load_or_create_key(settings.resolved_audit_key_file),
            previous_token_keys=tuple(load_key(path) for path in settings.previous_signing_key_files),
            previous_audit_keys=tuple(load_key(path) for path in settings.previous_audit_key_files),
            base_url=base_url or settings.base_url(),
        )

    @property
    def token_ring(self) -> tuple[Ed25519PrivateKey, ...]:
        """The token key, then the older ones: the first signs and seals, all verify and open."""
        return (self.token_key, *self.previous_token_keys)

    @property
    def token_verifiers(self) -> dict[str, Ed25519PublicKey]:
        """The ring's public keys by key id (a token's ``kid`` picks one). Made at each call (a
        token's signature is checked once, ``auth.tokencache``), so it follows the keys."""
        return {key_id(key): key.public_key() for key in self.token_ring}

    @property
    def audit_ring(self) -> tuple[Ed25519PrivateKey, ...]:
        """The audit key, then the older ones: the first signs checkpoints, all verify them."""
        return (self.audit_key, *self.previous_audit_keys)

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A database transaction. Database failures become ``Unavailable``: we fail closed.

        A failure before COMMIT rolled everything back ("nothing was changed"). A connection lost
        or timed out during COMMIT may have committed or not: that ``Unavailable`` says the
        outcome is unknown, so nobody is told that nothing happened when it did.

        Raises:
            Unavailable: the database could not be reached, did not answer in time, or the write
                failed at the database.
        """
        try:
            with self.engine.connect() as conn, conn.begin() as trans:
                yield conn
                try:
                    trans.commit()
                except sa.exc.DBAPIError as exc:
                    if exc.connection_invalidated or isinstance(exc, _LOST):
                        raise outcome_unknown() from exc
                    raise
        except _DOWN as exc:
            raise database_unavailable() from exc


# What "the database is unavailable" means here: it could not be reached, did not answer in time
# (our deadline, its statement or lock timeout), or no pooled connection came free in time.
_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.InternalError, sa.exc.TimeoutError)


def database_down(exc: BaseException) -> bool:
    """``exc`` means the database is unavailable (what ``Broker.transaction`` answers 503)."""
    return isinstance(exc, _DOWN)


# A COMMIT that failed in one of these ways may have reached the database: its outcome is unknown.
_LOST = (sa.exc.InterfaceError,)
