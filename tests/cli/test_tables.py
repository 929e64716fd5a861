"""Tables (issue 9, "Readable output"): readable at 80 columns, no rules or trailing spaces in a pipe."""

from __future__ import annotations

import itertools
import re

from access.cli import render
from tests.cli.conftest import LiveBroker

LONG = "INC-4711 restore the payments ledger after the failed migration of the night before"


def _words_whole(out: str, text: str) -> None:
    """Each word of ``text`` is on one line of ``out``: nothing was folded a letter at a time."""
    lines = out.splitlines()
    for word in text.split():
        assert any(word in line for line in lines), (word, out)


def test_every_table_is_readable_at_80_columns(signed_in: LiveBroker) -> None:
    signed_in.invoke("request", "svc-payments", "-s", "read", "-t", "10m", "-r", LONG)
    for args in (["audit"], ["grants"], ["services"]):
        result = signed_in.invoke(*args, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), (args, result.stdout)
        if args != ["services"]:
            _words_whole(result.stdout, LONG)
    audit = signed_in.invoke("audit", env={"COLUMNS": "80"}).stdout
    assert re.search(r"^ {4}\S", audit, re.MULTILINE), "the details go to their own lines at 80 columns"


def test_layout_never_squeezes_a_column_to_a_few_letters() -> None:
    columns = ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"]
    rows = [
        [
            "7",
            "2026-01-31 09:00:00 CET",
            "deploy-bot",
            "grant.request",
            "svc-payments/read",
            f"reason={LONG}",
        ],
        [
            "8",
            "2026-01-31 09:00:01 CET",
            "alice",
            "connection.open",
            "g-3f9c2a71d04be886",
            "from=198.51.100.7",
        ],
    ]
    keep = ["SEQ", "TIME", "ACTION"]
    lines = render.layout(columns, rows, total=80, keep_whole=keep, free_text=["TIME", "DETAILS"], rule=True)
    assert all(len(line) <= 80 for line in lines), lines
    header = lines[0]
    starts = [header.index(column) for column in columns if column in header]
    widths = [b - a - 2 for a, b in itertools.pairwise(starts)]
    assert all(w >= 6 or columns[i] == "SEQ" for i, w in enumerate(widths)), (widths, lines)
    _words_whole("\n".join(lines), f"reason={LONG} deploy-bot g-3f9c2a71d04be886 svc-payments/read")


def test_tables_in_a_pipe_have_no_rules_and_no_trailing_spaces(signed_in: LiveBroker) -> None:
    signed_in.invoke("request", "svc-payments", "-s", "read", "-t", "10m", "-r", "INC-1")
    for args in (["audit"], ["grants"], ["services"], ["whoami"], ["grants", "--all"]):
        out = signed_in.invoke(*args).stdout  # CliRunner's stdout is not a terminal
        assert out.strip(), args
        assert not set("─━│┃┏┌╭") & set(out), (args, out)
        assert all(line == line.rstrip() for line in out.splitlines()), (args, out)
    # No COLUMNS in a pipe: one line per row, however long (grep and awk see whole records).
    assert len(signed_in.invoke("grants").stdout.splitlines()) == 2
