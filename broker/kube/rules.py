"""What a scope of a ``kubernetes`` service allows, and the pure decision per request.

A scope is a list of allow rules (deny by default: a request no rule matches is refused), each
naming ``verbs`` (``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``,
``deletecollection``, ``proxy``, or ``*``), ``resources`` and, optionally, resources it
``exclude``\\ s and the ``namespaces`` it is limited to; the scope may be limited to
``namespaces`` as a whole. Resources are written as kubectl's API paths name them:

- ``pods``: the resource itself, in any API group; ``*``: every resource (not subresources);
- ``pods/log``, ``deployments/scale``: one subresource; ``pods/*``: every subresource of pods;
  ``*/scale``: that subresource of every resource; ``*/*``: every subresource.

Exec, attach, port-forward and proxy (``pods/exec``, ``pods/attach``, ``pods/portforward``,
``pods/proxy``) are matched with the verb ``create`` (``request.py`` says why).

A namespace limit allows only requests in those namespaces: a cluster-wide request (``get pods
-A``, nodes, the namespaces list) is refused under it. Discovery (``GET`` of ``/version``,
``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}[/{version}]``, ``/openapi/...``) is allowed
for every scope: kubectl cannot start without it and it holds no object.

Presets, used for a scope named ``read``, ``operate`` or ``admin`` that the policy gives no
rules: read = get/list/watch on every resource but secrets; operate = read, and delete pods,
patch deployments (``kubectl rollout restart``), pods/log, pods/exec and pods/portforward;
admin = everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic import Field as PydanticField

from access.broker.kube.request import VERBS, Attributes

__all__ = ["PRESETS", "KubeRule", "KubeScope", "Verdict", "decide", "is_discovery"]

_MAX_ITEMS = 256


def _no_duplicates(value: object) -> object:
    if isinstance(value, list | tuple) and len(set(map(str, value))) != len(value):
        raise ValueError("duplicate names")
    return value


def _verbs(value: tuple[str, ...]) -> tuple[str, ...]:
    for verb in value:
        if verb != "*" and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}: one of {', '.join(VERBS)} or *")
    return value


def _resources(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        resource, slash, sub = item.partition("/")
        if (
            not resource
            or (slash and not sub)
            or "/" in sub
            or not _is_word(resource)
            or (sub and not _is_word(sub))
        ):
            raise ValueError(f"bad resource {item!r}: write pods, pods/log, pods/*, */scale or *")
    return value


def _namespaces(value: tuple[str, ...]) -> tuple[str, ...]:
    for item in value:
        if not item or len(item) > 63 or not all(c.islower() or c.isdigit() or c == "-" for c in item):
            raise ValueError(f"bad namespace {item!r}: a DNS-1123 label")
    return value


def _is_word(text: str) -> bool:
    return text == "*" or (len(text) <= 253 and all(c.isalnum() or c in "-._" for c in text))


def _not_empty(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("must not be empty (deny by default: name what is allowed)")
    return value


_Names = Annotated[tuple[str, ...], BeforeValidator(_no_duplicates), PydanticField(max_length=_MAX_ITEMS)]
Verbs = Annotated[_Names, AfterValidator(_not_empty), AfterValidator(_verbs)]
Resources = Annotated[_Names, AfterValidator(_resources)]
Namespaces = Annotated[_Names, AfterValidator(_namespaces)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubeRule(_Model):
    """One allow rule of a scope."""

    verbs: Verbs
    resources: Annotated[Resources, AfterValidator(_not_empty)]
    exclude: Resources = ()
    namespaces: Namespaces = ()  # empty: every namespace, and cluster-wide requests

    def matches(self, attrs: Attributes) -> bool:
        if "*" not in self.verbs and attrs.verb not in self.verbs:
            return False
        if self.namespaces and attrs.namespace not in self.namespaces:
            return False
        return _names(self.resources, attrs) and not _names(self.exclude, attrs)


class KubeScope(_Model):
    """The rules of one scope, optionally limited to ``namespaces``."""

    rules: Annotated[tuple[KubeRule, ...], PydanticField(min_length=1, max_length=_MAX_ITEMS)]
    namespaces: Namespaces = ()


def _names(patterns: Iterable[str], attrs: Attributes) -> bool:
    for pattern in patterns:
        resource, _, sub = pattern.partition("/")
        if resource not in ("*", attrs.resource):
            continue
        if sub == attrs.subresource or (sub == "*" and attrs.subresource):
            return True
    return False


_READ = KubeRule(verbs=("get", "list", "watch"), resources=("*",), exclude=("secrets",))
PRESETS: dict[str, KubeScope] = {
    "read": KubeScope(rules=(_READ,)),
    "operate": KubeScope(
        rules=(
            _READ,
            KubeRule(verbs=("delete",), resources=("pods",)),
            KubeRule(verbs=("patch",), resources=("deployments",)),
            KubeRule(verbs=("get",), resources=("pods/log",)),
            KubeRule(verbs=("create",), resources=("pods/exec", "pods/portforward")),
        )
    ),
    "admin": KubeScope(rules=(KubeRule(verbs=("*",), resources=("*", "*/*")),)),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


def is_discovery(attrs: Attributes) -> bool:
    """A read of a discovery document: every scope may (kubectl needs them to start)."""
    if attrs.is_resource or attrs.verb not in ("get", "head"):
        return False
    path = attrs.path.rstrip("/") or "/"
    return path in ("/version", "/api", "/apis", "/openapi/v2") or path.startswith(
        ("/api/", "/apis/", "/openapi/v3")
    )


def decide(scope: str, rules: KubeScope | None, attrs: Attributes) -> Verdict:
    """Whether ``scope`` (its ``rules``; None: none at all) allows the request ``attrs``.

    Pure: the reason is the text kubectl shows ("scope read does not allow delete on pods").
    """
    if is_discovery(attrs):
        return Verdict(True, "discovery")
    if not attrs.is_resource:
        return Verdict(False, f"scope {scope} does not allow {attrs.verb.upper()} {attrs.path}")
    what = f"{attrs.verb or 'this method'} on {attrs.full_resource}"
    if rules is None:
        return Verdict(False, f"scope {scope} has no rules for this cluster (deny by default)")
    if rules.namespaces and attrs.namespace not in rules.namespaces:
        where = f"in namespace {attrs.namespace}" if attrs.namespace else "across all namespaces"
        allowed = ", ".join(rules.namespaces)
        return Verdict(False, f"scope {scope} does not allow {what} {where} (only in {allowed})")
    for rule in rules.rules:
        if rule.matches(attrs):
            return Verdict(True, f"scope {scope} allows {what}")
    where = f" in namespace {attrs.namespace}" if attrs.namespace else ""
    return Verdict(False, f"scope {scope} does not allow {what}{where}")
