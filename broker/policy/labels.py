"""Labels: what a service is (``env: prod``, ``team: payments``), and selectors that pick services
by them (a rule's or a role entry's ``labels:``).

Keys and values follow Kubernetes' label syntax, so the labels operators already use for their
clusters fit: a key is a name (``env``, ``team``), optionally under a DNS-subdomain prefix
(``app.kubernetes.io/name``); a name and a value are 1 to 63 characters, letters, digits, ``-``,
``_`` and ``.``, starting and ending with a letter or a digit. Matching is exact and
case-sensitive. Unlike Kubernetes, a value may not be empty: ``env:`` (YAML null) is a typo
more often than a label. A selector matches a service when every label it names has the given
value on the service; an empty selector is refused, since it would select every service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import PlainValidator

from access.broker.policy.fields import Located, type_name
from access.shared.names import is_dns_label

__all__ = ["MAX_LABELS", "LabelSelector", "Labels", "describe", "selects"]

MAX_LABELS = 64  # labels per service, and per selector
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_NAME_RULE = "1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
_PREFIX_LENGTH = 253


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a label key, or None."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        parts = prefix.split(".")
        if len(prefix) > _PREFIX_LENGTH or not all(is_dns_label(part) for part in parts):
            return (
                f"bad label key {key!r}: the prefix before '/' must be a DNS subdomain"
                " (lowercase labels joined by '.', e.g. app.kubernetes.io)"
            )
    if not _NAME.match(name):
        return f"bad label key {key!r}: {_NAME_RULE}"
    return None


def _labels(value: Any, *, selector: bool) -> dict[str, str]:
    if value is None and not selector:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of label: value, got {type_name(value)}")
    if selector and not value:
        # An empty selector matches every service: far too much to grant by accident.
        raise ValueError("name at least one label (an empty selector would select every service)")
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise Located((str(key),), f"a label key is a string, got {type_name(key)}: quote it")
        problem = _key_problem(key)
        if problem is not None:
            raise Located((key,), problem)
        if not isinstance(item, str):
            # YAML reads yes, true, 1 and 2024 as booleans and numbers: the file must say text.
            raise Located((key,), f"a label value is a string, got {type_name(item)}: quote it")
        if not _NAME.match(item):
            raise Located((key,), f"bad label value {item!r}: {_NAME_RULE}")
        labels[key] = item
    return labels


Labels = Annotated[Mapping[str, str], PlainValidator(lambda value: _labels(value, selector=False))]
LabelSelector = Annotated[Mapping[str, str], PlainValidator(lambda value: _labels(value, selector=True))]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every label of ``selector`` has its value in ``labels``. Fails closed: an empty selector
    (which the file cannot hold) selects nothing."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def describe(labels: Mapping[str, str]) -> str:
    """``env=prod, team=payments`` (sorted)."""
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
