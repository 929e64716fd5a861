"""The policy's values: the file's schema as pydantic models, and the loaded ``Policy``.

Format::

    services:
      - name: svc-payments            # DNS-1123 label, unique
        kind: postgres                # postgres | mysql | redis | tcp (kubernetes: not yet)
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

Every model forbids keys it does not know (a typo such as ``require: deny`` under the wrong
key must not be ignored). Validators raise ``ValueError``; a check that is about a place below
the field it runs on raises ``Located`` with the rest of the path. ``load.py`` turns pydantic's
errors into one ``PolicyError`` naming the file, the field path and the line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    field_validator,
    model_validator,
)
from pydantic import Field as PydanticField

from access.broker.kinds import UnsupportedKind, check_kind
from access.shared.durations import DurationError, parse_duration
from access.shared.names import NAME_RULE, is_dns_label, is_principal_name, is_scope

__all__ = [
    "REQUIREMENTS",
    "Located",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Problem",
    "Requirement",
    "Rule",
    "ServiceConfig",
    "Subject",
    "SubjectLike",
    "Subjects",
    "UnknownScope",
    "UnknownService",
]

REQUIREMENTS = ("auto", "approval", "deny")
Requirement = Literal["auto", "approval", "deny"]

# Options are handed to the service kind (database, user, password_file, ...). A password
# written into the policy file itself would end up in backups and diffs: refer to a file or
# an environment variable instead.
_FORBIDDEN_OPTIONS = ("password", "secret", "token")
_MAX_SERVICES = 10_000
_MAX_RULES = 10_000
_MAX_NAMES = 1000
_PRINCIPAL_RULE = "lowercase letters, digits, '.', '_' and '-'"
_SCOPE_RULE = "lowercase letters, digits, '_' and '-'"


# ---------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy: where (``rules[0].max_ttl``), what, and the file's line."""

    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + ("" if self.line is None else f" (line {self.line})")


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


class Located(ValueError):
    """A validation error about ``loc`` below the field whose validator raised it."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# ---------------------------------------------------------------- field types


def type_name(value: Any) -> str:
    """How messages name the type of a value that is not what the file should have."""
    return "nothing" if value is None else type(value).__name__


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {type_name(value)}")
    return value


def _duration(value: Any) -> timedelta:
    try:
        ttl: timedelta = parse_duration(_text(value))
    except DurationError as exc:
        raise ValueError(str(exc)) from exc
    return ttl


def _optional_duration(value: Any) -> timedelta | None:
    return None if value is None else _duration(value)


def _name_check(check: Callable[[str], bool], rule: str, what: str = "name") -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if not isinstance(value, str) or not check(value):
            raise ValueError(f"bad {what} {value!r}: {rule}")
        return value

    return validate


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise ValueError("duplicate names")
    return names


def _not_empty(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("must not be empty")
    return names


def _none_is(default: Any) -> BeforeValidator:
    """Treat ``key:`` with no value (YAML null) as the default, as the file format always has."""
    return BeforeValidator(lambda value: default if value is None else value)


Text = Annotated[str, PlainValidator(_text)]
Duration = Annotated[timedelta, PlainValidator(_duration)]
OptionalDuration = Annotated[timedelta | None, PlainValidator(_optional_duration)]
_service_name = _name_check(is_dns_label, NAME_RULE, "service name")
ServiceName = Annotated[str, PlainValidator(_service_name)]
ScopeName = Annotated[str, PlainValidator(_name_check(is_scope, _SCOPE_RULE))]
PrincipalName = Annotated[str, PlainValidator(_name_check(is_principal_name, _PRINCIPAL_RULE))]
# Lists of names: duplicates are refused rather than silently merged.
ScopeNames = Annotated[
    tuple[ScopeName, ...],
    _none_is(()),
    PydanticField(max_length=_MAX_NAMES),
    AfterValidator(_unique),
    AfterValidator(_not_empty),
]
ServiceNames = Annotated[
    tuple[ServiceName, ...],
    _none_is(()),
    PydanticField(max_length=_MAX_NAMES),
    AfterValidator(_unique),
    AfterValidator(_not_empty),
]
PrincipalNames = Annotated[
    tuple[PrincipalName, ...], _none_is(()), PydanticField(max_length=_MAX_NAMES), AfterValidator(_unique)
]


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

    @classmethod
    def of(cls, who: SubjectLike) -> Subject:
        return cls(who.name, who.kind, tuple(who.groups))


class Subjects(_Model):
    """A set of principals named by group, user name or service-account name."""

    groups: PrincipalNames = ()
    users: PrincipalNames = ()
    service_accounts: PrincipalNames = ()

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


# ---------------------------------------------------------------- services and rules


def split_target(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as ``(host, port)``.

    Raises:
        ValueError: not a host and a port in 1..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:5432 or [::1]:5432), got {text!r}")
    if any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"bad host {host!r}")
    return host, int(port_text)


def _target(value: Any) -> str:
    host, port = split_target(_text(value))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _kind(value: Any) -> str:
    name = _text(value)
    try:
        check_kind(name)
    except UnsupportedKind as exc:
        raise ValueError(str(exc)) from exc
    return name


def _options(value: Any) -> dict[str, str | int | float | bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type_name(value)}")
    options: dict[str, str | int | float | bool] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError("option names must be strings")
        if key.lower() in _FORBIDDEN_OPTIONS:
            raise Located(
                (key,), f"do not put secrets in the policy; use {key}_file (a path) or {key}_env (a variable)"
            )
        if not isinstance(item, str | int | float | bool) or (isinstance(item, str) and not item):
            raise Located((key,), "expected a non-empty string, number or boolean")
        options[key] = item
    return options


class ServiceConfig(_Model):
    """A service: where it is (always from here, never from a client) and what it offers."""

    name: Annotated[str, PlainValidator(_text), AfterValidator(_service_name)]
    kind: Annotated[str, PlainValidator(_kind)]
    # Normalised ``host:port``; ``host`` and ``port`` are derived from it.
    target: Annotated[str, PlainValidator(_target)]
    description: Annotated[str, _none_is("")] = ""
    scopes: ScopeNames
    max_ttl: Duration
    options: Annotated[Mapping[str, str | int | float | bool], PlainValidator(_options)] = PydanticField(
        default_factory=dict
    )

    @property
    def host(self) -> str:
        return split_target(self.target)[0]

    @property
    def port(self) -> int:
        return split_target(self.target)[1]


class Rule(_Model):
    """Who (``subjects``) may get which ``scopes`` of which ``services``, how long, on what terms."""

    name: Text
    subjects: Annotated[Subjects, _none_is({})]
    services: ServiceNames
    scopes: ScopeNames
    max_ttl: OptionalDuration = None
    require: Requirement = "auto"

    @field_validator("subjects")
    @classmethod
    def _names_someone(cls, subjects: Subjects) -> Subjects:
        if subjects.empty:
            # A rule that names nobody is almost certainly a typo; refuse rather than ignore it.
            raise ValueError("name at least one group, user or service account")
        return subjects

    @field_validator("require", mode="before")
    @classmethod
    def _known_requirement(cls, value: Any) -> Any:
        if value not in REQUIREMENTS:
            raise ValueError(f"expected one of {', '.join(REQUIREMENTS)}, got {value!r}")
        return value

    def matches(self, who: SubjectLike, service: str, scope: str) -> bool:
        return service in self.services and scope in self.scopes and self.subjects.match(who)


class AuditConfig(_Model):
    readers: Annotated[Subjects, _none_is({})] = Subjects()


class PolicyFile(_Model):
    """The whole file, as written: services and rules are lists, in the file's order."""

    services: Annotated[tuple[ServiceConfig, ...], _none_is(()), PydanticField(max_length=_MAX_SERVICES)] = ()
    rules: Annotated[tuple[Rule, ...], _none_is(()), PydanticField(max_length=_MAX_RULES)] = ()
    audit: Annotated[AuditConfig, _none_is({})] = AuditConfig()

    @field_validator("services")
    @classmethod
    def _unique_services(cls, services: tuple[ServiceConfig, ...]) -> tuple[ServiceConfig, ...]:
        seen: set[str] = set()
        for i, svc in enumerate(services):
            if svc.name in seen:
                raise Located((i, "name"), f"duplicate service name {svc.name!r}")
            seen.add(svc.name)
        return services

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise Located((i, "name"), f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return rules

    @model_validator(mode="after")
    def _rules_name_what_exists(self) -> PolicyFile:
        """Rules may only name services of this file, and scopes one of their services has."""
        services = {svc.name: svc for svc in self.services}
        for i, rule in enumerate(self.rules):
            for j, name in enumerate(rule.services):
                if name not in services:
                    raise Located(("rules", i, "services", j), f"no service named {name!r} in services")
            for j, scope in enumerate(rule.scopes):
                if not any(scope in services[name].scopes for name in rule.services):
                    raise Located(
                        ("rules", i, "scopes", j), f"none of the rule's services has scope {scope!r}"
                    )
        return self


# ---------------------------------------------------------------- the loaded policy


@dataclass(frozen=True)
class Policy:
    """A validated policy, services by name. Build it with ``load``, ``from_dict`` or ``empty``."""

    services: Mapping[str, ServiceConfig] = field(default_factory=dict, hash=False)
    rules: tuple[Rule, ...] = ()
    audit_readers: Subjects = field(default_factory=Subjects)

    @classmethod
    def empty(cls) -> Policy:
        """A policy with no services and no rules: everything is denied."""
        return cls()

    @classmethod
    def from_file(cls, document: PolicyFile) -> Policy:
        return cls({svc.name: svc for svc in document.services}, document.rules, document.audit.readers)

    @classmethod
    def load(cls, path: Any) -> Policy:
        """Load and validate the YAML policy at ``path`` (see ``load.load_policy``).

        Raises:
            PolicyError: the file cannot be read, is not YAML, or is not a valid policy; the
                message names the file, the field path and the line.
        """
        # Imported here: load.py builds on this module's models.
        from access.broker.policy.load import load_policy

        return load_policy(path)

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Validate parsed YAML (or a dict built in code) into a ``Policy``.

        Raises:
            PolicyError: the data is not a valid policy; the message names the offending path.
        """
        from access.broker.policy.load import policy_from_data

        return policy_from_data(data)

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
        """True when the policy's ``audit.readers`` include ``who``. Fails closed: no readers, no one."""
        return self.audit_readers.match(who)
