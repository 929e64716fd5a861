"""Dynamic services on the real shared PostgreSQL, MariaDB and Redis, and a target that goes down
(``CuttableProxy``, the tunnel tests' loopback proxy in front of PostgreSQL).

Each test gets its own schema/database/key prefix and its own broker (a fresh signing key, so a
broker id of its own); whatever of this broker is left on a target is ended after the test.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql
import pytest
import redis

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.identities.targets import broker_id, provisioner
from access.broker.runtime import Broker
from access.shared.models import Grant, GrantRequest
from tests.broker.grants.test_grants import add_principal
from tests.broker.tunnel.test_closes import CuttableProxy

PG, MYSQL, REDIS = ("127.0.0.1", 5432), ("127.0.0.1", 3306), ("127.0.0.1", 6379)


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(host=PG[0], port=PG[1], user="postgres", dbname="test", autocommit=True)


def my_admin() -> pymysql.Connection[Any]:
    return pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", autocommit=True)


def redis_admin() -> redis.Redis:
    return redis.Redis(*REDIS, socket_timeout=5)


@dataclass
class Place:
    """One test's objects on the three targets, and the services that point at them."""

    suffix: str
    pg_port: int = PG[1]

    @property
    def schema(self) -> str:
        return f"ident_{self.suffix}"

    def services(self) -> list[dict[str, Any]]:
        s = self.schema
        return [
            {
                "name": "svc-pg",
                "kind": "postgres",
                "target": f"127.0.0.1:{self.pg_port}",
                "scopes": ["read", "write"],
                "max_ttl": "1h",
                "options": {"database": "test"},
                "credentials": {
                    "mode": "dynamic",
                    "admin": {"user": "postgres", "database": "test"},
                    "scopes": {"read": {"roles": [f"{s}_reader"]}, "write": {"roles": [f"{s}_writer"]}},
                },
            },
            {
                "name": "svc-my",
                "kind": "mysql",
                "target": "127.0.0.1:3306",
                "scopes": ["read", "write"],
                "max_ttl": "1h",
                "options": {"database": s},
                "credentials": {
                    "mode": "dynamic",
                    "admin": {"user": "root"},
                    "broker_host": "127.0.0.1",
                    "scopes": {
                        "read": {"grants": [f"SELECT ON {s}.*"]},
                        "write": {"grants": [f"SELECT, INSERT ON {s}.*"]},
                    },
                },
            },
            {
                "name": "svc-rd",
                "kind": "redis",
                "target": "127.0.0.1:6379",
                "scopes": ["read", "write"],
                "max_ttl": "1h",
                "credentials": {
                    "mode": "dynamic",
                    "admin": {"user": "default"},
                    "scopes": {
                        "read": {"acl": ["+@read", "+@connection", f"~{s}:*"]},
                        "write": {"acl": ["+@read", "+@write", "+@connection", f"~{s}:*"]},
                    },
                },
            },
        ]

    def policy(self) -> dict[str, Any]:
        return {
            "services": self.services(),
            "rules": [
                {
                    "name": "sre",
                    "subjects": {"groups": ["sre"]},
                    "services": ["svc-pg", "svc-my", "svc-rd"],
                    "scopes": ["read", "write"],
                }
            ],
        }


@pytest.fixture
def place() -> Iterator[Place]:
    made = Place(secrets.token_hex(4))
    s = made.schema
    with pg_admin() as pg:
        pg.execute(f"CREATE SCHEMA {s}")
        pg.execute(f"CREATE TABLE {s}.t (x int)")
        pg.execute(f"CREATE ROLE {s}_reader NOLOGIN")
        pg.execute(f"CREATE ROLE {s}_writer NOLOGIN")
        pg.execute(f"GRANT USAGE ON SCHEMA {s} TO {s}_reader, {s}_writer")
        pg.execute(f"GRANT SELECT ON {s}.t TO {s}_reader, {s}_writer")
        pg.execute(f"GRANT INSERT ON {s}.t TO {s}_writer")
    with my_admin() as my, my.cursor() as cur:
        cur.execute(f"CREATE DATABASE {s}")
        cur.execute(f"CREATE TABLE {s}.t (x INT)")
    try:
        yield made
    finally:
        with pg_admin() as pg:
            pg.execute(f"DROP SCHEMA {s} CASCADE")
            pg.execute(f"DROP ROLE {s}_reader")
            pg.execute(f"DROP ROLE {s}_writer")
        with my_admin() as my, my.cursor() as cur:
            cur.execute(f"DROP DATABASE {s}")


@pytest.fixture
def leftovers() -> Iterator[Callable[[Broker], None]]:
    """Register a broker whose identities are ended after the test, whatever it asserted."""
    brokers: list[Broker] = []
    yield brokers.append
    for broker in brokers:
        for svc in broker.policy.services.values():
            if not svc.dynamic:
                continue
            with provisioner(broker, svc) as target:
                for found in target.ours():
                    if found.broker_id == broker_id(broker):
                        target.end(found.name)


Dynamic = Callable[..., tuple[Broker, AuthContext]]


@pytest.fixture
def dynamic(make_broker: Callable[..., Broker], place: Place, leftovers: Callable[[Broker], None]) -> Dynamic:
    """``dynamic(clock=None, user="alice", policy=None, kind="user", **settings)``: a broker on the
    (place's) policy (its identities ended after the test) and a principal of group sre on it."""

    def make(
        clock: Any = None, user: str = "alice", policy: Any = None, kind: str = "user", **settings: Any
    ) -> tuple[Broker, AuthContext]:
        broker = make_broker(policy=policy or place.policy(), clock=clock, **settings)
        leftovers(broker)
        return broker, add_principal(broker, user, kind=kind)

    return make


def issue(broker: Broker, who: AuthContext, service: str, scope: str = "read", ttl: str = "10m") -> Grant:
    return grants.request_grant(broker, who, GrantRequest(service=service, scope=scope, ttl=ttl, reason="t"))


@pytest.fixture
def pg_proxy() -> Iterator[CuttableProxy]:
    """PostgreSQL behind a loopback proxy the test can take down (``cut``) and bring back."""
    proxy = CuttableProxy()
    yield proxy
    proxy.close()
