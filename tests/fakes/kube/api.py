"""The stand-in's request handling: authentication, impersonation, routing, and each verb.

``API(store, options)`` is the handler the HTTP server calls. Paths follow the API server's
layout: ``/api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUBRESOURCE]]`` for the core group and
``/apis/apps/v1/...`` for apps; discovery lives at ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps``,
``/apis/apps/v1`` and ``/version``.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fakes.kube import status
from tests.fakes.kube.exec import Exec, run_exec
from tests.fakes.kube.http import Request, Response, Stream, Upgrade, WebSocket
from tests.fakes.kube.objects import KINDS, Kind, Selector, SelectorError, Store, TooOld
from tests.fakes.kube.patch import PatchError, apply_patch
from tests.fakes.kube.spdy import PortForward, PortForwardSession
from tests.fakes.kube.tables import table

__all__ = ["API", "Options", "Seen"]

DISCOVERY = Path(__file__).parent / "discovery"
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORTFORWARD_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
Obj = dict[str, Any]


def _document(name: str) -> bytes:
    return (DISCOVERY / name).read_bytes()


@dataclass
class Options:
    token: str  # the bearer token the stand-in accepts (the broker's credential)
    token_user: str = "system:serviceaccount:access-system:access-broker"
    client_cert_users: bool = True  # accept a client certificate its CA signed; the user is its CN
    require_impersonation: bool = False  # refuse requests without Impersonate-User (403)
    forward: dict[int, tuple[str, int]] = field(default_factory=dict)  # pod port -> where it leads


@dataclass(frozen=True)
class Seen:
    """One request as the stand-in saw it, whether it was served or refused."""

    method: str
    path: str
    query: dict[str, list[str]]
    user: str  # who authenticated ("" when nobody did)
    impersonate_user: str | None
    impersonate_groups: tuple[str, ...]
    verb: str  # the RBAC verb: get, list, watch, delete, patch, create (exec, portforward)
    resource: str  # pods, pods/log, deployments/scale, ...; "" for discovery
    namespace: str
    name: str
    code: int
    user_agent: str


@dataclass(frozen=True)
class _Target:
    kind: Kind
    namespace: str
    name: str
    subresource: str


def _accepts(request: Request, **params: str) -> bool:
    """Whether the Accept header offers ``application/json`` with all of ``params`` (g, v, as)."""
    for offer in (request.header("accept") or "").split(","):
        media, *rest = (part.strip() for part in offer.split(";"))
        values = dict(p.split("=", 1) for p in rest if "=" in p)
        if media == "application/json" and all(values.get(k) == v for k, v in params.items()):
            return True
    return False


def _json(obj: Obj, code: int = 200) -> Response:
    return Response(code, json.dumps(obj).encode())


def _parse(path: str) -> _Target | None:
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:3] == ["apis", "apps", "v1"]:
        group, rest = "apps", parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3 or rest[0] not in KINDS or KINDS[rest[0]].group != group:
        return None
    kind = KINDS[rest[0]]
    if namespace and not kind.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else ""
    if name and kind.namespaced and not namespace:
        return None
    return _Target(kind, namespace, name, rest[2] if len(rest) > 2 else "")


def _verb(method: str, target: _Target | None, request: Request) -> str:
    if target is None:
        return "get"
    if target.subresource in ("exec", "portforward"):
        return "create"
    if method == "GET":
        if target.name:
            return "get"
        return "watch" if request.arg("watch") in ("1", "true") else "list"
    return {"DELETE": "delete", "PATCH": "patch", "PUT": "update", "POST": "create"}.get(
        method, method.lower()
    )


class API:
    def __init__(self, store: Store, options: Options, now: Callable[[], datetime]) -> None:
        self.store = store
        self.options = options
        self.now = now
        self.seen: list[Seen] = []
        self.execs: list[Exec] = []
        self.forwards: list[PortForward] = []
        self.port = 0  # set once listening: /api names it

    # -- the edge ------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str:
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token:
            # Constant time: a test of "wrong token refused" must not depend on where it differs.
            if hmac.compare_digest(token.encode(), self.options.token.encode()):
                return self.options.token_user
            return ""
        if self.options.client_cert_users and request.peer_cert:
            for rdn in request.peer_cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        return ""

    async def __call__(self, request: Request) -> Response | Stream | Upgrade:
        target = _parse(request.path)
        user = self._authenticate(request)
        impersonate = request.header("impersonate-user")
        groups = tuple(request.header_all("impersonate-group"))
        verb = _verb(request.method, target, request)
        if not user:
            result: Response | Stream | Upgrade = status.unauthorized()
        elif groups and not impersonate:
            result = status.status_response(
                status.failure(
                    500, f"Internal error occurred: requested {list(groups)} without impersonating a user"
                )
            )
        elif self.options.require_impersonation and not impersonate and target is not None:  # (not discovery)
            why = "the stand-in is set to require Impersonate-User"
            result = status.forbidden(user, verb, target.kind, target.namespace, target.name, why)
        else:
            result = self._route(request, target, impersonate or user)
        resource = ""
        if target is not None:
            resource = target.kind.resource + (f"/{target.subresource}" if target.subresource else "")
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                query=request.query,
                user=user,
                impersonate_user=impersonate,
                impersonate_groups=groups,
                verb=verb,
                resource=resource,
                namespace=target.namespace if target else "",
                name=target.name if target else "",
                code=result.status if isinstance(result, Response | Stream) else 101,
                user_agent=request.header("user-agent") or "",
            )
        )
        return result

    def _route(self, request: Request, target: _Target | None, user: str) -> Response | Stream | Upgrade:
        if target is None:
            return self._discovery(request)
        method, sub = request.method, target.subresource
        if sub == "":
            if method == "GET":
                return self._get(request, target) if target.name else self._list(request, target)
            if method == "DELETE" and target.name:
                return self._delete(request, target)
            if method == "PATCH" and target.name:
                return self._patch(request, target)
        elif target.kind.resource == "pods" and sub == "log" and method == "GET":
            return self._log(request, target)
        elif target.kind.resource == "pods" and sub in ("exec", "portforward") and method in ("GET", "POST"):
            return self._upgrade(request, target, user)
        elif target.kind.resource == "deployments" and sub == "scale" and method in ("GET", "PATCH"):
            return self._scale(request, target)
        elif sub and sub not in ("status", "scale", "log", "exec", "portforward"):
            return status.not_found()
        verb = _verb(method, target, request)
        return status.status_response(
            status.failure(
                405,
                f"the server does not allow this method on the requested resource ({verb} on "
                f"{target.kind.resource}{'/' + sub if sub else ''} is not served by the stand-in)",
                {},
                "MethodNotAllowed",
            )
        )

    # -- discovery -----------------------------------------------------------------------------

    def _discovery(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        aggregated = _accepts(request, g="apidiscovery.k8s.io", v="v2", **{"as": "APIGroupDiscoveryList"})
        if path in ("/api", "/apis") and aggregated:
            name = "aggregated_api.json" if path == "/api" else "aggregated_apis.json"
            return Response(200, _document(name), AGGREGATED)
        if path == "/api":
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                }
            )
        documents = {
            "/apis": "apis.json",
            "/api/v1": "api_v1.json",
            "/apis/apps": "apis_apps.json",
            "/apis/apps/v1": "apis_apps_v1.json",
            "/version": "version.json",
        }
        if path in documents:
            return Response(200, _document(documents[path]))
        return status.not_found()

    # -- reads ---------------------------------------------------------------------------------

    def _get(self, request: Request, target: _Target) -> Response:
        obj = self.store.get(target.kind.resource, target.namespace, target.name)
        if obj is None:
            return status.not_found(target.kind, target.name)
        if _accepts(request, g="meta.k8s.io", v="v1", **{"as": "Table"}):
            return _json(table(target.kind.resource, [obj], obj["metadata"]["resourceVersion"], self.now()))
        return _json(obj)

    def _list(self, request: Request, target: _Target) -> Response | Stream:
        try:
            selector = Selector.parse(request.arg("fieldSelector"), request.arg("labelSelector"))
        except SelectorError as exc:
            return status.bad_request(str(exc))
        namespace = target.namespace or None
        resource = target.kind.resource
        as_table = _accepts(request, g="meta.k8s.io", v="v1", **{"as": "Table"})
        if request.arg("watch") in ("1", "true"):
            return self._watch(request, target, selector, as_table=as_table)
        items = self.store.find(resource, namespace, selector)
        revision = str(self.store.revision)
        if as_table:
            return _json(table(resource, items, revision, self.now()))
        listed = [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")} for obj in items]
        return _json(
            {
                "kind": f"{target.kind.kind}List",
                "apiVersion": target.kind.api_version,
                "metadata": {"resourceVersion": revision},
                "items": listed,
            }
        )

    def _watch(
        self, request: Request, target: _Target, selector: Selector, *, as_table: bool
    ) -> Response | Stream:
        since_text = request.arg("resourceVersion")
        since = int(since_text) if since_text.isdigit() and since_text != "0" else None
        resource = target.kind.resource
        try:
            events = self.store.watch(resource, target.namespace or None, selector, since)
        except TooOld:
            message = f"too old resource version: {since} ({self.store.history[0].resource_version})"
            gone = {"type": "ERROR", "object": status.failure(410, message, reason="Expired")}

            async def expired() -> AsyncGenerator[bytes, None]:
                yield json.dumps(gone).encode() + b"\n"

            return Stream(200, expired())
        timeout = float(request.arg("timeoutSeconds") or 1800)

        async def stream() -> AsyncGenerator[bytes, None]:
            first = True
            try:
                async with asyncio.timeout(timeout):  # the API server ends every watch after a while
                    async for event in events:
                        obj = event.object
                        if as_table:
                            rv = obj["metadata"]["resourceVersion"]
                            obj = table(resource, [obj], rv, self.now(), columns=first)
                            first = False
                        yield json.dumps({"type": event.type, "object": obj}).encode() + b"\n"
            except TimeoutError:
                return
            finally:
                await events.aclose()

        return Stream(200, stream())

    def _log(self, request: Request, target: _Target) -> Response | Stream:
        pod = self.store.get("pods", target.namespace, target.name)
        if pod is None:
            return status.not_found(target.kind, target.name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = request.arg("container") or (names[0] if len(names) == 1 else "")
        if not container:
            return status.bad_request(
                f"a container name must be specified for pod {target.name}, "
                f"choose one of: [{' '.join(names)}]"
            )
        if container not in names:
            return status.bad_request(f"container {container} is not valid for pod {target.name}")
        log = self.store.log(target.namespace, target.name)
        tail = request.arg("tailLines")
        start = max(0, len(log.lines) - int(tail)) if tail.isdigit() else 0
        if request.arg("follow") not in ("1", "true"):
            return Response(200, "".join(line + "\n" for line in log.lines[start:]).encode(), "text/plain")

        async def follow() -> AsyncGenerator[bytes, None]:
            sent = start
            while True:
                while sent < len(log.lines):
                    yield log.lines[sent].encode() + b"\n"
                    sent += 1
                if log.ended:
                    return
                log.changed.clear()
                await log.changed.wait()

        return Stream(200, follow(), "text/plain")

    # -- writes --------------------------------------------------------------------------------

    def _delete(self, request: Request, target: _Target) -> Response:
        if target.kind.resource != "pods":
            return status.status_response(
                status.failure(
                    405,
                    f"delete of {target.kind.resource} is not served by the stand-in",
                    {},
                    "MethodNotAllowed",
                )
            )
        if request.body:
            try:
                json.loads(request.body)
            except ValueError:
                return status.bad_request("the body of the request was in an unknown format")
        obj = self.store.delete("pods", target.namespace, target.name)
        if obj is None:
            return status.not_found(target.kind, target.name)
        return _json(obj)

    def _patch(self, request: Request, target: _Target) -> Response:
        obj = self.store.get(target.kind.resource, target.namespace, target.name)
        if obj is None:
            return status.not_found(target.kind, target.name)
        try:
            patched = apply_patch(obj, request.header("content-type") or "", request.body)
        except PatchError as exc:
            return status.status_response(status.failure(exc.code, str(exc)))
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            patched["metadata"][key] = obj["metadata"][key]
        if patched.get("spec") != obj.get("spec"):
            generation = int(obj["metadata"].get("generation", 1)) + 1
            patched["metadata"]["generation"] = generation
            if target.kind.resource == "deployments":  # the controller catches up at once
                patched["status"]["observedGeneration"] = generation
        return _json(self.store.update(target.kind.resource, patched))

    def _scale(self, request: Request, target: _Target) -> Response:
        dep = self.store.get("deployments", target.namespace, target.name)
        if dep is None:
            return status.not_found(target.kind, target.name)
        if request.method == "PATCH":
            scale = self._scale_of(dep)
            try:
                wanted = apply_patch(scale, request.header("content-type") or "", request.body)
                replicas = int(wanted["spec"]["replicas"])
            except PatchError as exc:
                return status.status_response(status.failure(exc.code, str(exc)))
            except (KeyError, TypeError, ValueError):
                return status.status_response(status.failure(422, "spec.replicas: Invalid value"))
            dep = copy.deepcopy(dep)
            dep["spec"]["replicas"] = replicas
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
                dep["status"][key] = replicas
            dep = self.store.update("deployments", dep)
        return _json(self._scale_of(dep))

    @staticmethod
    def _scale_of(dep: Obj) -> Obj:
        meta = dep["metadata"]
        labels = dep["spec"]["selector"]["matchLabels"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": dep["spec"]["replicas"]},
            "status": {
                "replicas": dep["status"].get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }

    # -- exec and port-forward -----------------------------------------------------------------

    def _upgrade(self, request: Request, target: _Target, user: str) -> Response | Upgrade:
        pod = self.store.get("pods", target.namespace, target.name)
        if pod is None:
            return status.not_found(target.kind, target.name)
        offered = [p.strip() for p in (request.header("sec-websocket-protocol") or "").split(",")]
        upgrade = (request.header("upgrade") or "").lower()
        if upgrade != "websocket":
            why = (
                "SPDY is not served by the stand-in"
                if upgrade.startswith("spdy")
                else "Upgrade request required"
            )
            return status.bad_request(why)
        phase = pod["status"].get("phase")
        if phase != "Running":
            return status.bad_request(
                f"unable to upgrade connection: pod {target.name} is not running ({phase})"
            )
        if target.subresource == "portforward":
            if PORTFORWARD_PROTOCOL not in offered:
                return status.bad_request(f"unable to upgrade: none of {offered} is {PORTFORWARD_PROTOCOL}")

            async def forward(socket: WebSocket) -> None:
                session = PortForwardSession(
                    socket,
                    target.namespace,
                    target.name,
                    user,
                    self.options.forward.get,
                    self.forwards.append,
                )
                await session.run()

            return Upgrade(PORTFORWARD_PROTOCOL, forward)
        protocol = next((p for p in EXEC_PROTOCOLS if p in offered), None)
        if protocol is None:
            return status.bad_request(
                f"unable to upgrade: none of {offered} is one of {list(EXEC_PROTOCOLS)}"
            )
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = request.arg("container") or names[0]
        if container not in names:
            return status.bad_request(f"container {container} is not valid for pod {target.name}")
        command = request.query.get("command", [])
        if not command:
            return status.bad_request("you must specify at least 1 command")
        session = Exec(
            target.namespace,
            target.name,
            container,
            command,
            request.arg("stdin") in ("1", "true"),
            request.arg("tty") in ("1", "true"),
            protocol,
            user,
        )
        self.execs.append(session)

        async def run(socket: WebSocket) -> None:
            await run_exec(socket, session)

        return Upgrade(protocol, run)
