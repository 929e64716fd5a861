"""The demo prints the commands it runs so that they can be pasted into a shell: bash reads each
quoted argument back as the demo ran it."""

from __future__ import annotations

import subprocess

import pytest

from access.cli.demo.console import quote

ARGS = [
    "select current_user",
    "insert into orders values (3, 'lamp')",
    "select count(*) from pg_roles where rolname like 'access\\_%' and x = :'broker';",
    'create database :"db"',
    'it\'s "both"',
    "a $HOME `date` \\$ !x 'quoted'",
    "",
]


@pytest.mark.parametrize("arg", ARGS)
def test_bash_reads_a_quoted_argument_back_unchanged(arg: str) -> None:
    said = subprocess.run(
        ["bash", "--norc", "-c", "printf %s " + quote(arg)], capture_output=True, text=True, timeout=10
    )
    assert said.returncode == 0, said.stderr
    assert said.stdout == arg


def test_sql_with_single_quotes_is_shown_in_double_quotes() -> None:
    assert quote("insert into orders values (3, 'lamp')") == "\"insert into orders values (3, 'lamp')\""
