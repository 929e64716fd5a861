"""kubectl (and k9s, Lens, client-go tools): a kubeconfig for the local end of the tunnel.

The kubeconfig holds no cluster credential. Its server is ``https://127.0.0.1:PORT``, the
CLI's local listener, which serves TLS with a throwaway certificate made for this run (its
certificate is the kubeconfig's ``certificate-authority-data``: kubectl sends a bearer token
only over TLS) and accepts only connections whose first request carries this run's local token
(a random value, so another user of the same machine cannot use the tunnel). The broker adds its
own credential to every request it lets through. ``access exec`` writes the file (0600, in the
CLI's private folder, deleted afterwards) and sets ``KUBECONFIG`` for the program alone;
``access kubeconfig`` prints one for a running ``access connect``.
"""

from __future__ import annotations

import base64
import json

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["KubernetesClient", "kubeconfig_text"]


def kubeconfig_text(service: str, host: str, port: int, ca_pem: str, token: str, namespace: str = "") -> str:
    """A kubeconfig (JSON, which is YAML too) for ``service`` through the local listener."""
    context: dict[str, str] = {"cluster": service, "user": f"access-{service}"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": service,
                "cluster": {
                    "server": f"https://{host}:{port}",
                    "certificate-authority-data": base64.b64encode(ca_pem.encode("ascii")).decode("ascii"),
                },
            }
        ],
        # The local token only opens this run's listener; it is not a cluster credential.
        "users": [{"name": f"access-{service}", "user": {"token": token}}],
        "contexts": [{"name": service, "context": context}],
        "current-context": service,
    }
    return json.dumps(config, indent=2) + "\n"


class KubernetesClient(ClientKind):
    name = "kubernetes"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        if not where.with_secrets or where.ca_pem is None or where.local_token is None:
            return
        text = kubeconfig_text(info.service, where.host, where.port, where.ca_pem, where.local_token)
        path = setup.secret_file(where.secret_dir, "access-kube-", text)
        setup.env["KUBECONFIG"] = str(path)
