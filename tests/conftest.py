"""Fixtures every test folder can use: fresh databases (SQLite and PostgreSQL), clocks, brokers.

PostgreSQL tests create a database of their own on the machine's server (``ACCESS_TEST_PG``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``) and drop it afterwards, so tests
run in parallel without seeing each other. It is made as a copy of a template the migrations
brought to head once per pytest-xdist worker (``CREATE DATABASE ... TEMPLATE``): running them
on every test's database cost about a second each; a broker opening it finds it at head. A test
that needs a database with no tables asks for ``pg_empty_url``.

A broker that ``make_broker`` opens on a SQLite file that does not exist yet starts from a copy
of one migrated file (``migrated_sqlite``, made once per pytest-xdist worker by running the
migrations on an empty file): byte for byte what the migrations would have built there, without
running them again for every test (about 0.1 s each here). The broker still runs ``migrate`` on it,
which finds the file at head.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from access.broker.clock import FakeClock

PG_ADMIN_URL = os.environ.get("ACCESS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Tests never touch the machine's real keyring.
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"

# Brokers under test hash passwords with OWASP's minimum argon2id parameters, the lowest the
# settings allow (a third of the default's time): the suite hashes and verifies thousands of
# them. tests/broker/auth/test_identity.py checks the default parameters and the change between.
LIGHT_PASSWORD_HASHING = {
    "ACCESS_BROKER_PASSWORD_HASH_MEMORY_KIB": "19456",
    "ACCESS_BROKER_PASSWORD_HASH_TIME_COST": "2",
    "ACCESS_BROKER_PASSWORD_HASH_PARALLELISM": "1",
}
os.environ.update(LIGHT_PASSWORD_HASHING)


def _pg_admin_engine() -> sa.Engine:
    url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _pg_database(template: str | None) -> Iterator[str]:
    name = f"access_t_{secrets.token_hex(6)}"
    admin = _pg_admin_engine()
    try:
        with admin.connect() as conn:
            copy = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    except sa.exc.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: start it (see README) ({exc.orig})")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that runs ``access-broker serve`` in-process (``CliRunner``) has ``server.run`` set
    up logging: a root handler on that run's stderr, which is closed when the run ends. Put the
    root logger and the loggers it touched back, so no later test logs into a closed stream."""
    names = ("", "httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def _pg_migrated_template() -> Iterator[str]:
    """A PostgreSQL database the migrations brought to head, once per worker; never connected to
    after that (a template with a session open cannot be copied)."""
    from access.broker.store import engine as store_engine

    for url in _pg_database(None):
        engine = store_engine.create_engine(url)
        try:
            store_engine.migrate(engine)
        finally:
            engine.dispose()
        name = sa.engine.make_url(url).database
        assert name is not None
        yield name


@pytest.fixture
def pg_url(_pg_migrated_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, at the migrations' head; dropped afterwards."""
    yield from _pg_database(_pg_migrated_template)


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A fresh PostgreSQL database with no tables at all; dropped afterwards."""
    yield from _pg_database(None)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the migrations brought to head, made once per worker; copy it, never open it."""
    from access.broker.store import engine as store_engine

    path = tmp_path_factory.mktemp("migrated") / "broker.db"
    engine = store_engine.create_engine(f"sqlite:///{path}")
    try:
        store_engine.migrate(engine)
    finally:
        engine.dispose()  # the last connection's close checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists(), "the migrated file is not self-contained"
    return path


def _start_from_migrated(url: str, migrated: Path, data_dir: Path) -> None:
    """Put a copy of ``migrated`` where ``url`` names a SQLite file that does not exist yet."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if path.exists() or path.with_name(path.name + "-wal").exists():
        return
    # The data directory as Broker.from_settings makes it (it makes no other when it exists).
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated, path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for this test."""
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL, each with a fresh database."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


DEFAULT_POLICY: dict[str, Any] = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "postgres",
            "target": "127.0.0.1:5432",
            "description": "Payments database",
            "scopes": ["read", "write"],
            "max_ttl": "1h",
            "options": {"database": "test", "user": "postgres"},
        },
        {
            "name": "svc-cache",
            "kind": "redis",
            "target": "127.0.0.1:6379",
            "scopes": ["read"],
            "max_ttl": "2h",
        },
    ],
    "rules": [
        {
            "name": "sre-payments",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["read", "write"],
            "max_ttl": "30m",
            "require": "auto",
        },
        {
            "name": "ci-payments-read",
            "subjects": {"groups": ["ci"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "max_ttl": "15m",
            "require": "auto",
        },
    ],
    "audit": {"readers": {"groups": ["security", "sre"]}},
}


# DEFAULT_POLICY plus a rule under which a developer's write on svc-payments waits for one of
# the leads (the approvals inbox's tests, in process and in Chromium).
REVIEWED_POLICY: dict[str, Any] = {
    **DEFAULT_POLICY,
    "rules": [
        *DEFAULT_POLICY["rules"],
        {
            "name": "payments-write-reviewed",
            "subjects": {"groups": ["dev"]},
            "services": ["svc-payments"],
            "scopes": ["write"],
            "max_ttl": "1h",
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"], "count": 1}], "wait": "1h"},
        },
    ],
}


@pytest.fixture
def make_broker(tmp_path: Path, fake_clock: FakeClock, migrated_sqlite: Path) -> Iterator[Callable[..., Any]]:
    """A factory for in-process brokers: ``make_broker(db_url=..., policy=dict, clock=...,
    base_url=...)``.

    Defaults: a fresh SQLite database, ``DEFAULT_POLICY``, the test's ``fake_clock``,
    ``https://broker.test``. A SQLite file that does not exist yet starts as a copy of
    ``migrated_sqlite``.
    """
    from access.broker.policy import policy_from_data
    from access.broker.runtime import Broker
    from access.broker.settings import Settings

    made: list[Any] = []

    def factory(
        *,
        db_url: str | None = None,
        policy: dict[str, Any] | None = None,
        clock: Any = None,
        base_url: str = "https://broker.test",
        **settings: Any,
    ) -> Any:
        data_dir = tmp_path / f"broker-{len(made)}"
        url = db_url or f"sqlite:///{data_dir / 'broker.db'}"
        _start_from_migrated(url, migrated_sqlite, data_dir)
        broker = Broker.from_settings(
            Settings(data_dir=data_dir, database_url=url, **settings),
            clock=clock or fake_clock,
            policy=policy_from_data(policy if policy is not None else DEFAULT_POLICY),
            base_url=base_url,
        )
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.engine.dispose()


def write_policy(path: Path, policy: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump(policy if policy is not None else DEFAULT_POLICY, sort_keys=False))
    return path


@pytest.fixture
def kube_api(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Any]:
    """A running Kubernetes API stand-in (tests/fakes/kubeapi.py) with its seeded cluster, on the
    test's ``fake_clock`` (object timestamps and the ages kubectl prints follow it).

    Fails the test if a request handler raised: the stand-in must not hide its own bugs.
    """
    from tests.fakes.kubeapi import kube_api as running

    with running(tmp_path / "kube-api", clock=fake_clock.now) as api:
        yield api
        assert not api.server.errors, f"the stand-in raised: {api.server.errors!r}"


@pytest.fixture(scope="session")
def _oidc_provider_process() -> Iterator[Any]:
    """One oidc-provider node process per test session (each xdist worker its own)."""
    from tests.fakes.oidcprovider import OidcProvider

    with OidcProvider() as provider:
        yield provider


@pytest.fixture
def oidc_provider(_oidc_provider_process: Any) -> Any:
    """The real OpenID provider (tests/fakes/oidcprovider.py), its people as at the start: their
    first groups, none disabled. Its keys and redirect URIs stay as earlier tests left them."""
    _oidc_provider_process.reset()
    return _oidc_provider_process


# The longest tests first: pytest-xdist hands tests out in this order, so the ones that take tens
# of seconds (building the compiled wheel, the end-to-end scenarios) run while the many short
# ones fill the other workers, instead of one of them starting last and running on alone.
_SLOW_FIRST = ("tests/test_packaging.py", "tests/e2e/")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's load scheduling starts each worker on a run of consecutive tests, a quarter
    # of its share (about 200 here): with the longest tests first, the first worker got every
    # end-to-end test (two thirds of the suite's time) and ran on alone for minutes after the
    # others had finished. One test at a time, as workers free up, unless the command says
    # otherwise (``--maxschedchunk``).
    if getattr(config.option, "maxschedchunk", "absent") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        where = item.nodeid
        for index, prefix in enumerate(_SLOW_FIRST):
            if where.startswith(prefix):
                return index
        return len(_SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within each group is the collection's
