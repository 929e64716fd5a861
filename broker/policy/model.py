"""The access policy: which services exist, and who may get which scopes of them for how long.

A policy is a YAML file loaded once into frozen values; evaluating it is pure (no I/O), so the
rules can be tested as a table. Deny by default: a request is allowed only when an allow rule
(``require: auto`` or ``approval``) matches its subject, service and scope, no ``require: deny``
rule matches, and the TTL is within the smaller of the service's and the rule's ``max_ttl``.

Format::

    services:
      - name: svc-payments            # DNS-1123 label, unique
        kind: postgres                # postgres | mysql | redis | tcp | kubernetes
        target: 127.0.0.1:5432        # host:port; always from the policy, never from a client
        description: Payments database
        scopes: [read, write]
        max_ttl: 1h
        options: {database: payments, user: payments_ro, password_file: /etc/access/pw}
    rules:
      - name: sre-payments-read
        subjects: {groups: [sre], users: [alice], service_accounts: [deploy-bot]}
        services: [svc-payments]
        scopes: [read]
        max_ttl: 30m                  # optional: defaults to the service's max_ttl
        require: auto                 # auto | approval | deny
    audit:
      readers: {groups: [security], users: [], service_accounts: []}

Errors: everything that is wrong with a file raises ``PolicyError`` (a ``ValueError``), whose
message names the place in the file (``rules[2].max_ttl: ...``). Looking up a service or scope
that the policy does not have raises ``UnknownService`` / ``UnknownScope`` (``LookupError``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import yaml

from access.shared.durations import DurationError, format_duration, parse_duration
from access.shared.names import NAME_RULE, is_dns_label, is_principal_name, is_scope

__all__ = [
    "KINDS",
    "REQUIREMENTS",
    "Decision",
    "Policy",
    "PolicyError",
    "Rule",
    "ServiceAccess",
    "ServiceConfig",
    "Subject",
    "Subjects",
    "UnknownScope",
    "UnknownService",
    "allowed_services",
    "can_read_audit",
    "evaluate",
]

KINDS = ("postgres", "mysql", "redis", "tcp", "kubernetes")
REQUIREMENTS = ("auto", "approval", "deny")
Requirement = Literal["auto", "approval", "deny"]

# Options are handed to the service kind (database, user, password_file, ...). A password
# written into the policy file itself would end up in backups and diffs: refer to a file or
# an environment variable instead.
_FORBIDDEN_OPTIONS = ("password", "secret", "token")
_MAX_SERVICES = 10_000
_MAX_RULES = 10_000


class PolicyError(ValueError):
    """The policy file is unreadable or invalid. The message names the place in the file."""


class UnknownService(LookupError):
    """The policy has no service of this name."""


class UnknownScope(LookupError):
    """The service exists but does not offer this scope."""


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


@dataclass(frozen=True)
class Subjects:
    """A set of principals named by group, user name or service-account name."""

    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    service_accounts: frozenset[str] = frozenset()

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


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    kind: str
    host: str
    port: int
    scopes: tuple[str, ...]
    max_ttl: timedelta
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Rule:
    name: str
    subjects: Subjects
    services: tuple[str, ...]
    scopes: tuple[str, ...]
    max_ttl: timedelta | None
    require: Requirement

    def matches(self, who: SubjectLike, service: str, scope: str) -> bool:
        return service in self.services and scope in self.scopes and self.subjects.match(who)


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation: a value, so later approvals can build on it.

    ``allowed`` says the policy permits the request (perhaps after approval: see
    ``requirement``); ``issuable`` says a grant may be issued right now.
    """

    allowed: bool
    service: str
    scope: str
    max_ttl: timedelta | None
    requirement: Requirement
    rule: str | None
    reason: str

    @property
    def issuable(self) -> bool:
        return self.allowed and self.requirement == "auto"


class ServiceAccess(NamedTuple):
    """One scope of one service that a subject may request (``GET /v1/services``)."""

    service: ServiceConfig
    scope: str
    max_ttl: timedelta
    requirement: Requirement


@dataclass(frozen=True)
class Policy:
    services: Mapping[str, ServiceConfig] = field(default_factory=dict, hash=False)
    rules: tuple[Rule, ...] = ()
    audit_readers: Subjects = Subjects()

    @classmethod
    def empty(cls) -> Policy:
        """A policy with no services and no rules: everything is denied."""
        return cls()

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Load and validate the YAML policy at ``path``.

        Raises:
            PolicyError: the file cannot be read, is not YAML, or is not a valid policy.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
        try:
            return cls.from_dict(data if data is not None else {})
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Validate parsed YAML (or a dict built in code) into a ``Policy``.

        Raises:
            PolicyError: the data is not a valid policy; the message names the offending path.
        """
        return _parse_policy(data)

    def service(self, name: str) -> ServiceConfig | None:
        return self.services.get(name)

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
        return can_read_audit(self, who)


# ---------------------------------------------------------------- evaluation (pure)


def evaluate(policy: Policy, subject: SubjectLike, service: str, scope: str, ttl: timedelta) -> Decision:
    """Decide whether ``subject`` may get ``scope`` on ``service`` for ``ttl``. No I/O.

    A matching ``require: deny`` rule wins over any allow rule. Among allow rules, ``auto``
    beats ``approval``, then the longer effective maximum wins, then the earlier rule.

    Raises:
        UnknownService: the policy has no such service.
        UnknownScope: the service does not offer ``scope``.
    """
    svc = policy.lookup(service, scope)
    what = f"{scope} on {service}"
    matching = [rule for rule in policy.rules if rule.matches(subject, service, scope)]
    for rule in matching:
        if rule.require == "deny":
            return Decision(
                False, service, scope, None, "deny", rule.name, f"{what} is denied by rule {rule.name}"
            )
    allowing = [rule for rule in matching if rule.require != "deny"]
    if not allowing:
        reason = f"no policy rule gives {subject.name} {what}"
        return Decision(False, service, scope, None, "deny", None, reason)
    fitting = [rule for rule in allowing if ttl <= _effective_max(svc, rule)]
    if not fitting:
        best = _best(svc, allowing)
        limit = _effective_max(svc, best)
        reason = f"ttl {format_duration(ttl)} is over the maximum {format_duration(limit)} for {what}"
        return Decision(False, service, scope, limit, best.require, best.name, reason)
    best = _best(svc, fitting)
    if best.require == "approval":
        reason = f"{what} needs approval (rule {best.name})"
    else:
        reason = f"{what} allowed by rule {best.name}"
    return Decision(True, service, scope, _effective_max(svc, best), best.require, best.name, reason)


def allowed_services(policy: Policy, subject: SubjectLike) -> list[ServiceAccess]:
    """Every (service, scope) that ``subject`` may request, with its maximum TTL. No I/O."""
    result: list[ServiceAccess] = []
    for svc in sorted(policy.services.values(), key=lambda s: s.name):
        for scope in svc.scopes:
            matching = [rule for rule in policy.rules if rule.matches(subject, svc.name, scope)]
            if not matching or any(rule.require == "deny" for rule in matching):
                continue
            best = _best(svc, matching)
            result.append(ServiceAccess(svc, scope, _effective_max(svc, best), best.require))
    return result


def can_read_audit(policy: Policy, who: SubjectLike) -> bool:
    """True when the policy's ``audit.readers`` include ``who``. Fails closed: no readers, no one."""
    return policy.audit_readers.match(who)


def _effective_max(svc: ServiceConfig, rule: Rule) -> timedelta:
    return svc.max_ttl if rule.max_ttl is None else min(svc.max_ttl, rule.max_ttl)


def _best(svc: ServiceConfig, rules: list[Rule]) -> Rule:
    # Stable sort: on a tie the rule written first wins.
    return sorted(rules, key=lambda r: (r.require != "auto", -_effective_max(svc, r).total_seconds()))[0]


# ---------------------------------------------------------------- parsing and validation


def _mapping(value: Any, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a mapping, got {_type(value)}")
    unknown = sorted(str(k) for k in value if k not in set(allowed))
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return value


def _list(value: Any, where: str, *, required: bool = True, limit: int = 1000) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{where}: expected a list, got {_type(value)}")
    if required and not value:
        raise PolicyError(f"{where}: must not be empty")
    if len(value) > limit:
        raise PolicyError(f"{where}: at most {limit} items")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}: expected a non-empty string, got {_type(value)}")
    return value


def _type(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _duration(value: Any, where: str) -> timedelta:
    try:
        ttl: timedelta = parse_duration(_str(value, where))
        return ttl
    except DurationError as exc:
        raise PolicyError(f"{where}: {exc}") from exc


def _names(value: Any, where: str, check: Any, rule: str) -> tuple[str, ...]:
    names = _list(value, where, required=False)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not check(name):
            raise PolicyError(f"{where}[{i}]: bad name {name!r}: {rule}")
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}: duplicate names")
    return tuple(names)


def _subjects(value: Any, where: str) -> Subjects:
    data = _mapping(value if value is not None else {}, where, ("groups", "users", "service_accounts"))
    rule = "lowercase letters, digits, '.', '_' and '-'"
    return Subjects(
        groups=frozenset(_names(data.get("groups"), f"{where}.groups", is_principal_name, rule)),
        users=frozenset(_names(data.get("users"), f"{where}.users", is_principal_name, rule)),
        service_accounts=frozenset(
            _names(data.get("service_accounts"), f"{where}.service_accounts", is_principal_name, rule)
        ),
    )


def _target(value: Any, where: str) -> tuple[str, int]:
    text = _str(value, where)
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PolicyError(f"{where}: expected host:port (e.g. 127.0.0.1:5432 or [::1]:5432), got {text!r}")
    if any(c.isspace() or c in "/@" for c in host):
        raise PolicyError(f"{where}: bad host {host!r}")
    return host, int(port_text)


def _options(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a mapping, got {_type(value)}")
    options: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise PolicyError(f"{where}: option names must be strings")
        if key.lower() in _FORBIDDEN_OPTIONS:
            raise PolicyError(
                f"{where}.{key}: do not put secrets in the policy; "
                f"use {key}_file (a path) or {key}_env (a variable)"
            )
        if not isinstance(item, str | int | float | bool) or (isinstance(item, str) and not item):
            raise PolicyError(f"{where}.{key}: expected a non-empty string, number or boolean")
        options[key] = item
    return options


_SERVICE_KEYS = ("name", "kind", "target", "description", "scopes", "max_ttl", "options")
_RULE_KEYS = ("name", "subjects", "services", "scopes", "max_ttl", "require")


def _service(value: Any, where: str) -> ServiceConfig:
    data = _mapping(value, where, _SERVICE_KEYS)
    for key in ("name", "kind", "target", "scopes", "max_ttl"):
        if key not in data:
            raise PolicyError(f"{where}: missing {key!r}")
    name = _str(data["name"], f"{where}.name")
    if not is_dns_label(name):
        raise PolicyError(f"{where}.name: bad service name {name!r}: {NAME_RULE}")
    kind = _str(data["kind"], f"{where}.kind")
    if kind not in KINDS:
        raise PolicyError(f"{where}.kind: unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    host, port = _target(data["target"], f"{where}.target")
    scopes = _names(data["scopes"], f"{where}.scopes", is_scope, "lowercase letters, digits, '_' and '-'")
    if not scopes:
        raise PolicyError(f"{where}.scopes: must not be empty")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise PolicyError(f"{where}.description: expected a string")
    return ServiceConfig(
        name=name,
        kind=kind,
        host=host,
        port=port,
        scopes=scopes,
        max_ttl=_duration(data["max_ttl"], f"{where}.max_ttl"),
        description=description,
        options=_options(data.get("options"), f"{where}.options"),
    )


def _rule(value: Any, where: str, services: Mapping[str, ServiceConfig]) -> Rule:
    data = _mapping(value, where, _RULE_KEYS)
    for key in ("name", "subjects", "services", "scopes"):
        if key not in data:
            raise PolicyError(f"{where}: missing {key!r}")
    name = _str(data["name"], f"{where}.name")
    subjects = _subjects(data["subjects"], f"{where}.subjects")
    if subjects.empty:
        # A rule that names nobody is almost certainly a typo; refuse rather than ignore it.
        raise PolicyError(f"{where}.subjects: name at least one group, user or service account")
    names = _names(data["services"], f"{where}.services", is_dns_label, NAME_RULE)
    if not names:
        raise PolicyError(f"{where}.services: must not be empty")
    for i, svc in enumerate(names):
        if svc not in services:
            raise PolicyError(f"{where}.services[{i}]: no service named {svc!r} in services")
    scopes = _names(data["scopes"], f"{where}.scopes", is_scope, "lowercase letters, digits, '_' and '-'")
    if not scopes:
        raise PolicyError(f"{where}.scopes: must not be empty")
    for i, scope in enumerate(scopes):
        if not any(scope in services[svc].scopes for svc in names):
            raise PolicyError(f"{where}.scopes[{i}]: none of the rule's services has scope {scope!r}")
    require = data.get("require", "auto")
    if require not in REQUIREMENTS:
        raise PolicyError(f"{where}.require: expected one of {', '.join(REQUIREMENTS)}, got {require!r}")
    max_ttl = None if data.get("max_ttl") is None else _duration(data["max_ttl"], f"{where}.max_ttl")
    return Rule(name, subjects, names, scopes, max_ttl, require)


def _parse_policy(data: Any) -> Policy:
    root = _mapping(data, "policy", ("services", "rules", "audit"))
    services: dict[str, ServiceConfig] = {}
    for i, item in enumerate(_list(root.get("services"), "services", required=False, limit=_MAX_SERVICES)):
        svc = _service(item, f"services[{i}]")
        if svc.name in services:
            raise PolicyError(f"services[{i}].name: duplicate service name {svc.name!r}")
        services[svc.name] = svc
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(root.get("rules"), "rules", required=False, limit=_MAX_RULES)):
        rule = _rule(item, f"rules[{i}]", services)
        if rule.name in seen:
            raise PolicyError(f"rules[{i}].name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        rules.append(rule)
    audit = _mapping(root.get("audit") or {}, "audit", ("readers",))
    readers = _subjects(audit.get("readers"), "audit.readers")
    return Policy(services=services, rules=tuple(rules), audit_readers=readers)
