"""What a Kubernetes API request asks for, from its method, path and query (pure, no I/O).

The API server authorises a request by its *attributes*: a verb (get, list, watch, create,
update, patch, delete, deletecollection), an API group and version, a resource and subresource,
a namespace and a name, or, for any other path, a non-resource path and the HTTP verb. They come
from the URL the same way the API server's ``RequestInfoFactory`` reads them (written anew here,
from its documented logic):

- ``/api/{version}/...`` (the core group) or ``/apis/{group}/{version}/...``; shorter paths and
  paths under any other prefix are non-resource requests (``/version``, ``/api``, ``/apis``,
  ``/apis/apps``, ``/openapi/v3``, ``/healthz``);
- the verb is the method's (POST create, GET/HEAD get, PUT update, PATCH patch, DELETE delete);
  a GET without a name is a list, or a watch with ``watch`` set to anything but 0/false; a
  DELETE without a name is a deletecollection; the legacy ``/watch/`` and ``/proxy/`` path verbs
  are read too;
- ``namespaces/{ns}/{resource}/{name}/{subresource}``: the namespace, then resource, name and
  subresource (``namespaces/{ns}/status`` and ``/finalize`` are the namespace's own).

The broker relays the path it classified, so it must be the path the API server reads: anything
that a server could normalise into another path (``.`` or ``..`` segments, empty segments, percent
escapes, backslashes, ``;`` in the query) is refused (``Unclassifiable``) rather than guessed at.

``connect`` subresources (exec, attach, portforward, proxy) are authorised with the verb
``create`` whatever the method (kubectl 1.30+ opens exec and port-forward with a GET WebSocket
upgrade, and the API server has asked for ``create`` on them since 1.31), so that a read scope
(get/list/watch) never reaches a shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

__all__ = ["CONNECT_SUBRESOURCES", "VERBS", "Attributes", "Unclassifiable", "classify"]

# Every verb a resource request can have (``*`` in a rule names them all).
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "proxy")
# Subresources that open a stream to a pod or node: authorised as ``create``.
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_MAX_TARGET = 8192
_MAX_COMMAND = 64  # exec command words kept for the audit


class Unclassifiable(ValueError):
    """The request's path or query is one the broker will not guess about (refused, 400)."""


@dataclass(frozen=True, slots=True)
class Attributes:
    """One request as the API server authorises it.

    ``resource`` is empty for a non-resource request (``path`` then says which); ``verb`` is the
    Kubernetes verb for a resource request and the lower-case HTTP method otherwise.
    """

    verb: str
    path: str
    resource: str = ""
    subresource: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    name: str = ""
    # exec: the command words (``command=`` parameters), for the audit.
    command: tuple[str, ...] = field(default=())

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    @property
    def full_resource(self) -> str:
        """``pods`` or ``pods/log``: what rules and messages name."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        """``delete pods shop/web-1``, ``list pods``, ``get /version``: one audit line."""
        if not self.is_resource:
            return f"{self.verb} {self.path}"
        where = "/".join(part for part in (self.namespace, self.name) if part)
        text = f"{self.verb} {self.full_resource}" + (f" {where}" if where else "")
        if self.group:
            text += f" ({self.group})"
        if self.command:
            text += " -- " + " ".join(self.command)
        return text


def classify(method: str, target: str) -> Attributes:
    """The attributes of ``method target`` (the request line's target: path and query).

    Raises:
        Unclassifiable: the target is too long, not an origin-form path, or has a segment, escape
            or separator the API server could read as another path than ours.
    """
    if len(target) > _MAX_TARGET or not target.startswith("/"):
        raise Unclassifiable("the request target must be a path of at most 8 KiB")
    path, _, query = target.partition("?")
    _check_path(path)
    if ";" in query or "#" in query:
        raise Unclassifiable("the query may not contain ';' or '#'")
    params = parse_qsl(query, keep_blank_values=True)
    parts = path.strip("/").split("/") if path.strip("/") else []
    method_verb = method.lower()
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return Attributes(verb=method_verb, path=path)
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return Attributes(verb=method_verb, path=path)
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            raise Unclassifiable(f"no resource after /{parts[0]}/")
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb != "proxy" else ""
    if not name and verb == "get":
        watch = [value for key, value in params if key == "watch"]
        verb = "watch" if watch and watch[0].lower() not in ("false", "0") else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    if subresource in CONNECT_SUBRESOURCES and verb:
        verb = "create"
    command: tuple[str, ...] = ()
    if subresource == "exec":
        command = tuple(value[:256] for key, value in params if key == "command")[:_MAX_COMMAND]
    return Attributes(
        verb=verb,
        path=path,
        resource=resource,
        subresource=subresource,
        group=group,
        version=version,
        namespace=namespace,
        name=name,
        command=command,
    )


def _check_path(path: str) -> None:
    if "%" in path or "\\" in path or "#" in path:
        raise Unclassifiable("the path may not contain escapes ('%'), '\\' or '#'")
    inner = path[1:].removesuffix("/") if path != "/" else ""
    for segment in inner.split("/") if inner else ():
        if segment in ("", ".", ".."):
            raise Unclassifiable("the path may not contain empty, '.' or '..' segments")
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in segment):
            raise Unclassifiable("the path may contain printable ASCII only")
