"""The tunnel's grant-ended close codes: what the broker sends is what the CLI reads back."""

from __future__ import annotations

import pytest

from access.shared.closecodes import GRANT_ENDED_CODES, ended_why, grant_ended_close
from access.shared.wsframe import CLOSE_NORMAL, CLOSE_PROTOCOL


@pytest.mark.parametrize(
    ("why", "code", "reason"),
    [
        ("expired", 4010, "grant g-1 expired"),
        ("revoked", 4011, "grant g-1 was revoked"),
        ("locked", 4012, "grant g-1 ended: an administrator locked access"),
        ("signed out", 4013, "grant g-1 ended: its sign-in session ended; run `access login`"),
    ],
)
def test_each_end_has_its_code_and_reason_and_reads_back(why: str, code: int, reason: str) -> None:
    assert grant_ended_close(why, "g-1") == (code, reason)
    assert code in GRANT_ENDED_CODES
    assert ended_why(code) == why


def test_an_unknown_why_closes_as_revoked() -> None:
    assert grant_ended_close("something new", "g-2") == (4011, "grant g-2 was revoked")


@pytest.mark.parametrize("code", [CLOSE_NORMAL, CLOSE_PROTOCOL, 4000, 4014])
def test_other_codes_are_not_grant_ends(code: int) -> None:
    assert ended_why(code) is None
    assert code not in GRANT_ENDED_CODES


def test_an_end_by_a_reloaded_policy_closes_as_revoked_in_its_own_words() -> None:
    assert grant_ended_close("policy", "g-3") == (4011, "grant g-3 ended: the policy no longer allows it")
    assert ended_why(4011) == "revoked"
