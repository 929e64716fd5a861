"""``access-broker ... -o json`` writes times as ISO-8601 with ``Z``, as ``access -o json`` does (issue 9)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker.admin.main import app


@pytest.mark.parametrize(("group", "add"), [("users", ["--password-stdin"]), ("service-accounts", [])])
def test_lists_in_json_write_created_at_with_z(tmp_path: Path, group: str, add: list[str]) -> None:
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path)]
    added = runner.invoke(app, [group, "add", "someone", *add, *where], input="a-long-password-1\n")
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, [group, "list", "-o", "json", *where])
    assert listed.exit_code == 0, listed.output
    [record] = json.loads(listed.stdout)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", record["created_at"]), record
