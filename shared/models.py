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
    "AuditEntry",
    "AuditPage",
    "ErrorBody",
    "ErrorDetail",
    "Grant",
    "GrantRequest",
    "GrantState",
    "Instant",
    "Principal",
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
    # A grant waiting on reviewers (approvals are not built yet: nothing is pending today).
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


class ScopeInfo(_Model):
    scope: str
    max_ttl_seconds: int
    requirement: str = "auto"


class ServiceInfo(_Model):
    name: str
    kind: str
    description: str = ""
    scopes: list[ScopeInfo]


class GrantRequest(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(min_length=1, max_length=63)
    scope: str = Field(min_length=1, max_length=32)
    ttl: str = Field(min_length=1, max_length=32, description="duration such as 30m or 1h30m")
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


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
