"""Wire models of the broker's JSON API (``/v1``). The broker returns them; the CLI parses them.

Times are UTC ISO-8601 with ``Z`` (:data:`Instant`) and always the broker's: the CLI never
decides whether something has expired, it shows what the broker computed (``seconds_left``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from access.shared.durations import format_instant

__all__ = [
    "Approval",
    "ApproveRequest",
    "AuditEntry",
    "AuditPage",
    "DenyRequest",
    "ErrorBody",
    "ErrorDetail",
    "ExtendRequest",
    "Grant",
    "GrantRequest",
    "GrantState",
    "Instant",
    "Principal",
    "Review",
    "ReviewClause",
    "ScopeInfo",
    "ServiceInfo",
]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# A moment: aware, in UTC, and written as ISO-8601 with Z in JSON (the broker's and `-o json`).
Instant = Annotated[datetime, AfterValidator(_utc), PlainSerializer(format_instant, when_used="json")]

# Bounds that the broker enforces at the boundary; the CLI uses them for early messages.
MAX_REASON_LENGTH = 500
MAX_JSON_BODY_BYTES = 64 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GrantState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DENIED = "denied"
    # A request waiting for its reviewers (docs/approvals.md): its expires_at is the review deadline.
    PENDING = "pending"


class ErrorDetail(_Model):
    code: str
    message: str
    hint: str | None = None


class ErrorBody(_Model):
    error: ErrorDetail


class Principal(_Model):
    name: str
    kind: str  # "user" or "service_account"
    groups: list[str]
    session_id: str | None = None
    token_expires_at: Instant | None = None
    session_expires_at: Instant | None = None  # when the sign-in session ends (refreshes stop)
    can_read_audit: bool = False
    # When the sign-in behind the session presented a second factor (TOTP, ``access login
    # --mfa``), and how long ago by the broker's clock; None: it did not.
    mfa_at: Instant | None = None
    mfa_age_seconds: int | None = None


class ScopeInfo(_Model):
    scope: str
    max_ttl_seconds: int
    requirement: str = "auto"
    reviewers: str | None = None  # require: approval: "2 of group:leads and 1 of group:security"
    # The rule's ``mfa:``: a sign-in with a second factor within this many seconds (``access
    # login --mfa``); None: any sign-in.
    mfa_seconds: int | None = None


class ServiceInfo(_Model):
    name: str
    kind: str
    description: str = ""
    # The service's labels in the policy (env: prod): what rules select it by.
    labels: dict[str, str] = Field(default_factory=dict)
    scopes: list[ScopeInfo]


class GrantRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [{"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-123"}]
        },
    )

    service: str = Field(min_length=1, max_length=63)
    scope: str = Field(min_length=1, max_length=32)
    ttl: str = Field(min_length=1, max_length=32, description="duration such as 30m or 1h30m")
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)
    # Ask for the policy's break-glass rules (issued at once, flagged loudly) instead of its others.
    break_glass: bool = False


class ApproveRequest(_Model):
    """``POST /v1/grants/{id}/approve``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"comment": "looks right"}]}
    )
    comment: str = Field(default="", max_length=MAX_REASON_LENGTH)


class DenyRequest(_Model):
    """``POST /v1/grants/{id}/deny``: a reviewer says no, and why."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"reason": "not during the freeze"}]}
    )
    reason: str = Field(min_length=1, max_length=MAX_REASON_LENGTH)


class ExtendRequest(_Model):
    """``POST /v1/grants/{id}/extend``: more time, counted from now, within the rule's maximum."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{"ttl": "15m"}]})
    ttl: str = Field(min_length=1, max_length=32, description="duration such as 15m")


class Approval(_Model):
    """One reviewer's word on a pending request."""

    reviewer: str
    decision: str  # "approve" | "deny"
    comment: str = ""
    at: Instant


class ReviewClause(_Model):
    """One "N of these" clause of a rule's reviewers, and whose approvals count for it."""

    count: int
    reviewers: list[str]  # "group:leads", "user:dana"
    approved_by: list[str] = []
    missing: int


class Review(_Model):
    """Where a request that needs approval stands: every clause must be met before
    ``review_expires_at`` (then it expires unreviewed)."""

    clauses: list[ReviewClause]
    approvals: list[Approval] = []
    # While pending: the review deadline. Once decided: when it was (approved, denied, ended).
    review_expires_at: Instant
    # Seconds until the review deadline, by the broker's clock (0 once decided): how long to wait.
    seconds_left: int = 0
    # What the tally still needs, for people: "1 more of group:leads" ("" once met).
    missing: str = ""
    # Whether the caller may approve or deny it now (reviewer, not the requester, not yet voted).
    can_review: bool = False


class Grant(_Model):
    id: str
    subject: str
    service: str
    kind: str
    scope: str
    reason: str
    state: GrantState
    created_at: Instant
    expires_at: Instant
    ended_at: Instant | None = None
    ended_reason: str | None = None
    seconds_left: int
    rule: str | None = None
    requirement: str = "auto"  # auto | approval (the deciding rule's)
    ttl_seconds: int | None = None  # the TTL asked for: a pending grant's clock starts at approval
    approved_at: Instant | None = None
    break_glass: bool = False
    review: Review | None = None  # for requests that need approval (pending or decided)


class AuditEntry(_Model):
    seq: int
    at: Instant
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    hash: str


class AuditPage(_Model):
    entries: list[AuditEntry]
    # The ledger's head when the answer was made; for a request with after_seq, where to ask
    # from next (the last entry's seq when the answer was cut at its limit).
    last_seq: int | None = None
