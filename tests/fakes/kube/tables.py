"""Server-side printing: the ``meta.k8s.io/v1`` Table the API server returns for ``kubectl get``.

The column definitions are those of the real server's printers (``discovery/columns.json``,
priority 1 columns only show with ``-o wide``); the cells are computed as the printers compute
them (pod status, readiness, restarts; ages in ``HumanDuration`` form). Each row carries the
object's metadata as a ``PartialObjectMetadata``, which is what kubectl reads the NAMESPACE
column of ``-A`` from.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "human_duration", "table"]

COLUMNS: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).parent / "discovery" / "columns.json").read_text()
)

Obj = dict[str, Any]


def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``: 45s, 5m3s, 3h12m, 2d4h, 400d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _since(timestamp: str, now: datetime) -> str:
    return human_duration((now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())


def _pod(pod: Obj, now: datetime) -> list[Any]:
    """Ready, Status, Restarts and the wide columns, as ``printPod`` computes them."""
    status = pod.get("status", {})
    reason = status.get("reason") or status.get("phase", "Unknown")
    ready = restarts = 0
    last_restart = ""
    for c in reversed(status.get("containerStatuses", [])):  # the first container's state wins
        restarts += int(c.get("restartCount", 0))
        finished = c.get("lastState", {}).get("terminated", {}).get("finishedAt", "")
        last_restart = max(last_restart, finished)
        state = c.get("state", {})
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            term = state["terminated"]
            reason = term.get("reason") or (
                f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode', 0)}"
            )
        elif c.get("ready") and "running" in state:
            ready += 1
    if pod["metadata"].get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed"):
        reason = "Terminating"
    restarts_text = (
        f"{restarts} ({_since(last_restart, now)} ago)" if restarts and last_restart else str(restarts)
    )
    gates = pod["spec"].get("readinessGates")
    return [
        f"{ready}/{len(pod['spec']['containers'])}",
        reason,
        restarts_text,
        status.get("podIP") or "<none>",
        pod["spec"].get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _deployment(dep: Obj) -> list[Any]:
    spec, status = dep["spec"], dep.get("status", {})
    containers = spec["template"]["spec"]["containers"]
    labels = spec.get("selector", {}).get("matchLabels", {})
    return [
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        ",".join(c["name"] for c in containers),
        ",".join(c["image"] for c in containers),
        ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
    ]


def _service(svc: Obj) -> list[Any]:
    spec = svc["spec"]
    ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
    selector = ",".join(f"{k}={v}" for k, v in sorted(spec.get("selector", {}).items()))
    return [
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP", "<none>"),
        "<none>",
        ports or "<none>",
        selector or "<none>",
    ]


def _cells(resource: str, obj: Obj, now: datetime) -> list[Any]:
    name = obj["metadata"]["name"]
    age = _since(obj["metadata"]["creationTimestamp"], now)
    if resource == "pods":
        ready, status, restarts, *wide = _pod(obj, now)
        return [name, ready, status, restarts, age, *wide]
    if resource == "deployments":
        ready, updated, available, *wide = _deployment(obj)
        return [name, ready, updated, available, age, *wide]
    if resource == "namespaces":
        return [name, obj.get("status", {}).get("phase", "Active"), age]
    if resource == "secrets":
        return [name, obj.get("type", "Opaque"), len(obj.get("data", {})), age]
    if resource == "configmaps":
        return [name, len(obj.get("data", {})), age]
    if resource == "services":
        kind, cluster_ip, external_ip, ports, selector = _service(obj)
        return [name, kind, cluster_ip, external_ip, ports, age, selector]
    raise KeyError(resource)


def row(resource: str, obj: Obj, now: datetime) -> Obj:
    return {
        "cells": _cells(resource, obj, now),
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        },
    }


def table(
    resource: str, objects: list[Obj], resource_version: str, now: datetime, *, columns: bool = True
) -> Obj:
    """A Table of ``objects``; ``columns=False`` for the watch events after the first."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": COLUMNS[resource] if columns else [],
        "rows": [row(resource, obj, now) for obj in objects],
    }
