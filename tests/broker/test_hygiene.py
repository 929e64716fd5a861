"""Secret hygiene across the login flows: no password, client secret, device code, consent,
refresh or access token ever reaches the logs, the audit ledger, the database in the clear, or
an error message; and database errors do not echo bound parameters."""

from __future__ import annotations

import base64
import logging
import re

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth import identity
from access.broker.runtime import Broker
from access.broker.store import tables as db
from tests.broker.conftest import PASSWORD, DevicePage, add_user, ledger_text, poll, start_device

pytestmark = pytest.mark.anyio

WRONG_PASSWORD = "wrong-but-close-horse-battery"
WRONG_SECRET = "not-the-secret-0123456789abcdef"


def _database_text(broker: Broker) -> str:
    """Every row of every table, as text."""
    parts: list[str] = []
    with broker.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in conn.execute(sa.select(table)))
    return "\n".join(parts)


async def test_no_secret_reaches_logs_ledger_database_or_errors(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [PASSWORD, WRONG_PASSWORD, WRONG_SECRET]
    errors: list[str] = []
    add_user(broker)

    started = await start_device(client)
    secrets.append(started["device_code"])
    wrong = await page.sign_in(started["user_code"], password=WRONG_PASSWORD)
    assert wrong.status_code == 401
    errors.append(wrong.text)
    signed_in = await page.sign_in(started["user_code"])
    secrets.append(DevicePage.consent(signed_in.text))
    assert (await page.confirm(signed_in.text)).status_code == 200
    first = (await poll(client, started["device_code"])).json()
    reused_code = await poll(client, started["device_code"])
    errors.append(reused_code.text)

    refresh = {"grant_type": "refresh_token", "client_id": "access-cli"}
    second = (
        await client.post("/oauth/token", data={**refresh, "refresh_token": first["refresh_token"]})
    ).json()
    reused = await client.post("/oauth/token", data={**refresh, "refresh_token": first["refresh_token"]})
    assert reused.json()["error"] == "invalid_grant"
    errors.append(reused.text)
    secrets += [
        first["access_token"],
        first["refresh_token"],
        second["access_token"],
        second["refresh_token"],
    ]

    client_id, client_secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    secrets.append(client_secret)
    cc = {"grant_type": "client_credentials", "client_id": client_id}
    bad = await client.post("/oauth/token", data={**cc, "client_secret": WRONG_SECRET})
    basic = base64.b64encode(f"{client_id}:{WRONG_SECRET}".encode()).decode()
    bad_basic = await client.post("/oauth/token", data=cc, headers={"authorization": f"Basic {basic}"})
    good = (await client.post("/oauth/token", data={**cc, "client_secret": client_secret})).json()
    secrets.append(good["access_token"])
    errors += [bad.text, bad_basic.text]

    # A token that is almost right (signature cut short) must not be echoed back either.
    forged = second["access_token"][:-4] + "AAAA"
    secrets.append(forged)
    refused = await client.get("/v1/whoami", headers={"authorization": f"Bearer {forged}"})
    assert refused.status_code == 401
    errors.append(refused.text)
    revoked = await client.post("/oauth/revoke", data={"token": second["refresh_token"]})
    assert revoked.status_code == 200

    assert len(caplog.records) > 0  # the broker logged something, so the check below can fail
    places = {
        "logs": caplog.text,
        "ledger": ledger_text(broker),
        "database": _database_text(broker),
        "error responses": "\n".join(errors),
    }
    for secret in secrets:
        for where, text in places.items():
            assert secret not in text, f"a secret reached the {where}"
    # The database keeps them only as hashes (argon2id for passwords and client secrets).
    assert re.search(r"\$argon2id\$", places["database"])


def test_database_errors_do_not_echo_bound_parameters(broker: Broker) -> None:
    """Tracebacks and logs of a failed statement must not carry its values (hashes, names...).

    SQLite only: PostgreSQL's own DETAIL line can quote the failing row, which is why the app's
    database error handler logs nothing but the exception class.
    """
    value = "a-value-that-must-stay-out-of-messages"
    with pytest.raises(sa.exc.IntegrityError) as caught, broker.engine.begin() as conn:
        conn.execute(db.principals.insert().values(id="p1", name=value, kind="user", groups=[]))
    assert value not in str(caught.value)
