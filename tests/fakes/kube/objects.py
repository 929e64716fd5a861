"""The stand-in's objects: kinds it serves, an in-memory store with resource versions and watches,
pod logs, and the cluster it starts with.

Objects are plain JSON dicts shaped as the API server stores them (``kind`` and ``apiVersion``
first, then metadata with uid, resourceVersion and creationTimestamp). Every change takes the next
resource version and becomes a watch event; watches replay the events after the version they
ask for, from a bounded history, then follow live. Everything here runs on the stand-in's event
loop; the test's thread goes through ``KubeAPI`` (tests/fakes/kubeapi.py).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = ["KINDS", "Kind", "LogStream", "Selector", "Store", "WatchEvent", "seed"]

Obj = dict[str, Any]
HISTORY = 500  # watch events kept for resuming from a resource version
WATCH_QUEUE = 1000  # events a slow watcher may fall behind by before its watch is ended


@dataclass(frozen=True)
class Kind:
    resource: str
    group: str
    version: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


KINDS = {
    kind.resource: kind
    for kind in (
        Kind("namespaces", "", "v1", "Namespace", namespaced=False),
        Kind("pods", "", "v1", "Pod", namespaced=True),
        Kind("secrets", "", "v1", "Secret", namespaced=True),
        Kind("services", "", "v1", "Service", namespaced=True),
        Kind("configmaps", "", "v1", "ConfigMap", namespaced=True),
        Kind("deployments", "apps", "v1", "Deployment", namespaced=True),
    )
}


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SelectorError(ValueError):
    """A field or label selector the stand-in cannot evaluate (the API server answers 400)."""


@dataclass(frozen=True)
class Selector:
    """``fieldSelector`` (metadata.name, metadata.namespace) and ``labelSelector`` (=, ==, !=)."""

    fields: tuple[tuple[str, str, bool], ...] = ()
    labels: tuple[tuple[str, str, bool], ...] = ()

    @staticmethod
    def _terms(text: str) -> tuple[tuple[str, str, bool], ...]:
        terms = []
        for term in filter(None, (t.strip() for t in text.split(","))):
            if "!=" in term:
                key, value = term.split("!=", 1)
                terms.append((key.strip(), value.strip(), False))
            elif "=" in term:
                key, value = term.replace("==", "=").split("=", 1)
                terms.append((key.strip(), value.strip(), True))
            else:
                raise SelectorError(
                    f"unable to parse requirement: {term!r}: set-based selectors are not supported"
                )
        return tuple(terms)

    @classmethod
    def parse(cls, field_selector: str, label_selector: str) -> Selector:
        fields = cls._terms(field_selector)
        for key, _, _ in fields:
            if key not in ("metadata.name", "metadata.namespace"):
                raise SelectorError(f"field label not supported: {key}")
        return cls(fields, cls._terms(label_selector))

    def matches(self, obj: Obj) -> bool:
        meta = obj["metadata"]
        values = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "")}
        labels = meta.get("labels", {})
        return all((values[k] == v) == eq for k, v, eq in self.fields) and all(
            (labels.get(k) == v) == eq for k, v, eq in self.labels
        )


@dataclass(frozen=True)
class WatchEvent:
    resource_version: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj


class TooOld(Exception):
    """A watch asked for a resource version older than the history holds (410 Expired)."""


@dataclass
class LogStream:
    lines: list[str] = field(default_factory=list)
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Store:
    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.revision = 1000
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {name: {} for name in KINDS}
        self.history: deque[WatchEvent] = deque(maxlen=HISTORY)
        self.logs: dict[tuple[str, str], LogStream] = {}
        self._watchers: set[asyncio.Queue[WatchEvent | None]] = set()

    # -- objects -------------------------------------------------------------------------------

    def _emit(self, resource: str, type_: str, obj: Obj) -> None:
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), resource, type_, copy.deepcopy(obj))
        self.history.append(event)
        for queue in list(self._watchers):
            if queue.full():  # too slow: its watch ends, as the API server ends a watch it cannot feed
                self._watchers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    def _stamp(self, obj: Obj) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def create(self, resource: str, obj: Obj, *, age: timedelta = timedelta()) -> Obj:
        kind = KINDS[resource]
        meta = obj.setdefault("metadata", {})
        obj = {"kind": kind.kind, "apiVersion": kind.api_version, **obj}
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", timestamp(self.now() - age))
        self._stamp(obj)
        self.objects[resource][(meta.get("namespace", ""), meta["name"])] = obj
        self._emit(resource, "ADDED", obj)
        return obj

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self.objects[resource].get((namespace, name))

    def find(self, resource: str, namespace: str | None, selector: Selector) -> list[Obj]:
        return [
            obj
            for (ns, _), obj in sorted(self.objects[resource].items())
            if (namespace is None or ns == namespace) and selector.matches(obj)
        ]

    def update(self, resource: str, obj: Obj) -> Obj:
        self._stamp(obj)
        meta = obj["metadata"]
        self.objects[resource][(meta.get("namespace", ""), meta["name"])] = obj
        self._emit(resource, "MODIFIED", obj)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects[resource].pop((namespace, name), None)
        if obj is None:
            return None
        obj["metadata"]["deletionTimestamp"] = timestamp(self.now())
        obj["metadata"]["deletionGracePeriodSeconds"] = 0
        self._stamp(obj)
        self._emit(resource, "DELETED", obj)
        log = self.logs.get((namespace, name))
        if resource == "pods" and log is not None:
            log.ended = True  # a deleted pod's log stream ends, as the kubelet's does
            log.changed.set()
        return obj

    # -- watches -------------------------------------------------------------------------------

    def watch(
        self, resource: str, namespace: str | None, selector: Selector, since: int | None
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``since`` (None: ADDED for every object, then live), until closed.

        Raises:
            TooOld: ``since`` is older than the history held.
        """
        if since is not None and self.history and since < self.history[0].resource_version - 1:
            raise TooOld(since)
        return self._follow(resource, namespace, selector, since)

    async def _follow(
        self, resource: str, namespace: str | None, selector: Selector, since: int | None
    ) -> AsyncGenerator[WatchEvent, None]:
        # Registered when the stream starts, never before: a stream that never starts leaves nothing.
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue(WATCH_QUEUE)
        self._watchers.add(queue)
        try:
            if since is None:
                backlog = [
                    WatchEvent(int(obj["metadata"]["resourceVersion"]), resource, "ADDED", copy.deepcopy(obj))
                    for obj in self.find(resource, namespace, selector)
                ]
            else:
                backlog = [e for e in self.history if e.resource_version > since]
            for event in backlog:
                if self._wanted(event, resource, namespace, selector):
                    yield event
            while (live := await queue.get()) is not None:
                if self._wanted(live, resource, namespace, selector):
                    yield live
        finally:
            self._watchers.discard(queue)

    @staticmethod
    def _wanted(event: WatchEvent, resource: str, namespace: str | None, selector: Selector) -> bool:
        ns = event.object["metadata"].get("namespace", "")
        return event.resource == resource and namespace in (None, ns) and selector.matches(event.object)

    def end_watches(self) -> None:
        for queue in list(self._watchers):
            self._watchers.discard(queue)
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    # -- logs ----------------------------------------------------------------------------------

    def log(self, namespace: str, pod: str) -> LogStream:
        return self.logs.setdefault((namespace, pod), LogStream())

    def append_log(self, namespace: str, pod: str, *lines: str) -> None:
        log = self.log(namespace, pod)
        log.lines.extend(lines)
        log.changed.set()

    def end_log(self, namespace: str, pod: str) -> None:
        log = self.log(namespace, pod)
        log.ended = True
        log.changed.set()


# -- the cluster the stand-in starts with ---------------------------------------------------------


def _hex(seed: str) -> str:
    """64 hex digits that stay the same for the same seed (image digests, container ids)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, seed).hex * 2


def _container(name: str, image: str, port: int | None) -> Obj:
    container: Obj = {"name": name, "image": image}
    if port is not None:
        container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    container |= {
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    return container


def pod(
    namespace: str,
    name: str,
    *,
    image: str,
    node: str,
    ip: str,
    started: datetime,
    labels: dict[str, str] | None = None,
    owner: Obj | None = None,
    port: int | None = 8080,
    restarts: int = 0,
) -> Obj:
    """A running pod with one container named after its app, as the kubelet reports it."""
    container = (labels or {}).get("app", name)
    meta: Obj = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    since = timestamp(started)
    status: Obj = {
        "name": container,
        "state": {"running": {"startedAt": since}},
        "lastState": {},
        "ready": True,
        "restartCount": restarts,
        "image": f"docker.io/library/{image}",
        "imageID": f"docker.io/library/{image.split(':')[0]}@sha256:{_hex(image)}",
        "containerID": f"containerd://{_hex(name)}",
        "started": True,
    }
    if restarts:
        status["lastState"] = {
            "terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": since, "finishedAt": since}
        }
    conditions = [
        {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": since}
        for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    return {
        "metadata": meta,
        "spec": {
            "containers": [_container(container, image, port)],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.11" if node.endswith("1") else "10.0.0.12",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": since,
            "containerStatuses": [status],
            "qosClass": "BestEffort",
        },
    }


def deployment(namespace: str, name: str, *, image: str, replicas: int, port: int = 8080) -> Obj:
    labels = {"app": name}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 1,
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "1"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"creationTimestamp": None, "labels": labels},
                "spec": {
                    "containers": [_container(name, image, port)],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "Deployment has minimum availability.",
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "message": f'ReplicaSet "{name}-5d9c7b7f6d" has successfully progressed.',
                },
            ],
        },
    }


def seed(store: Store) -> None:
    """Namespaces default, kube-system, shop and billing; the shop's web deployment and its two
    pods, a secret and a service; billing's invoicer pod (restarted twice) and its secret."""
    now = store.now()
    for ns in ("default", "kube-system", "shop", "billing"):
        store.create(
            "namespaces",
            {
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            },
            age=timedelta(days=40),
        )
    web = store.create(
        "deployments", deployment("shop", "web", image="nginx:1.27", replicas=2), age=timedelta(days=3)
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-5d9c7b7f6d",
        "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, web["metadata"]["uid"])),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = {"app": "web", "pod-template-hash": "5d9c7b7f6d"}
    for i, suffix in enumerate(("2xkqp", "8mz4r")):
        started = now - timedelta(hours=5, minutes=12 * i)
        store.create(
            "pods",
            pod(
                "shop",
                f"web-5d9c7b7f6d-{suffix}",
                image="nginx:1.27",
                node=f"node-{i + 1}",
                ip=f"10.244.{i + 1}.17",
                started=started,
                labels=labels,
                owner=owner,
            ),
            age=now - started,
        )
    store.create(
        "pods",
        pod(
            "billing",
            "invoicer-0",
            image="python:3.12-slim",
            node="node-2",
            ip="10.244.2.31",
            started=now - timedelta(days=2),
            labels={"app": "invoicer"},
            restarts=2,
        ),
        age=timedelta(days=2),
    )
    store.create(
        "pods",
        pod(
            "kube-system",
            "coredns-668d6bf9bc-xq7rn",
            image="coredns/coredns:v1.11.3",
            node="node-1",
            ip="10.244.1.2",
            started=now - timedelta(days=40),
            port=53,
            labels={"k8s-app": "kube-dns", "pod-template-hash": "668d6bf9bc"},
        ),
        age=timedelta(days=40),
    )
    store.create(
        "secrets",
        {
            "metadata": {"name": "web-tls", "namespace": "shop"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "LS0tLS1CRUdJTi4uLg==", "tls.key": "LS0tLS1CRUdJTi4uLg=="},
        },
        age=timedelta(days=3),
    )
    store.create(
        "secrets",
        {
            "metadata": {"name": "stripe-key", "namespace": "billing"},
            "type": "Opaque",
            "data": {"key": "c2tfbGl2ZV9zdGFuZGlu"},
        },
        age=timedelta(days=2),
    )
    store.create(
        "services",
        {
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                "selector": {"app": "web"},
                "clusterIP": "10.96.14.7",
                "clusterIPs": ["10.96.14.7"],
                "type": "ClusterIP",
                "sessionAffinity": "None",
            },
            "status": {"loadBalancer": {}},
        },
        age=timedelta(days=3),
    )
    store.create(
        "configmaps",
        {
            "metadata": {"name": "web-config", "namespace": "shop"},
            "data": {"nginx.conf": "worker_processes 1;\n"},
        },
        age=timedelta(days=3),
    )
    for i in range(3):
        store.append_log(
            "shop", "web-5d9c7b7f6d-2xkqp", f'10.244.0.1 - - "GET /healthz HTTP/1.1" 200 2 #{i + 1}'
        )
    store.append_log("billing", "invoicer-0", "invoicer: started, 0 invoices pending")
