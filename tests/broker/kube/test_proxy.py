"""The proxy as bytes in, bytes out: what reaches the API server, what kubectl gets back, what is audited."""

from __future__ import annotations

import json

import h11
import pytest

from access.broker.kube.proxy import Forwarding, KubeProxy, ProxyError
from access.broker.kube.rules import PRESETS

FORWARD = Forwarding(
    host="kube.internal:6443", authorization="Bearer broker-token", user="alice", groups=("sre", "oncall")
)


def _proxy(scope: str = "read", **kw: object) -> KubeProxy:
    return KubeProxy(scope, PRESETS.get(scope), kw.pop("forwarding", FORWARD), **kw)  # type: ignore[arg-type]


def _request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1:40000",
        "Authorization: Bearer local-token",
        *headers,
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _heads(data: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_an_allowed_request_goes_with_the_brokers_credential_and_the_persons_identity() -> None:
    proxy = _proxy()
    proxy.feed_client(
        _request(
            "GET",
            "/api/v1/namespaces/shop/pods?limit=500",
            "Accept: application/json",
        )
    )
    sent = _heads(proxy.data_to_target())
    headers = [(n.decode().lower(), v.decode()) for n, v in sent.headers.raw_items()]
    assert ("authorization", "Bearer broker-token") in headers
    assert ("authorization", "Bearer local-token") not in headers
    assert ("host", "kube.internal:6443") in headers
    assert [v for n, v in headers if n == "impersonate-group"] == ["sre", "oncall"]
    assert ("impersonate-user", "alice") in headers
    assert proxy.awaiting_response
    body = b'{"kind":"PodList"}'
    proxy.feed_target(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    back = proxy.data_to_client()
    assert back.startswith(b"HTTP/1.1 200 ") and back.endswith(body)
    assert [r.text for r in proxy.take_records()] == ["list pods shop 200 18"]
    # keep-alive: the next request goes through on the same connection
    proxy.feed_client(_request("GET", "/version"))
    assert _heads(proxy.data_to_target()).target == b"/version"


def test_a_refused_request_gets_a_status_kubectl_prints_and_the_connection_closes() -> None:
    proxy = _proxy()
    proxy.feed_client(_request("DELETE", "/api/v1/namespaces/shop/pods/web-1"))
    assert proxy.data_to_target() == b""
    head, _, body = proxy.data_to_client().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden") and b"Connection: close" in head
    status = json.loads(body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Forbidden", 403)
    assert (
        status["message"] == "forbidden by access: scope read does not allow delete on pods in namespace shop"
    )
    assert proxy.closing
    (record,) = proxy.take_records()
    assert record.text.startswith("delete pods shop/web-1 403 0 refused: scope read does not allow")


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (_request("GET", "/api/v1/pods", "Impersonate-User: system:admin"), 403),
        (_request("GET", "/api/v1/pods", "impersonate-group: system:masters"), 403),
        (_request("GET", "/api/v1/namespaces/shop/pods/../secrets"), 400),
        (_request("GET", "/api/v1/pods", "Upgrade: websocket", "Connection: Upgrade"), 400),
        (_request("GET", "/api/v1/pods", "X-Filler: " + "x" * 70_000), 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
)
def test_what_is_never_forwarded(request_bytes: bytes, code: int) -> None:
    proxy = _proxy("admin")
    proxy.feed_client(request_bytes)
    assert proxy.data_to_target() == b""
    assert proxy.data_to_client().startswith(f"HTTP/1.1 {code} ".encode())
    assert proxy.closing


def test_a_clients_impersonation_is_dropped_from_discovery() -> None:
    proxy = _proxy()
    proxy.feed_client(_request("GET", "/api", "Impersonate-User: system:admin"))
    sent = [(n.lower(), v) for n, v in _heads(proxy.data_to_target()).headers.raw_items()]
    assert [v for n, v in sent if n == b"impersonate-user"] == [b"alice"]  # the broker's only


def test_bodies_are_bounded() -> None:
    proxy = _proxy("admin", max_body=100)
    proxy.feed_client(
        _request("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web", body=b"{" + b" " * 200 + b"}")
    )
    assert proxy.data_to_client().startswith(b"HTTP/1.1 413 ")
    chunked = _proxy("admin")
    chunked.feed_client(
        _request("POST", "/api/v1/namespaces/shop/pods", "Transfer-Encoding: chunked") + b"0\r\n\r\n"
    )
    assert chunked.data_to_client().startswith(b"HTTP/1.1 411 ")


def test_a_watch_streams_chunk_by_chunk_and_a_cut_is_recorded() -> None:
    proxy = _proxy()
    proxy.feed_client(_request("GET", "/api/v1/namespaces/shop/pods?watch=true"))
    proxy.data_to_target()
    proxy.feed_target(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert proxy.data_to_client().startswith(b"HTTP/1.1 200 OK")
    proxy.feed_target(b'10\r\n{"type":"ADDED"}\r\n')
    assert proxy.data_to_client() == b'10\r\n{"type":"ADDED"}\r\n'
    assert proxy.take_records() == []
    proxy.finish()
    assert [r.text for r in proxy.take_records()] == ["watch pods shop 200 16 cut"]


def test_an_exec_upgrade_hands_both_sides_over_to_the_byte_relay() -> None:
    proxy = _proxy("operate")
    proxy.feed_client(
        _request(
            "GET",
            "/api/v1/namespaces/shop/pods/web-1/exec?command=sh&command=-c&command=id&stdin=true",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: v5.channel.k8s.io",
        )
    )
    sent = _heads(proxy.data_to_target())
    assert (b"upgrade", b"websocket") in [(n.lower(), v) for n, v in sent.headers.raw_items()]
    proxy.feed_client(b"\x82\x00early")  # a client that does not wait for the 101: held for the relay
    proxy.feed_target(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
        b"\x82\x01\x01"
    )
    back = proxy.data_to_client()
    assert back.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in back
    assert proxy.upgraded
    assert proxy.leftovers() == (b"\x82\x00early", b"\x82\x01\x01")
    assert [r.text for r in proxy.take_records()] == ["create pods/exec shop/web-1 -- sh -c id 101 0"]


def test_exec_under_read_is_refused_before_the_api_server_sees_it() -> None:
    proxy = _proxy("read")
    proxy.feed_client(
        _request(
            "GET",
            "/api/v1/namespaces/shop/pods/web-1/exec?command=sh",
            "Upgrade: websocket",
            "Connection: Upgrade",
        )
    )
    assert proxy.data_to_target() == b""
    assert b"scope read does not allow create on pods/exec" in proxy.data_to_client()


def test_a_client_that_floods_while_a_response_is_due_is_cut() -> None:
    proxy = _proxy(max_head=1024, max_body=1024)
    proxy.feed_client(_request("GET", "/api/v1/pods"))
    with pytest.raises(ProxyError):
        for _ in range(10):
            proxy.feed_client(b"x" * 512)


def test_a_response_nobody_asked_for_ends_the_channel() -> None:
    with pytest.raises(ProxyError):
        _proxy().feed_target(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_without_impersonation_no_identity_headers_are_sent() -> None:
    proxy = _proxy(forwarding=Forwarding(host="k:443", authorization=None))
    proxy.feed_client(_request("GET", "/api/v1/pods"))
    names = {n.lower() for n, _ in _heads(proxy.data_to_target()).headers.raw_items()}
    assert not {b"authorization", b"impersonate-user", b"impersonate-group"} & names


def test_an_spdy_upgrade_where_kubectl_falls_back_is_relayed_the_same_way() -> None:
    """kubectl falls back to SPDY/3.1 (X-Stream-Protocol-Version) against an API server that
    refuses its WebSocket: the broker forwards that upgrade and relays the bytes after the 101."""
    proxy = _proxy("operate")
    proxy.feed_client(
        _request(
            "POST",
            "/api/v1/namespaces/shop/pods/web-1/exec?command=date&stdout=true",
            "Upgrade: SPDY/3.1",
            "Connection: Upgrade",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
            "Content-Length: 0",
        )
    )
    sent = _heads(proxy.data_to_target())
    headers = [(n.lower(), v) for n, v in sent.headers.raw_items()]
    assert (b"upgrade", b"SPDY/3.1") in headers
    assert (b"x-stream-protocol-version", b"v4.channel.k8s.io") in headers
    proxy.feed_target(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\x80\x03\x00\x01"
    )
    assert proxy.data_to_client().startswith(b"HTTP/1.1 101 ")
    assert proxy.upgraded
    assert proxy.leftovers() == (b"", b"\x80\x03\x00\x01")
    assert [r.text for r in proxy.take_records()] == ["create pods/exec shop/web-1 -- date 101 0"]
