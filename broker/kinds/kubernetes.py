"""Kubernetes clusters: the broker speaks to the API server with its own credential, per request.

The CLI gets no credential: ``access exec`` writes a kubeconfig pointing kubectl at the local
end of the tunnel (``access.shared.kinds.kubernetes``), and each request is checked against the
grant's scope and forwarded by the broker (``access.broker.kube``).
"""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.kubernetes import KubernetesClient

__all__ = ["Kubernetes"]


class Kubernetes(ServiceKind):
    name = "kubernetes"
    client = KubernetesClient()
    # Not a login kind (``kinds.login``): the broker adds its credential to every request instead
    # (``access.broker.kube``). The service has no user or password options: the CLI gets none.
    broker_logs_in = False
