"""Schemathesis against the broker's own OpenAPI schema, in process, on SQLite and PostgreSQL.

Every operation gets inputs that fit the schema and inputs that do not, with a signed-in user's
token, then the schema's examples, then, for the operations on one grant, the ids of real grants
(an active one of the caller's, a request waiting for the caller's review), so the answers come
from deep in the services and not only from validation. No answer may be a 5xx, have a status,
a content type or a body the schema does not document. Bounded: a fixed number of examples per
operation, derandomized, so a run is the same every time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from access.broker import grants
from access.broker.app import create_app
from access.broker.auth.tokens import authenticate
from access.broker.runtime import Broker
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import add_user, login
from tests.conftest import REVIEWED_POLICY, _pg_admin_engine

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 10  # per operation and mode: about 500 requests a database, about 10 s of CPU each
# Operations that end what the others need (the caller's session, the grant): last.
LAST = ("/v1/grants/{grant_id}/revoke", "/v1/logout")


@pytest.fixture
def schema_broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url, policy=REVIEWED_POLICY)


def _token(broker: Broker, name: str, groups: tuple[str, ...]) -> str:
    return login(broker, add_user(broker, name, groups)).access_token


def _ask(broker: Broker, token: str, scope: str) -> str:
    ctx = authenticate(broker, token)
    return grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope=scope, ttl="20m")).id


def _failure(strategy: st.SearchStrategy[Any], token: str, label: str) -> str | None:
    """What schemathesis found wrong in ``EXAMPLES`` cases drawn from ``strategy``, or None."""
    headers = {"authorization": f"Bearer {token}"}

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        conforms()
    except Unsatisfiable:
        assert label.endswith("negative"), label  # an operation without input has nothing to get wrong
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
        return f"{label}: {_described(exc)}"
    return None


def _described(exc: BaseException) -> str:
    # Hypothesis' Flaky says only that the first run failed: what failed is among its exceptions.
    if isinstance(exc, BaseExceptionGroup) and not isinstance(exc, FailureGroup):
        return "\n".join([str(exc), *(_described(inner) for inner in exc.exceptions)])
    return str(exc)


def test_every_answer_is_in_the_schema(schema_broker: Broker) -> None:
    alice = _token(schema_broker, "alice", ("sre",))  # may request svc-payments and read the audit log
    bob = _token(schema_broker, "bob", ("leads",))  # reviews the developers' write requests
    dana = _token(schema_broker, "dana", ("dev",))
    active = _ask(schema_broker, alice, "read")
    pending = _ask(schema_broker, dana, "write")
    assert (
        grants.get_grant(schema_broker, authenticate(schema_broker, bob), pending).state == GrantState.PENDING
    )

    api = schemathesis.openapi.from_asgi("/openapi.json", create_app(schema_broker, background=False))
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 17, [op.label for op in operations]
    # What ends what the others need (the grant, then the caller's session) goes last.
    ordinary = [op for op in operations if op.path not in LAST]
    final = sorted((op for op in operations if op.path in LAST), key=lambda op: LAST.index(op.path))
    on_a_grant = [op for op in ordinary + final if "{grant_id}" in op.path]
    failures: list[str | None] = []

    def generated(operation: Any) -> None:
        for example in api.get_strategies_from_examples(operation):
            failures.append(_failure(example, alice, f"{operation.label} example"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            failures.append(_failure(strategy, alice, f"{operation.label} {mode.value}"))

    for operation in ordinary:
        generated(operation)
    for operation in on_a_grant:
        for token, grant_id in ((alice, active), (bob, pending)):
            strategy = operation.as_strategy(path_parameters={"grant_id": grant_id})
            failures.append(_failure(strategy, token, f"{operation.label} on {grant_id}"))
    for operation in final:
        generated(operation)
    assert not [found for found in failures if found], "\n\n".join(found for found in failures if found)


def test_with_the_database_gone_every_answer_is_still_in_the_schema(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    """The 503s of a broker whose database is gone, on every operation: documented, in the shape
    the schema gives (the broker's own on /oauth/* too, beside RFC 6749's)."""
    broker = make_broker(db_url=pg_url, policy=REVIEWED_POLICY)
    alice = _token(broker, "alice", ("sre",))
    broker.engine.dispose()
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{sa.engine.make_url(pg_url).database}" WITH (FORCE)')
    admin.dispose()
    api = schemathesis.openapi.from_asgi("/openapi.json", create_app(broker, background=False))
    failures = []
    statuses: set[int] = set()
    conformance = [status_code_conformance, content_type_conformance, response_schema_conformance]
    for operation in (result.ok() for result in api.get_all_operations()):
        for example in api.get_strategies_from_examples(operation) or [operation.as_strategy()]:

            @given(case=example)
            @settings(max_examples=3, deadline=None, derandomize=True, database=None)
            def conforms(case: Any) -> None:
                response = case.call_and_validate(
                    headers={"authorization": f"Bearer {alice}"}, checks=conformance
                )
                statuses.add(response.status_code)

            try:
                conforms()
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label}: {_described(exc)}")
    assert not failures, "\n\n".join(failures)
    assert 503 in statuses, statuses
