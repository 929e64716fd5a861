"""Scopes of a kubernetes service: the presets and written rules as a table, and the policy's checks."""

from __future__ import annotations

from typing import Any

import pytest

from access.broker.kube.request import classify
from access.broker.kube.rules import PRESETS, KubeScope, decide
from access.broker.policy import policy_from_data
from access.broker.policy.model import PolicyError

NS = "/api/v1/namespaces/shop"
DEPLOY = "/apis/apps/v1/namespaces/shop/deployments/web"


@pytest.mark.parametrize(
    ("scope", "method", "target", "allowed"),
    [
        # discovery: every scope
        ("read", "GET", "/version", True),
        ("read", "GET", "/apis/apps/v1", True),
        ("read", "GET", "/openapi/v3/apis/apps/v1", True),
        ("read", "POST", "/api", False),
        ("read", "GET", "/metrics", False),
        # read: get/list/watch on everything but secrets; no subresource
        ("read", "GET", "/api/v1/pods", True),
        ("read", "GET", f"{NS}/pods?watch=true", True),
        ("read", "GET", f"{DEPLOY}", True),
        ("read", "GET", f"{NS}/secrets", False),
        ("read", "GET", f"{NS}/secrets/web-tls", False),
        ("read", "DELETE", f"{NS}/pods/web-1", False),
        ("read", "PATCH", DEPLOY, False),
        ("read", "GET", f"{NS}/pods/web-1/log?follow=true", False),
        ("read", "GET", f"{NS}/pods/web-1/exec?command=sh", False),
        ("read", "GET", f"{NS}/pods/web-1/portforward", False),
        ("read", "POST", f"{NS}/pods", False),
        # operate: read + delete pods + patch deployments + log, exec, port-forward
        ("operate", "GET", f"{NS}/pods", True),
        ("operate", "DELETE", f"{NS}/pods/web-1", True),
        ("operate", "DELETE", f"{NS}/pods", False),  # deletecollection
        ("operate", "PATCH", DEPLOY, True),
        ("operate", "PATCH", f"{DEPLOY}/scale", False),
        ("operate", "GET", f"{NS}/pods/web-1/log?follow=true", True),
        ("operate", "POST", f"{NS}/pods/web-1/exec?command=sh", True),
        ("operate", "GET", f"{NS}/pods/web-1/portforward", True),
        ("operate", "GET", f"{NS}/pods/web-1/attach", False),
        ("operate", "GET", f"{NS}/secrets", False),
        ("operate", "DELETE", f"{NS}/services/web", False),
        # admin: everything, subresources included
        ("admin", "GET", f"{NS}/secrets", True),
        ("admin", "DELETE", f"{NS}/pods", True),
        ("admin", "PATCH", f"{DEPLOY}/scale", True),
        ("admin", "GET", "/api/v1/nodes/node-1/proxy/metrics", True),
        ("admin", "OPTIONS", f"{NS}/pods", True),  # "*" names every verb, even none
    ],
)
def test_presets(scope: str, method: str, target: str, allowed: bool) -> None:
    assert decide(scope, PRESETS[scope], classify(method, target)).allowed is allowed


def test_the_refusal_says_what_kubectl_prints() -> None:
    verdict = decide("read", PRESETS["read"], classify("DELETE", f"{NS}/pods/web-1"))
    assert verdict.reason == "scope read does not allow delete on pods in namespace shop"
    secrets = decide("read", PRESETS["read"], classify("GET", f"{NS}/secrets"))
    assert secrets.reason == "scope read does not allow list on secrets in namespace shop"
    assert decide("x", None, classify("GET", f"{NS}/pods")).reason.endswith("(deny by default)")


def _scope(**data: Any) -> KubeScope:
    return KubeScope.model_validate(data)


def test_namespace_limits_refuse_other_namespaces_and_cluster_wide_requests() -> None:
    shop = _scope(namespaces=["shop"], rules=[{"verbs": ["get", "list"], "resources": ["pods"]}])
    assert decide("read", shop, classify("GET", f"{NS}/pods")).allowed
    other = decide("read", shop, classify("GET", "/api/v1/namespaces/kube-system/pods"))
    assert not other.allowed
    assert other.reason == "scope read does not allow list on pods in namespace kube-system (only in shop)"
    everywhere = decide("read", shop, classify("GET", "/api/v1/pods"))
    assert everywhere.reason == "scope read does not allow list on pods across all namespaces (only in shop)"
    per_rule = _scope(
        rules=[
            {"verbs": ["list"], "resources": ["pods"]},
            {"verbs": ["delete"], "resources": ["pods"], "namespaces": ["shop"]},
        ]
    )
    assert decide("s", per_rule, classify("GET", "/api/v1/pods")).allowed
    assert decide("s", per_rule, classify("DELETE", f"{NS}/pods/a")).allowed
    assert not decide("s", per_rule, classify("DELETE", "/api/v1/namespaces/billing/pods/a")).allowed


def test_resource_patterns() -> None:
    scope = _scope(rules=[{"verbs": ["*"], "resources": ["pods/*", "*/scale"], "exclude": ["pods/exec"]}])
    assert decide("s", scope, classify("GET", f"{NS}/pods/a/log")).allowed
    assert decide("s", scope, classify("PATCH", f"{DEPLOY}/scale")).allowed
    assert not decide("s", scope, classify("GET", f"{NS}/pods/a")).allowed  # pods/* is not pods
    assert not decide("s", scope, classify("GET", f"{NS}/pods/a/exec")).allowed


def _policy(kubernetes: dict[str, Any], **service: Any) -> Any:
    svc = {
        "name": "prod-cluster",
        "kind": "kubernetes",
        "scopes": ["read"],
        "max_ttl": "1h",
        "kubernetes": kubernetes,
    }
    return policy_from_data({"services": [{**svc, **service}]})


SERVER = {"server": "https://kube.internal:6443", "token_file": "/etc/access/kube-token"}


def test_a_cluster_loads_with_its_server_as_target() -> None:
    service = _policy({**SERVER, "impersonate": True}).service("prod-cluster")
    assert (service.host, service.port) == ("kube.internal", 6443)
    assert service.kubernetes.impersonate is True
    assert service.kubernetes.rules("read") == PRESETS["read"]


@pytest.mark.parametrize(
    ("kubernetes", "service", "words"),
    [
        ({"server": "https://k:6443"}, {}, "name the broker's credential for the API server"),
        ({**SERVER, "token_env": "K"}, {}, "exactly one"),
        (
            {"server": "https://k", "client_cert_file": "/c"},
            {},
            "client_cert_file and client_key_file go together",
        ),
        ({**SERVER, "server": "http://k:6443"}, {}, "https:// URL"),
        ({**SERVER, "server": "https://k:6443/prefix"}, {}, "a host and a port only"),
        ({**SERVER, "token": "abc"}, {}, "unknown key 'token'"),
        ({**SERVER}, {"scopes": ["read", "debug"]}, "name the rules of scope 'debug'"),
        (
            {**SERVER, "scopes": {"write": {"rules": [{"verbs": ["get"], "resources": ["pods"]}]}}},
            {},
            "no scope 'write'",
        ),
        (
            {**SERVER, "scopes": {"read": {"rules": [{"verbs": ["peek"], "resources": ["pods"]}]}}},
            {},
            "unknown verb 'peek'",
        ),
        (
            {**SERVER, "scopes": {"read": {"rules": [{"verbs": ["get"], "resources": []}]}}},
            {},
            "deny by default",
        ),
        ({**SERVER, "scopes": {"read": {"rules": []}}}, {}, "at least 1 item"),
        (
            {**SERVER, "scopes": {"read": {"rules": [{"verbs": ["get"], "resources": ["pods/"]}]}}},
            {},
            "bad resource",
        ),
        (
            {
                **SERVER,
                "scopes": {
                    "read": {"namespaces": ["Shop"], "rules": [{"verbs": ["get"], "resources": ["pods"]}]}
                },
            },
            {},
            "bad namespace",
        ),
        ({**SERVER}, {"target": "other:6443"}, "kube.internal:6443"),
    ],
)
def test_a_bad_cluster_does_not_load(kubernetes: dict[str, Any], service: dict[str, Any], words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        _policy(kubernetes, **service)
    assert words in str(caught.value) + " ".join(str(p) for p in caught.value.problems)


def test_the_block_is_for_clusters_only_and_clusters_need_it() -> None:
    with pytest.raises(PolicyError, match="only for kind: kubernetes"):
        policy_from_data(
            {
                "services": [
                    {
                        "name": "db",
                        "kind": "tcp",
                        "target": "h:1",
                        "scopes": ["read"],
                        "max_ttl": "1h",
                        "kubernetes": SERVER,
                    }
                ]
            }
        )
    with pytest.raises(PolicyError, match="needs kubernetes"):
        policy_from_data(
            {
                "services": [
                    {"name": "c", "kind": "kubernetes", "target": "h:1", "scopes": ["read"], "max_ttl": "1h"}
                ]
            }
        )
