"""The request log and the request id: one JSON line per request with its fields, never a
secret (a password, a token, a device code, an OIDC code or state), and ``X-Request-Id`` on
every answer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from access.broker.observe.logs import JsonFormatter, TextFormatter, configure
from access.broker.runtime import Broker
from access.shared.models import MAX_JSON_BODY_BYTES
from tests.broker.conftest import PASSWORD, DevicePage, add_user, poll, start_device

pytestmark = pytest.mark.anyio


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What ``configure("json", "info")`` writes to stderr; the root logger restored afterwards."""
    touched = [logging.getLogger(name) for name in ("", "httpx", "httpcore", "uvicorn", "uvicorn.error")]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate) for logger in touched]
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure("json", "info")
    try:
        yield stream
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON


def requests(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in lines(stream) if line["logger"] == "access.broker.requests"]


@pytest.fixture
async def http(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    yield client


async def test_a_sign_in_and_a_grant_leave_no_secret_in_the_log(
    client: httpx.AsyncClient, broker: Broker, log_output: io.StringIO
) -> None:
    add_user(broker, "alice", ("sre",))
    started = await start_device(client)
    await DevicePage(client).approve(started["user_code"])
    tokens = (await poll(client, started["device_code"])).json()
    auth = {"authorization": f"Bearer {tokens['access_token']}"}
    body = {"service": "svc-payments", "scope": "read", "ttl": "5m", "reason": "INC-7"}
    grant = await client.post("/v1/grants", json=body, headers=auth)
    assert grant.status_code == 201, grant.text
    grant_id = grant.json()["id"]
    assert (await client.get(f"/v1/grants/{grant_id}", headers=auth)).status_code == 200
    oidc = await client.get(
        "/oidc/corp/callback", params={"code": "oidc-code-s3cr3t", "state": "oidc-state-s3cr3t"}
    )
    refreshed = await client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "access-cli",
        },
    )
    assert refreshed.status_code == 200, refreshed.text

    text = log_output.getvalue()
    secrets = [
        PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed.json()["access_token"],
        started["device_code"],
        started["user_code"],
        "oidc-code-s3cr3t",
        "oidc-state-s3cr3t",
    ]
    assert all(secret not in text for secret in secrets)
    logged = requests(log_output)
    assert {"request_id", "method", "route", "status", "duration_ms", "time", "level"} <= set(logged[0])
    by_route = {(line["method"], line["route"]): line for line in logged}
    created = by_route[("POST", "/v1/grants")]
    assert created["status"] == 201 and created["principal"] == "alice"
    read = by_route[("GET", "/v1/grants/{grant_id}")]
    assert read["grant"] == grant_id and read["principal"] == "alice"
    assert by_route[("GET", "/oidc/{provider}/callback")]["status"] == oidc.status_code
    assert by_route[("POST", "/device")]["principal"] is None  # signed in by a form, not a token
    # Each line's id is the one its answer carried.
    assert read["request_id"] in {line["request_id"] for line in logged}
    assert len({line["request_id"] for line in logged}) == len(logged)


async def test_every_answer_carries_a_request_id(client: httpx.AsyncClient, log_output: io.StringIO) -> None:
    ok = await client.get("/healthz")
    missing = await client.get("/no/such/thing")
    too_big = await client.post("/v1/grants", content=b"x" * (MAX_JSON_BODY_BYTES + 1))
    unauthenticated = await client.get("/v1/grants")
    answers = [ok, missing, too_big, unauthenticated]
    assert [r.status_code for r in answers] == [200, 404, 413, 401]
    ids = [r.headers["x-request-id"] for r in answers]
    assert len(set(ids)) == 4 and all(len(i) == 16 for i in ids)
    assert [line["request_id"] for line in requests(log_output)] == ids
    assert [line["status"] for line in requests(log_output)] == [200, 404, 413, 401]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("ci-run-42.step:3", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("has space", False),
        ('quote"s', False),
        ("", False),
    ],
)
async def test_a_clients_request_id_is_kept_only_when_short_and_plain(
    client: httpx.AsyncClient, sent: str, kept: bool
) -> None:
    answer = await client.get("/healthz", headers={"x-request-id": sent})
    returned = answer.headers["x-request-id"]
    assert (returned == sent) is kept
    if not kept:
        assert len(returned) == 16 and returned.isalnum()


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("access.test", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_the_formats_carry_the_extra_fields() -> None:
    record = _record(request_id="abc", status=200, principal=None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /x" and line["request_id"] == "abc" and line["status"] == 200
    assert line["level"] == "info" and line["logger"] == "access.test"
    text = TextFormatter().format(record)
    assert text.endswith("INFO access.test: GET /x request_id=abc status=200")  # no principal=None


def test_a_text_line_is_one_line_with_what_it_shows_escaped() -> None:
    forged = "bob\n2026-12-03 10:00:00,000 INFO access.broker: GET /v1/grants \x1b[2J"
    record = _record(principal=forged, color_message="GET \x1b[36m/x\x1b[0m")
    text = TextFormatter().format(record)
    assert "\n" not in text and "\x1b" not in text, text
    assert text.endswith(
        "GET /x principal=bob\\n2026-12-03 10:00:00,000 INFO access.broker: GET /v1/grants \\x1b[2J"
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["principal"] == forged and "color_message" not in line  # JSON is exact


def test_alembics_plugin_list_is_not_logged_at_info(log_output: io.StringIO) -> None:
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade a -> b")
    assert "setup plugin" not in log_output.getvalue() and "Running upgrade" in log_output.getvalue()


def test_log_settings_take_any_case_and_refuse_other_values() -> None:
    from pydantic import ValidationError

    from access.broker.settings import Settings

    settings = Settings(log_level="WARNING", log_format="JSON")
    assert (settings.log_level, settings.log_format) == ("warning", "json")
    with pytest.raises(ValidationError):
        Settings(log_format="xml")
    with pytest.raises(ValidationError):
        Settings(metrics_listen="9464")  # HOST:PORT
