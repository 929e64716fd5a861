"""The policy room: which services exist, and who may get which scopes of them for how long.

- ``model.py``: the file's schema (pydantic models that forbid unknown keys) and ``Policy``;
  a role's entries are compiled into the same ``Rule`` a ``rules:`` entry is, so there is one
  decision path;
- ``labels.py``: services' labels and the selectors rules pick services by;
- ``load.py``: YAML in, with lines kept, and validation errors as ``PolicyError`` messages that
  name the file, the field path and the line;
- ``evaluate.py``: the pure decision (no I/O): deny by default, an explicit deny wins, the
  maximum TTL is the smaller of the rule's and the service's;
- ``review.py``: counting approvals against a rule's reviewers (an AND of "N of these"
  clauses; each reviewer counts once), and who in a directory could approve, pure as well;
- ``cases.py``: ``explain`` (a decision and the rule that made it) and a policy's tests (a
  table of expected decisions kept beside it), pure as well.

Errors::

    ValueError
    └── PolicyError       the file is unreadable or invalid (``problems`` lists what and where)
    LookupError
    ├── UnknownService    the policy has no service of this name
    └── UnknownScope      the service does not offer this scope

This package imports ``access.broker.kinds`` (which kinds exist) and ``access.shared``, and
nothing that does I/O besides ``load.py`` reading the file. Import from ``access.broker.policy``.
"""

from __future__ import annotations

from access.broker.policy.cases import CaseFile, Explanation, Mismatch, explain, outcome, run_cases
from access.broker.policy.evaluate import (
    Decision,
    ServiceAccess,
    allowed_services,
    can_read_audit,
    evaluate,
    mfa_met,
    second_factor_age,
)
from access.broker.policy.load import load_cases, load_policy, policy_from_data, policy_from_text
from access.broker.policy.model import (
    REQUIREMENTS,
    Allow,
    ApprovalRule,
    Policy,
    PolicyError,
    Problem,
    Requirement,
    ReviewerClause,
    Role,
    Rule,
    ServiceConfig,
    Subject,
    SubjectLike,
    Subjects,
    UnknownScope,
    UnknownService,
)
from access.broker.policy.review import Candidates, Tally, candidates, tally

__all__ = [
    "REQUIREMENTS",
    "Allow",
    "ApprovalRule",
    "Candidates",
    "CaseFile",
    "Decision",
    "Explanation",
    "Mismatch",
    "Policy",
    "PolicyError",
    "Problem",
    "Requirement",
    "ReviewerClause",
    "Role",
    "Rule",
    "ServiceAccess",
    "ServiceConfig",
    "Subject",
    "SubjectLike",
    "Subjects",
    "Tally",
    "UnknownScope",
    "UnknownService",
    "allowed_services",
    "can_read_audit",
    "candidates",
    "evaluate",
    "explain",
    "load_cases",
    "load_policy",
    "mfa_met",
    "outcome",
    "policy_from_data",
    "policy_from_text",
    "run_cases",
    "second_factor_age",
    "tally",
]
