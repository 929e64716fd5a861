"""`access login` opens a browser only when one can be shown and --no-browser is not given."""

from __future__ import annotations

import webbrowser
from collections.abc import Iterator

import pytest

from access.cli.commands import auth
from tests.cli.test_login import _auth


class FakeBrowser(webbrowser.BaseBrowser):
    """A browser that records the pages it was asked to open."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.opened: list[str] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        self.opened.append(url)
        return True


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBrowser]:
    fake = FakeBrowser()
    monkeypatch.setattr(webbrowser, "_tryorder", None, raising=False)
    monkeypatch.setattr(webbrowser, "_browsers", {}, raising=False)
    webbrowser.register("fake", None, fake, preferred=True)
    yield fake


def test_opens_the_complete_verification_url(
    browser: FakeBrowser, capsys: pytest.CaptureFixture[str]
) -> None:
    authorization = _auth()
    auth._show_code(authorization, open_browser=True)
    assert browser.opened == [authorization.verification_uri_complete]
    err = capsys.readouterr().err
    assert authorization.user_code in err and "A browser window was opened" in err


def test_no_browser_opens_nothing_but_prints_the_code(
    browser: FakeBrowser, capsys: pytest.CaptureFixture[str]
) -> None:
    authorization = _auth()
    auth._show_code(authorization, open_browser=False)
    assert browser.opened == []
    err = capsys.readouterr().err
    assert authorization.verification_uri in err and authorization.user_code in err


def test_no_browser_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    # Under pytest stdin is not a terminal: scripts and CI never get a browser popping up.
    assert auth._can_open_browser() is False
