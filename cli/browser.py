"""A tiny form-filling browser for the device-login page, used by ``access demo`` and the tests.

It does what a person does in a browser, through the same HTML forms: open the verification
page, type the user code, username and password, submit, then press Approve (or Deny). It reads
the forms' own fields (hidden CSRF and consent tokens included) and posts them back, so the
page's protections are exercised rather than bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

__all__ = ["Form", "complete_device_login", "parse_forms"]


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._current)
        elif self._current is not None and tag in ("input", "button"):
            name = a.get("name")
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            if not name:
                return
            if kind == "submit":
                self._current.buttons.append((name, a.get("value", "")))
            else:
                self._current.fields[name] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def _fill(form: Form, values: dict[str, str]) -> dict[str, str]:
    data = dict(form.fields)
    for name in data:
        for key, value in values.items():
            if key in name:
                data[name] = value
    return data


def complete_device_login(
    base_url: str,
    user_code: str,
    username: str,
    password: str,
    *,
    ca_file: str | None = None,
    approve: bool = True,
    otp: str = "",
) -> str:
    """Sign in on ``/device`` (with the one-time code ``otp`` if given) and approve (or deny)
    ``user_code``. Returns the final page's text.

    Raises:
        RuntimeError: a page did not have the form expected, or the broker refused a step.
    """
    import ssl

    import httpx

    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    with httpx.Client(base_url=base_url, verify=verify, follow_redirects=True, timeout=10) as browser:
        page = browser.get("/device")
        page.raise_for_status()
        forms = [f for f in parse_forms(page.text) if f.method == "post"]
        if not forms:
            raise RuntimeError("the verification page has no sign-in form")
        form = forms[0]
        data = _fill(form, {"user_code": user_code, "username": username, "password": password, "otp": otp})
        page = browser.post(urljoin(str(page.url), form.action or "/device"), data=data)
        if page.status_code != 200:
            raise RuntimeError(f"sign-in refused ({page.status_code}): {page.text[:300]}")
        forms = [f for f in parse_forms(page.text) if f.method == "post" and f.buttons]
        if not forms:
            raise RuntimeError(f"no confirmation form after sign-in: {page.text[:300]}")
        form = forms[0]
        wanted = "approve" if approve else "deny"
        button = next((b for b in form.buttons if wanted in (b[0] + b[1]).lower()), None)
        if button is None:
            raise RuntimeError(f"the confirmation form has no {wanted} button")
        data = dict(form.fields)
        data[button[0]] = button[1]
        page = browser.post(urljoin(str(page.url), form.action or "/device/confirm"), data=data)
        if page.status_code != 200:
            raise RuntimeError(f"confirmation refused ({page.status_code}): {page.text[:300]}")
        return page.text
