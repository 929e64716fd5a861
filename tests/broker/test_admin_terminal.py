"""``access-broker`` text output escapes stored values as ``access`` does (issue 9, terminal injection)."""

from __future__ import annotations

import pytest

from access.broker.admin.common import fail, say


def test_say_and_fail_escape_controls_but_keep_free_text(capsys: pytest.CaptureFixture[str]) -> None:
    say("error: entry 7: actor \x1b[2J\x1b]0;pwned\x07 Überprüfung \u202e")
    exit_ = fail("no user \x1b[31mroot\u200b", "hint \x9b2J\nforged")
    captured = capsys.readouterr()
    assert captured.out == "error: entry 7: actor \\x1b[2J\\x1b]0;pwned\\x07 Überprüfung \\u202e\n"
    assert captured.err == "error: no user \\x1b[31mroot\\u200b\nhint: hint \\x9b2J\\nforged\n"
    assert exit_.exit_code == 1
