"""Request classification: the paths the real kubectl 1.32 sends, read as the API server reads them."""

from __future__ import annotations

import pytest

from access.broker.kube.request import Attributes, Unclassifiable, classify

NS = "/api/v1/namespaces/shop"


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        # discovery and other non-resource paths: the HTTP verb and the path
        ("GET", "/version?timeout=5s", Attributes("get", "/version")),
        ("GET", "/api?timeout=32s", Attributes("get", "/api")),
        ("GET", "/apis", Attributes("get", "/apis")),
        ("GET", "/api/v1", Attributes("get", "/api/v1")),
        ("GET", "/apis/apps/v1", Attributes("get", "/apis/apps/v1")),
        ("GET", "/openapi/v3/api/v1", Attributes("get", "/openapi/v3/api/v1")),
        ("POST", "/healthz", Attributes("post", "/healthz")),
        # get pods -A / -n shop / one pod / -w / one pod -w
        ("GET", "/api/v1/pods?limit=500", Attributes("list", "/api/v1/pods", "pods", version="v1")),
        (
            "GET",
            f"{NS}/pods?limit=500",
            Attributes("list", f"{NS}/pods", "pods", version="v1", namespace="shop"),
        ),
        (
            "GET",
            f"{NS}/pods/web-1",
            Attributes("get", f"{NS}/pods/web-1", "pods", version="v1", namespace="shop", name="web-1"),
        ),
        (
            "GET",
            f"{NS}/pods?resourceVersion=17&watch=true",
            Attributes("watch", f"{NS}/pods", "pods", version="v1", namespace="shop"),
        ),
        (
            "GET",
            f"{NS}/pods?fieldSelector=metadata.name%3Dweb-1&watch=1",
            Attributes("watch", f"{NS}/pods", "pods", version="v1", namespace="shop"),
        ),
        (
            "GET",
            f"{NS}/pods?watch=false",
            Attributes("list", f"{NS}/pods", "pods", version="v1", namespace="shop"),
        ),
        (
            "GET",
            "/api/v1/watch/namespaces/shop/pods",
            Attributes("watch", "/api/v1/watch/namespaces/shop/pods", "pods", version="v1", namespace="shop"),
        ),
        # delete pod / delete pods --all
        (
            "DELETE",
            f"{NS}/pods/web-1",
            Attributes("delete", f"{NS}/pods/web-1", "pods", version="v1", namespace="shop", name="web-1"),
        ),
        (
            "DELETE",
            f"{NS}/pods",
            Attributes("deletecollection", f"{NS}/pods", "pods", version="v1", namespace="shop"),
        ),
        # rollout restart, scale
        (
            "PATCH",
            "/apis/apps/v1/namespaces/shop/deployments/web?fieldManager=kubectl-rollout",
            Attributes(
                "patch",
                "/apis/apps/v1/namespaces/shop/deployments/web",
                "deployments",
                group="apps",
                version="v1",
                namespace="shop",
                name="web",
            ),
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/shop/deployments/web/scale",
            Attributes(
                "patch",
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                "deployments",
                "scale",
                group="apps",
                version="v1",
                namespace="shop",
                name="web",
            ),
        ),
        # logs -f, exec (WebSocket GET and SPDY POST: both create), port-forward
        (
            "GET",
            f"{NS}/pods/web-1/log?container=web&follow=true",
            Attributes(
                "get", f"{NS}/pods/web-1/log", "pods", "log", version="v1", namespace="shop", name="web-1"
            ),
        ),
        (
            "GET",
            f"{NS}/pods/web-1/exec?command=sh&command=-c&command=echo%20hi&stdout=true",
            Attributes(
                "create",
                f"{NS}/pods/web-1/exec",
                "pods",
                "exec",
                version="v1",
                namespace="shop",
                name="web-1",
                command=("sh", "-c", "echo hi"),
            ),
        ),
        (
            "POST",
            f"{NS}/pods/web-1/exec?command=date",
            Attributes(
                "create",
                f"{NS}/pods/web-1/exec",
                "pods",
                "exec",
                version="v1",
                namespace="shop",
                name="web-1",
                command=("date",),
            ),
        ),
        (
            "GET",
            f"{NS}/pods/web-1/portforward?ports=8080",
            Attributes(
                "create",
                f"{NS}/pods/web-1/portforward",
                "pods",
                "portforward",
                version="v1",
                namespace="shop",
                name="web-1",
            ),
        ),
        # namespaces are their own namespace; status and finalize are theirs
        ("GET", "/api/v1/namespaces", Attributes("list", "/api/v1/namespaces", "namespaces", version="v1")),
        (
            "GET",
            "/api/v1/namespaces/shop",
            Attributes(
                "get", "/api/v1/namespaces/shop", "namespaces", version="v1", namespace="shop", name="shop"
            ),
        ),
        (
            "PUT",
            "/api/v1/namespaces/shop/finalize",
            Attributes(
                "update",
                "/api/v1/namespaces/shop/finalize",
                "namespaces",
                "finalize",
                version="v1",
                namespace="shop",
                name="shop",
            ),
        ),
        # cluster-wide resources, kubectl auth can-i, the legacy proxy verb, a node's proxy
        ("GET", "/api/v1/nodes", Attributes("list", "/api/v1/nodes", "nodes", version="v1")),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Attributes(
                "create",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                "selfsubjectaccessreviews",
                group="authorization.k8s.io",
                version="v1",
            ),
        ),
        (
            "GET",
            "/api/v1/proxy/namespaces/shop/pods/web-1/metrics",
            Attributes(
                "proxy",
                "/api/v1/proxy/namespaces/shop/pods/web-1/metrics",
                "pods",
                version="v1",
                namespace="shop",
                name="web-1",
            ),
        ),
        (
            "GET",
            "/api/v1/nodes/node-1/proxy/metrics",
            Attributes(
                "create", "/api/v1/nodes/node-1/proxy/metrics", "nodes", "proxy", version="v1", name="node-1"
            ),
        ),
        ("OPTIONS", f"{NS}/pods", Attributes("", f"{NS}/pods", "pods", version="v1", namespace="shop")),
    ],
)
def test_kubectl_paths(method: str, target: str, expected: Attributes) -> None:
    assert classify(method, target) == expected


@pytest.mark.parametrize(
    "target",
    [
        f"{NS}/pods/../secrets",
        f"{NS}/./secrets",
        "/api/v1//namespaces/shop/secrets",
        f"{NS}/secrets%2Fx",
        f"{NS}/pods%2F..%2Fsecrets",
        "/api\\v1/secrets",
        f"{NS}/pods?watch=true;x=1",
        "http://other/api/v1/secrets",
        "*",
        "/api/v1/namespaces/shop/pods/we b",
        "/" + "a" * 9000,
        "/api/v1/watch",
    ],
)
def test_paths_a_server_could_read_otherwise_are_refused(target: str) -> None:
    with pytest.raises(Unclassifiable):
        classify("GET", target)


def test_descriptions_name_what_the_audit_shows() -> None:
    assert classify("GET", "/version").describe() == "get /version"
    assert classify("GET", "/api/v1/pods").describe() == "list pods"
    assert classify("DELETE", f"{NS}/pods/web-1").describe() == "delete pods shop/web-1"
    patch = classify("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web")
    assert patch.describe() == "patch deployments shop/web (apps)"
    exec_ = classify("GET", f"{NS}/pods/web-1/exec?command=cat&command=/etc/hosts")
    assert exec_.describe() == "create pods/exec shop/web-1 -- cat /etc/hosts"
