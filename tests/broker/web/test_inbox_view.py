"""How the inbox words a request and an outcome: a table over the wire model, no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from access.broker.web.inbox_view import clause_text, item, outcome_text, state_text
from access.shared.models import Approval, Grant, Review, ReviewClause

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _grant(**changes: Any) -> Grant:
    values: dict[str, Any] = {
        "id": "g-1",
        "subject": "bob",
        "service": "svc-payments",
        "kind": "postgres",
        "scope": "write",
        "reason": "CHG-42",
        "state": "pending",
        "created_at": NOW - timedelta(minutes=7),
        "expires_at": NOW + timedelta(hours=1),
        "seconds_left": 0,
        "ttl_seconds": 900,
        "requirement": "approval",
        "review": Review(
            clauses=[
                ReviewClause(count=2, reviewers=["group:leads"], approved_by=["carol"], missing=1),
                ReviewClause(
                    count=1, reviewers=["group:security", "user:dana"], missing=0, approved_by=["dana"]
                ),
            ],
            approvals=[
                Approval(reviewer="carol", decision="approve", comment="ok by me", at=NOW),
                Approval(reviewer="dana", decision="approve", at=NOW),
            ],
            review_expires_at=NOW + timedelta(hours=2),
            can_review=True,
        ),
    }
    values.update(changes)
    return Grant(**values)


@pytest.mark.parametrize(
    ("clause", "text"),
    [
        (ReviewClause(count=1, reviewers=["group:security"], missing=1), "needs 1 more of group:security"),
        (
            ReviewClause(count=2, reviewers=["group:leads", "user:dana"], approved_by=["carol"], missing=1),
            "needs 1 more of group:leads, user:dana (approved by carol)",
        ),
        (
            ReviewClause(count=1, reviewers=["user:dana"], approved_by=["dana"], missing=0),
            "met: 1 of user:dana (approved by dana)",
        ),
    ],
)
def test_clause_text(clause: ReviewClause, text: str) -> None:
    assert clause_text(clause) == text


def test_item_has_the_facts_a_reviewer_needs() -> None:
    shown = item(_grant(), NOW)
    assert (shown.subject, shown.service, shown.scope, shown.ttl) == ("bob", "svc-payments", "write", "15m")
    assert shown.reason == "CHG-42" and shown.age == "7m"
    assert shown.asked_at == "2026-12-02 08:53 UTC"
    assert shown.state == "waits for review until 2026-12-02 11:00 UTC" and shown.pending
    assert shown.clauses == (
        "needs 1 more of group:leads (approved by carol)",
        "met: 1 of group:security, user:dana (approved by dana)",
    )
    assert shown.approvals == ("carol approved: ok by me", "dana approved")
    assert shown.can_review and not shown.break_glass


def test_item_without_a_reason_says_so() -> None:
    assert item(_grant(reason=""), NOW).reason == "(none given)"


def test_outcomes() -> None:
    active = _grant(state="active", expires_at=NOW + timedelta(minutes=15), review=None)
    assert outcome_text(active, "approve") == (
        "You approved bob's request for write on svc-payments (g-1). "
        "It is granted: active until 2026-12-02 09:15 UTC."
    )
    assert outcome_text(_grant(), "approve").endswith(
        "It still waits: needs 1 more of group:leads (approved by carol)."
    )
    assert outcome_text(_grant(state="denied"), "deny") == (
        "You denied bob's request for write on svc-payments (g-1)."
    )


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        (
            {"state": "active", "expires_at": NOW + timedelta(minutes=15)},
            "granted, active until 2026-12-02 09:15 UTC",
        ),
        ({"state": "denied", "ended_reason": "denied"}, "denied"),
        ({"state": "expired", "ended_reason": "unreviewed"}, "expired (unreviewed)"),
        ({"review": None}, "waits for review"),
    ],
)
def test_state_text(changes: dict[str, Any], text: str) -> None:
    assert state_text(_grant(**changes)) == text
