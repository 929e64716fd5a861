"""The policy file's field types: names, scopes, durations, targets, kinds and options.

Each is an ``Annotated`` type whose validator raises ``ValueError`` with the words a person
reads after the field path (``bad duration 'forever': write it like 45s, 30m or 1h30m``); a
validator that knows a place below its field (an option's key) raises ``Located``. Names and
durations are checked by ``access.shared.names`` and ``access.shared.durations``, the same
rules the API applies to requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainValidator
from pydantic import Field as PydanticField

from access.broker.kinds import UnsupportedKind, check_kind
from access.shared.durations import DurationError, parse_duration
from access.shared.names import NAME_RULE, is_dns_label, is_principal_name, is_scope

__all__ = [
    "Duration",
    "Kind",
    "Located",
    "OptionalDuration",
    "Options",
    "PrincipalNames",
    "RoleName",
    "ScopeNames",
    "ServiceName",
    "ServiceNames",
    "Target",
    "Text",
    "none_is",
    "split_target",
    "type_name",
]

# Options are handed to the service kind (database, user, password_file, ...). A password
# written into the policy file itself would end up in backups and diffs: refer to a file or
# an environment variable instead.
_FORBIDDEN_OPTIONS = ("password", "secret", "token")
_MAX_NAMES = 1000
_PRINCIPAL_RULE = "lowercase letters, digits, '.', '_' and '-'"
_SCOPE_RULE = "lowercase letters, digits, '_' and '-'"

OptionValue = str | int | float | bool


class Located(ValueError):
    """A validation error about ``loc`` below the field whose validator raised it."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def type_name(value: Any) -> str:
    """How messages name the type of a value that is not what the file should have."""
    return "nothing" if value is None else type(value).__name__


def none_is(default: Any) -> BeforeValidator:
    """Treat ``key:`` with no value (YAML null) as the default, as the file format always has."""
    return BeforeValidator(lambda value: default if value is None else value)


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


def _no_duplicates(value: Any) -> Any:
    # Before the type's own validation, so that a set type cannot merge duplicates silently.
    names = isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
    if names and len(set(value)) != len(value):
        raise ValueError("duplicate names")
    return value


def _not_empty(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("must not be empty")
    return names


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


def _options(value: Any) -> dict[str, OptionValue]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type_name(value)}")
    options: dict[str, OptionValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError("option names must be strings")
        if key.lower() in _FORBIDDEN_OPTIONS:
            raise Located(
                (key,), f"do not put secrets in the policy; use {key}_file (a path) or {key}_env (a variable)"
            )
        if not isinstance(item, OptionValue) or (isinstance(item, str) and not item):
            raise Located((key,), "expected a non-empty string, number or boolean")
        options[key] = item
    return options


Text = Annotated[str, PlainValidator(_text)]
Duration = Annotated[timedelta, PlainValidator(_duration)]
OptionalDuration = Annotated[timedelta | None, PlainValidator(_optional_duration)]
ServiceName = Annotated[
    str, PlainValidator(_text), AfterValidator(_name_check(is_dns_label, NAME_RULE, "service name"))
]
# A role's name is in the names of its entries' rules (``payments-oncall[1]``): a DNS label too.
RoleName = Annotated[
    str, PlainValidator(_text), AfterValidator(_name_check(is_dns_label, NAME_RULE, "role name"))
]
Kind = Annotated[str, PlainValidator(_kind)]
# Normalised ``host:port``.
Target = Annotated[str, PlainValidator(_target)]
Options = Annotated[Mapping[str, OptionValue], PlainValidator(_options)]

_ScopeName = Annotated[str, PlainValidator(_name_check(is_scope, _SCOPE_RULE))]
_ListedService = Annotated[str, PlainValidator(_name_check(is_dns_label, NAME_RULE, "service name"))]
_PrincipalName = Annotated[str, PlainValidator(_name_check(is_principal_name, _PRINCIPAL_RULE))]
# Lists of names: duplicates are refused rather than merged, and ``scopes:`` with no value is empty.
ScopeNames = Annotated[
    tuple[_ScopeName, ...],
    none_is(()),
    BeforeValidator(_no_duplicates),
    PydanticField(max_length=_MAX_NAMES),
    AfterValidator(_not_empty),
]
ServiceNames = Annotated[
    tuple[_ListedService, ...],
    none_is(()),
    BeforeValidator(_no_duplicates),
    PydanticField(max_length=_MAX_NAMES),
    AfterValidator(_not_empty),
]
# Sets: a subject is matched against them on every request.
PrincipalNames = Annotated[
    frozenset[_PrincipalName],
    none_is(()),
    BeforeValidator(_no_duplicates),
    PydanticField(max_length=_MAX_NAMES),
]
