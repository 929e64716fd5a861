"""Loopback, decided once for the broker's bind address and the CLI's broker URL."""

from __future__ import annotations

import ipaddress

import pytest

from access.shared.net import forwarded_client, is_loopback_host


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "broker.example", "localhost.example", "127.0.0.1.nip.io", ""]
)
def test_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # An untrusted peer is the client, whatever it says it forwards.
        ("198.51.100.9", ["203.0.113.1"], "198.51.100.9"),
        # A trusted proxy: the rightmost address that is not a trusted proxy.
        ("10.0.0.2", ["203.0.113.1"], "203.0.113.1"),
        ("10.0.0.2", ["6.6.6.6, 203.0.113.1, 10.1.1.1"], "203.0.113.1"),
        ("10.0.0.2", ["6.6.6.6", "203.0.113.1"], "203.0.113.1"),  # several header lines
        # Every hop trusted: the leftmost is the client; no header: the proxy itself.
        ("10.0.0.2", ["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
        ("10.0.0.2", [], "10.0.0.2"),
        # Garbage from a trusted proxy stops the walk at the proxy that handed it over.
        ("10.0.0.2", ["evil, 10.1.1.1"], "10.1.1.1"),
        ("10.0.0.2", ["203.0.113.1:4711"], "203.0.113.1"),
        ("2001:db8::5", ["[2001:db9::1]:443, 2001:0db8::7"], "2001:db9::1"),
        ("::ffff:10.0.0.2", ["203.0.113.1"], "203.0.113.1"),  # IPv4 peer on a dual-stack socket
    ],
)
def test_forwarded_client_takes_the_rightmost_untrusted_address(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert forwarded_client(peer, forwarded, TRUSTED) == client


def test_forwarded_for_is_ignored_when_no_proxy_is_trusted() -> None:
    assert forwarded_client("10.0.0.2", ["203.0.113.1"], []) == "10.0.0.2"
