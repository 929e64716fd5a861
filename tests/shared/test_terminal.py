"""access.shared.terminal: what a stored string looks like on a terminal (issue 9, terminal injection)."""

from __future__ import annotations

import pytest

from access.shared import terminal

# (input, as an identifier, as free text)
CASES = [
    pytest.param("svc-payments", "svc-payments", "svc-payments", id="plain ASCII unchanged"),
    pytest.param("a b~!", "a b~!", "a b~!", id="space and ASCII punctuation kept"),
    pytest.param("\x1b[2J", "\\x1b[2J", "\\x1b[2J", id="ESC: clear screen"),
    pytest.param("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07", "\\x1b]0;pwned\\x07", id="OSC title with BEL"),
    pytest.param("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", "\\x1b[31mred\\x1b[0m", id="colour"),
    pytest.param("a\x00b\x08c", "a\\x00b\\x08c", "a\\x00b\\x08c", id="C0: NUL, backspace"),
    pytest.param("a\nb\tc\rd", "a\\nb\\tc\\rd", "a\\nb\\tc\\rd", id="newline, tab, CR inside a cell"),
    pytest.param("x\x7f", "x\\x7f", "x\\x7f", id="DEL"),
    pytest.param("x\x9b2J\x85", "x\\x9b2J\\x85", "x\\x9b2J\\x85", id="C1: CSI, NEL"),
    pytest.param("\u202egnp.exe", "\\u202egnp.exe", "\\u202egnp.exe", id="bidi override RLO"),
    pytest.param(
        "\u202a\u202b\u202c\u202d",
        "\\u202a\\u202b\\u202c\\u202d",
        "\\u202a\\u202b\\u202c\\u202d",
        id="bidi LRE..LRO",
    ),
    pytest.param(
        "\u2066\u2067\u2068\u2069",
        "\\u2066\\u2067\\u2068\\u2069",
        "\\u2066\\u2067\\u2068\\u2069",
        id="bidi isolates",
    ),
    pytest.param("a\u200eb\u200f", "a\\u200eb\\u200f", "a\\u200eb\\u200f", id="LRM RLM"),
    pytest.param(
        "ad\u200bmin\u200c\u200d\u2060\ufeff",
        "ad\\u200bmin\\u200c\\u200d\\u2060\\ufeff",
        "ad\\u200bmin\\u200c\\u200d\\u2060\\ufeff",
        id="zero-width",
    ),
    pytest.param(
        "a\u2028b\u2029", "a\\u2028b\\u2029", "a\\u2028b\\u2029", id="line and paragraph separators"
    ),
    pytest.param("a\u00a0b", "a\\xa0b", "a\\xa0b", id="no-break space"),
    pytest.param(
        "\u0440ostgres", "\\u0440ostgres", "\u0440ostgres", id="Cyrillic er: escaped in a name only"
    ),
    pytest.param(
        "Überprüfung", "\\xdcberpr\\xfcfung", "Überprüfung", id="accented letters kept in free text"
    ),
    pytest.param("deploy \U0001f680", "deploy \\U0001f680", "deploy \U0001f680", id="astral symbol"),
    pytest.param("\U000e0041", "\\U000e0041", "\\U000e0041", id="tag character (format)"),
    pytest.param("\ue000", "\\ue000", "\\ue000", id="private use"),
    pytest.param("\ud800", "\\ud800", "\\ud800", id="lone surrogate"),
    pytest.param("a\\x1b", "a\\\\x1b", "a\\x1b", id="backslash doubled in a name only"),
    pytest.param("[bold]x[/]", "[bold]x[/]", "[bold]x[/]", id="markup is data, left to the renderer"),
    pytest.param("", "", "", id="empty"),
]


@pytest.mark.parametrize(("raw", "as_name", "as_text"), CASES)
def test_escapes(raw: str, as_name: str, as_text: str) -> None:
    assert terminal.name(raw) == as_name
    assert terminal.text(raw) == as_text


@pytest.mark.parametrize(("raw", "as_name", "as_text"), CASES)
def test_names_are_printable_ascii_and_survive_text(raw: str, as_name: str, as_text: str) -> None:
    shown = terminal.name(raw)
    assert shown.isascii() and shown.isprintable()
    assert terminal.text(shown) == shown  # a line built from escaped names stays as built


def test_distinct_names_look_distinct() -> None:
    lookalikes = [
        "postgres",
        "\u0440ostgres",
        "post\u200bgres",
        "postgres\u202e",
        "\\u0440ostgres",
        "p\\ostgres",
    ]
    assert len({terminal.name(n) for n in lookalikes}) == len(lookalikes)


def test_long_strings() -> None:
    hostile = "\x1b[2J" * 10_000 + "\u0440" * 10_000
    shown = terminal.name(hostile)
    assert "\x1b" not in shown and shown == "\\x1b[2J" * 10_000 + "\\u0440" * 10_000
    plain = "a" * 100_000
    assert terminal.name(plain) is plain and terminal.text(plain) is plain
