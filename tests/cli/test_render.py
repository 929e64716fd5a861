"""Terminal output never carries a stored string raw (issue 9, terminal injection).

The rule (docs/cli.md, "What the terminal shows"): identifiers print as printable ASCII with
``\\x1b``/``\\u0440``-style escapes, free text keeps letters but not controls, nothing is read as
rich markup, and ``-o json`` is exact.
"""

from __future__ import annotations

import json

import httpx
import pytest

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.cli import render
from access.cli.errors import CliError
from tests.cli.conftest import BROKER, BrokerApp

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x1b[31m\u0440ostgres\u202e\n| forged | row |"
CONTROLS = ("\x1b", "\x07", "\u202e")


def _clean(out: str, *, names: bool = True) -> None:
    """No raw escape, BEL, bidi override or forged line (nor, in names, the look-alike) got through."""
    for char in (*CONTROLS, "\u0440") if names else CONTROLS:
        assert char not in out, repr(out)
    assert "\n| forged" not in out


@pytest.fixture(params=["plain", "rich"])
def colour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Messages take a plain path when nothing is styled and rich when colour is forced: test both."""
    if request.param == "rich":
        monkeypatch.setenv("FORCE_COLOR", "1")
    return str(request.param)


def test_table_escapes_identifiers_and_free_text(capsys: pytest.CaptureFixture[str]) -> None:
    render.table(["NAME", "REASON"], [[HOSTILE, "Überprüfung [bold]x[/] \x1b[2J"]], free_text=["REASON"])
    out = capsys.readouterr().out
    _clean(out)
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31m\\u0440ostgres\\u202e\\n|" in out.replace("\n", "")
    assert "Überprüfung [bold]x[/] \\x1b[2J" in out  # letters stay in free text; markup is literal


def test_log_line_escapes_identifiers_and_free_text(capsys: pytest.CaptureFixture[str]) -> None:
    render.log_line([HOSTILE, "Überprüfung \x1b[2J\nnext"], free_text=[1])  # a --follow line
    out = capsys.readouterr().out
    _clean(out)
    assert out.count("\n") == 1  # one entry, one line: a newline in a value cannot start another
    assert "\\u0440ostgres" in out and "Überprüfung \\x1b[2J\\nnext" in out


def test_json_line_is_one_compact_line(capsys: pytest.CaptureFixture[str]) -> None:
    render.json_line({"seq": 7, "target": "a\nb"})
    assert capsys.readouterr().out == '{"seq":7,"target":"a\\nb"}\n'


def test_pairs_escape_values(capsys: pytest.CaptureFixture[str]) -> None:
    render.pairs([("name", HOSTILE), ("reason", "caf\u00e9 \u200b")], free_text=["reason"])
    out = capsys.readouterr().out
    _clean(out)
    assert "\\u0440ostgres" in out and "caf\u00e9 \\u200b" in out


def test_messages_and_errors_escape_and_print_markup_literally(
    colour: str, capsys: pytest.CaptureFixture[str]
) -> None:
    render.message(f"Revoked grant {render.name(HOSTILE)}.")
    render.warning("[bold red]fake[/] :warning: \x1b]0;t\x07")
    render.error(CliError(f"no such grant {HOSTILE!s}", f"hint \x1b[2J{HOSTILE}"))
    err = capsys.readouterr().err
    # rich styles the prefixes itself when colour is on; the data's own sequences never pass.
    if colour == "rich":
        for style in ("\x1b[1;31m", "\x1b[1;33m", "\x1b[1m", "\x1b[0m"):
            err = err.replace(style, "")
    _clean(err, names=False)  # messages are free text: letters of any script stay
    revoked, warned, failed, hint = err.splitlines()
    assert (
        revoked
        == "Revoked grant \\x1b[2J\\x1b]0;pwned\\x07\\x1b[31m\\u0440ostgres\\u202e\\n| forged | row |."
    )
    assert warned == "warning: [bold red]fake[/] :warning: \\x1b]0;t\\x07"
    assert (
        failed
        == "error: no such grant \\x1b[2J\\x1b]0;pwned\\x07\\x1b[31m\u0440ostgres\\u202e\\n| forged | row |"
    )
    assert hint.startswith("hint: hint \\x1b[2J\\x1b[2J")


def test_hostile_client_id_reaches_the_ledger_and_audit_shows_it_escaped(broker_app: BrokerApp) -> None:
    live = broker_app()  # alice is in sre, an audit reader in the test policy
    client_id = "\x1b[2J\x1b]0;pwned\x07\x1b[31mroot\u202e"
    with httpx.Client(transport=live.transport, base_url=BROKER) as anonymous:
        reply = anonymous.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"},
        )
    assert reply.status_code == 401, reply.text
    # Today's broker stores a keyed tag for a client id nobody has (tests/broker/auth/
    # test_unknown_names.py); a ledger written by an older broker holds the text as typed, and
    # the CLI must show that safely too.
    with live.broker.transaction() as conn:
        ledger.append(
            conn,
            live.broker.clock,
            actor="anonymous",
            action=Action.LOGIN_FAILURE,
            target=f"client:{client_id}",
        )
    live.sign_in("alice")

    exact = live.invoke("audit", "-o", "json")
    assert exact.exit_code == 0, exact.stderr
    failures = [e for e in json.loads(exact.stdout) if e["action"] == "login.failure"]
    assert len(failures) == 2
    assert failures[0]["target"].startswith("client:unknown:")  # the API path stores no text
    assert any(e["target"] == f"client:{client_id}" for e in failures)  # JSON is exact

    streamed = live.invoke("audit", "--since-seq", "0")  # a pipe: JSON lines, exact
    assert streamed.exit_code == 0, streamed.stderr
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert any(e["target"] == f"client:{client_id}" for e in lines)

    shown = live.invoke("audit")
    assert shown.exit_code == 0, shown.stderr
    _clean(shown.stdout)
    assert "client:\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31mroot\\u202e" in shown.stdout.replace("\n", "")
