"""The policy's values: the file's schema as pydantic models, and the loaded ``Policy``.

Format::

    services:
      - name: svc-payments            # DNS-1123 label, unique
        kind: postgres                # postgres | mysql | redis | tcp (kubernetes: not yet)
        target: 127.0.0.1:5432        # host:port; always from the policy, never from a client
        description: Payments database
        labels: {env: prod, team: payments}
        scopes: [read, write]
        max_ttl: 1h
        options: {database: payments, user: payments_ro, password_file: /etc/access/pw}
    rules:
      - name: sre-payments-read
        subjects: {groups: [sre], users: [alice], service_accounts: [deploy-bot]}
        services: [svc-payments]      # by name, and/or
        labels: {env: prod}           # by labels (all must match); one of the two at least
        scopes: [read]
        max_ttl: 30m                  # optional: defaults to the service's max_ttl
        require: auto                 # auto | approval | deny
    roles:                            # rules granted together: each allow entry is one rule
      - name: payments-oncall         # its entries are rules payments-oncall[0], [1], ...
        members: {groups: [payments-oncall]}
        allow:
          - {labels: {team: payments}, scopes: [read], max_ttl: 1h}
    audit:
      readers: {groups: [security], users: [], service_accounts: []}

Every model forbids keys it does not know (a typo such as ``require: deny`` under the wrong
key must not be ignored). The field types are in ``fields.py``; a check across fields that is
about a place below the model it runs on raises ``Located`` with the rest of the path.
``load.py`` turns pydantic's errors into one ``PolicyError`` naming file, field path and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator
from pydantic import Field as PydanticField

from access.broker.kube.config import KubernetesConfig
from access.broker.policy.fields import (
    Duration,
    Kind,
    Located,
    OptionalDuration,
    Options,
    PrincipalNames,
    RoleName,
    ScopeNames,
    ServiceName,
    ServiceNames,
    Target,
    Text,
    none_is,
    split_target,
)
from access.broker.policy.labels import Labels, LabelSelector, describe, selects
from access.shared.durations import format_duration

__all__ = [
    "REQUIREMENTS",
    "AdminCredential",
    "Allow",
    "ApprovalRule",
    "AuditConfig",
    "Credentials",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Problem",
    "Requirement",
    "ReviewerClause",
    "Role",
    "Rule",
    "ScopePrivileges",
    "ServiceConfig",
    "Subject",
    "SubjectLike",
    "Subjects",
    "UnknownScope",
    "UnknownService",
]

REQUIREMENTS = ("auto", "approval", "deny")
Requirement = Literal["auto", "approval", "deny"]

_MAX_SERVICES = 10_000
_MAX_RULES = 10_000


# ---------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy: where (``rules[0].max_ttl``), what, and the file's line."""

    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def located(self, source: str | None) -> str:
        """The problem as compilers print one (``policy.yaml:14: services[2].scopes: ...``), so
        editors and CI logs jump to the line; without a file name the line stays in words."""
        if source is None:
            return str(self) if self.line is None else f"line {self.line}: {self}"
        return f"{source}:{self.line}: {self}" if self.line is not None else f"{source}: {self}"


class PolicyError(ValueError):
    """The policy file is unreadable or invalid. The message names the place in the file.

    ``problems`` lists every validation problem found (empty when the file could not be read
    or parsed at all).
    """

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class UnknownService(LookupError):
    """The policy has no service of this name."""


class UnknownScope(LookupError):
    """The service exists but does not offer this scope."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- who asks


class SubjectLike(Protocol):
    """Anything with a name, a kind and groups: ``Subject`` or the broker's ``AuthContext``."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def groups(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class Subject:
    """Who asks: a user or a service account, with the groups it belongs to."""

    name: str
    kind: str  # "user" | "service_account"
    groups: tuple[str, ...] = ()


class Subjects(_Model):
    """A set of principals named by group, user name or service-account name."""

    groups: PrincipalNames = frozenset()
    users: PrincipalNames = frozenset()
    service_accounts: PrincipalNames = frozenset()

    def match(self, who: SubjectLike) -> bool:
        names = (
            self.users
            if who.kind == "user"
            else self.service_accounts
            if who.kind == "service_account"
            else ()
        )
        return who.name in names or any(group in self.groups for group in who.groups)

    @property
    def empty(self) -> bool:
        return not (self.groups or self.users or self.service_accounts)


# ---------------------------------------------------------------- credentials


DYNAMIC_KINDS = ("postgres", "mysql", "redis")
# Which key of a scope's privileges each kind reads (the others must stay empty).
_PRIVILEGE_KEY = {"postgres": "roles", "mysql": "grants", "redis": "acl"}


class AdminCredential(_Model):
    """The broker's own login on a target: a user and where its password is (never the password)."""

    user: Text
    password_file: Text | None = None
    password_env: Text | None = None
    database: Text | None = None  # PostgreSQL: where roles are managed (default ``postgres``)

    @model_validator(mode="after")
    def _one_source(self) -> AdminCredential:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self


class ScopePrivileges(_Model):
    """What one scope's identity may do: PostgreSQL roles, MySQL GRANT clauses or Redis ACL rules."""

    roles: tuple[Text, ...] = ()
    grants: tuple[Text, ...] = ()
    acl: tuple[Text, ...] = ()


class Credentials(_Model):
    """How the broker logs in to the target: ``static`` (a stored login, from ``options``) or
    ``dynamic`` (a fresh identity per grant, made with the ``admin`` login)."""

    mode: Literal["dynamic", "static"]
    admin: AdminCredential | None = None
    owner: Text | None = None  # PostgreSQL: receives what an ended identity owned
    connection_limit: Annotated[int, PydanticField(ge=1, le=10_000)] = 10
    broker_host: Text | None = None  # MySQL: the host the target sees the broker connect from
    scopes: Mapping[str, ScopePrivileges] = PydanticField(default_factory=dict)

    def privileges(self, kind: str, scope: str) -> tuple[str, ...]:
        """The privileges ``scope`` names for a target of ``kind`` (empty: none named)."""
        found = self.scopes.get(scope)
        return () if found is None else tuple(getattr(found, _PRIVILEGE_KEY.get(kind, "roles")))


def _check_privilege(kind: str, item: str) -> str | None:
    """Why the target kind's provisioner would refuse ``item``, or None."""
    if kind == "mysql":
        from access.broker.provision.mysql import InvalidPrivilege, parse_privilege

        try:
            parse_privilege(item)
        except InvalidPrivilege as exc:
            return str(exc)
    elif kind == "redis":
        from access.broker.errors import BrokerError
        from access.broker.provision.redis import check_rule

        try:
            check_rule(item)
        except BrokerError as exc:
            return exc.message
    return None


def _check_credentials(svc: ServiceConfig, creds: Credentials) -> None:
    """A dynamic service names an admin and privileges for exactly its scopes; static names none."""
    if creds.mode == "static":
        for key in ("admin", "owner", "broker_host"):
            if getattr(creds, key) is not None:
                raise Located(("credentials", key), "only for mode: dynamic (static takes options)")
        if creds.scopes:
            raise Located(("credentials", "scopes"), "only for mode: dynamic (static takes options)")
        return
    if svc.kind not in DYNAMIC_KINDS:
        raise Located(("credentials", "mode"), f"a {svc.kind} service has no dynamic identities")
    if creds.admin is None:
        raise Located(("credentials",), "mode: dynamic needs admin: {user, password_file | password_env}")
    if svc.kind == "mysql" and creds.broker_host is None:
        raise Located(("credentials",), "a dynamic mysql service needs broker_host (the broker's address)")
    for scope in creds.scopes:
        if scope not in svc.scopes:
            raise Located(("credentials", "scopes", scope), f"the service has no scope {scope!r}")
    key = _PRIVILEGE_KEY[svc.kind]
    for scope in svc.scopes:
        found = creds.scopes.get(scope)
        if found is None or not getattr(found, key):
            raise Located(("credentials", "scopes"), f"name the {key} of scope {scope!r} (deny by default)")
        for other in set(_PRIVILEGE_KEY.values()) - {key}:
            if getattr(found, other):
                raise Located(("credentials", "scopes", scope, other), f"a {svc.kind} service takes {key}")
        for i, item in enumerate(getattr(found, key)):
            problem = _check_privilege(svc.kind, item)
            if problem is not None:
                raise Located(("credentials", "scopes", scope, key, i), problem)


def _check_kubernetes(svc: ServiceConfig) -> None:
    """A kubernetes service has its block, targets its server and has rules for its scopes only."""
    block = svc.kubernetes
    if svc.kind != "kubernetes":
        if block is not None:
            raise Located(("kubernetes",), f"only for kind: kubernetes (this service is {svc.kind})")
        return
    if block is None:
        raise Located(
            ("kubernetes",), "a kubernetes service needs kubernetes: {server, ca_file, token_file, ...}"
        )
    if svc.credentials is not None:
        raise Located(("credentials",), "a kubernetes service takes its credential in kubernetes:")
    if block.target != svc.target:
        raise Located(("target",), f"leave it out, or make it kubernetes.server's {block.target}")
    for scope in block.scopes:
        if scope not in svc.scopes:
            raise Located(("kubernetes", "scopes", scope), f"the service has no scope {scope!r}")
    for scope in svc.scopes:
        if block.rules(scope) is None:
            raise Located(
                ("kubernetes", "scopes"),
                f"name the rules of scope {scope!r} (deny by default; read, operate and admin have presets)",
            )


# ---------------------------------------------------------------- services and rules


class ServiceConfig(_Model):
    """A service: where it is (always from here, never from a client) and what it offers."""

    name: ServiceName
    kind: Kind
    # Normalised ``host:port``; ``host`` and ``port`` are derived from it.
    target: Target
    description: Annotated[str, none_is("")] = ""
    labels: Labels = PydanticField(default_factory=dict)  # what it is (env: prod): rules select by them
    scopes: ScopeNames
    max_ttl: Duration
    options: Options = PydanticField(default_factory=dict)
    credentials: Credentials | None = None
    kubernetes: KubernetesConfig | None = None  # kind kubernetes: the API server, credential, rules

    @model_validator(mode="before")
    @classmethod
    def _target_of_a_cluster(cls, data: Any) -> Any:
        # A kubernetes service's target is its API server's host:port (kubernetes.server).
        if isinstance(data, Mapping) and data.get("kind") == "kubernetes" and "target" not in data:
            block = data.get("kubernetes")
            if isinstance(block, Mapping) and isinstance(block.get("server"), str):
                from access.broker.kube.config import server_target

                try:
                    return {**data, "target": server_target(block["server"])}
                except ValueError:
                    pass  # the kubernetes block's own validation says what is wrong
        return data

    @model_validator(mode="after")
    def _credentials_fit(self) -> ServiceConfig:
        if self.credentials is not None:
            _check_credentials(self, self.credentials)
        _check_kubernetes(self)
        return self

    @property
    def dynamic(self) -> bool:
        """The broker makes a fresh identity on the target for each grant of this service."""
        return self.credentials is not None and self.credentials.mode == "dynamic"

    @property
    def host(self) -> str:
        return split_target(self.target)[0]

    @property
    def port(self) -> int:
        return split_target(self.target)[1]


REASON_PATTERN_LENGTH = 200  # characters of a rule's reason pattern at most


class ReasonRule(_Model):
    """What a rule asks of a request's reason: one at all (``required``), and one that matches
    ``pattern`` (a Python regular expression, searched: anchor it, e.g. ``^(INC|CHG)-[0-9]+$``)."""

    required: bool = True
    pattern: str | None = PydanticField(default=None, max_length=REASON_PATTERN_LENGTH)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    def refuses(self, reason: str | None) -> str | None:
        """Why ``reason`` does not do (None: it does)."""
        if not reason:
            if self.required or self.pattern is not None:
                return "a reason" + (f" matching {self.pattern}" if self.pattern is not None else "")
            return None
        if self.pattern is not None and re.search(self.pattern, reason) is None:
            return f"a reason matching {self.pattern}"
        return None


MAX_REVIEWERS_NEEDED = 20  # approvals one clause may ask for at most
DEFAULT_REVIEW_WAIT = timedelta(hours=1)  # how long a request waits for review, unless the rule says


class ReviewerClause(_Model):
    """One clause of an approval: ``count`` approvals from these users and members of these groups.

    Service accounts never review: a person says yes.
    """

    users: PrincipalNames = frozenset()
    groups: PrincipalNames = frozenset()
    count: Annotated[int, PydanticField(ge=1, le=MAX_REVIEWERS_NEEDED)] = 1

    @model_validator(mode="after")
    def _can_be_met(self) -> ReviewerClause:
        if not self.users and not self.groups:
            raise ValueError("name the users or groups who review")
        if not self.groups and self.count > len(self.users):
            raise ValueError(f"count {self.count} is more than the {len(self.users)} users named")
        return self

    def match(self, who: SubjectLike) -> bool:
        """``who`` is one of this clause's reviewers (a user, by name or by a group)."""
        if who.kind != "user":
            return False
        return who.name in self.users or any(group in self.groups for group in who.groups)

    def describe(self) -> str:
        """``2 of group:leads, user:carol``."""
        names = [f"group:{g}" for g in sorted(self.groups)] + [f"user:{u}" for u in sorted(self.users)]
        return f"{self.count} of {', '.join(names)}"


class ApprovalRule(_Model):
    """Who must say yes to a request under a ``require: approval`` rule, and how long it waits.

    Every clause of ``reviewers`` must be met (an AND): ``[{groups: [leads], count: 2},
    {groups: [security]}]`` is "2 of group:leads and 1 of group:security". A reviewer's
    approval counts for one clause only, however many groups they are in; nobody reviews
    their own request. ``wait`` is the first clock: a request not approved by then expires
    unreviewed. The grant's TTL, the second clock, counts from the approval.
    """

    reviewers: Annotated[tuple[ReviewerClause, ...], PydanticField(min_length=1, max_length=10)]
    wait: Duration = DEFAULT_REVIEW_WAIT
    # A reviewer's sign-in must have presented a second factor within this long before they
    # approve (None: any sign-in does). Denying never needs one: saying no is always safe.
    mfa: OptionalDuration = None

    def may_review(self, who: SubjectLike) -> bool:
        """``who`` is named by at least one clause."""
        return any(clause.match(who) for clause in self.reviewers)

    def describe(self) -> str:
        """``2 of group:leads and 1 of group:security`` (``review.parse_terms`` reads it back)."""
        return " and ".join(clause.describe() for clause in self.reviewers)

    def describe_mfa(self) -> str:
        """`` (each with a second factor within 15m)`` when ``mfa`` asks for one, else ``""``."""
        return "" if self.mfa is None else f" (each with a second factor within {format_duration(self.mfa)})"


def _someone(subjects: Subjects) -> Subjects:
    if subjects.empty:
        # A rule that names nobody is almost certainly a typo; refuse rather than ignore it.
        raise ValueError("name at least one group, user or service account")
    return subjects


# Who a rule applies to, or a role is granted to: someone, named.
Someone = Annotated[Subjects, none_is({}), AfterValidator(_someone)]


class Allow(_Model):
    """What may be had on what terms: which services (``services`` by name, ``labels`` by a
    selector, or both: a service is selected if named OR matched), which ``scopes``, how long,
    and what it takes. A role's ``allow`` entries are these; a rule is one with a name and the
    ``subjects`` it applies to.

    ``require: approval`` needs ``approval`` (the reviewers); ``break_glass: true`` marks an
    emergency rule: it applies only to requests that ask for break-glass, issues at once, needs a
    reason, and is flagged in the ledger and the notifications.
    """

    services: ServiceNames = ()
    labels: LabelSelector = PydanticField(default_factory=dict)
    scopes: ScopeNames
    max_ttl: OptionalDuration = None
    require: Requirement = "auto"
    reason: ReasonRule | None = None
    approval: ApprovalRule | None = None
    break_glass: bool = False
    # The requester's sign-in must have presented a second factor (TOTP, or an upstream
    # provider's amr/acr saying so) within this long before the request; None: any sign-in.
    mfa: OptionalDuration = None

    @model_validator(mode="after")
    def _terms_fit(self) -> Allow:
        if not self.services and not self.labels:
            raise ValueError(
                "select services by name (services: [svc-a]) or by labels (labels: {env: prod}), or both"
            )
        if self.require == "approval" and self.approval is None:
            raise Located(("approval",), "require: approval needs approval: {reviewers: [...]}")
        if self.approval is not None and self.require != "approval":
            raise Located(("approval",), f"only for require: approval (this rule is {self.require})")
        if self.break_glass and self.require != "auto":
            raise Located(("break_glass",), "a break-glass rule issues at once: leave require: auto")
        if self.break_glass and self.reason is not None and not self.reason.required:
            raise Located(("reason", "required"), "a break-glass request always needs a reason")
        return self

    @field_validator("require", mode="before")
    @classmethod
    def _known_requirement(cls, value: Any) -> Any:
        if value not in REQUIREMENTS:
            raise ValueError(f"expected one of {', '.join(REQUIREMENTS)}, got {value!r}")
        return value

    def selects(self, service: ServiceConfig) -> bool:
        """``service`` is one of these: named in ``services`` or matched by ``labels``."""
        return service.name in self.services or selects(self.labels, service.labels)


class Rule(Allow):
    """An ``Allow`` with a ``name`` (in messages and the ledger) and the ``subjects`` it applies
    to: the one decision path. A file's ``rules:`` are these as written; each entry of a role
    is compiled into one (``Role.compile``)."""

    name: Text
    subjects: Someone

    def matches(self, who: SubjectLike, service: ServiceConfig, scope: str) -> bool:
        """This rule is about ``scope`` of ``service`` (by name or labels) for ``who``."""
        return scope in self.scopes and self.selects(service) and self.subjects.match(who)


class Role(_Model):
    """Access granted to ``members`` (users, groups, service accounts): a list of ``allow``
    entries, each compiled into a rule named ``<role>[<index>]`` (``payments-oncall[1]``)."""

    name: RoleName
    members: Someone
    allow: Annotated[tuple[Allow, ...], PydanticField(min_length=1, max_length=_MAX_RULES)]

    def entry_name(self, index: int) -> str:
        """The name of the rule entry ``index`` compiles into."""
        return f"{self.name}[{index}]"

    def compile(self) -> tuple[Rule, ...]:
        """One rule per entry, with the role's members as its subjects (each part was validated:
        the entry as an ``Allow``, the members here)."""
        return tuple(
            Rule.model_construct(
                name=self.entry_name(i),
                subjects=self.members,
                **{key: getattr(entry, key) for key in Allow.model_fields},
            )
            for i, entry in enumerate(self.allow)
        )


class AuditConfig(_Model):
    readers: Annotated[Subjects, none_is({})] = Subjects()


Loc = tuple[str | int, ...]


class PolicyFile(_Model):
    """The whole file, as written: services, rules and roles are lists, in the file's order."""

    services: Annotated[tuple[ServiceConfig, ...], none_is(()), PydanticField(max_length=_MAX_SERVICES)] = ()
    rules: Annotated[tuple[Rule, ...], none_is(()), PydanticField(max_length=_MAX_RULES)] = ()
    roles: Annotated[tuple[Role, ...], none_is(()), PydanticField(max_length=_MAX_RULES)] = ()
    audit: Annotated[AuditConfig, none_is({})] = AuditConfig()

    @field_validator("services", "rules", "roles")
    @classmethod
    def _unique_names(cls, items: tuple[ServiceConfig | Rule | Role, ...], info: ValidationInfo) -> Any:
        what = str(info.field_name).removesuffix("s")
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise Located((i, "name"), f"duplicate {what} name {item.name!r}")
            seen.add(item.name)
        return items

    def entries(self) -> Iterator[tuple[Loc, Allow]]:
        """Every rule and every role entry, with where it is in the file, in the order they decide
        ties: ``rules:`` first, then ``roles:``, each as written."""
        for i, rule in enumerate(self.rules):
            yield ("rules", i), rule
        for i, role in enumerate(self.roles):
            for j, entry in enumerate(role.allow):
                yield ("roles", i, "allow", j), entry

    def compiled_rules(self) -> tuple[Rule, ...]:
        """The rules the evaluator decides by: the file's rules, then each role's entries."""
        return (*self.rules, *(rule for role in self.roles for rule in role.compile()))

    def _selected(self) -> Iterator[tuple[Loc, Allow, list[ServiceConfig]]]:
        """Every entry (``entries``) with the services it selects. Labels are looked up in an
        index, so a file of thousands of services and rules loads in linear time."""
        services = {svc.name: svc for svc in self.services}
        by_label: dict[tuple[str, str], set[str]] = {}
        for svc in self.services:
            for item in svc.labels.items():
                by_label.setdefault(item, set()).add(svc.name)
        for at, entry in self.entries():
            names = {name for name in entry.services if name in services}
            if entry.labels:
                matched = [by_label.get(item, set()) for item in entry.labels.items()]
                names |= set.intersection(*matched)
            yield at, entry, [services[name] for name in sorted(names)]

    @model_validator(mode="after")
    def _rules_name_what_exists(self) -> PolicyFile:
        """Rules and role entries name only services of this file, and scopes that one of the
        services they select has; no rule takes the name of a role entry."""
        known = {svc.name for svc in self.services}
        for at, entry, selected in self._selected():
            for j, name in enumerate(entry.services):
                if name not in known:
                    raise Located((*at, "services", j), f"no service named {name!r} in services")
            if not selected:
                continue  # a selector that matches nothing yet: a warning (``warnings``), not an error
            for j, scope in enumerate(entry.scopes):
                if not any(scope in svc.scopes for svc in selected):
                    raise Located((*at, "scopes", j), f"none of the rule's services has scope {scope!r}")
        entries = {
            role.entry_name(j): f"roles[{i}].allow[{j}]"
            for i, role in enumerate(self.roles)
            for j in range(len(role.allow))
        }
        for i, rule in enumerate(self.rules):
            if rule.name in entries:
                raise Located(
                    ("rules", i, "name"),
                    f"{rule.name!r} is the name of {entries[rule.name]}: rename the rule",
                )
        return self

    def warnings(self) -> list[tuple[Loc, str]]:
        """What is valid but likely not meant: a label selector that selects no service (yet)."""
        found: list[tuple[Loc, str]] = []
        for at, entry, selected in self._selected():
            if entry.labels and not any(selects(entry.labels, svc.labels) for svc in selected):
                found.append(((*at, "labels"), f"selects no service (none has {describe(entry.labels)})"))
        return found


# ---------------------------------------------------------------- the loaded policy


@dataclass(frozen=True)
class Policy:
    """A validated policy, services by name.

    Build it with ``load.load_policy`` (a file), ``load.policy_from_data`` (parsed data) or ``empty``.
    """

    services: Mapping[str, ServiceConfig] = field(default_factory=dict, hash=False)
    rules: tuple[Rule, ...] = ()
    audit_readers: Subjects = field(default_factory=Subjects)
    # The file's roles as written (their entries are in ``rules``, compiled), for summaries.
    roles: tuple[Role, ...] = ()
    # What the file's loader found valid but worth a word (``PolicyFile.warnings``, with lines).
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    # Which stored version this is (``rollout``) and the SHA-256 of its text; None for a policy
    # built in code or not stored yet. Carried here so that one reference swap changes both.
    version: int | None = field(default=None, compare=False)
    sha256: str | None = field(default=None, compare=False)

    @classmethod
    def empty(cls) -> Policy:
        """A policy with no services and no rules: everything is denied."""
        return cls()

    @classmethod
    def from_file(cls, document: PolicyFile, warnings: Iterable[Problem] = ()) -> Policy:
        """The policy a validated file describes (raises nothing: the file was checked)."""
        return cls(
            {svc.name: svc for svc in document.services},
            document.compiled_rules(),
            document.audit.readers,
            document.roles,
            tuple(warnings),
        )

    def service(self, name: str) -> ServiceConfig | None:
        return self.services.get(name)

    def rule(self, name: str) -> Rule | None:
        """The rule of this name (approvals look up the rule a pending request was made under
        in the policy in force now, so a reload that drops a reviewer takes effect at once)."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def lookup(self, service: str, scope: str) -> ServiceConfig:
        """The service, checked to offer ``scope``.

        Raises:
            UnknownService: the policy has no such service.
            UnknownScope: the service does not offer ``scope``.
        """
        svc = self.services.get(service)
        if svc is None:
            raise UnknownService(f"no service named {service[:63]!r}")
        if scope not in svc.scopes:
            raise UnknownScope(
                f"{service} has no scope {scope[:32]!r}; its scopes are: {', '.join(svc.scopes)}"
            )
        return svc

    def can_read_audit(self, who: SubjectLike) -> bool:
        """True when the policy's ``audit.readers`` include ``who``. Fails closed: no readers, no one."""
        return self.audit_readers.match(who)
