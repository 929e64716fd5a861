"""What a client says about itself reaches a person's browser escaped, whatever got it into the database."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from jinja2 import UndefinedError

from access.broker.runtime import Broker
from access.broker.store.tables import device_codes
from access.broker.web.render import SECURITY_HEADERS, html_response, render
from tests.broker.conftest import DevicePage, add_user, start_device

EVIL_ID = '"><script>alert("id")</script>'
EVIL_HOST = "h\"onmouseover='alert(1)'<script>x</script>"


@pytest.mark.anyio
async def test_client_id_and_host_are_escaped_on_the_consent_page(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client)
    # The API refuses such values (client_id must be known, client_host a host name); write them
    # straight into the row, so the page is shown to escape them on its own.
    with broker.transaction() as conn:
        conn.execute(sa.update(device_codes).values(client_id=EVIL_ID, client_host=EVIL_HOST))

    response = await page.sign_in(started["user_code"])

    assert response.status_code == 200, response.text
    assert "<script" not in response.text
    assert "&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;" in response.text
    assert "h&quot;onmouseover=&#x27;alert(1)&#x27;&lt;script&gt;" in response.text


def test_every_template_value_is_escaped() -> None:
    text = render("device_done.html", title="<t>", headline="<h>", css_class='"x', detail="a & b")
    assert "<title>&lt;t&gt; · access</title>" in text
    assert "<h1>&lt;h&gt;</h1>" in text
    assert '<p class="&quot;x">a &amp; b</p>' in text


def test_a_missing_value_fails_rather_than_rendering_empty() -> None:
    with pytest.raises(UndefinedError):
        render("device_done.html", title="t", headline="h", css_class="ok")


def test_html_responses_carry_the_security_headers() -> None:
    response = html_response("<p>x</p>", status=403)
    assert response.status_code == 403
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
